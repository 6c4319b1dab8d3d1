"""Fitting a binary member/non-member classifier on shadow features (shared by learned attacks)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


@contextmanager
def single_thread():
    """Run tiny-model CPU work on one thread, restoring the thread count afterwards.

    The attack MLPs multiply matrices of a few thousand numbers; spread over
    several threads, every op waits at a barrier, and on a loaded machine one
    descheduled thread stalls them all (measured: 0.24 s on one thread vs
    11-44 s on two, for the ``nn`` attack on 4000 rows while other jobs ran).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the shadow features; a feature constant on them gets scale 1.

    A floor of 1e-6 instead turned such a feature into one of ~1e6 wherever
    a target row differs: the one-hot of a class the shadow rows lack made
    every target row of that class score about -4e4 under ``nn-cls``.
    """
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def fit_binary(model: nn.Module, x: torch.Tensor, y: np.ndarray, *, epochs: int, lr: float,
               seed: int, batch_size: int = 256, weight_decay: float = 0.0) -> nn.Module:
    """Train ``model`` (features -> one member logit) with Adam on BCE, seeded.

    Runs where ``model`` and ``x`` are (the shuffling order comes from a CPU
    generator, so it is the same on every device).

    Members and non-members are balanced by weighting the positive class by
    ``n_out / n_in``, so an unbalanced shadow pool does not teach the attack
    to answer the majority class. The global torch RNG is left untouched.
    """
    gen = torch.Generator().manual_seed(seed)
    target = torch.as_tensor(np.asarray(y, dtype=np.float32), device=x.device)
    n_in = float(target.sum())
    pos_weight = torch.tensor((len(target) - n_in) / max(n_in, 1.0), device=x.device)
    lossf = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(target), generator=gen).to(x.device)
        for start in range(0, len(perm), batch_size):
            b = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            lossf(model(x[b]).squeeze(-1), target[b]).backward()
            opt.step()
    model.eval()
    return model


def init_seeded(build, seed: int) -> nn.Module:
    """``build()`` with its weights drawn from ``seed``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@torch.no_grad()
def predict_logit(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """Member logits of ``model`` on ``x`` (on the model's device), in batches, as numpy."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).squeeze(-1).float().cpu()
                      for i in range(0, len(x), batch_size)] or [torch.empty(0)]).numpy()
