"""The ending every plot of the tool shares: lay out, save, free the figure."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: Path, dpi: int = 150, tight_bbox: bool = False) -> Path:
    """Save ``fig`` to ``path`` (tight layout) and close it, so long runs do not accumulate figures.

    ``tight_bbox`` crops the image to what is drawn, a legend placed outside the axes included (the layout
    alone leaves such a legend cut off at the figure's edge).
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if tight_bbox else None)
    plt.close(fig)
    return Path(path)
