"""FL round curves: each attack's AUC and TPR at 0.1% FPR over the rounds (from :func:`mia.fl.attacks.round_curves`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mia.errors import MiaError  # noqa: E402
from mia.report.figure import save_figure  # noqa: E402


def plot_round_curves(curves: dict[str, list[dict]], path, title: str = "") -> Path:
    """Two panels, AUC and TPR at 0.1% FPR against the round, one line per attack; save to ``path``.

    Entries with bootstrap intervals (``round_curves(..., intervals=True)``)
    get a shaded band. Chance is dashed grey (AUC 0.5, TPR = FPR = 0.001).
    """
    if not any(curves.values()):
        raise MiaError("no round curves to plot; run round_curves on a target that was sampled")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("auc", "AUC", 0.5), ("tpr_at_fpr_0.001", "TPR at 0.1% FPR", 0.001))
    for ax, (key, label, chance) in zip(axes, panels):
        ax.axhline(chance, ls="--", color="grey", lw=1, label="chance")
        for name, entries in curves.items():
            if not entries:
                continue
            x = [e["round"] for e in entries]
            line, = ax.plot(x, [e[key] for e in entries], marker="o", lw=1.5, label=name)
            if f"{key}_ci_low" in entries[0]:
                ax.fill_between(x, [e[f"{key}_ci_low"] for e in entries],
                                [e[f"{key}_ci_high"] for e in entries], color=line.get_color(), alpha=0.15)
        ax.set(xlabel="round", ylabel=label, ylim=(0, 1) if key == "auc" else (0, None))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
