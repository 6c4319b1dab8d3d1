"""HAMP (Chen & Pattabiraman, NDSS 2024, "Overconfidence is a Dangerous Thing: Mitigating
Membership Inference Attacks by Enforcing Less Confident Prediction").

Members leak because the model is overconfident on them. HAMP has three parts:

* high-entropy soft labels: every training label becomes ``top1`` on the true
  class and ``(1 - top1) / (C - 1)`` elsewhere, with ``top1`` chosen so that
  the label's entropy is ``entropy_percentile`` (the paper's gamma) times the
  maximum ``log C``;
* an entropy regularizer: the loss is ``KL(soft label || p) - alpha * H(p)``,
  rewarding high-entropy predictions on the training rows;
* output modification at test time (``modify_output``): the released scores
  of a query are the model's scores on a random input, re-ordered so that
  their ranking follows the query's own scores. The label (argmax) and the
  ranking are kept, so accuracy is unchanged, but the confidence values carry
  no information about the query.

Scale of ``alpha``: the official code (github.com/DependableSystemsLab/
MIA_defense_HAMP) takes the KL with ``F.kl_div``'s default element-wise mean,
i.e. divided by ``C``. Here the KL is per row (the scale of cross-entropy, so
the dataset recipes' learning rates fit) and the entropy weight is
``alpha * C``: the same objective up to a constant factor, so ``alpha`` keeps
the paper's values (Purchase/Texas 0.01, CIFAR-100 0.005, CIFAR-10/Location
0.001; gamma 0.5-0.95). Random inputs for the output modification are uniform
pixels for images, uniform {0, 1} rows for binary tabular data (as the paper
does for Purchase/Texas/Location) and uniform within each feature's training
range otherwise. They are drawn from a generator seeded by the defense's seed
on every forward, so the released model is deterministic for a given batch.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia.data.base import Dataset
from mia.defenses.base import Defense, DefenseSpec, EpochCallback, HyperParam, ModelFactory, register
from mia.errors import MiaError
from mia.train import TrainConfig, TrainResult
from mia.train.loop import resident

NoiseSampler = Callable[[int, torch.Generator], torch.Tensor]
"""``sample(n, generator) -> n`` random model inputs on the generator's device."""


def soft_label_top1(num_classes: int, entropy_percentile: float) -> float:
    """The true-class probability whose label (rest uniform) has entropy ``entropy_percentile * log C``.

    The entropy of ``(p, (1 - p) / (C - 1), ...)`` falls from ``log C`` at
    ``p = 1 / C`` to 0 at ``p = 1``, so bisection finds the unique ``p``.
    """
    target = entropy_percentile * math.log(num_classes)

    def entropy(p: float) -> float:
        rest = (1.0 - p) / (num_classes - 1)
        return -(p * math.log(p) if p > 0 else 0.0) - ((1.0 - p) * math.log(rest) if rest > 0 else 0.0)

    lo, hi = 1.0 / num_classes, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if entropy(mid) > target else (lo, mid)
    return 0.5 * (lo + hi)


def noise_sampler(data: Dataset, train_idx: np.ndarray) -> NoiseSampler:
    """Random inputs shaped like ``data``'s rows, for HAMP's output modification (see the module docstring)."""
    x, _ = resident(data, train_idx, data.x.device)
    shape = tuple(data.input_shape)
    if data.kind == "image":
        def raw(n: int, g: torch.Generator) -> torch.Tensor:
            return torch.randint(0, 256, (n, *shape), generator=g, device=g.device, dtype=torch.uint8)
    elif bool(((x == 0) | (x == 1)).all()):
        def raw(n: int, g: torch.Generator) -> torch.Tensor:
            return torch.randint(0, 2, (n, *shape), generator=g, device=g.device).to(x.dtype)
    else:
        lo, hi = x.float().amin(0), x.float().amax(0)

        def raw(n: int, g: torch.Generator) -> torch.Tensor:
            u = torch.rand((n, *shape), generator=g, device=g.device)
            return lo.to(g.device) + u * (hi - lo).to(g.device)

    return lambda n, g: data.inputs(raw(n, g))


class OutputModifiedModel(nn.Module):
    """HAMP's released model: the scores of random inputs, ranked like the query's own logits."""

    def __init__(self, model: nn.Module, sample: NoiseSampler, seed: int):
        super().__init__()
        self.model, self.sample, self.seed = model, sample, seed

    @property
    def label_model(self) -> nn.Module:
        """A model with exactly the released labels (the modification keeps the ranking): what
        label-only signals query. The released scores depend on the input only through a ranking,
        which has no gradient for the white-box boundary search."""
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        noise = self.model(self.sample(len(x), generator).to(x.dtype))
        ranked = noise.sort(dim=1).values.to(logits.dtype)  # ascending
        return torch.empty_like(logits).scatter_(1, logits.argsort(dim=1), ranked)


class HAMP(Defense):
    """Loss hook: KL to high-entropy soft labels minus an entropy bonus; release: output modification."""

    entropy_percentile: float
    alpha: float
    modify_output: bool
    _sample: NoiseSampler | None = None

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        if self.modify_output:
            self._sample = noise_sampler(data, train_idx)
        return super().fit(make_model, data, train_idx, val_idx, config, on_epoch, progress)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        num_classes = logits.shape[1]
        top1 = soft_label_top1(num_classes, self.entropy_percentile)
        onehot = F.one_hot(labels, num_classes).bool()
        soft = torch.where(onehot, top1, (1.0 - top1) / (num_classes - 1))
        log_probs = F.log_softmax(logits.float(), dim=1)
        kl = (soft * (soft.log() - log_probs)).sum(1).mean()
        entropy = -(log_probs.exp() * log_probs).sum(1).mean()
        return kl - self.alpha * num_classes * entropy

    def release(self, model: nn.Module) -> nn.Module:
        if not self.modify_output:
            return model
        if self._sample is None:
            raise MiaError("hamp's output modification draws random inputs like the training data: "
                           "train through HAMP.fit, or pass modify_output=false")
        return OutputModifiedModel(model, self._sample, self.seed).eval()


register(DefenseSpec(
    "hamp", HAMP,
    "HAMP (Chen & Pattabiraman 2024): high-entropy soft labels, an entropy regularizer, and released scores "
    "taken from random inputs in the query's ranking",
    params={"entropy_percentile": HyperParam(float, 0.95, "entropy of the soft labels as a fraction of log C "
                                                          "(the paper's gamma)", low=0.0, high=1.0,
                                                 open_low=True, search_range=(0.5, 0.99)),
            "alpha": HyperParam(float, 0.01, "weight of the entropy regularizer (the paper's alpha; "
                                             "see the module docstring for its scale)",
                                low=0.0, log=True, search_range=(1e-4, 0.1)),
            "modify_output": HyperParam(bool, True, "release the scores of random inputs re-ranked like the "
                                                    "query's (HAMP's test-time part)", choices=(False, True))}))
