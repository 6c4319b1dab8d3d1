"""InstaHide (Huang, Song, Li & Arora, ICML 2020) as a local-training batch hook.

Every training input is replaced by a mix of itself and ``k - 1`` other inputs
of its batch, ``lam_1 x_i + sum_j lam_j x_{p_j(i)}``, and the mix is then
multiplied entry by entry by a random sign mask (InstaHide's "one-time pad"
on pixels or features); the model trains on the same mix of the one-hot
labels with soft cross-entropy. The first coefficient ``lam_1 ~ U(lam_low,
lam_high)`` (0.5 to 0.65 by default, as in REFERENCE.md) keeps the row itself
dominant, so the model still learns its label; the remaining ``1 - lam_1`` is
split among the others by a flat Dirichlet draw, so the coefficients follow a
Dirichlet-like law with a bounded first component. Coefficients, partners and
masks are drawn per row, as in the paper's code.

Choices: partners are other rows of the batch (InstaHide's inside-dataset
variant; the cross-dataset variant needs a public dataset the federated
client does not have), drawn uniformly among the batch's other rows, so a row
never mixes with itself and ``lam_1`` is its real share (partners of one row
may coincide when ``k > 2``). The sign mask acts on the model inputs as the
loop prepares them (after normalization), where a flipped sign changes the
input and not just an offset. All draws come from the training loop's seeded
generator on the device, in a fixed order (coefficients, partners, masks), so
runs are reproducible and ``sign_flip`` changes nothing else.

The class count comes from :meth:`InstaHide.bind`, which every training
path calls first (as for :class:`mia.defenses.mixup.Mixup`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mia.defenses.base import Defense, DefenseSpec, HyperParam, register
from mia.defenses.mixup import soft_cross_entropy
from mia.errors import MiaError


def instahide_coefficients(n: int, k: int, lam_low: float, lam_high: float,
                           generator: torch.Generator) -> torch.Tensor:
    """``n x k`` mixing weights summing to 1 per row: ``lam_1 ~ U(lam_low, lam_high)``, the rest flat-Dirichlet."""
    device = generator.device
    first = lam_low + (lam_high - lam_low) * torch.rand(n, 1, generator=generator, device=device)
    gaps = -torch.rand(n, k - 1, generator=generator, device=device).clamp_min(1e-12).log()  # Exp(1): Dirichlet(1)
    return torch.cat([first, (1 - first) * gaps / gaps.sum(1, keepdim=True)], dim=1)


class InstaHide(Defense):
    """Batch hook: mix each row with ``k - 1`` others and flip signs; loss hook: soft cross-entropy."""

    k: int
    lam_low: float
    lam_high: float
    sign_flip: bool

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if self.k < 2:
            raise MiaError(f"instahide k must be >= 2 (the row and at least one partner), got {self.k}")
        if not 0 < self.lam_low <= self.lam_high <= 1:
            raise MiaError(f"instahide needs 0 < lam_low <= lam_high <= 1, got {self.lam_low}, {self.lam_high}")

    def batch(self, inputs: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        num_classes = self.classes()
        n, device = len(labels), generator.device
        lam = instahide_coefficients(n, self.k, self.lam_low, self.lam_high, generator)
        rows = torch.arange(n, device=device)
        shift = torch.randint(1, max(n, 2), (n, self.k - 1), generator=generator, device=device)
        partners = torch.cat([rows[:, None], (rows[:, None] + shift) % n], dim=1).to(labels.device)
        weights = lam.to(inputs.device, inputs.dtype).view(n, self.k, *([1] * (inputs.dim() - 1)))
        mixed = (weights * inputs[partners]).sum(1)
        if self.sign_flip:
            signs = torch.randint(0, 2, inputs.shape, generator=generator, device=device) * 2 - 1
            mixed = mixed * signs.to(inputs.device, inputs.dtype)
        onehot = F.one_hot(labels[partners], num_classes).float()
        targets = (lam.to(labels.device)[:, :, None] * onehot).sum(1)
        return mixed, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return soft_cross_entropy(logits, targets)


register(DefenseSpec(
    "instahide", InstaHide,
    "InstaHide (Huang et al. 2020): train on mixes of each input with k-1 others of its batch (first weight "
    "in [lam_low, lam_high]), sign-flipped per entry, with the mixed soft labels",
    scenarios=("federated",),
    params={
        "k": HyperParam(int, 3, "inputs per mix: the row and k-1 others of its batch", low=2,
                          search_range=(2, 6)),
        # the two search ranges meet at 0.6: every pair a study samples has lam_low <= lam_high, also with one
        # of them fixed at its default (overlapping ranges, (0.2, 0.9) and (0.3, 1.0), failed a third of the trials)
        "lam_low": HyperParam(float, 0.5, "lower bound of the row's own mixing weight lam_1", low=0.0,
                                high=1.0, open_low=True, search_range=(0.2, 0.6)),
        "lam_high": HyperParam(float, 0.65, "upper bound of the row's own mixing weight lam_1", low=0.0,
                                 high=1.0, open_low=True, search_range=(0.6, 1.0)),
        "sign_flip": HyperParam(bool, True, "multiply each mixed entry by a random sign (InstaHide's one-time "
                                            "pad)", choices=(False, True)),
    }))
