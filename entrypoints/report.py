"""``mia report``: privacy-utility frontiers, front tables, ROC overlays and a CSV of every attack run."""

from __future__ import annotations

from pathlib import Path

import click

from mia.errors import MiaError


@click.command("report")
@click.option("--experiment", "experiments", multiple=True,
              help="MLflow experiment(s) to read (repeatable; default: all).")
@click.option("--runs", default="", help="Comma-separated attack run ids to keep (default: all attack runs).")
@click.option("--leakage", default="leakage.max_tpr_at_fpr_0.01", show_default=True,
              help="The leakage metric on the y axis (any attack-run metric, e.g. leakage.max_auc, loss.auc).")
@click.option("--roc", default="", help="Comma-separated attack run ids whose strongest attack's ROC to overlay.")
@click.option("--out", type=click.Path(file_okay=False), default="report", show_default=True,
              help="Folder for frontier.png, roc.png, report.html and runs.csv.")
def report(experiments: tuple[str, ...], runs: str, leakage: str, roc: str, out: str) -> None:
    """Frontiers of utility against leakage per defense (undefended as reference), from the attack runs in MLflow."""
    import pandas as pd

    from mia import tracking
    from mia.report import plot_roc
    from mia.report.frontier import (common_leakage, frontier_table, per_setting, plot_frontiers, worst_per_target,
                                     write_html)

    known_experiments = tracking.experiment_names()
    unknown = [e for e in experiments if e not in known_experiments]
    if unknown:
        raise MiaError(f"no experiment {', '.join(map(repr, unknown))} in {tracking.tracking_uri()}; "
                       f"known: {', '.join(sorted(known_experiments)) or 'none'}")
    rows = tracking.attack_rows(list(experiments) or None, [r for r in runs.split(",") if r] or None)
    if rows.empty:
        raise MiaError("no finished attack runs found; run `mia audit` (or `mia tune`) first, or check --experiment")
    if leakage not in rows.columns:
        summaries = sorted(c for c in rows.columns if c.startswith("leakage."))
        aucs = sorted(c for c in rows.columns if c.endswith(".auc") and not c.startswith(("leakage.", "dense.")))
        raise MiaError(f"no metric {leakage!r} in the attack runs; e.g. {', '.join(summaries + aucs[:4])}")
    roc_ids = [r for r in roc.split(",") if r]
    missing = [r for r in roc_ids if r not in set(rows["run_id"])]
    if missing:
        raise MiaError(f"--roc {', '.join(missing)}: not among the finished attack runs read "
                       f"({len(rows)}; see --experiment/--runs)")
    roc_scores = {run_id: tracking.attack_scores(run_id) for run_id in roc_ids}  # all read before anything is written
    rows = _ordered(per_setting(rows))
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MiaError(f"cannot create --out {out}: {exc.strerror or exc}; pass a folder you can write") from None
    rows.dropna(axis=1, how="all").to_csv(folder / "runs.csv", index=False)
    if leakage.startswith("leakage.max_"):  # the same attacks for every run, or the worst cases do not compare
        rows[leakage], attacks = common_leakage(rows, leakage)
        if attacks:
            click.echo(f"{leakage} over the attacks every run has: {', '.join(attacks)}")
        else:
            click.echo(f"warning: the runs share no attack, so {leakage} is each run's worst case over its own "
                       "attacks and the runs do not compare; keep comparable runs with --runs, or audit them with "
                       "the same --attacks", err=True)
    points = worst_per_target(rows, leakage)  # a model attacked several times: its worst case
    front = frontier_table(points, leakage, by="front")
    label = "front" if (rows["front"] != rows["defense"]).any() else "defense"  # the setting only where it varies
    columns = [label, "test_accuracy", leakage, "run_id",
               *sorted(c for c in rows.columns if c.startswith("defense_params."))]
    front = front[[c for c in columns if c in front.columns]].dropna(axis=1, how="all")
    for c in [c for c in front.columns if c.startswith("defense_params.")]:  # MLflow params are strings
        numbers = pd.to_numeric(front[c], errors="coerce")
        if numbers.notna().sum() == front[c].notna().sum():
            front[c] = numbers
    images = {"Privacy-utility frontiers": plot_frontiers(points, leakage, folder / "frontier.png", by="front")}
    if roc_ids:
        curves = _strongest_rocs(rows, roc_scores, label)
        images["ROC of the chosen runs' strongest attacks"] = plot_roc(curves, folder / "roc.png")
        click.echo(f"roc.png: {'; '.join(curves)}")
    every = rows[[c for c in columns if c in rows]].dropna(axis=1, how="all")
    write_html(folder / "report.html", "mia report", images,
               {f"Front per defense ({leakage}; each model at its most leaky attack run)": front,
                "All attack runs": every})
    click.echo(_console(front, leakage, label))
    others = " (the others are dominated: runs.csv has all)" if len(front) < len(points) else ""
    click.echo(f"the fronts hold {len(front)} of {len(points)} target models ({len(rows)} attack runs){others}; "
               f"written: {', '.join(sorted(p.name for p in folder.iterdir()))} in {folder}")


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


def _ordered(rows):
    """Columns for a reader: who and what first, then utility and the leakage summaries, then each attack's
    metrics by attack, then the rest (timings, defense parameters)."""
    first = [c for c in ("run_id", "target_run_id", "scenario", "dataset", "model", "defense", "front", "test_accuracy")
             if c in rows.columns]
    summaries = sorted(c for c in rows.columns if c.startswith("leakage."))
    rest = sorted(c for c in rows.columns if c not in first and c not in summaries)
    timing = [c for c in rest if c.startswith(("time.", "defense_params."))]
    return rows[first + summaries + [c for c in rest if c not in timing] + timing]
