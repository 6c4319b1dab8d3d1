"""SAMIA, the self-attention membership inference attack of mia_prune (Yuan & Zhang 2022).

Each class c of a query becomes a token ``(p_c, sensitivity_c, onehot_c)``:
the probability, the output sensitivity to input noise (see
:func:`mia.signals.output_sensitivity`) and whether c is the label. A small
transformer encoder reads the C tokens (Linear(3, d) -> GELU -> encoder with
``layers`` layers, ``heads`` heads, feed-forward 2d) and a mean over tokens
gives one member logit.

Differences from the source, on purpose: tokens are mean-pooled instead of
flattened into a ``C * d`` layer, so the attack model has the same size for 10
or 100 classes; no dropout (the source's 0.2 on the C x C attention maps
made training 2.6x slower on CPU, and a few epochs hardly overfit); inputs
are standardized with shadow statistics (per class and feature) instead of a
BatchNorm layer, which is the same map at inference; members and non-members
are balanced by class weighting; decisions are ``p(member) > 0.5`` on a model
fitted on shadows only.

It trains on CUDA when there is one (C tokens per sample make it the one
attack whose cost grows with the class count: 100 classes x a few thousand
samples is about 6 s per epoch on one CPU core), else on the CPU; 5 epochs by
default, which separates members well on the synthetic benchmark of the tests.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mia.attacks._train import fit_binary, init_seeded, predict_logit, standardize
from mia.attacks.base import Attack, AttackSpec, ShadowSignals, pool, register
from mia.errors import MiaError
from mia.registry import Param
from mia.signals import Signals, log_softmax
from mia.train.predict import resolve_device


def class_tokens(signals: Signals) -> np.ndarray:
    """``N x C x 3`` tokens ``(p_c, sensitivity_c, onehot_c)``."""
    p = np.exp(log_softmax(signals.logits))
    onehot = np.eye(p.shape[1])[signals.labels]
    return np.stack([p, np.asarray(signals.sensitivity, dtype=np.float64), onehot], axis=-1)


class SamiaNet(nn.Module):
    """Class tokens -> transformer encoder -> mean over tokens -> member logit."""

    def __init__(self, dim: int = 64, layers: int = 3, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(3, dim), nn.GELU())
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class SamiaAttack(Attack):
    """SAMIA; see the module docstring."""

    def __init__(self, epochs: int = 5, layers: int = 3, heads: int = 4, dim: int = 64,
                 lr: float = 1e-3, max_rows: int = 8192, seed: int = 0):
        if min(epochs, layers, heads, dim) < 1 or lr <= 0 or max_rows < 2:
            raise MiaError("attack 'samia': epochs, layers, heads and dim must be >= 1, lr > 0, max_rows >= 2")
        if dim % heads:
            raise MiaError(f"attack 'samia': dim ({dim}) must be a multiple of heads ({heads})")
        self.epochs, self.layers, self.heads, self.dim, self.lr = epochs, layers, heads, dim, lr
        self.max_rows, self.seed = max_rows, seed
        self.threshold_ = 0.0

    def _tensor(self, signals: Signals) -> torch.Tensor:
        t = (class_tokens(signals) - self.mean_) / self.std_
        return torch.as_tensor(t.astype(np.float32), device=self.device_)

    def fit(self, shadows: list[ShadowSignals]) -> "SamiaAttack":
        sig, member = pool(shadows, self.max_rows, self.seed)
        tokens = class_tokens(sig)
        self.mean_, self.std_ = standardize(tokens)
        self.device_ = resolve_device("auto")
        self.model_ = init_seeded(lambda: SamiaNet(self.dim, self.layers, self.heads),
                                  self.seed).to(self.device_)
        fit_binary(self.model_, self._tensor(sig), member, epochs=self.epochs, lr=self.lr,
                   seed=self.seed)
        return self

    def decision_function(self, signals: Signals) -> np.ndarray:
        return predict_logit(self.model_, self._tensor(signals), batch_size=1024).astype(np.float64)


register(AttackSpec(
    "samia", SamiaAttack,
    "transformer over per-class (probability, sensitivity, label) tokens (mia_prune)",
    {"epochs": Param(int, 5, "training epochs of the attack transformer"),
     "layers": Param(int, 3, "transformer encoder layers"),
     "heads": Param(int, 4, "attention heads"),
     "dim": Param(int, 64, "token width"),
     "lr": Param(float, 1e-3, "Adam learning rate"),
     "max_rows": Param(int, 8192, "shadow rows it trains on at most (a seeded subsample)")},
    needs=frozenset({"sensitivity"}), family="learned"))
