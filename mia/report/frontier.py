"""Privacy-utility frontiers: which runs no other run beats in both utility and leakage.

A run is on the front of its defense when no other run of that defense has
at least its test accuracy and at most its leakage, with one of the two
strictly better (maximize utility, minimize leakage). :func:`plot_frontiers`
overlays the fronts of several defenses with the undefended runs as the
reference point; :func:`write_html` puts plots and tables in one
self-contained page (images inlined), for a notebook-free look at a study.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mia.report.figure import save_figure  # noqa: E402


def pareto_mask(utility, leakage) -> np.ndarray:
    """Bool mask of the non-dominated points (maximize ``utility``, minimize ``leakage``); NaN rows are off."""
    u, lk = np.asarray(utility, dtype=float), np.asarray(leakage, dtype=float)
    ok = ~(np.isnan(u) | np.isnan(lk))
    mask = np.zeros(len(u), dtype=bool)
    for i in np.flatnonzero(ok):
        better_or_equal = ok & (u >= u[i]) & (lk <= lk[i])
        strictly = (u > u[i]) | (lk < lk[i])
        mask[i] = not (better_or_equal & strictly).any()
    return mask


def common_leakage(rows: pd.DataFrame, summary: str) -> tuple[pd.Series, list[str]]:
    """A ``leakage.max_<metric>`` summary recomputed over the attacks that every row ran.

    Runs of a study use a few fast attacks and a full audit every attack; the
    worst case over different attack sets is not comparable. Returns the
    per-row max of ``<attack>.<metric>`` over the attacks present (not NaN)
    in all rows, and those attacks.
    """
    metric = summary.removeprefix("leakage.max_")
    attacks = sorted(c[: -len(metric) - 1] for c in rows.columns
                     if c.endswith(f".{metric}") and not c.startswith(("leakage.", "dense.")) and rows[c].notna().all())
    if not attacks:
        return rows[summary], []
    return rows[[f"{a}.{metric}" for a in attacks]].max(axis=1), attacks


SETTING = ("dataset", "model", "scenario")
"""What must match for runs to share a front or an undefended reference point."""


def per_setting(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a ``front`` column: the defense, prefixed by whichever of dataset, model and scenario vary
    among them (``digits/mlp/none``, ``federated/none``). An undefended purchase-synth run is no reference point
    for a defense of digits, nor a federated run one front with a centralized one. ``defense`` stays the name."""
    varying = [c for c in SETTING if c in rows.columns and rows[c].nunique() > 1]
    if not varying:
        return rows.assign(front=rows["defense"].astype(str))
    prefix = rows[varying].astype(str).agg("/".join, axis=1)
    return rows.assign(front=prefix + "/" + rows["defense"].astype(str))


def worst_per_target(rows: pd.DataFrame, leakage: str) -> pd.DataFrame:
    """One row per target model: the attack run of it with the highest ``leakage``.

    A model attacked several times (other attacks, more reference models) is
    one point of a front, at the worst case found, not one point per attack
    run: its least leaky run would otherwise put a defense attacked less
    thoroughly ahead of one attacked more. Rows without a target run id stay.
    """
    if "target_run_id" not in rows.columns:
        return rows
    known = rows["target_run_id"].notna()
    worst = rows[known].sort_values(leakage, na_position="first").groupby("target_run_id").tail(1).index
    return rows[~known | rows.index.isin(worst)]


def frontier_table(rows: pd.DataFrame, leakage: str, utility: str = "test_accuracy",
                   by: str = "defense") -> pd.DataFrame:
    """The front of each ``by`` group, sorted by group then utility (the rows of ``rows`` that are on it)."""
    if rows.empty:
        return rows
    parts = [group[pareto_mask(group[utility], group[leakage])] for _, group in rows.groupby(by, sort=True)]
    return pd.concat(parts).sort_values([by, utility]) if parts else rows.iloc[:0]


def plot_frontiers(rows: pd.DataFrame, leakage: str, path, utility: str = "test_accuracy", by: str = "defense",
                   title: str = "") -> Path:
    """Every run as a faint point, each group's front as a line; the undefended runs as black markers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    markers = iter(["*", "X", "P", "D", "s", "^"] * 8)  # undefended points: black, one marker per setting
    for name, group in rows.groupby(by, sort=True):
        if name == "none" or str(name).endswith("/none"):  # per setting where the runs mix them (per_setting)
            where = str(name)[:-len("/none")]
            ax.scatter(group[utility], group[leakage], marker=next(markers), s=90, zorder=3, color="black",
                       label=f"undefended{f' ({where})' if where else ''}")
            continue
        (line,) = ax.plot([], [])
        color = line.get_color()
        ax.scatter(group[utility], group[leakage], s=14, alpha=0.35, color=color)
        front = group[pareto_mask(group[utility], group[leakage])].sort_values(utility)
        ax.plot(front[utility], front[leakage], "-o", ms=4, color=color, label=str(name))
    ax.set(xlabel=f"utility ({utility}, higher is better)", ylabel=f"leakage ({leakage}, lower is better)",
           title=title or "privacy-utility frontiers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def write_html(path, title: str, images: dict[str, Path], tables: dict[str, pd.DataFrame]) -> Path:
    """One self-contained HTML page: each image inlined as base64, each table as HTML."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for caption, image in images.items():
        data = base64.b64encode(Path(image).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(caption)}</h2><img src='data:image/png;base64,{data}'>")
    for caption, table in tables.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{table.to_html(index=False, float_format=lambda v: f'{v:.4f}')}")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
