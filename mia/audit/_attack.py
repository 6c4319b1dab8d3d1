"""Attacks on stored signals: the target's signals on its query set, each attack scored against the true
membership (metrics and bootstrap intervals)."""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from tqdm.auto import tqdm

from mia.attacks import ATTACKS, AttackOutput, ReferenceSignals, ShadowSignals, run_attack
from mia.attacks.selection import as_asked, resolve_attacks
from mia.audit._config import TargetConfig
from mia.audit._reference import split_ai_reference
from mia.data import Dataset, Split
from mia.data.augment import query_views
from mia.errors import MiaError, NothingToScore
from mia.fl.attacks import run_fl_attack
from mia.label_signals import label_only_signals
from mia.metrics import attack_metrics, interval_metrics
from mia.signals import Signals, compute_signals


@dataclass
class AttackResult:
    """One attack on one target: its per-sample output, its metrics (:func:`mia.metrics.attack_metrics` and
    the bootstrap intervals) and the seconds it took. Its repr leaves out the per-sample arrays: a notebook
    echoing ``mia.experiment.audit_run``'s outcome printed every attack's scores."""

    name: str
    output: AttackOutput = field(repr=False)
    metrics: dict[str, float]
    seconds: float


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


def attack_target(names: str | list[str], config: TargetConfig, data: Dataset, split: Split, signals: Signals,
                  population: Signals, pool, params: dict[str, dict] | None = None, seed: int | None = None,
                  progress: bool = True, stage: Callable = contextlib.nullcontext,
                  skip_unscorable: bool = False) -> list[AttackResult]:
    """The black-box attacks ``names`` (a list, or a comma-separated string as :func:`run_audit` takes) on a
    target's signals, calibrated on the reference ``pool``.

    ``signals``/``population`` are the target's on ``split.query()`` and on the
    attacker's population (:func:`target_signals`); ``pool`` the
    :class:`mia.pool.PoolSignals` of :func:`attacker_config`'s recipe (None
    where no attack reads one: :func:`needs_pool`). ``seed`` (default
    ``config.seed``, as :func:`run_audit`) seeds the learned attacks, the
    choices made on reference models and the intervals.
    ``selena-adaptive`` also trains its shadow Split-AI here. ``stage(name)``
    wraps the two costly parts (``split_ai``, ``attacks``), for the tracked
    run's timings.
    """
    if isinstance(names, str):
        if as_asked(names) == "all":
            raise MiaError("attack_target runs the attacks it is named; those of 'all' that apply to a target are "
                           "mia.attacks.selection.applicable(names, signals, config.defense), as run_audit picks them")
        names = resolve_attacks(names)
    seed = config.seed if seed is None else seed
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

