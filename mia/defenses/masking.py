"""Confidence masking: release only the top-k probabilities and/or round them (Shokri et al., S&P 2017).

Shokri et al. (section VI) restrict the prediction vector to the top ``k``
classes and round the probabilities to ``d`` decimals; both are post-hoc
changes to what the model releases, so the model trains normally and every
query goes through :meth:`ConfidenceMasking.release`.

Choices where the paper leaves room:

* top-k keeps the ``k`` largest probabilities *as they are* and zeroes the
  rest, without renormalizing: an API that shows the top ``k`` shows those
  numbers, and the missing mass is information the attacker really lacks.
  (Downstream, the released log-probabilities are floored at ``log(1e-30)``;
  signals that take a softmax of them renormalize the kept entries.)
* rounding runs after masking, to ``decimals`` places (half to even, as
  ``torch.round``); a probability below half a unit of the last place
  becomes 0.
* the predicted label never changes: the original top class is always among
  the kept ``k``, and where rounding ties it with (or drops it below) another
  class, it is raised just above that class (:func:`keep_label`), the only
  departure from plain rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from mia.defenses.base import Defense, DefenseSpec, HyperParam, ReleasedModel, register
from mia.errors import MiaError

FLOOR = 1e-30
"""Smallest released probability, as in :class:`mia.defenses.base.ReleasedModel`."""


def keep_label(logp: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``logp`` with entry ``label`` of each row strictly the largest (raised just above the rest where not).

    The raise is relative (``1e-6`` of the value, at least ``1e-6``), several
    float32 steps, so the order survives a later float64 ``log_softmax``.
    Rows where ``label`` already wins are returned unchanged.
    """
    onehot = torch.nn.functional.one_hot(label, logp.shape[-1]).bool()
    others = logp.masked_fill(onehot, -torch.inf).amax(-1)
    mine = logp.gather(-1, label[:, None]).squeeze(-1)
    raised = others + torch.clamp(others.abs() * 1e-6, min=1e-6)
    return torch.where(onehot & (mine <= others)[:, None], raised[:, None], logp)


def mask_probs(probs: torch.Tensor, label: torch.Tensor, top_k: int = 0, decimals: int = 0) -> torch.Tensor:
    """Probabilities with all but the top ``top_k`` zeroed (0: all kept) and rounded to ``decimals`` (0: not)."""
    if top_k and top_k < probs.shape[-1]:
        boosted = probs.scatter(-1, label[:, None], 2.0)  # the label is always kept, even among ties
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, boosted.topk(top_k, -1).indices, True)
        probs = probs * keep
    if decimals:
        probs = torch.round(probs, decimals=decimals)
    return probs


class MaskedModel(ReleasedModel):
    """``model`` releasing masked probabilities; the label is the network's own argmax, always kept."""

    def __init__(self, model: nn.Module, top_k: int = 0, decimals: int = 0):
        super().__init__(model, lambda p: p)
        self.top_k, self.decimals = top_k, decimals

    @property
    def label_model(self) -> nn.Module:
        """A model with exactly the released labels (for label-only signals)."""
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x).float()
        label = logits.argmax(-1)
        probs = mask_probs(torch.softmax(logits, -1), label, self.top_k, self.decimals)
        return keep_label(probs.clamp_min(FLOOR).log(), label)


class ConfidenceMasking(Defense):
    """Normal training; released outputs masked to the top-k and/or rounded (module docstring)."""

    top_k: int
    decimals: int

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if self.top_k < 0 or self.decimals < 0:
            raise MiaError(f"confidence-masking needs top_k >= 0 and decimals >= 0 (0 = off), got "
                           f"top_k={self.top_k}, decimals={self.decimals}")

    def release(self, model: nn.Module) -> nn.Module:
        if not self.top_k and not self.decimals:
            return model
        return MaskedModel(model, self.top_k, self.decimals)


register(DefenseSpec(
    "confidence-masking", ConfidenceMasking,
    "release only the top-k probabilities and/or round them to some decimals (Shokri et al. 2017); "
    "the predicted label never changes",
    scenarios=("centralized", "pruning"),
    params={
        "top_k": HyperParam(int, 0, "release only the k largest probabilities, not renormalized (0 = all)",
                            low=0, search_range=(0, 10)),
        "decimals": HyperParam(int, 0, "round released probabilities to this many decimals (0 = no rounding)",
                               low=0, search_range=(0, 4)),
    }))
