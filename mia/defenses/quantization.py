"""Upload quantization: each client sends its update layer by layer on ``2^bits`` levels.

Within each parameter tensor (one slice of ``layers``) of each upload, the
values are mapped onto ``2^bits`` evenly spaced levels between that layer's
minimum and maximum, so the server receives the two endpoints and a
``bits``-bit code per coordinate (QSGD-style compression, Alistarh et al.
NeurIPS 2017, with min-max instead of norm scaling). Rounding is stochastic:
a value between two levels rounds up with probability equal to its distance
from the lower level over the step, so each quantized upload is an unbiased
estimate of the update (the aggregate stays unbiased and training converges)
while the server sees only coarse values: the defense trades precision of
what leaks for a little extra variance. Per-layer ranges, not one global
range, because layer scales differ by orders of magnitude and a global grid
would zero out the small layers.

The rounding draws come from a generator seeded with ``(seed, round)`` on the
updates' device, so uploads are reproducible and independent of the order in
which rounds run.
"""

from __future__ import annotations

import numpy as np
import torch

from mia.defenses.base import Defense, DefenseSpec, HyperParam, register
from mia.defenses.client_dp import round_generator
from mia.errors import MiaError

_SALT = 1  # a stream apart from client-dp's noise for the same (seed, round)


def stochastic_quantize(values: torch.Tensor, bits: int, uniform: torch.Tensor) -> torch.Tensor:
    """Each row of ``values`` on ``2^bits`` levels between its min and max, rounded by ``uniform`` draws in [0, 1)."""
    lo = values.amin(dim=1, keepdim=True)
    hi = values.amax(dim=1, keepdim=True)
    step = (hi - lo) / (2 ** bits - 1)
    flat = step == 0  # a constant row is already on its grid
    scaled = (values - lo) / torch.where(flat, torch.ones_like(step), step)
    level = scaled.floor()
    level = level + (uniform < scaled - level).to(values.dtype)
    level = level.clamp(0, 2 ** bits - 1)
    return torch.where(flat, values, torch.minimum(torch.maximum(lo + level * step, lo), hi))


class Quantization(Defense):
    """Upload hook: per-layer min-max quantization to ``2^bits`` levels with unbiased stochastic rounding."""

    bits: int

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if not 1 <= self.bits <= 16:
            raise MiaError(f"quantization bits must be in [1, 16], got {self.bits}")

    def upload(self, updates: torch.Tensor, clients: np.ndarray, weights: torch.Tensor, round: int,
               layers: list[slice]) -> torch.Tensor:
        values = updates.float() if updates.dtype not in (torch.float32, torch.float64) else updates
        generator = round_generator(self.seed, round, updates.device, _SALT)
        uniform = torch.rand(values.shape, generator=generator, device=updates.device, dtype=values.dtype)
        out = values.clone()
        for layer in layers or [slice(0, values.shape[1])]:
            if layer.start != layer.stop:
                out[:, layer] = stochastic_quantize(values[:, layer], self.bits, uniform[:, layer])
        return out.to(updates.dtype)


register(DefenseSpec(
    "quantization", Quantization,
    "upload quantization: each layer of each upload on 2^bits uniform levels between its min and max, "
    "unbiased stochastic rounding",
    scenarios=("federated",),
    params={"bits": HyperParam(int, 4, "bits per coordinate (2^bits levels per layer)", low=1, high=16,
                                   search_range=(1, 16))}))
