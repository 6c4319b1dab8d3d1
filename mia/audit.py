"""The centralized audit, without any tracking: train a target, train shadows, attack.

Everything here is plain Python on torch/numpy, so the same audit runs from a
notebook or on a GPU image that lacks MLflow. :mod:`mia.tracking` wraps these
steps with MLflow runs; the CLI wraps the tracking layer.

The protocol (REFERENCE.md section 1):

* the target trains on ``split.members``, picks its best epoch on
  ``split.validation`` and is queried on the balanced set ``split.query()``;
* each shadow model imitates the target's recipe on the attacker's
  ``split.population`` only: a seeded random half is its members, and the
  other half, minus a slice it keeps for its own model selection, its
  non-members;
* attacks see the target's signals and the shadows' signals with their
  membership, never the target's membership, which only the metrics read.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from mia.attacks import ATTACKS, AttackOutput, ShadowSignals, run_attack
from mia.data import Dataset, Split, SplitConfig, load_dataset, make_split
from mia.data.datasets import DATASETS
from mia.errors import MiaError
from mia.metrics import attack_metrics
from mia.models import build_model
from mia.signals import Signals, compute_signals
from mia.train import TrainConfig, resolve_device, train
from mia.train.loop import seed_everything
from mia.train.recipes import default_config

EpochCallback = Callable[[int, dict], None]

#: Fraction of a shadow's non-member half kept aside for its model selection.
SHADOW_VALIDATION_FRACTION = 0.2


@dataclass
class TargetConfig:
    """Everything that defines a target model: data, split, architecture, recipe."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    dataset_params: dict = field(default_factory=dict)
    model: str | None = None  # None: the dataset's default model
    norm: str = "bn"
    scenario: str = "centralized"
    defense: str = "none"
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TargetConfig":
        d = dict(d)
        d["split"] = SplitConfig(**d.get("split", {}))
        d["train"] = TrainConfig(**d.get("train", {}))
        return cls(**d)


def resolve_config(dataset: str = "digits", model: str | None = None, seed: int = 0,
                   train_overrides: dict | None = None, **fields) -> TargetConfig:
    """A :class:`TargetConfig` with the recipe defaults of the dataset/model pair.

    Unset training options come from :func:`mia.train.recipes.default_config`
    (e.g. Adam for tabular data, SGD+cosine for CIFAR CNNs); ``train_overrides``
    holds only what the user set explicitly.
    """
    spec = DATASETS.get(dataset)
    model = model or spec.default_model
    overrides = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    train_cfg = default_config(spec.kind, model, seed=seed, **overrides)
    return TargetConfig(dataset=dataset, model=model, seed=seed, train=train_cfg, **fields)


@dataclass
class TrainedModel:
    """A fitted model with the facts a run records about it."""

    model: torch.nn.Module
    best_epoch: int
    history: list[dict]
    train_accuracy: float
    test_accuracy: float
    wall_time: float


def load_data(config: TargetConfig) -> Dataset:
    """Load the dataset of a config onto the training device, once."""
    data = load_dataset(config.dataset, config.data_dir, config.download, **config.dataset_params)
    return data.to(resolve_device(config.train.device))


def fit(config: TargetConfig, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
        test_idx: np.ndarray, seed: int, on_epoch: EpochCallback | None = None,
        progress: bool = True) -> TrainedModel:
    """Build and train one model with the config's recipe, seeded by ``seed``."""
    seed_everything(seed)
    model = build_model(config.model, data.input_shape, data.num_classes, norm=config.norm)
    recipe = TrainConfig(**{**config.train.to_dict(), "seed": seed})
    result = train(model, data, train_idx, val_idx, recipe, on_epoch=on_epoch, progress=progress)
    return TrainedModel(model, result.best_epoch, result.history,
                        train_accuracy=accuracy(model, data, train_idx, recipe.device),
                        test_accuracy=accuracy(model, data, test_idx, recipe.device),
                        wall_time=result.wall_time)


def accuracy(model: torch.nn.Module, data: Dataset, idx: np.ndarray, device: str = "auto") -> float:
    from mia.train import predict_logits

    logits = predict_logits(model, data, idx, device=device)
    labels = data.y[torch.as_tensor(idx, device=data.y.device)].cpu()
    return float((logits.argmax(1) == labels).float().mean())


def query_signals(model: torch.nn.Module, data: Dataset, idx: np.ndarray, seed: int,
                  device: str = "auto") -> Signals:
    """The signals every attack needs (logits, and SAMIA's sensitivity), in one pass."""
    return compute_signals(model, data, idx, sensitivity=True, seed=seed, device=device)


def shadow_split(population: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(members, non-members, validation) of one shadow model, drawn from the population."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(population)
    half = len(perm) // 2
    n_val = max(1, int(SHADOW_VALIDATION_FRACTION * (len(perm) - half)))
    members, rest = perm[:half], perm[half:]
    return members, rest[n_val:], rest[:n_val]


def train_shadows(config: TargetConfig, data: Dataset, split: Split, count: int,
                  seed: int = 0, progress: bool = True,
                  on_shadow: Callable[[int, TrainedModel], None] | None = None) -> list[ShadowSignals]:
    """Train ``count`` shadow models on the attacker's population with the target's recipe.

    Each shadow is queried on a balanced set of its own members and non-members,
    which is what threshold fitting and learned attacks train on.
    """
    if count < 1:
        raise MiaError(f"--reference-models must be at least 1, got {count}")
    if len(split.population) < 8:
        raise MiaError(f"the attacker's population has only {len(split.population)} samples; "
                       "lower the member/non-member/validation fractions")
    from tqdm.auto import tqdm

    shadows = []
    for k in tqdm(range(count), desc="shadow models", unit="model", disable=not progress, leave=False):
        shadow_seed = seed * 1000 + k + 1
        members, nonmembers, val = shadow_split(split.population, shadow_seed)
        trained = fit(config, data, members, val, nonmembers, seed=shadow_seed, progress=progress)
        if on_shadow is not None:
            on_shadow(k, trained)
        n = min(len(members), len(nonmembers))
        query = np.concatenate([members[:n], nonmembers[:n]])
        is_member = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
        signals = query_signals(trained.model, data, query, seed=shadow_seed, device=config.train.device)
        shadows.append(ShadowSignals(signals, is_member))
    return shadows


def resolve_attacks(names: str | list[str]) -> list[str]:
    """``"all"`` or a comma-separated list -> validated attack names, registry order."""
    if isinstance(names, str):
        names = ATTACKS.names() if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise MiaError("no attacks given; pass --attacks all or a comma-separated list (see `mia attacks`)")
    for name in names:
        ATTACKS.get(name)
    return list(dict.fromkeys(names))


@dataclass
class AttackResult:
    name: str
    output: AttackOutput
    metrics: dict[str, float]
    seconds: float


def run_attacks(names: list[str], target: Signals, is_member: np.ndarray,
                shadows: list[ShadowSignals], params: dict[str, dict] | None = None,
                seed: int = 0, progress: bool = True) -> list[AttackResult]:
    """Run each attack on stored signals and score it against the true membership."""
    from tqdm.auto import tqdm

    params = params or {}
    results = []
    for name in tqdm(names, desc="attacks", disable=not progress, leave=False):
        start = time.perf_counter()
        out = run_attack(name, target, shadows, params.get(name), seed=seed)
        results.append(AttackResult(name, out, attack_metrics(out.scores, is_member, out.predictions),
                                    time.perf_counter() - start))
    return results


def leakage_summary(results: list[AttackResult]) -> dict[str, float]:
    """The two headline numbers an Optuna objective or a report row reads."""
    return {
        "leakage.max_auc": max(r.metrics["auc"] for r in results),
        "leakage.max_tpr_at_fpr_0.001": max(r.metrics["tpr_at_fpr_0.001"] for r in results),
    }
