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
    from mia import tracking
    from mia.metrics import roc as roc_curve
    from mia.report import plot_roc
    from mia.report.frontier import common_leakage, frontier_table, plot_frontiers, write_html

    rows = tracking.attack_rows(list(experiments) or None, [r for r in runs.split(",") if r] or None)
    if rows.empty:
        raise MiaError("no finished attack runs found; run `mia audit` (or `mia tune`) first, or check --experiment")
    if leakage not in rows.columns:
        known = sorted(c for c in rows.columns if c.startswith("leakage.") or c.endswith(".auc"))
        raise MiaError(f"no metric {leakage!r} in the attack runs; e.g. {', '.join(known[:6])}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_csv(folder / "runs.csv", index=False)
    if leakage.startswith("leakage.max_"):  # the same attacks for every run, or the worst cases do not compare
        rows[leakage], attacks = common_leakage(rows, leakage)
        click.echo(f"{leakage} over the attacks every run has: {', '.join(attacks)}")
    front = frontier_table(rows, leakage)
    columns = ["defense", "test_accuracy", leakage, "run_id",
               *sorted(c for c in rows.columns if c.startswith("defense_params."))]
    front = front[[c for c in columns if c in front.columns]]
    images = {"Privacy-utility frontiers": plot_frontiers(rows, leakage, folder / "frontier.png")}
    if roc:
        curves = {}
        for run_id in [r for r in roc.split(",") if r]:
            scores = tracking.attack_scores(run_id)
            row = rows[rows["run_id"] == run_id]
            attacks = [c for c in scores.columns if c not in ("index", "label", "is_member")]
            best = max(attacks, key=lambda a: float(row[f"{a}.auc"].iloc[0]) if f"{a}.auc" in row else 0.0)
            scored = scores[scores[best].notna()]  # empty: rows the attack knew (selena-adaptive's known members)
            fpr, tpr, _ = roc_curve(scored[best].to_numpy(), scored["is_member"].to_numpy().astype(bool))
            label = f"{row['defense'].iloc[0] if len(row) else '?'} {run_id[:6]} {best}"
            curves[label] = (fpr, tpr)
        images["ROC of the chosen runs' strongest attacks"] = plot_roc(curves, folder / "roc.png")
    write_html(folder / "report.html", "mia report", images,
               {f"Front per defense ({leakage})": front, "All attack runs": rows[[c for c in columns if c in rows]]})
    click.echo(front.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    click.echo(f"{len(rows)} attack runs; written: {', '.join(sorted(p.name for p in folder.iterdir()))} in {folder}")
