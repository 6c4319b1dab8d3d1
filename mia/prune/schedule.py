"""The pruning scenario: prune a trained model to a target sparsity, fine-tuning after each step.

As in mia_prune (Yuan & Zhang 2022) and WeMeM: a dense model is trained as
usual, then pruned and fine-tuned; iterative pruning repeats prune +
fine-tune ``iterations`` times (WeMeM: 5) on the way to the target.

The schedule is iterative magnitude pruning's: step ``k`` of ``K`` reaches
``s_k = 1 - (1 - s) ** (k / K)``, so every step prunes the same fraction of
the weights that remain, and the last step reaches ``s`` exactly.
``iterations=1`` is one-shot pruning.

Fine-tuning is the one training loop (:func:`mia.train.train`) with the
caller's recipe and ``finetune_epochs`` epochs, and the caller's hooks (a
defense applies to fine-tuning as to training). The masks hold during
fine-tuning (see :mod:`mia.prune.layers`) and are made permanent at the end,
so the returned model has its plain state_dict with zeros in it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from torch import nn

from mia.data.base import Dataset
from mia.errors import MiaError
from mia.prune.layers import make_permanent, measured_sparsity
from mia.prune.pruners import PRUNERS
from mia.train import TrainConfig, TrainHooks, TrainResult, resolve_device, train
from mia.train.loop import Indices


def sparsity_schedule(sparsity: float, iterations: int) -> list[float]:
    """The target of each step: ``1 - (1 - sparsity) ** (k / iterations)`` for ``k = 1..iterations``."""
    steps = [1.0 - (1.0 - sparsity) ** (k / iterations) for k in range(1, iterations)]
    return steps + [sparsity]


@dataclass
class PruneConfig:
    """How to prune: which pruner, to what sparsity, in how many prune + fine-tune steps.

    ``sparsity`` is the fraction of the pruner's units to prune: weights for
    unstructured pruners, filters for filter pruners, BatchNorm channels for
    slimming (:mod:`mia.prune.pruners`). ``finetune_epochs`` are per step
    (0: prune only).
    """

    pruner: str = "l1-unstructured"
    sparsity: float = 0.6
    iterations: int = 1  # 1 = one-shot
    finetune_epochs: int = 10
    # reference models of a pruned target: the epochs each step's fine-tuning runs (the target's
    # released fine-tuning epoch + 1), without a selection of their own; None: select as the recipe says
    finetune_stops: list[int] | None = None

    def __post_init__(self):
        PRUNERS.get(self.pruner)  # an unknown name is a MiaError listing the known ones
        if not 0.0 < self.sparsity < 1.0:
            raise MiaError(f"prune sparsity must be in (0, 1), got {self.sparsity}")
        if self.iterations < 1:
            raise MiaError(f"prune iterations must be >= 1 (1 = one-shot), got {self.iterations}")
        if self.finetune_epochs < 0:
            raise MiaError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.finetune_stops is not None and (
                len(self.finetune_stops) != self.iterations
                or not all(1 <= e <= self.finetune_epochs for e in self.finetune_stops)):
            raise MiaError(f"finetune_stops must hold one epoch count in [1, {self.finetune_epochs}] per pruning "
                           f"step ({self.iterations}), got {self.finetune_stops}")

    def schedule(self) -> list[float]:
        """The target sparsity of each step, increasing to :attr:`sparsity`."""
        return sparsity_schedule(self.sparsity, self.iterations)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneStep:
    """One prune + fine-tune step.

    ``sparsity`` is the measured weight sparsity after fine-tuning;
    ``finetune`` is None when ``finetune_epochs`` is 0.
    """

    target: float
    sparsity: float
    finetune: TrainResult | None


@dataclass
class PruneResult:
    """What pruning reports; the model itself was pruned in place.

    ``sparsity`` is the achieved fraction of zero weights over the prunable
    layers (:func:`mia.prune.measured_sparsity`); for structured pruners the
    requested ``target`` is a fraction of filters/channels, achieved as
    ``structured_sparsity``, and the weight sparsity differs from it.
    """

    target: float
    sparsity: float
    structured_sparsity: float | None
    history: list[PruneStep]
    wall_time: float


Finetune = Callable[[nn.Module, TrainConfig], TrainResult]
"""``finetune(model, config) -> TrainResult``: fine-tunes ``model`` in place (e.g. through a defense)."""


def prune_and_finetune(model: nn.Module, data: Dataset, train_idx: Indices, val_idx: Indices | None,
                       train_config: TrainConfig, prune_config: PruneConfig, hooks: TrainHooks | None = None,
                       progress: bool = False, finetune: Finetune | None = None) -> PruneResult:
    """Prune the trained ``model`` in place along ``prune_config``'s schedule, fine-tuning after each step.

    Fine-tuning trains on rows ``train_idx`` and selects on ``val_idx`` with
    ``train_config`` for ``prune_config.finetune_epochs`` epochs, through the
    one loop with ``hooks``, or through ``finetune(model, config)`` (a
    defense's own procedure, which must train ``model`` in place). At the end
    the masks are made permanent: the model's state_dict has its plain keys.
    """
    start = time.perf_counter()
    pruner = PRUNERS.get(prune_config.pruner)
    recipe = replace(train_config, epochs=prune_config.finetune_epochs, stop_epoch=None)  # stop_epoch: the dense run's
    stops = prune_config.finetune_stops
    device = resolve_device(train_config.device)
    model.to(device)
    history = []
    for k, target in enumerate(prune_config.schedule(), 1):
        pruner(model, target)
        result = None
        if recipe.epochs > 0:
            step = recipe if stops is None else replace(recipe, stop_epoch=stops[k - 1], select_best=False)
            result = (train(model, data, train_idx, val_idx, step, progress=progress, hooks=hooks)
                      if finetune is None else finetune(model, step))
            # train restores its best epoch's weight_orig; measured_sparsity re-applies the masks (sync)
        history.append(PruneStep(target, measured_sparsity(model), result))
    make_permanent(model)
    model.eval()
    return PruneResult(prune_config.sparsity, measured_sparsity(model),
                       pruner.pruned_fraction(model) if pruner.structured else None,
                       history, time.perf_counter() - start)
