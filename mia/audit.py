"""The audit (centralized, federated, pruning), without any tracking: train a target, train shadows, attack.

Everything here is plain Python on torch/numpy, so the same audit runs from a
notebook or on a GPU image that lacks MLflow. :mod:`mia.tracking` wraps these
steps with MLflow runs; the CLI wraps the tracking layer.

The protocol (REFERENCE.md section 1):

* the target trains on ``split.members``, picks its best epoch on
  ``split.validation`` and is queried on the balanced set ``split.query()``;
* reference (shadow) models imitate the target's recipe on random subsets
  of the attacker's data, as large as the target's training set
  (:mod:`mia.pool`); threshold and learned attacks fit
  on their outputs on the population, LiRA and RMIA compare the target with
  them on the audited samples;
* attacks see the target's signals and the shadows' signals with their
  membership, never the target's membership, which only the metrics read.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from tqdm.auto import tqdm

from mia.attacks import (ATTACKS, AttackOutput, ReferenceSignals, ShadowSignals, SplitAISignals, resolve_params,
                         run_attack)
from mia.attacks.selection import (applicable, as_asked, check_attacks, check_label_only_data, shadow_split,
                                  label_only_for)
from mia.data import Dataset, Split, SplitConfig, load_dataset, make_split
from mia.data.augment import query_views
from mia.data.datasets import DATASETS
from mia.defenses import check_scenario, make_defense
from mia.defenses.memorization import MemScored
from mia.errors import MiaError, NothingToScore, unknown
from mia.fl.attacks import run_fl_attack
from mia.fl.config import UNUSED_TRAIN as FL_UNUSED_TRAIN, FLConfig
from mia.fl.simulation import simulate
from mia.imported import CHECKPOINT_FIX, MEMBERS_FIX, check_file, load_network, member_rows, split_around
from mia.label_signals import DEFAULT_LABEL_ONLY, LABEL_ONLY_KINDS, label_only_signals
from mia.metrics import attack_metrics, interval_metrics, low_fpr_note, roc
from mia.models import NORMS, architecture_fingerprint, batchnorm_fix, build_model, keyed_norm
from mia.pool import MODES, grow_pool, load_pool, plan_pool, pool_lock
from mia.prune import prune_and_finetune
from mia.prune.layers import FixedMasks
from mia.prune.memscores import default_cache_dir, read_mem_scores_csv
from mia.prune.pruners import PRUNERS
from mia.prune.schedule import PruneConfig
from mia.registry import coerce
from mia.signals import Signals, compute_signals
from mia.train import TrainConfig, resolve_device, seed_everything
from mia.train.loop import check_recipe
from mia.train.many import Trained, train_many
from mia.train.predict import accuracy, check_device
from mia.train.recipes import default_config, without_inert_settings

EpochCallback = Callable[[int, dict], None]

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


@dataclass
class TrainedModel:
    """A fitted model with the facts a run records about it.

    ``model`` is what users query (the released outputs of an output defense);
    ``network`` the trained network itself, which the checkpoint stores.
    """

    model: torch.nn.Module
    network: torch.nn.Module
    best_epoch: int
    history: list[dict]
    train_accuracy: float
    test_accuracy: float
    wall_time: float
    defense_metrics: dict = field(default_factory=dict)
    dense: "TrainedModel | None" = None  # pruning: the dense original the model was pruned from
    finetune_epochs: list[int] = field(default_factory=list)  # pruning: each step's released fine-tuning epoch


@dataclass
class AttackResult:
    """One attack on one target: its per-sample output, its metrics (:func:`mia.metrics.attack_metrics` and
    the bootstrap intervals) and the seconds it took. Its repr leaves out the per-sample arrays: a notebook
    echoing ``mia.experiment.audit_run``'s outcome printed every attack's scores."""

    name: str
    output: AttackOutput = field(repr=False)
    metrics: dict[str, float]
    seconds: float


def load_data(config: TargetConfig) -> Dataset:
    """Load the dataset of a config onto the training device, once."""
    data = load_dataset(config.dataset, config.data_dir, config.download, **config.dataset_params)
    return data.to(resolve_device(config.train.device))


def fit(config: TargetConfig, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
        test_idx: np.ndarray, seed: int, on_epoch: EpochCallback | None = None,
        progress: bool = True) -> TrainedModel:
    """Build and train one model with the config's recipe and defense, seeded by ``seed``.

    Under ``scenario="pruning"`` the model is trained dense, then pruned and
    fine-tuned with the defense (:func:`fit_pruned`).
    """
    if config.scenario == "pruning":
        return fit_pruned(config, data, train_idx, val_idx, test_idx, seed, on_epoch=on_epoch, progress=progress)
    seed_everything(seed)
    defense = make_defense(config.defense, config.defense_params, seed=seed)
    defense.bind(data.num_classes)  # also for a fit of its own that does not call the default's
    recipe = replace(config.train, seed=seed)
    network, result = defense.fit(
        lambda: build_model(config.model, data.input_shape, data.num_classes, norm=config.norm),
        data, train_idx, val_idx, recipe, on_epoch=on_epoch, progress=progress)
    model = defense.release(network)
    return TrainedModel(model, network, result.best_epoch, result.history,
                        train_accuracy=accuracy(model, data, train_idx, recipe.device),
                        test_accuracy=accuracy(model, data, test_idx, recipe.device),
                        wall_time=result.wall_time, defense_metrics=defense.metrics())


def dense_config(config: TargetConfig) -> TargetConfig:
    """The dense original of a pruning config: the same recipe, centralized, no defense (it acts in fine-tuning)."""
    return replace(config, scenario="centralized", defense="none", defense_params={}, prune=None)


def dense_title(config: TargetConfig) -> str:
    """A plot title for a pruning target's dense original."""
    from mia.report.figure import describe

    return f"{describe(dense_config(config))}: the dense model before pruning"


def check_importable(config: TargetConfig) -> None:
    """A model trained elsewhere is attacked as it is released: centralized, without a defense of mia's."""
    if config.scenario != "centralized" or config.defense != "none":
        raise MiaError("a checkpoint trained elsewhere is audited as it is released: scenario centralized, "
                       "defense none (drop --scenario / --defense)")


def check_import(config: TargetConfig, checkpoint, members, names: tuple[str, str] = ("checkpoint=", "members=")
                 ) -> None:
    """A model trained elsewhere, checked before anything loads or a run opens: both its weights and its rows,
    a config it can be audited under (:func:`check_importable`), files that exist. ``names`` are how the
    caller spells the two (``--checkpoint``/``--members`` on the command line)."""
    if (checkpoint is None) != (members is None):
        raise MiaError(f"a model trained elsewhere needs both {names[0]} (its weights) and {names[1]} (the rows it "
                       "trained on)")
    if checkpoint is None:
        return
    check_importable(config)
    check_file(checkpoint, "checkpoint", CHECKPOINT_FIX)
    if isinstance(members, (str, Path)):
        check_file(members, "members file", MEMBERS_FIX)


def fit_imported(config: TargetConfig, data: Dataset, split: Split, checkpoint: str | Path) -> TrainedModel:
    """A target trained elsewhere (:mod:`mia.imported`): ``checkpoint``'s weights in ``config.model``, with
    ``split.members`` the rows it trained on; its accuracies measured as :func:`fit`'s are. Its best epoch is
    unknown (-1), so reference models select their own (:func:`attacker_config`)."""
    check_importable(config)
    network = load_network(checkpoint, config.model, config.norm, data)
    return TrainedModel(network, network, -1, [], accuracy(network, data, split.members, config.train.device),
                        accuracy(network, data, split.nonmembers, config.train.device), wall_time=0.0)


def check_prunable(config: TargetConfig, data: Dataset, train_idx: np.ndarray) -> None:
    """What :func:`fit_pruned` would otherwise find wrong only after the dense model trained: the pruner on
    this model (tried on a fresh one: slimming needs BatchNorm), a defense that would replace the pruned
    model (DP-SGD turns BatchNorm into GroupNorm), the defense's settings against the data
    (:meth:`mia.defenses.Defense.bind`), and a mem-score CSV's rows for ``train_idx``."""
    make_defense(config.defense, config.defense_params).bind(data.num_classes)
    model = build_model(config.model, data.input_shape, data.num_classes, norm=config.norm)
    PRUNERS.get(config.prune.pruner)(model, config.prune.sparsity)
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if config.defense == "dp-sgd" and has_batchnorm:
        raise MiaError(f"dp-sgd would replace the pruned model's BatchNorm by GroupNorm (Opacus), and the masks "
                       f"with it; prune a model without BatchNorm: {batchnorm_fix(config.model, config.norm)}")
    if csv := config.defense_params.get("mem_scores_csv"):
        with warnings.catch_warnings():  # its warnings come when the defense reads it
            warnings.simplefilter("ignore")
            read_mem_scores_csv(csv, train_idx)


def fit_pruned(config: TargetConfig, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
               test_idx: np.ndarray, seed: int, dense: TrainedModel | None = None,
               on_epoch: EpochCallback | None = None, progress: bool = True,
               mem_scores: np.ndarray | None = None) -> TrainedModel:
    """The dense model (trained here, or ``dense``), pruned along ``config.prune`` and fine-tuned with the defense.

    The defense fine-tunes through its own ``fit`` on the pruned model (loss
    and batch hooks, AdvReg's game, ...); the pruning masks hold throughout.
    A defense that builds new models instead (SELENA's sub-models) cannot.
    ``mem_scores`` (one per row of ``train_idx``) are handed to a mem-score
    driven defense (:mod:`mia.defenses.memorization`); see
    :func:`pool_mem_score_models`. ``on_epoch`` sees the dense epochs trained
    here, then every fine-tuning epoch, numbered on after them.
    """
    if config.prune is None:
        raise MiaError("scenario pruning needs a prune config (PruneConfig; --pruner, --sparsity)")
    if dense is None:
        check_prunable(config, data, train_idx)
        dense = fit(dense_config(config), data, train_idx, val_idx, test_idx, seed, on_epoch, progress)
    seed_everything(seed)
    defense = make_defense(config.defense, config.defense_params, seed=seed)
    defense.bind(data.num_classes)
    if mem_scores is not None:
        defense.set_mem_scores(train_idx, mem_scores)
    recipe = replace(config.train, seed=seed)
    if isinstance(defense, MemScored):  # scores it estimates itself model the dense recipe, not the fine-tuning
        defense.prepare(lambda: build_model(config.model, data.input_shape, data.num_classes, norm=config.norm),
                        data, train_idx, recipe, progress=progress)
    model = copy.deepcopy(dense.network)
    epochs = itertools.count(len(dense.history))  # fine-tuning epochs are reported after the dense ones, numbered on

    def finetune_epoch(_: int, metrics: dict) -> None:
        on_epoch(next(epochs), metrics)

    def finetune(network: torch.nn.Module, cfg: TrainConfig):
        network.train()  # as a fresh model would be (Opacus checks the mode)
        with FixedMasks(network):  # plain tensors for any procedure; the pruned entries stay zero
            out, result = defense.fit(lambda: network, data, train_idx, val_idx, cfg, progress=progress,
                                      on_epoch=finetune_epoch if on_epoch is not None else None)
        if out is not network:
            raise MiaError(f"defense {config.defense} replaced the pruned model (e.g. BatchNorm by GroupNorm); "
                           f"prune a model without BatchNorm: {batchnorm_fix(config.model, config.norm)}")
        return result

    pruned = prune_and_finetune(model, data, train_idx, val_idx, recipe, config.prune, progress=progress,
                                finetune=finetune)
    released = defense.release(model)
    finetuned = [step.finetune for step in pruned.history if step.finetune is not None]
    metrics = {**finetune_metrics(config.defense, defense.metrics()), "sparsity": pruned.sparsity}
    if pruned.structured_sparsity is not None:
        metrics["structured_sparsity"] = pruned.structured_sparsity
    return TrainedModel(released, model, dense.best_epoch, [f.history[-1] for f in finetuned],
                        train_accuracy=accuracy(released, data, train_idx, recipe.device),
                        test_accuracy=accuracy(released, data, test_idx, recipe.device),
                        wall_time=dense.wall_time + pruned.wall_time, defense_metrics=metrics, dense=dense,
                        finetune_epochs=[f.best_epoch for f in finetuned])


def finetune_metrics(defense: str, metrics: dict[str, float]) -> dict[str, float]:
    """A fine-tuning defense's metrics, its privacy accounting (``dp.*``) renamed ``finetune.dp.*``.

    The accountant covers the fine-tuning steps only: the dense model they
    start from (and whose weights chose the pruning masks) trained without DP
    on the same members, so the released model has no DP guarantee, and a
    ``dp.epsilon`` beside it would read as one.
    """
    renamed = {(f"finetune.{k}" if k.startswith("dp.") else k): v for k, v in metrics.items()}
    if renamed != metrics:
        warnings.warn(f"{defense} acted in fine-tuning only: finetune.dp.epsilon bounds those steps, not the "
                      "released model, whose dense original trained without DP on the same members")
    return renamed


def pool_mem_score_models(config: TargetConfig) -> int:
    """How many models of its dense reference pool a pruning run reads its defense's mem-scores from (0: none).

    Non-zero for a mem-score driven defense (RSW, RMR, SWMR) with
    ``mem_source=pool`` and no CSV: the run grows the online pool of
    :func:`dense_config` on its split to that size, and the attack on the
    dense original reuses it.
    """
    if config.scenario != "pruning":
        return 0
    defense = make_defense(config.defense, config.defense_params)
    return defense.mem_models if getattr(defense, "wants_pool_scores", False) else 0


def check_mem_pool(config: TargetConfig, split: Split) -> None:
    """The online pool holds every member among its samples only where non-members are at least as many."""
    if len(split.members) > len(split.nonmembers):
        raise MiaError(f"{config.defense} reads mem-scores from the reference pool, whose samples hold "
                       f"every member only when there are at least as many non-members "
                       f"({len(split.nonmembers)}) as members ({len(split.members)}); raise "
                       "--nonmember-fraction, or pass --defense-param mem_source=halves")


def fit_many(config: TargetConfig, data: Dataset, train_sets: np.ndarray, val_idx: np.ndarray,
             seeds: list[int], progress: bool = True, *, on_trained: Trained) -> None:
    """Reference models: many at a time without a defense, else one by one through the defense.

    Pruned reference models train dense many at a time, each then pruned
    and fine-tuned like the target as its dense stack is done. Federated ones
    are each a federation like the target's (:func:`fit_federations`).
    ``on_trained(m, model)`` is called as each model is done, in order, and
    none is kept: one model (or stack) is held at a time (see
    :func:`mia.train.many.train_many`'s ``keep=False``).
    """
    if config.defense == "none" and config.scenario == "centralized":
        train_many(config.model, data.input_shape, data.num_classes, config.norm, data, train_sets,
                   val_idx, config.train, seeds=seeds, progress=progress, on_trained=on_trained, keep=False)
        return
    if config.scenario == "pruning":
        def prune(m: int, net: torch.nn.Module) -> None:
            on_trained(m, fit_pruned(config, data, train_sets[m], val_idx, val_idx, seeds[m], progress=False,
                                     dense=TrainedModel(net, net, -1, [], 0.0, 0.0, 0.0)).model)

        fit_many(dense_config(config), data, train_sets, val_idx, seeds, progress, on_trained=prune)
        return
    if config.scenario == "federated":
        trained = fit_federations(config, data, train_sets, val_idx, seeds, progress)
    else:
        trained = (fit(config, data, rows, val_idx, val_idx, seed, progress=False).model
                   for rows, seed in zip(train_sets, seeds))
    # model m is not held while model m + 1 trains: neither by the loop variable nor by
    # enumerate, whose result tuple (m, model) lives on in it until the next item is drawn
    m = 0
    for model in trained:
        on_trained(m, model)
        del model
        m += 1


def fit_federations(config: TargetConfig, data: Dataset, train_sets: np.ndarray, val_idx: np.ndarray,
                    seeds: list[int], progress: bool = True) -> Iterator[torch.nn.Module]:
    """Reference models of a federated target, one after another: each the global model of a FedAvg run
    like the target's.

    Its rows are partitioned among as many clients, the same way (IID or
    Dirichlet), for as many rounds, local epochs and sampled clients, with
    the defense where the attack is adaptive; no server view is recorded.
    A model trained centrally on the same rows is far more confident than
    FedAvg's global model (measured on digits, 10 clients, 20 rounds: the
    target's members sat 3.4 IN standard deviations below the IN means of
    centrally trained references, its non-members 2.8 below the OUT means;
    against federations, 0.3 and 0.2), and every shadow-fitted threshold
    and Gaussian inherits that offset.
    """
    for rows, seed in tqdm(list(zip(train_sets, seeds)), desc="reference federations", disable=not progress,
                           leave=False):
        split = Split(np.sort(rows), val_idx, val_idx, np.zeros(0, dtype=np.int64), seed)
        defense = make_defense(config.defense, config.defense_params, seed=seed)
        model, _, _ = simulate(config.model, config.norm, data, split, config.fl, config.train, defense, seed,
                               progress=False, record=False)
        yield model
        del model  # nor by this frame while the next federation trains (fit_many holds one at a time)


def attacker_config(config: TargetConfig, adaptive: bool = False, released_epoch: int | None = None,
                    finetune_epochs: list[int] | None = None) -> TargetConfig:
    """The recipe of the attacker's reference models: the target's, with its defense only if ``adaptive``.

    ``released_epoch`` is the (0-based) epoch whose weights the target released,
    its best validation epoch. Reference models that train by the plain loop
    (no defense, centralized) run the target's schedule and stop after that
    epoch instead of selecting an epoch of their own: LiRA's premise is that
    they are trained like the target, and selecting on the attacker's smaller
    validation set stopped them elsewhere (measured on digits: the target's
    non-members sat 0.39 standard deviations above the references' OUT means,
    its members 0.49 above the IN means, and LiRA online fell below offline,
    AUC 0.58 against 0.62; stopping at the target's epoch: offsets -0.2 and
    online 0.63 against 0.60). Pruned references stop their dense training
    there too, and each step's fine-tuning after the target's released
    fine-tuning epoch (``finetune_epochs``, one per pruning step; without them
    they keep their selection). A defense's own procedure (adaptive pools)
    keeps its selection, and so do the plain references of a target whose
    defense trains by a schedule of its own (:meth:`Defense.schedule`: DP-SGD's
    epoch is one of its larger batches, SELENA's one of a distillation given its own ``distill_epochs``);
    federated references run the target's rounds (:func:`fit_federations`),
    which select nothing.
    """
    cfg = config if adaptive or config.defense == "none" else replace(config, defense="none", defense_params={})
    if adaptive and cfg.defense_params.get("mem_scores_csv"):
        # the defender's CSV scores the target's training rows only: the attacker's copies estimate their own
        cfg = replace(cfg, defense_params={**cfg.defense_params, "mem_scores_csv": ""})
    if (released_epoch is None or released_epoch < 0 or cfg.defense != "none" or not cfg.train.select_best
            or cfg.scenario not in ("centralized", "pruning")):
        return cfg
    if config.defense != "none":
        defense = make_defense(config.defense, config.defense_params)
        if defense.schedule(config.train) != config.train:
            return cfg  # its epochs (a pruning run's fine-tuning epochs) are not the references
    stopped = replace(cfg.train, select_best=False, stop_epoch=released_epoch + 1)
    if cfg.scenario == "centralized":
        return replace(cfg, train=stopped)
    if cfg.prune is not None and cfg.prune.finetune_epochs == 0:  # prune only: the dense stop is all
        return replace(cfg, train=stopped)
    if cfg.prune is None or not finetune_epochs or len(finetune_epochs) != cfg.prune.iterations:
        return cfg
    return replace(cfg, train=stopped, prune=replace(cfg.prune, finetune_stops=[e + 1 for e in finetune_epochs]))


def query_signals(model: torch.nn.Module, data: Dataset, idx: np.ndarray, seed: int,
                  device: str = "auto", augment: bool = False, label_only: tuple | list = (),
                  progress: bool = False) -> Signals:
    """The signals every attack needs: logits, SAMIA's sensitivity, LiRA's per-view phi,
    and the ``label_only`` kinds that apply to the data (with bars where ``progress``: on a real-size set
    each part takes minutes)."""
    signals = compute_signals(model, data, idx, sensitivity=True, views=query_views(augment), seed=seed,
                              device=device, progress=progress)
    if label_only:
        signals.label_only = label_only_signals(model, data, idx, kinds=tuple(label_only), seed=seed,
                                                device=device, progress=progress) or None
    return signals


def target_signals(model: torch.nn.Module, data: Dataset, split: Split, config: TargetConfig,
                   progress: bool = False) -> tuple[Signals, Signals]:
    """The target on its audited query set and on the attacker's population (RMIA's z)."""
    augment = config.train.augment and data.augment
    query, _ = split.query()
    return (query_signals(model, data, query, config.seed, config.train.device, augment, config.label_only,
                          progress),
            query_signals(model, data, split.population, config.seed, config.train.device, augment,
                          progress=progress))


def pool_identity(config: TargetConfig) -> dict:
    """What shapes a reference model besides its seed: the key of the pool cache."""
    train = {k: v for k, v in config.train.to_dict().items() if k not in ("seed", "device", "compile")}
    return {"dataset": config.dataset, "dataset_params": config.dataset_params, "model": config.model,
            "norm": config.norm, "defense": config.defense, "defense_params": config.defense_params,
            # label-only signals are added to a pool's first models when an attack asks (mia.pool.grow_pool), so
            # they do not tell pools apart; the field keeps its old default so that pools keep their keys and seeds
            "label_only": sorted(DEFAULT_LABEL_ONLY), "train": train,
            **({"prune": config.prune.to_dict()} if config.scenario == "pruning" and config.prune else {}),
            **({"fl": federation_identity(config.fl)} if config.scenario == "federated" and config.fl else {})}


def federation_identity(fl) -> dict:
    """The settings of :class:`mia.fl.FLConfig` that shape the global model (not what the server records)."""
    return {k: v for k, v in fl.to_dict().items() if k not in ("target_client", "record_every", "max_query")}


POOL_FORMAT = 2
"""Part of every pool key; bumped when what a pool's models are changes (their training, their
signals), so that pools of an older tool are not reused or grown with models of a newer one.
2: federated references are federations; the data's fingerprint and the CUDA precision joined the key.
(The architecture's fingerprint joined the key later without a bump: a new field changes every key,
and it is :data:`mia.pool.CACHE_ONLY`, so the models' seeds stayed as they were.)"""


def plan_reference_pool(config: TargetConfig, data: Dataset, split: Split, mode: str = "online"):
    """The :class:`mia.pool.PoolPlan` of reference models for this target's recipe, data and split.

    Besides the recipe (:func:`pool_identity`) the key holds the data's contents
    (:meth:`Dataset.fingerprint`: two folders read by one loader share a name),
    the architecture's (:func:`mia.models.architecture_fingerprint`: a user's
    own model edited under its name), whether training ran under CUDA's bf16
    autocast (a pool grown on a GPU and on a CPU would mix precisions) and
    :data:`POOL_FORMAT`.
    """
    architecture = architecture_fingerprint(config.model, data.input_shape, data.num_classes, config.norm)
    config = _without_inert_settings(config, data, architecture)
    identity = {**pool_identity(config), "format": POOL_FORMAT, "data": data.fingerprint(),
                "architecture": architecture, "cuda_bf16": data.x.device.type == "cuda" and config.train.amp}
    return plan_pool(identity, split, mode, augment=config.train.augment and data.augment)


def _without_inert_settings(config: TargetConfig, data: Dataset, architecture: str) -> TargetConfig:
    """``config`` with the settings that change nothing about its models set to their defaults.

    So that the same models find the same pool: ``--norm gn`` on a model without
    normalization layers builds the same network as ``bn`` (same architecture
    fingerprint), ``channels_last`` is only used on CUDA, ``augment`` only on images the data lets crop
    and flip (keyed at the model's recipe value), ``amp`` and ``cpu_bf16`` on the CPU only together
    (``cpu_bf16`` never on CUDA), ``momentum`` only by SGD, and a federation's clients train by its own
    local SGD, not the recipe's epochs, optimizer or schedule (keyed at the recipe's). Defaults, rather than
    dropping the fields, keep the keys (and so the models' seeds) of pools grown
    before this normalization.
    """
    default = TargetConfig()
    config = replace(config, norm=keyed_norm(config.model, data.input_shape, data.num_classes, config.norm,
                                             architecture))
    try:
        recipe = default_config(config.dataset, config.model)
    except MiaError:  # a model without a known recipe: its fields keyed as given
        recipe = None
    train = without_inert_settings(config.train, recipe, augmentable=data.augment and data.kind == "image")
    if recipe is not None and config.scenario == "federated":  # its clients train by fl's local SGD
        train = replace(train, **{k: getattr(recipe, k) for k in FL_UNUSED_TRAIN})
        if train.optimizer != "sgd":  # the recipe's Adam has no momentum either
            train = replace(train, momentum=default.train.momentum)
    return replace(config, train=train) if train != config.train else config


def reference_pool(plan, config: TargetConfig, data: Dataset, size: int, root, progress: bool = True,
                   on_saved: Callable[[Path], None] | None = None):
    """Grow the pool of ``plan`` in folder ``root`` to ``size`` models and load them.

    Returns ``(pool, growth)``: the stacked :class:`mia.pool.PoolSignals` and
    the :class:`mia.pool.PoolGrowth` of this call (nothing written when the
    pool was complete); ``on_saved(path)`` is called as each file is written
    (:func:`mia.pool.grow_pool`).
    """
    if size < 1:
        raise MiaError(f"reference_models (--reference-models) must be at least 1, got {size}")
    growth = grow_pool(plan, root, size, config, data, progress=progress, on_saved=on_saved)
    return load_pool(plan, root, size, data), growth


_SPLIT_AI_STREAM = 11  # a stream of the attack seed for the adaptive attacker's choice of rows


def split_ai_reference(config: TargetConfig, data: Dataset, split: Split, target: Signals, population: Signals,
                       params: dict | None = None, seed: int = 0, progress: bool = True):
    """The adaptive SELENA attacker's shadow Split-AI and its answers (:class:`mia.attacks.SplitAISignals`).

    The attacker knows ``known_fraction`` of the audited members. Its
    Split-AI trains, with the target's recipe and ``k``/``l`` (those of the
    target's ``selena`` defense unless set), on those members plus population
    rows up to the target's training-set size; a tenth of the population
    (the rest) is its validation set. It calibrates on its known members
    against as many of its population training rows: both are answered by
    sub-models that never saw them, exactly like the audited queries, and the
    target's outputs on them are the stored audited/population signals.
    """
    from mia.defenses.selena import train_split_ai  # looked up per call: tests spy on it there

    p = resolve_params(ATTACKS.get("selena-adaptive"), params)
    k, l = shadow_split(config, p)
    query, is_member = split.query()
    rng = np.random.default_rng([seed, _SPLIT_AI_STREAM])
    member_pos = np.flatnonzero(is_member)
    n_known = max(1, int(round(p["known_fraction"] * len(member_pos))))
    if n_known >= len(member_pos):
        raise MiaError(f"selena-adaptive known_fraction={p['known_fraction']:g} makes all {len(member_pos)} audited "
                       "members known, leaving none to score; lower known_fraction")
    known_pos = np.sort(rng.choice(member_pos, n_known, replace=False))
    order = rng.permutation(len(split.population))
    n_val = max(1, len(order) // 10)
    val_rows, fill_pos = split.population[order[:n_val]], order[n_val:]
    fill_pos = fill_pos[:max(n_known, len(split.members) - n_known)]
    if len(fill_pos) < n_known:
        raise MiaError(f"selena-adaptive needs at least {n_known} population rows beyond its validation tenth to "
                       f"calibrate on, the split has {len(split.population)}; lower known_fraction")
    train_rows = np.concatenate([query[known_pos], split.population[fill_pos]])
    if len(train_rows) < k:
        raise MiaError(f"selena-adaptive's shadow Split-AI needs at least k={k} training rows, got {len(train_rows)}")
    make_model = functools.partial(build_model, config.model, data.input_shape, data.num_classes, norm=config.norm)
    shadow = train_split_ai(make_model, data, train_rows, val_rows, replace(config.train, seed=seed), k, l, seed,
                            progress)
    calibration = np.concatenate([query[known_pos], split.population[fill_pos[:n_known]]])

    def log_answers(idx: np.ndarray) -> np.ndarray:
        return shadow.outputs(data, idx, config.train.device).clamp_min(1e-12).log().numpy()

    return SplitAISignals(
        query_logits=log_answers(query),
        calibration_target_logits=np.concatenate([target.logits[known_pos], population.logits[fill_pos[:n_known]]]),
        calibration_logits=log_answers(calibration),
        calibration_labels=data.y[torch.as_tensor(calibration, device=data.y.device)].cpu().numpy(),
        calibration_member=np.arange(len(calibration)) < n_known,
        query_known=np.isin(np.arange(len(query)), known_pos))


def run_fl_attacks(names: list[str], signals, target_client: int, is_member: np.ndarray,
                   params: dict[str, dict] | None = None, seed: int = 0,
                   skip_unscorable: bool = False) -> list[AttackResult]:
    """The FL attacks on the server's recorded view (:mod:`mia.fl.attacks`), scored like every attack.

    ``skip_unscorable`` (``--attacks all``) leaves out, with a warning, an attack
    the recorded rounds cannot feed (a ``*-iii`` attack without two other
    sampled clients in any round); named explicitly, it fails saying why.
    """
    results = []
    for name in names:
        start = time.perf_counter()
        try:
            out = run_fl_attack(name, signals, target_client, (params or {}).get(name))
        except NothingToScore as exc:
            if not skip_unscorable:
                raise MiaError(f"{name}: {exc}") from None
            warnings.warn(f"{name} left out: {str(exc).split(';')[0]}", stacklevel=2)
            continue
        metrics = {**attack_metrics(out.scores, is_member, out.predictions),
                   **interval_metrics(out.scores, is_member, seed=seed)}
        results.append(AttackResult(name, out, metrics, time.perf_counter() - start))
    return results


def run_attacks(names: list[str], target: Signals, is_member: np.ndarray,
                shadows: list[ShadowSignals], params: dict[str, dict] | None = None,
                seed: int = 0, progress: bool = True,
                reference: ReferenceSignals | None = None, split_ai=None,
                skip_unscorable: bool = False) -> list[AttackResult]:
    """Run each attack on stored signals and score it against the true membership.

    ``skip_unscorable`` (``--attacks all``) leaves out, with a warning, an attack its inputs give nothing to
    score (:class:`mia.errors.NothingToScore`: LiRA online where no reference model drew an audited sample);
    named, it fails saying why, as :func:`run_fl_attacks` does.
    """
    params = params or {}
    results = []
    bar = tqdm(names, desc="attacks", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)  # the learned attacks take seconds: say which one runs
        start = time.perf_counter()
        fit_on = shadows
        if ATTACKS.get(name).family == "label-only":  # only some reference models store these signals
            fit_on = [s for s in shadows if s.signals.label_only] or shadows
        try:
            out = run_attack(name, target, fit_on, params.get(name), seed=seed, reference=reference,
                             split_ai=split_ai)
        except NothingToScore as exc:
            if not skip_unscorable:
                raise
            warnings.warn(f"{name} left out: {str(exc).split(';')[0]}", stacklevel=2)
            continue
        scores, predictions, member = out.restricted(is_member)
        try:
            metrics = {**attack_metrics(scores, member, predictions), **interval_metrics(scores, member, seed=seed)}
        except MiaError as exc:  # NaN scores: say which attack, and the usual cause
            raise MiaError(f"attack {name}: {exc}; the target or its reference models may have diverged (check "
                           "their train_loss and test accuracy; lower the learning rate)") from None
        results.append(AttackResult(name, out, metrics, time.perf_counter() - start))
    return results


def leakage_summary(results: list[AttackResult]) -> dict[str, float]:
    """The headline numbers an Optuna objective or a report row reads: the worst case over the attacks."""
    return {f"leakage.max_{k}": max(r.metrics[k] for r in results)
            for k in ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001")}


def attack_target(names: list[str], config: TargetConfig, data: Dataset, split: Split, signals: Signals,
                  population: Signals, pool, params: dict[str, dict] | None = None, seed: int = 0,
                  progress: bool = True, stage: Callable = contextlib.nullcontext,
                  skip_unscorable: bool = False) -> list[AttackResult]:
    """The black-box attacks ``names`` on a target's signals, calibrated on the reference ``pool``.

    ``signals``/``population`` are the target's on ``split.query()`` and on the
    attacker's population (:func:`target_signals`); ``pool`` the
    :class:`mia.pool.PoolSignals` of :func:`attacker_config`'s recipe (None
    where no attack reads one: :func:`needs_pool`).
    ``selena-adaptive`` also trains its shadow Split-AI here. ``stage(name)``
    wraps the two costly parts (``split_ai``, ``attacks``), for the tracked
    run's timings.
    """
    _, is_member = split.query()
    split_ai = None
    if "selena-adaptive" in names:
        with stage("split_ai"):
            split_ai = split_ai_reference(config, data, split, signals, population,
                                          (params or {}).get("selena-adaptive"), seed, progress)
    with stage("attacks"):
        return run_attacks(names, signals, is_member, [] if pool is None else pool.shadows(), params, seed=seed,
                           progress=progress, split_ai=split_ai, skip_unscorable=skip_unscorable,
                           reference=None if pool is None else pool.reference(signals, population, split.population))


def needs_pool(names: list[str]) -> bool:
    """Whether any attack of ``names`` reads the reference pool (``selena-adaptive`` alone trains none)."""
    return any(ATTACKS.get(n).pool for n in names)


@dataclass
class Audit:
    """What :func:`run_audit` found: the target, its split and every attack's result.

    Per-sample scores (``results[i].output.scores``) follow ``split.query()``,
    but for the FL attacks of a federation, which follow ``federation.query``
    (the target client's members and as many non-members); :meth:`scores`
    pairs them with the membership they are scored against.
    """

    config: TargetConfig = field(repr=False)
    target: TrainedModel = field(repr=False)
    split: Split = field(repr=False)
    results: list[AttackResult] = field(repr=False)
    reference_models_trained: int  # models this call added to the cached pools (0: all reused)
    federation: object | None = field(default=None, repr=False)  # a federation's mia.fl.simulation.Federation
    dense_results: list[AttackResult] = field(default_factory=list, repr=False)  # pruning: the dense original's

    def __repr__(self) -> str:
        summary = ", ".join(f"{k}={v:.4f}" for k, v in self.summary().items())
        return (f"Audit({self.config.scenario} {self.config.dataset}/{self.config.model}, defense "
                f"{self.config.defense}: {summary}; attacks {', '.join(self.metrics)}; "
                f"reference_models_trained={self.reference_models_trained})")

    def scores(self, attack: str, dense: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``attack``'s per-sample membership scores and the true membership of the samples it is
        scored on (``selena-adaptive`` leaves out the members it was told about): what its ROC is drawn
        from, e.g. with :func:`mia.metrics.roc`. ``dense``: on a pruning target's dense original."""
        results = {r.name: r for r in (self.dense_results if dense else self.results)}
        attack = {name.lower(): name for name in results}.get(str(attack).lower(), attack)  # as run_audit spells it
        if attack not in results:
            raise MiaError(f"no result for attack {attack!r}; this audit ran: {', '.join(results) or 'none'}")
        fl = self.federation is not None and attack not in ATTACKS
        is_member = self.federation.is_member.astype(bool) if fl else self.split.query()[1]
        scores, _, member = results[attack].output.restricted(is_member)
        return scores, member

    def plot_roc(self, path, attacks: list[str] | None = None, dense: bool = False):
        """The log-log ROC of ``attacks`` (default: all) overlaid, as ``mia attack`` logs it; saved to
        ``path`` (a PNG), which is returned. ``dense``: a pruning target's dense original."""
        from mia.report.figure import describe
        from mia.report.roc import plot_roc  # matplotlib, only for a plot

        names = attacks or [r.name for r in (self.dense_results if dense else self.results)]
        curves = {name: roc(*self.scores(name, dense))[:2] for name in names}
        return plot_roc(curves, path, title=dense_title(self.config) if dense else describe(self.config))

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """``{attack: {metric: value}}`` with the names of DESIGN.md (``auc``, ``tpr_at_fpr_0.001``, ...);
        ``pandas.DataFrame(audit.metrics).T`` is the table ``mia audit`` prints."""
        return {r.name: r.metrics for r in self.results}

    @property
    def notes(self) -> list[str]:
        """What ``mia audit`` prints under its table: where a reported TPR at a low FPR allows no false
        positive among the evaluated non-members, so it reads the TPR at FPR 0 (a notebook showed a TPR of
        1.0 at 0.1 % FPR over 3 non-members without a word). The FL attacks' own set is noted apart."""
        fl = self.federation is not None
        sets = [("", self.split.query()[1])] if any(r.name in ATTACKS for r in self.results) else []
        if fl and any(r.name not in ATTACKS for r in self.results):
            sets.append(("FL attacks: ", self.federation.is_member.astype(bool)))
        return [prefix + note for prefix, member in sets if (note := low_fpr_note(int((~member).sum())))]

    def summary(self) -> dict[str, float]:
        """Utility beside the worst case over the attacks: what a report row or an Optuna objective reads
        (a pruning target's dense original with the prefix ``dense.``, as ``mia audit`` logs it)."""
        out = {"test_accuracy": self.target.test_accuracy, "train_accuracy": self.target.train_accuracy,
               **(leakage_summary(self.results) if self.results else {})}
        if "sparsity" in self.target.defense_metrics:  # a pruned target's, measured from its weights
            out["sparsity"] = self.target.defense_metrics["sparsity"]
        if self.dense_results:
            out["dense.test_accuracy"] = self.target.dense.test_accuracy
            out.update({f"dense.{k}": v for k, v in leakage_summary(self.dense_results).items()})
        return out


def run_audit(config: TargetConfig, attacks: str | list[str] = "all", reference_models: int = 4,
              attack_params: dict[str, dict] | None = None, pool_mode: str = "online", adaptive: bool = False,
              cache_dir: str | None = None, progress: bool = True, checkpoint: str | Path | None = None,
              members=None) -> Audit:
    """``mia audit`` without tracking, for notebooks and scripts: train the target, then attack it.

    The same protocol and results as the tracked command (a seed gives the
    same AUCs), with the reference pool cached on disk instead of in MLflow:
    ``<cache_dir>/pools/<key>`` (default ``$MIA_CACHE`` or ``./.mia-cache``),
    found and grown by later calls with the same recipe and data. A pruning
    target is attacked after pruning, and its dense original
    (``audit.target.dense``) with the same attacks (``audit.dense_results``);
    a federated one (``config.fl``) by the FL attacks
    on the server's view, kept in memory, and by the black-box attacks on its
    global model. A model trained elsewhere is audited from its ``checkpoint``
    (a state dict file) and ``members`` (the dataset rows it trained on: an
    array, or a file as :func:`mia.imported.read_members` reads). The caller's
    global random generators are left as they were (:func:`callers_random_state`).
    """
    check_import(config, checkpoint, members)  # before the data loads
    with callers_random_state():
        return _audit(config, attacks, reference_models, attack_params, pool_mode, adaptive, cache_dir, progress,
                      checkpoint, members)


@contextlib.contextmanager
def callers_random_state() -> Iterator[None]:
    """Python's, NumPy's and torch's global generators restored on the way out.

    Every model is seeded through them (:func:`mia.train.seed_everything`), so
    a notebook's own draws after an audit came out the same after every call
    (``np.random.rand()`` gave the first draw of seed 0); the audit's results do
    not depend on their state either way.
    """
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def _audit(config: TargetConfig, attacks: str | list[str], reference_models: int, attack_params: dict | None,
           pool_mode: str, adaptive: bool, cache_dir: str | None, progress: bool, checkpoint=None,
           members=None) -> Audit:
    """:func:`run_audit`'s work, inside :func:`callers_random_state`."""
    if not isinstance(reference_models, int) or isinstance(reference_models, bool) or reference_models < 1:
        raise MiaError(f"reference_models must be a whole number of at least 1, got {reference_models!r}")
    if pool_mode not in MODES:
        raise MiaError(f"unknown pool mode {pool_mode!r}; known: {', '.join(MODES)}")
    config = check_config(config)  # a TargetConfig built by hand is checked as resolve_config's are
    pools = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "pools"
    if pools.parent.exists() and not pools.parent.is_dir():
        raise MiaError(f"cache_dir {pools.parent} is a file; pass a folder for the reference-model pools")
    attacks = as_asked(attacks)
    config = label_only_for(config, attacks, attack_params)
    fl_names, names = check_attacks(attacks, config, attack_params, pool_mode)
    trained = []

    def grow(recipe: TargetConfig, mode: str, size: int):
        plan = plan_reference_pool(recipe, data, split, mode)
        with pool_lock(str(pools.resolve()), plan.key):
            pool, growth = reference_pool(plan, recipe, data, size, pools / plan.key, progress)
        trained.extend(growth.new)
        return pool

    def attack(names: list[str], recipe: TargetConfig, model: torch.nn.Module, adaptive: bool,
               finetune_epochs: list[int]) -> list[AttackResult]:
        signals, population = target_signals(model, data, split, recipe, progress)
        if attacks == "all":
            names = applicable(names, signals, recipe.defense, attack_params)
        pool = grow(attacker_config(recipe, adaptive, target.best_epoch, finetune_epochs), pool_mode,
                    reference_models) if needs_pool(names) else None
        return attack_target(names, recipe, data, split, signals, population, pool, attack_params, config.seed,
                             progress, skip_unscorable=attacks == "all")

    data = load_data(config)
    check_label_only_data(attacks, names, data, attack_params)
    if members is None:
        split = make_split(len(data), config.seed, config.split)
    else:
        split = split_around(len(data), member_rows(members, len(data)), config.seed, config.split)
    federation, fl_results = None, []
    if checkpoint is not None:
        target = fit_imported(config, data, split, checkpoint)
    elif config.scenario == "federated":
        target, signals_of_server, federation = _federate(config, data, split, progress)
        fl_results = run_fl_attacks(fl_names, signals_of_server, config.fl.target_client,
                                    federation.is_member.astype(bool), attack_params, config.seed,
                                    skip_unscorable=attacks == "all")
    elif config.scenario == "pruning":
        dense, mem_scores = None, None
        if models := pool_mem_score_models(config):  # RSW/RMR/SWMR: mem-scores from the dense recipe's pool
            check_mem_pool(config, split)
            dense = fit(dense_config(config), data, split.members, split.validation, split.nonmembers,
                        seed=config.seed, progress=progress)
            mem_pool = grow(attacker_config(dense_config(config), released_epoch=dense.best_epoch), "online", models)
            mem_scores = mem_pool.mem_scores_of(split.members)
        target = fit_pruned(config, data, split.members, split.validation, split.nonmembers, seed=config.seed,
                            dense=dense, progress=progress, mem_scores=mem_scores)
    else:
        target = fit(config, data, split.members, split.validation, split.nonmembers, seed=config.seed,
                     progress=progress)
    results = attack(names, config, target.model, adaptive, target.finetune_epochs) if names else []
    dense_results = []
    if names and target.dense is not None:  # what pruning changed: the same attacks on the dense original
        dense_results = attack([n for n in names if n != "selena-adaptive"], dense_config(config),
                               target.dense.model, False, [])
    return Audit(config, target, split, fl_results + results, len(trained), federation, dense_results)


def _federate(config: TargetConfig, data: Dataset, split: Split, progress: bool):
    """FedAvg as ``mia train --scenario federated`` runs it: the global model, the server's view, the federation."""
    defense = make_defense(config.defense, config.defense_params, seed=config.seed)
    start = time.perf_counter()
    model, state, federation = simulate(config.model, config.norm, data, split, config.fl, config.train, defense,
                                        config.seed, progress=progress)
    target = TrainedModel(model, model, -1, state.history,
                          train_accuracy=accuracy(model, data, split.members, config.train.device),
                          test_accuracy=state.history[-1]["test_accuracy"],
                          wall_time=time.perf_counter() - start, defense_metrics=defense.metrics())
    return target, state.signals, federation
