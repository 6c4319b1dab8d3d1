"""Early stopping: end training early, before the model has spent its epochs memorizing its members.

Membership leakage grows with the epochs a model spends fitting its training
set; early stopping is one of the baselines RelaxLoss (Chen et al., ICLR 2022)
compares against, evaluating the model at earlier epochs of the same training.
Two stops, whichever comes first:

* ``fraction``: the share of the recipe's epochs it may run, on the recipe's
  schedule (so the learning rate has not decayed where it stops): the
  privacy-utility knob RelaxLoss's baseline turns, and what ``mia tune``
  searches;
* ``patience``: epochs without a new best validation accuracy.

Patience alone changes little: the loop already keeps the epoch with the best
validation accuracy (``select_best``, on by default), which patience releases
too unless validation accuracy improves again after ``patience`` flat epochs
(on purchase-synth n=2000 both released epoch 13 of 30, so the undefended and
the early-stopped audits were equal). Selection reads the validation rows,
never the evaluation non-members (REFERENCE.md section 1).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from torch import nn

from mia.data.base import Dataset
from mia.defenses.base import Defense, DefenseSpec, EpochCallback, HyperParam, ModelFactory, register
from mia.errors import MiaError
from mia.train import TrainConfig, TrainResult


class EarlyStopping(Defense):
    """Run at most ``fraction`` of the recipe's epochs; stop after ``patience`` epochs without a new best."""

    patience: int
    fraction: float
    best: float = -math.inf
    best_epoch: int = -1
    epochs_run: int = 0

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        if len(val_idx) == 0:
            raise MiaError("early-stopping watches validation accuracy: pass validation rows (val_idx)")
        self.best, self.best_epoch, self.epochs_run = -math.inf, -1, 0
        return super().fit(make_model, data, train_idx, val_idx, self.stopped(config), on_epoch, progress)

    def stopped(self, config: TrainConfig) -> TrainConfig:
        """The recipe, stopped after ``fraction`` of its epochs (at least one). Its schedule is the
        recipe's (not :meth:`schedule`): plain reference models run it and stop at the target's epoch."""
        if self.fraction >= 1.0:
            return config
        return replace(config, stop_epoch=min(config.epochs_run, max(1, round(self.fraction * config.epochs))))

    def stop(self, epoch: int, metrics: dict) -> bool:
        self.epochs_run = epoch + 1
        if metrics["val_accuracy"] > self.best:
            self.best, self.best_epoch = metrics["val_accuracy"], epoch
        return epoch - self.best_epoch >= self.patience

    def metrics(self) -> dict[str, float]:
        return {"early_stopping.epochs_run": float(self.epochs_run)}


register(DefenseSpec(
    "early-stopping", EarlyStopping,
    "early stopping: end training after `fraction` of the recipe's epochs, or `patience` epochs without a "
    "better validation accuracy",
    params={"fraction": HyperParam(float, 0.5, "share of the recipe's epochs it may run, on the recipe's schedule",
                                   low=0.0, high=1.0, open_low=True, search_range=(0.1, 1.0)),
            "patience": HyperParam(int, 3, "epochs without a new best validation accuracy before stopping",
                                   low=1, search_range=(1, 20))}))
