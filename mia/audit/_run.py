"""The whole audit in one call, without tracking (:func:`run_audit`), and what it returns (:class:`Audit`)."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mia.attacks import ATTACKS
from mia.attacks.selection import applicable, as_asked, check_attacks, check_label_only_data, label_only_for
from mia.audit._attack import AttackResult, attack_target, leakage_summary, run_fl_attacks, target_signals
from mia.audit._config import TargetConfig, check_config, dense_config, dense_title
from mia.audit._fit import TrainedModel, check_import, fit_federated, fit_target, load_data, target_split
from mia.audit._reference import attacker_config, needs_pool, plan_reference_pool, reference_pool
from mia.data import Split
from mia.errors import MiaError
from mia.metrics import low_fpr_note, near_chance_note, roc
from mia.pool import MODES, pool_lock
from mia.prune.memscores import default_cache_dir


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
    num_classes: int | None = field(default=None, repr=False)  # the data's, for the note on a near-chance target

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
        1.0 at 0.1 % FPR over 3 non-members without a word). The FL attacks' own set is noted apart. And
        where the target barely beats a uniform guess (:func:`mia.metrics.near_chance_note`)."""
        fl = self.federation is not None
        sets = [("", self.split.query()[1])] if any(r.name in ATTACKS for r in self.results) else []
        if fl and any(r.name not in ATTACKS for r in self.results):
            sets.append(("FL attacks: ", self.federation.is_member.astype(bool)))
        notes = [prefix + note for prefix, member in sets if (note := low_fpr_note(int((~member).sum())))]
        if self.target is not None and self.num_classes:
            chance = near_chance_note(self.target.test_accuracy, self.num_classes, self.config.scenario)
            notes += [chance] if chance else []
        return notes

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
    split = target_split(config, data, members)
    federation, fl_results = None, []
    if config.scenario == "federated":  # a checkpoint trained elsewhere is centralized (check_import)
        target, signals_of_server, federation = fit_federated(config, data, split, progress)
        fl_results = run_fl_attacks(fl_names, signals_of_server, config.fl.target_client,
                                    federation.is_member.astype(bool), attack_params, config.seed,
                                    skip_unscorable=attacks == "all")
    else:
        def mem_scores(recipe: TargetConfig, models: int) -> np.ndarray:  # RSW/RMR/SWMR: the dense recipe's pool
            return grow(recipe, "online", models).mem_scores_of(split.members)

        target = fit_target(config, data, split, checkpoint=checkpoint, mem_scores=mem_scores, progress=progress)
    results = attack(names, config, target.model, adaptive, target.finetune_epochs) if names else []
    dense_results = []
    if names and target.dense is not None:  # what pruning changed: the same attacks on the dense original
        dense_results = attack([n for n in names if n != "selena-adaptive"], dense_config(config),
                               target.dense.model, False, [])
    return Audit(config, target, split, fl_results + results, len(trained), federation, dense_results,
                 data.num_classes)

