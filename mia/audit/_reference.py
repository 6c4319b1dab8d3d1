"""The attacker's reference models: the recipe they copy from the target, the key their cached pool is found by,
and the adaptive SELENA attacker's shadow Split-AI."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mia.attacks import ATTACKS, SplitAISignals, resolve_params
from mia.attacks.selection import shadow_split
from mia.audit._config import TargetConfig
from mia.data import Dataset, Split
from mia.defenses import make_defense
from mia.errors import MiaError
from mia.fl.config import UNUSED_TRAIN as FL_UNUSED_TRAIN
from mia.label_signals import DEFAULT_LABEL_ONLY
from mia.models import architecture_fingerprint, build_model, keyed_norm
from mia.pool import grow_pool, load_pool, plan_pool
from mia.signals import Signals
from mia.train.recipes import default_config, without_inert_settings


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


def needs_pool(names: list[str]) -> bool:
    """Whether any attack of ``names`` reads the reference pool (``selena-adaptive`` alone trains none)."""
    return any(ATTACKS.get(n).pool for n in names)

