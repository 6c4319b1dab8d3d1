"""RelaxLoss (Chen, Yu & Fritz, ICLR 2022, "RelaxLoss: Defending Membership Inference Attacks without Losing Utility").

Membership leaks through the gap between the loss on members and on
non-members. RelaxLoss stops driving the training loss to zero: it aims at a
target level ``alpha`` (about the loss the model reaches on unseen data) and,
once a batch's mean cross-entropy is below it, alternates by epoch:

* even epochs (0, 2, ...): gradient *ascent* back up to ``alpha``. The
  official code writes both branches as one loss, ``|CE - alpha|``: its
  gradient is that of CE above ``alpha`` and of ``-CE`` below it;
* odd epochs: *posterior flattening*. For each correctly classified row the
  target keeps the model's own (detached) true-class probability ``p_y``,
  capped at ``upper``, and spreads ``1 - p_y`` uniformly over the other
  classes; cross-entropy to that target leaves ``p_y`` where it is (or lowers
  it to ``upper``) and flattens the non-true classes, so members' posteriors
  look like non-members' without losing the argmax. Above ``alpha`` the
  batch takes a plain descent step.

Decisions where the paper and the public code (github.com/DingfanChen/RelaxLoss)
leave room: misclassified rows keep their one-hot label (plain descent) on
flattening steps, since flattening a wrong posterior only entrenches the
error (the tabular script flattens every row, the CIFAR script treats the two
groups differently again); the soft target is built from
``softmax(logits).detach()``, a target rather than a path for gradients (the
public code leaves it attached); and the branch on the batch loss is a
``torch.where`` on the device, so no step waits for the host. ``upper``
defaults to 1 (no cap), the paper's CIFAR setting; its Purchase/Texas configs
use ``alpha`` 0.8/2.5 with ``upper`` 0.3/0.1 (100 classes). ``alpha`` must
stay below ``ln(classes)`` and ``upper`` above ``1 / classes``
(:meth:`RelaxLoss.bind`), where the targets still favour the true class; the
public code takes any value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mia.defenses.base import Defense, DefenseSpec, HyperParam, register
from mia.errors import MiaError


def flattened_targets(logits: torch.Tensor, labels: torch.Tensor, upper: float) -> torch.Tensor:
    """Soft labels that keep ``min(p_y, upper)`` on the true class and spread the rest uniformly."""
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.detach().float(), dim=1)
    p_true = probs.gather(1, labels[:, None]).clamp(max=upper)
    rest = (1.0 - p_true) / (num_classes - 1)
    onehot = F.one_hot(labels, num_classes).bool()
    return torch.where(onehot, p_true, rest)


class RelaxLoss(Defense):
    """Loss hook: descend to the target level ``alpha``, then ascend (even epochs) or flatten (odd epochs)."""

    alpha: float
    upper: float

    def bind(self, num_classes: int) -> None:
        """``alpha`` must be below ``ln(num_classes)``, the loss of a uniform guess: above it ascent drives
        the model past chance to confident mistakes (digits trials at alpha 2.7 ended at 1 % accuracy).
        ``upper`` must exceed ``1 / num_classes``: at or below it the flattened target puts at least as
        much on every other class as on the true one, and flattening would train the rows it keeps
        correct towards a wrong label."""
        if self.alpha >= math.log(num_classes):
            raise MiaError(f"relaxloss alpha={self.alpha:g} must be below ln(classes) = {math.log(num_classes):.4g} "
                           f"for {num_classes} classes, the loss of a uniform guess (else ascent trains the model "
                           f"towards wrong answers); pass a smaller alpha")
        if self.upper <= 1.0 / num_classes:
            raise MiaError(f"relaxloss upper={self.upper:g} must exceed 1/classes = {1.0 / num_classes:.4g} for "
                           f"{num_classes} classes (else the flattened target favours a wrong class); "
                           f"pass a larger upper")
        super().bind(num_classes)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        ce_rows = F.cross_entropy(logits.float(), labels, reduction="none")
        ce = ce_rows.mean()
        if epoch % 2 == 0:
            return (ce - self.alpha).abs()
        soft = flattened_targets(logits, labels, self.upper)
        flat_rows = -(soft * F.log_softmax(logits.float(), dim=1)).sum(1)
        correct = logits.argmax(1) == labels
        flattening = torch.where(correct, flat_rows, ce_rows).mean()
        return torch.where(ce > self.alpha, ce, flattening)


register(DefenseSpec(
    "relaxloss", RelaxLoss,
    "RelaxLoss (Chen et al. 2022): keep the training loss near alpha by gradient ascent (even epochs) and "
    "posterior flattening (odd epochs) once below it",
    params={"alpha": HyperParam(float, 0.5, "target training-loss level (about the loss on unseen data; "
                                            "below ln(classes))",
                                # to 2.3: below ln(classes) on data of 10 classes or more (trials above it fail)
                                low=0.0, search_range=(0.05, 2.3)),
            "upper": HyperParam(float, 1.0, "cap on the true-class probability in the flattened targets "
                                            "(1: no cap; above 1/classes)", low=0.0, high=1.0, open_low=True,
                                  # from 0.2: above 1/classes on data of 5 classes or more (trials below it fail)
                                  search_range=(0.2, 1.0))}))
