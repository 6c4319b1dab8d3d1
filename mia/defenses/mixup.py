"""Mixup (Zhang et al., ICLR 2018, "mixup: Beyond Empirical Risk Minimization").

Each batch is replaced by convex combinations ``lam * x + (1 - lam) * x[perm]``
of its rows with a permuted partner, trained on the same mixture of their
one-hot labels, with one ``lam ~ Beta(alpha, alpha)`` per batch as in the
paper's code. The model never sees a training row alone, so it memorizes
individual rows less. FedMIA's "mixup" mixed only the labels and left the
inputs untouched (REFERENCE.md section 8); here the inputs really are mixed.

The draws (``lam`` and the partner permutation) come from the training
loop's seeded generator, on the device, so runs are reproducible and no
step waits for the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mia.defenses.base import Defense, DefenseSpec, HyperParam, register


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of ``-sum_c t_c log softmax(logits)_c``; hard labels (1-D) fall back to plain cross-entropy."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def sample_beta(alpha: float, generator: torch.Generator) -> torch.Tensor:
    """One draw of Beta(alpha, alpha) as a 0-d tensor on the generator's device: G1 / (G1 + G2), Gi ~ Gamma(alpha)."""
    gammas = torch._standard_gamma(torch.full((2,), float(alpha), device=generator.device), generator=generator)
    return gammas[0] / gammas.sum().clamp_min(1e-12)


class Mixup(Defense):
    """Batch hook: mix inputs with a permuted partner; loss hook: cross-entropy on the mixed soft labels."""

    alpha: float

    def batch(self, inputs: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        num_classes = self.classes()
        lam = sample_beta(self.alpha, generator).to(inputs.dtype)
        perm = torch.randperm(len(labels), generator=generator, device=generator.device).to(labels.device)
        mixed = lam * inputs + (1 - lam) * inputs[perm]
        onehot = F.one_hot(labels, num_classes).float()
        targets = lam.float() * onehot + (1 - lam.float()) * onehot[perm]
        return mixed, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return soft_cross_entropy(logits, targets)


register(DefenseSpec(
    "mixup", Mixup,
    "mixup (Zhang et al. 2018): train on convex mixes of input pairs and of their labels, lam ~ Beta(alpha, alpha)",
    scenarios=("centralized", "pruning", "federated"),
    params={"alpha": HyperParam(float, 1.0, "Beta(alpha, alpha) concentration of the mixing weight "
                                            "(small: little mixing; 1: uniform)",
                                low=0.0, open_low=True, log=True, search_range=(0.05, 4.0))}))
