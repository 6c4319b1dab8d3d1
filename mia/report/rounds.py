"""FL round curves: each attack's AUC and TPR at 0.1% FPR over the rounds (from :func:`mia.fl.attacks.round_curves`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mia.errors import MiaError  # noqa: E402
from mia.report.figure import CHANCE, legend_outside, line_style, save_figure  # noqa: E402


#: A marker per attack, so that attacks with equal values (common at a low FPR) show as stacked shapes.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_round_curves(curves: dict[str, list[dict]], path, title: str = "", n_nonmembers: int | None = None) -> Path:
    """Two panels, AUC and TPR at 0.1% FPR against the round, one line per attack; save to ``path``.

    Entries with bootstrap intervals (``round_curves(..., intervals=True)``)
    get a shaded band. Chance is dotted (AUC 0.5, TPR = FPR = 0.001). Under 1000
    ``n_nonmembers``, the TPR panel says that it reads the TPR at FPR 0.
    """
    if not any(curves.values()):
        raise MiaError("no round curves to plot; run round_curves on a target that was sampled")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    at_zero = f"\n({n_nonmembers} non-members: the TPR at FPR 0)" if n_nonmembers and n_nonmembers < 1000 else ""
    panels = (("auc", "AUC", 0.5), ("tpr_at_fpr_0.001", "TPR at 0.1% FPR" + at_zero, 0.001))
    for ax, (key, label, chance) in zip(axes, panels):
        ax.axhline(chance, **CHANCE)
        for i, (name, entries) in enumerate((n, e) for n, e in curves.items() if e):
            x = [e["round"] for e in entries]
            line, = ax.plot(x, [e[key] for e in entries], marker=MARKERS[i % len(MARKERS)], ms=5, lw=1.5, label=name,
                            **line_style(i))
            if f"{key}_ci_low" in entries[0]:
                ax.fill_between(x, [e[f"{key}_ci_low"] for e in entries],
                                [e[f"{key}_ci_high"] for e in entries], color=line.get_color(), alpha=0.15)
        ax.set(xlabel="round", ylabel=label, ylim=(0, 1) if key == "auc" else (0, None))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        ax.grid(True, which="major", alpha=0.3)
    legend_outside(axes[1])  # one legend for both panels, beside them: inside, it covered the AUC curves
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, tight_bbox=True)
