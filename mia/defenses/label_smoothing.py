"""Label smoothing (Szegedy et al., CVPR 2016, "Rethinking the Inception Architecture").

Training on ``(1 - s) * onehot(y) + s / C`` instead of the one-hot label caps
how confident the model can become on its training rows, which narrows the
member/non-member confidence gap that score attacks read. It is the weakest
of the usual baselines (HAMP, NDSS 2024, reports it barely moves TPR at low
FPR) and a cheap reference point for the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mia.defenses.base import Defense, DefenseSpec, HyperParam, register


class LabelSmoothing(Defense):
    """Cross-entropy on smoothed labels; ``smoothing`` is the mass spread uniformly over all classes."""

    smoothing: float

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.smoothing)


register(DefenseSpec(
    "label-smoothing", LabelSmoothing,
    "label smoothing (Szegedy et al. 2016): cross-entropy on (1 - s) * onehot + s / C",
    params={"smoothing": HyperParam(float, 0.1, "probability mass spread uniformly over the classes",
                                    low=0.0, high=1.0, search_range=(0.0, 0.5))}))
