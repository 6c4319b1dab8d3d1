"""``mia report``: privacy-utility frontiers, front tables, ROC overlays and a CSV of every attack run."""

from __future__ import annotations

from pathlib import Path

import click

from entrypoints.tune import LEAKAGE_NAMES
from mia.errors import MiaError


@click.command("report")
@click.option("--experiment", "experiments", multiple=True,
              help="MLflow experiment(s) to read (repeatable; default: all).")
@click.option("--runs", default="", help="Comma-separated attack run ids to keep (default: all attack runs).")
@click.option("--leakage", default="leakage.max_tpr_at_fpr_0.01", show_default=True,
              help="The leakage metric on the y axis: any attack-run metric (e.g. leakage.max_auc, loss.auc) or "
                   f"a `mia tune --leakage` name ({', '.join(LEAKAGE_NAMES)}).")
@click.option("--roc", default="", help="Comma-separated attack run ids whose strongest attack's ROC to overlay.")
@click.option("--out", type=click.Path(file_okay=False), default="report", show_default=True,
              help="Folder for frontier.png, roc.png, report.html and runs.csv.")
def report(experiments: tuple[str, ...], runs: str, leakage: str, roc: str, out: str) -> None:
    """Frontiers of utility against leakage per defense (undefended as reference), from the attack runs in MLflow."""
    from mia import tracking
    from mia.report import plot_roc
    from mia.report.frontier import (common_leakage, frontier_table, per_setting, plot_frontiers, worst_per_target,
                                     write_html)

    tracking.check_store_exists("nothing to report")
    known_experiments = tracking.experiment_names()
    unknown = [e for e in experiments if e not in known_experiments]
    if unknown:
        raise MiaError(f"no experiment {', '.join(map(repr, unknown))} in {tracking.tracking_uri()}; "
                       f"known: {', '.join(sorted(known_experiments)) or 'none'}")
    store = tracking.tracking_uri() + (f" (experiment {', '.join(experiments)})" if experiments else "")
    read = tracking.attack_rows(list(experiments) or None)
    if read.empty:
        raise MiaError(f"no finished attack runs in {store}; run `mia audit` (or `mia tune`) first"
                       f"{', or check --experiment' if experiments else ', or set MLFLOW_TRACKING_URI to your store'}")
    kept = [r for r in runs.split(",") if r]
    _check_ids("--runs", kept, read, read, store)
    rows = read[read["run_id"].isin(kept)] if kept else read
    leakage = _leakage_metric(leakage, rows)
    roc_ids = [r for r in roc.split(",") if r]
    _check_ids("--roc", roc_ids, rows, read, store)
    roc_scores = {run_id: tracking.attack_scores(run_id) for run_id in roc_ids}  # all read before anything is written
    rows = _ordered(per_setting(_with_trained_noise(rows)))
    every_run = rows.dropna(axis=1, how="all")  # runs.csv: the parameters as logged (written once all is checked)
    rows = _effective_params(rows)
    attacks = None
    if leakage.startswith("leakage.max_"):  # the same attacks for every run, or the worst cases do not compare
        rows[leakage], attacks = common_leakage(rows, leakage)
    measured = rows[rows[leakage].notna()]  # a run that ran no attack with this metric is no point of a front
    if measured.empty:
        raise MiaError(f"none of the {len(rows)} attack runs read has {leakage}; choose a metric they have")
    folder = Path(out)  # nothing is written before here: a refused report leaves no runs.csv beside an older report
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MiaError(f"cannot create --out {out}: {exc.strerror or exc}; pass a folder you can write") from None
    every_run.to_csv(folder / "runs.csv", index=False)
    if attacks:
        click.echo(f"{leakage} over the attacks every run has: {', '.join(attacks)}")
    elif attacks is not None:
        click.echo(f"warning: the runs share no attack, so {leakage} is each run's worst case over its own "
                   "attacks and the runs do not compare; keep comparable runs with --runs, or audit them with "
                   "the same --attacks", err=True)
    points = worst_per_target(measured, leakage)  # a model attacked several times: its worst case
    front = frontier_table(points, leakage, by="front")
    label = "front" if (rows["front"] != rows["defense"]).any() else "defense"  # the setting only where it varies
    columns = [label, "test_accuracy", leakage, "run_id",
               *sorted(c for c in rows.columns if c.startswith("defense_params."))]
    front = _numeric_params(front[[c for c in columns if c in front.columns]].dropna(axis=1, how="all"))
    images = {"Privacy-utility frontiers": plot_frontiers(points, leakage, folder / "frontier.png", by="front",
                                                          attacks=attacks)}
    if roc_ids:
        curves = _strongest_rocs(rows, roc_scores, label)
        images["ROC of the chosen runs' strongest attacks"] = plot_roc(
            curves, folder / "roc.png", title="each chosen run's strongest attack (by its logged AUC)")
        click.echo(f"roc.png: {'; '.join(curves)}")
    every = _numeric_params(rows[[c for c in columns if c in rows]].dropna(axis=1, how="all"))
    over = f" over {', '.join(attacks)}" if attacks else ""
    write_html(folder / "report.html", "mia report", images,
               {f"Front per defense ({leakage}{over}; each model at its most leaky attack run)": front,
                "All attack runs": every})
    click.echo(_console(front, leakage, label))
    lacking = len(rows) - len(measured)
    if lacking:
        click.echo(f"note: {_count(lacking, 'attack run')} {'have' if lacking > 1 else 'has'} no {leakage} and "
                   f"{'are' if lacking > 1 else 'is'} left out of the fronts (runs.csv has every run)")
    others = " (the others are dominated: runs.csv has all)" if len(front) < len(points) else ""
    click.echo(f"the fronts hold {len(front)} of {len(points)} target models ({_count(len(measured), 'attack run')}"
               f"{f' with {leakage}' if lacking else ''}){others}; "
               f"written: {', '.join(sorted(p.name for p in folder.iterdir()))} in {folder}")


def _numeric_params(table):
    """``table`` with each ``defense_params.*`` column of numbers as numbers (MLflow params are strings, which the
    HTML tables printed with every digit of a float)."""
    import pandas as pd

    table = table.copy()
    for c in [c for c in table.columns if c.startswith("defense_params.")]:
        numbers = pd.to_numeric(table[c], errors="coerce")
        if numbers.notna().sum() == table[c].notna().sum():
            table[c] = numbers
    return table


def _leakage_metric(name: str, rows) -> str:
    """The attack-run metric ``--leakage`` names: the metric itself, or a ``mia tune --leakage`` name (``max-auc``
    is ``leakage.max_auc``), read from tune's own table so that the two commands cannot drift apart."""
    if name in rows.columns:
        return name
    from tuning.objective import LEAKAGE

    if name in LEAKAGE and f"leakage.max_{LEAKAGE[name][0]}" in rows.columns:
        return f"leakage.max_{LEAKAGE[name][0]}"
    summaries = sorted(c for c in rows.columns if c.startswith("leakage."))
    aucs = sorted(c for c in rows.columns if c.endswith(".auc") and not c.startswith(("leakage.", "dense.")))
    raise MiaError(f"no metric {name!r} in the attack runs; e.g. {', '.join(summaries + aucs[:4])}, "
                   f"or `mia tune --leakage`'s {', '.join(LEAKAGE)}")


def _check_ids(option: str, ids: list[str], rows, read, store: str) -> None:
    """Refuse ids of ``option`` that are not among ``rows`` (the attack runs kept), saying what each one is."""
    missing = [r for r in ids if r not in set(rows["run_id"])]
    if missing:
        raise MiaError(f"{option}: " + "; ".join(_what_run(r, option, read, store) for r in missing))


def _what_run(run_id: str, option: str, read, store: str) -> str:
    """What a run id that is not one of the attack runs kept is: a training run (named with its attack runs), an
    attack run left out by --runs, one that did not finish, or none of the finished attack runs of the store."""
    from mia import tracking

    if run_id in set(read["run_id"]):
        return f"{run_id} is left out by --runs"
    try:
        run = tracking.get_run(run_id)
    except MiaError:
        return f"{run_id} was not found among the {len(read)} finished attack runs of {store}"
    kind = run.data.tags.get("mia.kind")
    if kind == "train":
        own = read.loc[read["target_run_id"] == run_id, "run_id"].tolist()
        return (f"{run_id} is a training run, and {option} takes attack runs: "
                + (f"its own are {', '.join(own)}" if own else
                   f"it has no finished one in {store} (`mia attack --run-id {run_id}` makes one)"))
    if kind == "attack" and run.info.status != "FINISHED":
        return f"{run_id} is an attack run that did not finish ({run.info.status})"
    if kind == "attack":
        return f"{run_id} is an attack run of another experiment than those read (see --experiment)"
    return f"{run_id} is not an attack run (its mia.kind is {kind or 'not set'})"


def _with_trained_noise(rows):
    """``rows`` with ``dp.noise_multiplier``: the noise a DP run trained with, from its training run's metrics.

    A target ``epsilon > 0`` sets the noise multiplier and leaves the ``noise_multiplier`` parameter unused, so
    the parameter alone showed ``noise_multiplier=1`` for runs that trained with other noise. A pruning run's
    fine-tuning logs it as ``finetune.dp.noise_multiplier``. One lookup per DP training run.
    """
    from mia import tracking

    param = "defense_params.noise_multiplier"
    if param not in rows.columns:
        return rows
    noise = {}
    for target in rows.loc[rows[param].notna(), "target_run_id"].dropna().unique():
        try:
            metrics = tracking.get_run(target).data.metrics
        except MiaError:  # deleted since: its parameter stays what the report shows
            continue
        value = metrics.get("dp.noise_multiplier", metrics.get("finetune.dp.noise_multiplier"))
        if value is not None:
            noise[target] = value
    return rows.assign(**{"dp.noise_multiplier": rows["target_run_id"].map(noise)}) if noise else rows


def _effective_params(rows):
    """The tables' defense parameters as the runs trained: ``noise_multiplier`` is the one the run used
    (``dp.noise_multiplier``; runs.csv keeps both, the parameter as logged)."""
    if "dp.noise_multiplier" not in rows.columns:
        return rows
    param = "defense_params.noise_multiplier"
    trained = rows["dp.noise_multiplier"].map(lambda v: f"{v:g}", na_action="ignore")
    return rows.assign(**{param: trained.where(trained.notna(), rows[param])})


def _strongest_rocs(rows, roc_scores: dict[str, list], label: str) -> dict[str, tuple]:
    """The ROC of each chosen run's strongest attack (by its logged AUC), black-box (``scores.csv``) or federated
    (``fl_scores.csv``), named by the run's front, its id and the attack."""
    from mia.metrics import roc

    curves = {}
    for run_id, frames in roc_scores.items():
        row = rows[rows["run_id"] == run_id]

        def auc(attack: str) -> float:
            return float(row[f"{attack}.auc"].iloc[0]) if f"{attack}.auc" in row else 0.0

        best, frame = max(((a, f) for f in frames for a in f.columns if a not in ("index", "label", "is_member")),
                          key=lambda pair: auc(pair[0]))
        scored = frame[frame[best].notna()]  # empty: rows the attack knew (selena-adaptive's known members)
        fpr, tpr, _ = roc(scored[best].to_numpy(), scored["is_member"].to_numpy().astype(bool))
        curves[f"{row[label].iloc[0] if len(row) else '?'} {run_id[:6]} {best}"] = (fpr, tpr)
    return curves


def _console(front, leakage: str, label: str = "defense") -> str:
    """The front for a terminal: each run's own defense parameters at the end of its line (the HTML page keeps a
    column per parameter, which across defenses is mostly empty and far wider than a terminal)."""
    import pandas as pd

    params = [c for c in front.columns if c.startswith("defense_params.")]

    def own(row) -> str:
        return " ".join(f"{c.removeprefix('defense_params.')}={v:g}" if isinstance(v, float) else
                        f"{c.removeprefix('defense_params.')}={v}"
                        for c, v in row[params].items() if not (pd.isna(v) or v == ""))

    shown = front[[c for c in (label, "test_accuracy", leakage, "run_id") if c in front.columns]]
    lines = shown.to_string(index=False, float_format=lambda v: f"{v:.4f}").splitlines()
    if not params:
        return "\n".join(lines)
    return "\n".join([lines[0] + "  params", *(f"{line}  {own(row)}".rstrip()
                                                for line, (_, row) in zip(lines[1:], front.iterrows()))])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ordered(rows):
    """Columns for a reader: who and what first, then utility and the leakage summaries, then each attack's
    metrics by attack, then the rest (timings, defense parameters)."""
    first = [c for c in ("run_id", "target_run_id", "scenario", "dataset", "model", "defense", "front", "test_accuracy")
             if c in rows.columns]
    summaries = sorted(c for c in rows.columns if c.startswith("leakage."))
    rest = sorted(c for c in rows.columns if c not in first and c not in summaries)
    timing = [c for c in rest if c.startswith(("time.", "defense_params.", "dp."))]
    return rows[first + summaries + [c for c in rest if c not in timing] + timing]
