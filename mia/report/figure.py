"""The ending every plot of the tool shares: lay out, save, free the figure."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: Path, dpi: int = 150) -> Path:
    """Save ``fig`` to ``path`` (tight layout) and close it, so long runs do not accumulate figures."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
