"""Learned attacks: an MLP trained on shadow models' outputs (Shokri et al. 2017 style).

Four feature sets, as in mia_prune / ML-Leaks and Nasr et al.:

- ``nn``: the whole softmax, sorted in descending order (label-free, and the
  same attack model serves every class);
- ``nn-top3``: the three largest probabilities (Salem et al.'s ML-Leaks);
- ``nn-cls``: the softmax in class order plus the one-hot label;
- ``nn-nasr``: Nasr et al.'s two-branch network (the inference model of
  AdvReg, :class:`mia.defenses.advreg.InferenceModel`: one branch for the
  output vector, one for the one-hot label, a joint head), here on the
  log-softmax rather than the softmax: the logits up to a per-sample shift,
  which keep apart the small probabilities that the softmax flattens to zero.

One attack model is trained on all shadows' members (label 1) and
non-members (label 0). Features are standardized with the shadow
statistics (the role BatchNorm plays in the source). Scores are the member
logit; decisions are ``p(member) > 0.5``, i.e. logit > 0.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from mia.attacks._train import (fit_binary, init_seeded, predict_logit, single_thread,
                                standardize)
from mia.attacks.base import Attack, AttackSpec, ShadowSignals, pool, register
from mia.errors import MiaError
from mia.registry import Param
from mia.signals import Signals, log_softmax
from mia.train.predict import resolve_device


def sorted_softmax(signals: Signals, k: int | None = None) -> np.ndarray:
    """Descending-sorted probabilities, the top ``k`` (all when None)."""
    p = -np.sort(-np.exp(log_softmax(signals.logits)), axis=1)
    return p if k is None else p[:, :k]


def one_hot_labels(signals: Signals) -> np.ndarray:
    """``N x C``: each sample's label, one-hot."""
    return np.eye(signals.logits.shape[1])[signals.labels]


def softmax_and_label(signals: Signals) -> np.ndarray:
    """Probabilities in class order followed by the one-hot label."""
    return np.concatenate([np.exp(log_softmax(signals.logits)), one_hot_labels(signals)], axis=1)


def mlp(d_in: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


class MLPAttack(Attack):
    """MLP on a fixed feature map of the signals; see the module docstring."""

    name: str = ""

    def __init__(self, epochs: int = 30, hidden: int = 64, lr: float = 1e-3, max_rows: int = 50000,
                 seed: int = 0):
        if epochs < 1 or hidden < 1 or lr <= 0 or max_rows < 2:
            raise MiaError(f"attack {self.name!r}: epochs and hidden must be >= 1, lr > 0, max_rows >= 2")
        self.epochs, self.hidden, self.lr, self.seed = epochs, hidden, lr, seed
        self.max_rows = max_rows
        self.threshold_ = 0.0

    @abstractmethod
    def features(self, signals: Signals) -> np.ndarray:
        """The attack model's input, one row per sample."""

    def _tensor(self, signals: Signals) -> torch.Tensor:
        f = (self.features(signals) - self.mean_) / self.std_
        return torch.as_tensor(f.astype(np.float32), device=self.device_)

    def build(self, d_in: int) -> nn.Module:
        """The attack network for ``d_in`` features."""
        return mlp(d_in, self.hidden)

    def _threads(self):
        """Tiny MLPs run on one thread (:func:`single_thread`); larger attack networks override this."""
        return single_thread()

    def _device(self) -> torch.device:
        """Where the attack network trains: the CPU for tiny MLPs (a GPU gains nothing on them)."""
        return torch.device("cpu")

    def fit(self, shadows: list[ShadowSignals]) -> "MLPAttack":
        sig, member = pool(shadows, self.max_rows, self.seed)
        f = self.features(sig)
        self.mean_, self.std_ = standardize(f)
        self.device_ = self._device()
        with self._threads():
            self.model_ = init_seeded(lambda: self.build(f.shape[1]), self.seed).to(self.device_)
            fit_binary(self.model_, self._tensor(sig), member, epochs=self.epochs, lr=self.lr,
                       seed=self.seed)
        return self

    def decision_function(self, signals: Signals) -> np.ndarray:
        with self._threads():
            return predict_logit(self.model_, self._tensor(signals)).astype(np.float64)


class NNAttack(MLPAttack):
    """MLP on the descending-sorted softmax."""

    name = "nn"

    def features(self, signals: Signals) -> np.ndarray:
        return sorted_softmax(signals)


class NNTop3Attack(MLPAttack):
    """MLP on the three largest probabilities."""

    name = "nn-top3"

    def features(self, signals: Signals) -> np.ndarray:
        return sorted_softmax(signals, 3)


class NNClsAttack(MLPAttack):
    """MLP on the softmax and the one-hot label."""

    name = "nn-cls"

    def features(self, signals: Signals) -> np.ndarray:
        return softmax_and_label(signals)


class _Branches(nn.Module):
    """:class:`~mia.defenses.advreg.InferenceModel` on one feature matrix: outputs, then the one-hot label."""

    def __init__(self, num_classes: int):
        super().__init__()
        from mia.defenses.advreg import InferenceModel

        self.num_classes, self.net = num_classes, InferenceModel(num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``N x 1`` member logits, as :func:`mlp`'s: the inference model's ``N`` vector, squeezed again by
        :func:`mia.attacks._train.fit_binary` and ``predict_logit``, lost its only row in a batch of one."""
        return self.net(features[:, :self.num_classes], features[:, self.num_classes:])[:, None]


class NasrAttack(MLPAttack):
    """Nasr et al.'s two-branch network on the log-softmax and the one-hot label.

    It trains all its epochs: stopping on held-out shadow rows, as SAMIA
    does, halved its time on 4 purchase-synth shadows (AUC 0.862 -> 0.868),
    but on digits the held-out loss rises from the first epoch while the
    ranking still improves (AUC 0.530 -> 0.509, mean of 5 seeds).
    """

    name = "nn-nasr"

    def features(self, signals: Signals) -> np.ndarray:
        return np.concatenate([log_softmax(signals.logits), one_hot_labels(signals)], axis=1)

    def build(self, d_in: int) -> nn.Module:
        return _Branches(d_in // 2)

    def _device(self) -> torch.device:
        return resolve_device("auto")  # about a million weights: on CUDA where there is one, as SAMIA

    def _threads(self):
        return contextlib.nullcontext()  # a network of about a million weights: every thread helps


_PARAMS = {
    "epochs": Param(int, 30, "training epochs of the attack MLP"),
    "hidden": Param(int, 64, "width of the two hidden layers"),
    "lr": Param(float, 1e-3, "Adam learning rate"),
    "max_rows": Param(int, 50000, "shadow rows it trains on at most (a seeded subsample)"),
}

register(AttackSpec("nn", NNAttack, "MLP on the descending-sorted softmax", dict(_PARAMS),
                    family="learned"))
register(AttackSpec("nn-top3", NNTop3Attack, "MLP on the top-3 sorted probabilities",
                    dict(_PARAMS), family="learned"))
register(AttackSpec("nn-cls", NNClsAttack, "MLP on the softmax and the one-hot label",
                    dict(_PARAMS), family="learned"))
register(AttackSpec("nn-nasr", NasrAttack, "Nasr et al.'s two-branch network: log-softmax branch, label branch, "
                    "joint head", {**{k: v for k, v in _PARAMS.items() if k != "hidden"},
                                   "epochs": Param(int, 10, "training epochs of the attack network")},
                    family="learned"))
