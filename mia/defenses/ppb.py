"""PPB, pair-based posterior balancing (Yuan & Zhang, USENIX Security 2022, "Membership Inference
Attacks and Defenses in Neural Network Pruning"; the ``ppb`` defense of their mia_prune code).

Pruning and fine-tuning widen the gap between the confidence of members and
of non-members, and not evenly across classes. PPB evens out the *shape* of
the posteriors the model produces: each minibatch is cut into two halves,
paired row by row, and the loss adds ``a`` times the KL divergence between
the paired rows' softmax outputs sorted in descending order. Sorting drops
the class identity, so the term does not pull predictions towards another
label; it pulls every row towards the same confidence profile (top-1, top-2,
... probabilities), which is what a confidence or loss attack reads.

Choices: the KL is ``F.kl_div(log s1, s2, reduction="batchmean")``, i.e.
``KL(s2 || s1)`` per pair averaged over the pairs, the usual PyTorch idiom
(mia_prune's); it is computed from sorted log-softmaxes (sorting log-softmax
gives the same order as sorting softmax, without ``log(0)``). Gradients flow
through both halves. With an odd batch the last row joins no pair; a batch
of one row has no pair and adds nothing. ``a`` defaults to 4 in the paper's
grid {1, 2, 4, 8, 16}. The term applies wherever the hooks run: in
fine-tuning after pruning (the paper's setting) and in ordinary training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mia.defenses.base import Defense, DefenseSpec, HyperParam, register


def ppb_regularizer(logits: torch.Tensor) -> torch.Tensor:
    """KL between the descending-sorted softmaxes of the two halves of a batch, paired row by row."""
    half = len(logits) // 2
    if half == 0:
        return logits.float().sum() * 0.0  # no pair: zero, on the graph
    log_probs = F.log_softmax(logits.float(), dim=1).sort(dim=1, descending=True).values
    return F.kl_div(log_probs[:half], log_probs[half:2 * half], reduction="batchmean", log_target=True)


class PPB(Defense):
    """Loss hook: cross-entropy plus ``a`` times the pairwise KL of sorted posteriors."""

    a: float

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return super().loss(logits, targets, labels, epoch) + self.a * ppb_regularizer(logits)


register(DefenseSpec(
    "ppb", PPB,
    "PPB (Yuan & Zhang 2022): cross-entropy plus a KL term that pulls the sorted posteriors of paired rows of "
    "each batch together, evening out confidence",
    scenarios=("pruning", "centralized"),
    params={"a": HyperParam(float, 4.0, "weight of the sorted-posterior KL term (the paper's grid: 1, 2, 4, 8, 16)",
                            low=0.0, log=True, search_range=(0.5, 16.0))}))
