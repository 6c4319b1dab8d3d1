"""What every plot of the tool shares: its title's description of a target, line styles, legend, saving."""

from __future__ import annotations

import textwrap
from pathlib import Path

#: The chance line: dotted black and drawn above the curves, so that no attack's line hides it or looks like it.
CHANCE = dict(ls=":", color="black", lw=1, zorder=5, label="chance")


def line_style(i: int) -> dict:
    """The ``i``-th curve's colour and dash: tab10's colours solid, then dashed, then dash-dotted, so that 16
    attacks get 16 distinct lines (tab10 alone repeats after 10)."""
    return dict(color=f"C{i % 10}", ls=("-", "--", "-.")[i // 10 % 3])


def legend_outside(ax, **kwargs):
    """The legend right of the axes, where it covers no curve (save with ``tight_bbox=True`` to keep it)."""
    return ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, **kwargs)


def describe(config, params: bool = True) -> str:
    """A target's setting for a plot's title: data / model, the federation or pruning, the defense and (with
    ``params``) its parameters; wrapped to lines of 60 characters."""
    parts = [f"{config.dataset} / {config.model or 'default model'}"]
    if config.scenario == "federated" and config.fl:
        parts.append(f"federated ({config.fl.clients} clients, {config.fl.rounds} rounds)")
    elif config.scenario == "pruning" and config.prune:
        parts.append(f"pruned ({config.prune.pruner}, sparsity {config.prune.sparsity:g})")
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in sorted(config.defense_params.items())) if params else ""
    parts.append(f"defense {config.defense}" + (f" ({values})" if values else ""))
    return textwrap.fill(", ".join(parts), 60)


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
