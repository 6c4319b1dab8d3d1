"""What a target is: its data, split, architecture, recipe, scenario and defense, checked before anything trains."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mia.data import SplitConfig
from mia.data.datasets import DATASETS
from mia.defenses import check_scenario, make_defense
from mia.errors import MiaError, unknown
from mia.fl.config import FLConfig
from mia.label_signals import LABEL_ONLY_KINDS
from mia.models import NORMS
from mia.prune.schedule import PruneConfig
from mia.registry import coerce
from mia.train import TrainConfig
from mia.train.loop import check_recipe
from mia.train.predict import check_device
from mia.train.recipes import default_config


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
    defense_params: dict = field(default_factory=dict)
    # label-only signals the target (and the first reference models) compute beyond those its attacks
    # read (mia.attacks.selection.label_only_for); `mia attack` computes a missing one from the checkpoint
    label_only: list = field(default_factory=list)
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fl: FLConfig | None = None  # the federation, for scenario="federated"
    prune: PruneConfig | None = None  # pruning and fine-tuning, for scenario="pruning"

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("fl", "prune"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TargetConfig":
        d = dict(d)
        d["split"] = SplitConfig(**d.get("split", {}))
        d["train"] = TrainConfig(**d.get("train", {}))
        d["fl"] = FLConfig(**d["fl"]) if d.get("fl") else None
        d["prune"] = PruneConfig(**d["prune"]) if d.get("prune") else None
        return cls(**d)


#: The scenarios a target is trained in.
SCENARIOS = ("centralized", "federated", "pruning")


def resolve_config(dataset: str = "digits", model: str | None = None, seed: int = 0,
                   train_overrides: dict | None = None, **fields) -> TargetConfig:
    """A checked :class:`TargetConfig` with the recipe defaults of the dataset/model pair.

    Unset training options come from :func:`mia.train.recipes.default_config`
    (e.g. Adam for tabular data, SGD+cosine for CIFAR CNNs); ``train_overrides``
    holds only what the user set explicitly. The command line and
    :func:`run_audit` both come through here, so a bad value is a one-line
    :class:`MiaError` before anything trains (:func:`check_config`).
    """
    _check_fields(fields)
    spec = DATASETS.get(dataset)
    model = model or spec.default_model
    overrides = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    train_cfg = default_config(spec.kind, model, seed=seed, **overrides)
    return check_config(TargetConfig(dataset=dataset, model=model, seed=seed, train=train_cfg, **fields))


def _check_fields(fields: dict) -> None:
    """``resolve_config``'s keyword fields are :class:`TargetConfig`'s, less the recipe it builds: a training
    option given as a field (``epochs=3``) was a TypeError naming ``TargetConfig.__init__``."""
    names = {f.name for f in dataclasses.fields(TargetConfig)} - {"dataset", "model", "seed", "train"}
    training = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in fields:
        if name == "train" or name in training and name not in names:
            example = "{'epochs': 3}" if name == "train" else f"{{{name!r}: ...}}"
            raise MiaError(f"{name} is set through train_overrides={example}: resolve_config builds the recipe "
                           "from the dataset's and model's defaults and those overrides")
        if name not in names:
            raise MiaError(f"resolve_config has no field {name!r}; fields: dataset, model, seed, train_overrides, "
                           f"{', '.join(sorted(names))}")


#: The nested parts of a :class:`TargetConfig` and the class each must be.
_PARTS = {"split": SplitConfig, "train": TrainConfig, "fl": FLConfig, "prune": PruneConfig}


def _check_parts(config: TargetConfig) -> None:
    """Each nested part is its config class: a dict (``split={"member_fraction": 0.3}``) failed later with an
    AttributeError inside the split."""
    for name, kind in _PARTS.items():
        value = getattr(config, name)
        if value is not None and not isinstance(value, kind):
            raise MiaError(f"{name}= takes a {kind.__module__}.{kind.__name__}, got {type(value).__name__} "
                           f"{value!r:.60}; e.g. {name}={kind.__name__}(...)")


def check_config(config: TargetConfig) -> TargetConfig:
    """``config`` checked and normalized: what would otherwise fail after training, or run silently wrong.

    A scenario this version trains, a device this machine has, a defense of
    that scenario, ``fl``/``prune`` only with their scenario (their defaults
    where the scenario has none), the defense's and the dataset's parameters
    typed with every default filled in (so that one setting has one pool key
    however it is spelt), an existing ``mem_scores_csv``, known label-only kinds.
    """
    if not isinstance(config, TargetConfig):
        raise MiaError(f"expected a TargetConfig (mia.audit.resolve_config(...)), got {type(config).__name__} "
                       f"{config!r:.60}")
    _check_parts(config)
    if config.scenario not in SCENARIOS:
        raise unknown("scenario", config.scenario, SCENARIOS)
    check_device(config.train.device)
    check_recipe(config.train)
    if config.norm not in NORMS:
        raise unknown("norm", config.norm, NORMS)
    check_scenario(config.defense, config.scenario)
    extra = {}
    for name, scenario, default in (("fl", "federated", FLConfig), ("prune", "pruning", PruneConfig)):
        if getattr(config, name) is not None and config.scenario != scenario:
            raise MiaError(f"{name}= configures scenario {scenario!r}, and this config's scenario is "
                           f"{config.scenario!r}; pass scenario={scenario!r} or drop {name}")
        if getattr(config, name) is None and config.scenario == scenario:
            extra[name] = default()
    defense_params = make_defense(config.defense, config.defense_params).params
    if defense_params.get("mem_scores_csv") and not Path(defense_params["mem_scores_csv"]).is_file():
        # read after the dense model trained: a wrong path would cost that training first
        raise MiaError(f"defense parameter mem_scores_csv={defense_params['mem_scores_csv']}: no such file; "
                       "pass the path of an existing CSV")
    spec = DATASETS.get(config.dataset)
    label_only = config.label_only
    if isinstance(label_only, str):
        label_only = [k.strip() for k in label_only.split(",") if k.strip()]
    for kind in label_only:
        if kind not in LABEL_ONLY_KINDS:
            raise unknown("label-only signal", kind, LABEL_ONLY_KINDS)
    return replace(config, defense_params=defense_params, label_only=list(label_only),
                   dataset_params=coerce(spec.params, config.dataset_params, f"dataset {spec.name}"), **extra)


def dense_config(config: TargetConfig) -> TargetConfig:
    """The dense original of a pruning config: the same recipe, centralized, no defense (it acts in fine-tuning)."""
    return replace(config, scenario="centralized", defense="none", defense_params={}, prune=None)


def dense_title(config: TargetConfig) -> str:
    """A plot title for a pruning target's dense original."""
    from mia.report.figure import describe

    return f"{describe(dense_config(config))}: the dense model before pruning"

