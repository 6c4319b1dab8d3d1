"""Early stopping: end training once validation accuracy stops improving.

Membership leakage grows with the epochs a model spends fitting its training
set after it has stopped generalizing better; early stopping is one of the
baselines RelaxLoss (Chen et al., ICLR 2022) compares against. Stopping
``patience`` epochs after the last improvement of validation accuracy, and
keeping the best epoch's weights (the loop's ``select_best``, on by
default), cuts that phase short. Selection reads the validation rows,
never the evaluation non-members (REFERENCE.md section 1).
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from mia.data.base import Dataset
from mia.defenses.base import Defense, DefenseSpec, EpochCallback, HyperParam, ModelFactory, register
from mia.errors import MiaError
from mia.train import TrainConfig, TrainResult


class EarlyStopping(Defense):
    """Stop hook: stop after ``patience`` epochs without a new best validation accuracy."""

    patience: int
    best: float = -math.inf
    best_epoch: int = -1
    epochs_run: int = 0

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        if len(val_idx) == 0:
            raise MiaError("early-stopping watches validation accuracy: pass validation rows (val_idx)")
        self.best, self.best_epoch, self.epochs_run = -math.inf, -1, 0
        return super().fit(make_model, data, train_idx, val_idx, config, on_epoch, progress)

    def stop(self, epoch: int, metrics: dict) -> bool:
        self.epochs_run = epoch + 1
        if metrics["val_accuracy"] > self.best:
            self.best, self.best_epoch = metrics["val_accuracy"], epoch
        return epoch - self.best_epoch >= self.patience

    def metrics(self) -> dict[str, float]:
        return {"early_stopping.epochs_run": float(self.epochs_run)}


register(DefenseSpec(
    "early-stopping", EarlyStopping,
    "early stopping: end training after `patience` epochs without a better validation accuracy",
    params={"patience": HyperParam(int, 3, "epochs without a new best validation accuracy before stopping",
                                   low=1, search_range=(1, 20))}))
