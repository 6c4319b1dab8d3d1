"""The privacy–utility frontier of a study: its Pareto front as a table, a CSV and a plot.

The front is Optuna's own (``study.best_trials``: the feasible completed
trials no other trial dominates in (test accuracy up, leakage down)), sorted
by accuracy. The plot puts accuracy on x and leakage on y: every completed
trial as a point (infeasible ones crossed), the front highlighted and joined
as the staircase it is.
"""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from mia.report.figure import describe, save_figure


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The study's Pareto front, most accurate first."""
    return sorted(study.best_trials, key=lambda t: (-t.values[0], t.values[1], t.number))


def feasible(trial: FrozenTrial) -> bool:
    """No constraint violated (a study without --min-accuracy has none)."""
    return all(v <= 0 for v in trial.constraints.values())


def _param_names(trials: list[FrozenTrial]) -> list[str]:
    return list(dict.fromkeys(k for t in trials for k in t.params))


def write_csv(trials: list[FrozenTrial], path: Path, with_state: bool = False) -> Path:
    """One row per trial: number, parameters, both objectives (and state and feasibility, for all trials;
    a trial that did not complete has no values and no feasibility)."""
    names = _param_names(trials)
    head = ["trial", *(["state", "feasible"] if with_state else []), *names, "test_accuracy", "leakage",
            "mlflow_run_id"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        for t in trials:
            values = t.values if t.values is not None else ["", ""]
            state = [t.state.name, feasible(t) if t.values is not None else ""]  # a failed trial is neither
            writer.writerow([t.number, *(state if with_state else []),
                             *(t.params.get(k, "") for k in names), *values, t.user_attrs.get("mlflow_run_id", "")])
    return path


def plot(study: optuna.Study, front: list[FrozenTrial], path: Path, leakage_label: str,
         min_accuracy: float | None = None, config=None) -> Path:
    """All completed trials, the front highlighted; accuracy on x, leakage on y; titled with the study's name and
    (given the audited ``config``) its data, model and defense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for ok, marker, label in ((True, "o", "trials"), (False, "x", "infeasible")):
        points = [t.values for t in done if feasible(t) == ok]
        if points:
            ax.scatter(*zip(*points), marker=marker, color="0.6", s=28, label=label, zorder=2)
    if front:
        xs, ys = zip(*(t.values for t in front))
        ax.step(xs, ys, where="post", color="C3", lw=1.2, zorder=3)
        ax.scatter(xs, ys, color="C3", s=44, label="Pareto front", zorder=4)
        labels: dict[tuple, list[str]] = {}
        for t in front:  # trials with equal values share one label
            labels.setdefault(tuple(t.values), []).append(str(t.number))
        for point, numbers in labels.items():
            ax.annotate(",".join(numbers), point, textcoords="offset points", xytext=(4, 4), fontsize=7)
    if min_accuracy is not None:
        ax.axvline(min_accuracy, color="0.3", ls="--", lw=0.8, label=f"min accuracy {min_accuracy:g}")
    ax.set_xlabel("test accuracy (utility, higher is better)")
    ax.set_ylabel(f"{leakage_label} (leakage, lower is better)")
    ax.set_title(study.study_name + (f"\n{describe(config, params=False)}" if config else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no trial completed: no legend (matplotlib warned of an empty one)
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def table(front: list[FrozenTrial]) -> str:
    """The front as a short text table: trial, test accuracy, leakage, parameters."""
    names = _param_names(front)
    head = f"{'trial':>5}  {'test acc':>8}  {'leakage':>8}" + "".join(f"  {n:>12}" for n in names)
    lines = [head]
    for t in front:
        cells = "".join(f"  {_fmt(t.params.get(n, '')):>12}" for n in names)
        lines.append(f"{t.number:>5}  {t.values[0]:>8.4f}  {t.values[1]:>8.4f}{cells}")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
