"""ROC curves of several attacks on one log-log plot (the standard since LiRA).

Log-log axes show what matters for privacy, the TPR at low FPR, which a linear
plot squeezes into its corner. The FPR axis starts at 1e-3, or at 1/n when
there are fewer than 1000 non-members (a lower FPR has no ROC point to show).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mia.report.figure import CHANCE, legend_outside, line_style, save_figure  # noqa: E402


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str = "") -> Path:
    """Overlay ``{attack: (fpr, tpr)}`` on log-log axes with the chance diagonal; save to ``path``.

    The legend, right of the axes, gives each attack's AUC (trapezoidal, from the curve itself); the attacks
    keep their order, so that an attack has the same colour in every plot of the same attacks (past 10 attacks
    the colours repeat dashed).
    The left edge is the curves' smallest positive FPR (so that no such point
    is cut off), but not below 1e-3.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    curves = {name: (np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)) for name, (fpr, tpr) in curves.items()}
    positive = [f[f > 0].min() for f, _ in curves.values() if (f > 0).any()]
    lo = max(1e-3, min(positive) if positive else 1e-3)
    fig, ax = plt.subplots(figsize=(8, 5))  # the square axes and the legend beside them
    ax.set_box_aspect(1)
    ax.plot([lo, 1], [lo, 1], **CHANCE)
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        auc = float(np.trapezoid(tpr, fpr))
        ax.plot(np.maximum(fpr, lo), np.maximum(tpr, lo), lw=1.5, label=f"{name} (AUC {auc:.3f})", **line_style(i))
    ax.set(xscale="log", yscale="log", xlim=(lo, 1), ylim=(lo, 1),
           xlabel="false positive rate (log)", ylabel="true positive rate (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    legend_outside(ax)
    return save_figure(fig, path, tight_bbox=True)
