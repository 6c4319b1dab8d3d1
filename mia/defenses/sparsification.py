"""Upload sparsification: each client sends only the largest-magnitude coordinates of its update.

Each upload keeps its top ``k = ceil(fraction * P)`` coordinates by absolute
value, with their exact values, and zeros the rest (top-k sparsification, as
in Aji & Heafield 2017 and Deep Gradient Compression, Lin et al. ICLR 2018).
The server learns only where the update was largest and by how much; the many
small coordinates, which carry much of the per-example detail, never leave
the client. With ``layerwise`` the top fraction is kept in every parameter
tensor instead (``ceil(fraction * P_layer)`` each), so a layer with small
updates is not silenced entirely by a layer with large ones.

There is no error feedback (accumulating the dropped residual into later
uploads): it would make the defense stateful per client and move, not
remove, what leaks, so a round's upload would reveal earlier rounds' updates.
Selection is deterministic: no randomness is needed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mia.defenses.base import Defense, DefenseSpec, HyperParam, register
from mia.errors import MiaError


def keep_count(fraction: float, size: int) -> int:
    """Coordinates kept out of ``size``: ``ceil(fraction * size)`` (at least 1 of a non-empty vector)."""
    return min(size, max(1 if size else 0, math.ceil(fraction * size - 1e-9)))


def top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """``values`` with all but the ``k`` largest-magnitude entries of each row set to zero."""
    if k >= values.shape[1]:
        return values.clone()
    keep = values.abs().topk(k, dim=1, sorted=False).indices
    out = torch.zeros_like(values)
    return out.scatter_(1, keep, values.gather(1, keep))


class Sparsification(Defense):
    """Upload hook: top-k sparsification of each upload (over the whole vector, or per layer)."""

    fraction: float
    layerwise: bool

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if not 0 < self.fraction <= 1:
            raise MiaError(f"sparsification fraction must be in (0, 1], got {self.fraction}")

    def upload(self, updates: torch.Tensor, clients: np.ndarray, weights: torch.Tensor, round: int,
               layers: list[slice]) -> torch.Tensor:
        if not self.layerwise or not layers:
            return top_k(updates, keep_count(self.fraction, updates.shape[1]))
        out = updates.clone()
        for layer in layers:
            size = len(range(updates.shape[1])[layer])
            if size:
                out[:, layer] = top_k(updates[:, layer], keep_count(self.fraction, size))
        return out


register(DefenseSpec(
    "sparsification", Sparsification,
    "upload sparsification: each upload keeps only its top fraction of coordinates by magnitude, the rest zero",
    scenarios=("federated",),
    params={"fraction": HyperParam(float, 0.1, "fraction of coordinates each upload keeps (top-k by magnitude)",
                                   low=0.0, high=1.0, open_low=True, log=True,
                                   search_range=(0.01, 1.0)),
            "layerwise": HyperParam(bool, False, "keep the top fraction of every layer instead of the whole "
                                                 "update", choices=(False, True))}))
