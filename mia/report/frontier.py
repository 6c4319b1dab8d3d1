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

from mia.report.figure import legend_outside, save_figure  # noqa: E402

UTILITY = "test_accuracy"
"""The utility column of the rows a front is drawn from."""


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


def frontier_table(rows: pd.DataFrame, leakage: str, by: str = "defense") -> pd.DataFrame:
    """The front of each ``by`` group, sorted by group then utility (the rows of ``rows`` that are on it)."""
    if rows.empty:
        return rows
    parts = [group[pareto_mask(group[UTILITY], group[leakage])] for _, group in rows.groupby(by, sort=True)]
    return pd.concat(parts).sort_values([by, UTILITY]) if parts else rows.iloc[:0]


#: Front colours: tab20's dark shades, then its light ones, so that 20 fronts get 20 colours (tab10 repeats after 10).
FRONT_COLORS = [plt.get_cmap("tab20")(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
#: Front markers: the next one after every 20 fronts, so that colour and marker together stay unique further.
FRONT_MARKERS = ("o", "s", "^", "D", "v", "P")
#: Undefended reference points: hollow, one shape per setting, each smaller than the last, so that settings
#: whose undefended runs land on the same spot (the dense model a pruning run starts from) nest, not hide.
UNDEFENDED_MARKERS = ("o", "s", "D", "^", "v", "p", "h", "<", ">", "8")


def plot_frontiers(rows: pd.DataFrame, leakage: str, path, by: str = "defense",
                   attacks: list[str] | None = None) -> Path:
    """:func:`frontier_figure`, saved to ``path`` (the legend beside the axes kept in the image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(frontier_figure(rows, leakage, by, attacks), path, dpi=120, tight_bbox=True)


def frontier_figure(rows: pd.DataFrame, leakage: str, by: str = "defense", attacks: list[str] | None = None):
    """Every run as a faint point, each group's front as a line; the undefended runs as hollow black markers.

    The legend sits right of the axes: inside, it covered the top of the plot, where the most leaky runs are.
    The title names the dataset and model the runs share; ``attacks``, those a ``leakage.max_*`` was recomputed
    over (:func:`common_leakage`), go on the leakage axis, whose values differ from the runs' logged ones.
    """
    columns = 1 if rows[by].nunique() <= 18 else 2  # a legend taller than the axes wraps into a second column
    fig, ax = plt.subplots(figsize=(6 + 2.4 * columns, 4.5))  # the axes keep their size beside the legend
    fronts = undefended = 0
    for name, group in rows.groupby(by, sort=True):
        if name == "none" or str(name).endswith("/none"):  # per setting where the runs mix them (per_setting)
            where = str(name)[:-len("/none")]
            ax.scatter(group[UTILITY], group[leakage], marker=UNDEFENDED_MARKERS[undefended % len(UNDEFENDED_MARKERS)],
                       s=max(240 * 0.45 ** undefended, 20), zorder=3, facecolors="none", edgecolors="black",
                       linewidths=1.4, label=f"undefended{f' ({where})' if where else ''}")
            undefended += 1
            continue
        color = FRONT_COLORS[fronts % len(FRONT_COLORS)]
        marker = FRONT_MARKERS[fronts // len(FRONT_COLORS) % len(FRONT_MARKERS)]
        fronts += 1
        ax.scatter(group[UTILITY], group[leakage], s=14, alpha=0.35, color=color, marker=marker)
        front = group[pareto_mask(group[UTILITY], group[leakage])].sort_values(UTILITY)
        ax.plot(front[UTILITY], front[leakage], "-", marker=marker, ms=4, color=color, label=str(name))
    shared = [str(rows[c].iloc[0]) for c in ("dataset", "model") if c in rows.columns and rows[c].nunique() == 1]
    over = "" if not attacks else (f" over {', '.join(attacks)}" if len(attacks) <= 4 else
                                   f" over the {len(attacks)} attacks all runs ran")
    ax.set(xlabel=f"utility ({UTILITY}, higher is better)", ylabel=f"leakage ({leakage}{over},\nlower is better)",
           title="privacy-utility frontiers" + (f": {' / '.join(shared)}" if shared else ""))
    ax.grid(alpha=0.3)
    legend_outside(ax, ncols=columns)
    return fig


def write_html(path, title: str, images: dict[str, Path], tables: dict[str, pd.DataFrame]) -> Path:
    """One self-contained HTML page: each image inlined as base64, each table as HTML."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for caption, image in images.items():
        data = base64.b64encode(Path(image).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' style='max-width:100%' "
                     f"src='data:image/png;base64,{data}'>")
    for caption, table in tables.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{table.to_html(index=False, float_format=_number, na_rep='')}")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path


def _number(value: float) -> str:
    """A table cell: four significant digits, not four decimals, which printed DP-SGD's delta of 1e-05 as 0.0000
    (and a parameter column of integers, floats once another defense leaves it empty, as 0.0000 too)."""
    return f"{value:.4g}"
