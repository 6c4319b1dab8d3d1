"""The objective of a privacy–utility study: one tracked audit per trial, two numbers back.

Utility is the target's ``test_accuracy`` (maximized); leakage (minimized) is
the worst case over the chosen attacks of one attack metric: ``max-tpr``, the
largest TPR at 1% FPR (the low-FPR regime that matters for privacy, Carlini
et al. 2022), or ``max-auc``. Every trial trains with the same target seed,
so trials differ by their defense parameters, not by their split or
initialization. ``--min-accuracy`` becomes the constraint
``min_accuracy - test_accuracy <= 0`` (:meth:`optuna.trial.Trial.set_constraint`,
which every Optuna 5 sampler and ``study.best_trials`` read).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import optuna

from mia import tracking
from mia.audit import TargetConfig
from mia.errors import MiaError
from mia.experiment import audit_run
from tuning import runs
from tuning.space import SearchSpace


#: ``--leakage`` name -> (attack metric, label for tables and plots).
LEAKAGE = {"max-tpr": ("tpr_at_fpr_0.01", "max TPR at 1% FPR"), "max-auc": ("auc", "max AUC")}
#: Optuna directions of (utility, leakage).
DIRECTIONS = ("maximize", "minimize")
#: The attacks a study runs unless told otherwise: cheap ones, on a cached pool's shadow models (one pool per
#: epoch at which the trials' targets are released, where its models stop).
FAST_ATTACKS = ("loss", "mentr", "nn")


def process_started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from Linux's ``/proc``); None where unknown.

    What tells a worker from a later process that reuses its id: the kernel
    hands out ids again, and a trial whose worker died long ago would
    otherwise stay RUNNING behind whatever process got the number.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command's parentheses
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Objective:
    """Audit ``config`` with a trial's defense parameters; return ``(test_accuracy, leakage)``.

    ``parent_run_id`` is the study's MLflow run; each trial's run is its child.
    """

    config: TargetConfig
    space: SearchSpace
    attacks: tuple[str, ...] = FAST_ATTACKS
    leakage: str = "max-tpr"
    min_accuracy: float | None = None
    reference_models: int = 4
    attack_params: dict | None = None
    pool_mode: str = "online"
    adaptive: bool = False
    experiment: str | None = None
    progress: bool = False
    parent_run_id: str = ""
    study_name: str = ""

    def __post_init__(self):
        if self.leakage not in LEAKAGE:
            raise MiaError(f"unknown leakage {self.leakage!r}; known: {', '.join(LEAKAGE)}")

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(),
                                       "started": process_started(os.getpid())})
        run_id = None
        try:
            params = self.space.suggest(trial)  # inside: a trial that cannot sample its space records why
            run_id = runs.start_trial(self.parent_run_id, trial.number, params,
                                      {**tracking.run_tags(self.config), "mia.study": self.study_name})
            trial.set_user_attr("mlflow_run_id", run_id)
            config = replace(self.config, defense_params={**self.config.defense_params, **params})
            outcome = audit_run(config, list(self.attacks), self.reference_models, self.attack_params,
                                experiment=self.experiment, progress=self.progress, pool_mode=self.pool_mode,
                                adaptive=self.adaptive)
            runs.adopt(run_id, [outcome.target_run_id, outcome.run_id])
            trial.set_user_attr("train_run_id", outcome.target_run_id)
            trial.set_user_attr("attack_run_id", outcome.run_id)
            utility, leakage = objectives(outcome.results, outcome.test_accuracy, self.leakage)
            metrics = {**trial_metrics(outcome.results, outcome.test_accuracy),
                       "objective.test_accuracy": utility, "objective.leakage": leakage}
            if self.min_accuracy is not None:
                trial.set_constraint("min_accuracy", self.min_accuracy - utility)
            runs.log(run_id, metrics)
            runs.finish(run_id)
            return utility, leakage
        except BaseException as exc:
            trial.set_user_attr("failure_reason", tracking.stop_reason(exc)[1])
            if run_id is not None:
                runs.stop(run_id, exc)
            raise


def objectives(results: list, test_accuracy: float, leakage: str) -> tuple[float, float]:
    """``(test_accuracy, leakage)`` of one audit; a non-finite value is an error, not a point."""
    key = LEAKAGE[leakage][0]
    worst = max((r.metrics[key] for r in results), default=float("nan"))
    if not (math.isfinite(test_accuracy) and math.isfinite(worst)):
        raise MiaError(f"the audit gave no finite objectives (test_accuracy={test_accuracy}, {leakage}={worst})")
    return float(test_accuracy), float(worst)


def trial_metrics(results: list, test_accuracy: float) -> dict[str, float]:
    """Every attack metric of the audit, its summaries, and the target's test accuracy."""
    from mia.audit import leakage_summary

    metrics = {f"{r.name}.{k}": float(v) for r in results for k, v in r.metrics.items()}
    if results:
        metrics.update(leakage_summary(results))
    metrics["test_accuracy"] = float(test_accuracy)
    return metrics
