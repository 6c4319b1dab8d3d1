"""Fitting a binary member/non-member classifier on shadow features (shared by learned attacks)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia.attacks.base import ShadowSignals, pool
from mia.signals import Signals
from mia.train.loop import fused_on

HOLDOUT_SHARE = 0.1
HOLDOUT_MAX_ROWS = 2048
"""Shadow rows held out to stop SAMIA's training: a tenth of them, at most 2048 (about a second
of its forward passes per epoch on one core)."""


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


def pool_with_holdout(shadows: list[ShadowSignals], max_rows: int, seed: int,
                      holdout: bool) -> tuple[Signals, np.ndarray, np.ndarray]:
    """:func:`pool`'s rows plus, with ``holdout``, a seeded share of rows held out to stop training.

    Returns the pooled signals, their membership and the boolean mask of the
    held-out rows (:data:`HOLDOUT_SHARE` of the shadows' rows, at most
    :data:`HOLDOUT_MAX_ROWS`; none without ``holdout``, and then the rows are
    :func:`pool`'s exactly). Where the shadows have more rows than
    ``max_rows`` the held-out rows come on top of them (SAMIA on 4
    purchase-synth shadows: 8192 + 2048 of 28,800), else out of them.
    """
    rows = sum(len(s.is_member) for s in shadows)
    size = min(HOLDOUT_MAX_ROWS, int(HOLDOUT_SHARE * rows)) if holdout else 0
    signals, member = pool(shadows, max_rows + size, seed)
    held = np.zeros(len(member), dtype=bool)
    held[np.random.default_rng(seed).permutation(len(member))[:size]] = True
    return signals, member, held


def fit_binary(model: nn.Module, x: torch.Tensor, y: np.ndarray, *, epochs: int, lr: float,
               seed: int, batch_size: int = 256,
               holdout: tuple[torch.Tensor, np.ndarray] | None = None, patience: int = 1) -> int:
    """Train ``model`` (features -> one member logit) with Adam on BCE, seeded; returns the epochs kept.

    Runs where ``model`` and ``x`` are (the shuffling order comes from a CPU
    generator, so it is the same on every device), with the fused Adam step
    where torch has one (:func:`mia.train.loop.fused_on`).

    Members and non-members are balanced by weighting the positive class by
    ``n_out / n_in``, so an unbalanced shadow pool does not teach the attack
    to answer the majority class. The global torch RNG is left untouched.

    With ``holdout`` (features and membership of shadow rows it does not
    train on), training stops once the held-out loss has not fallen for
    ``patience`` (>= 1) epochs, and the weights of its best epoch are kept
    (SAMIA on 4 purchase-synth shadows has converged after the first of its
    5 epochs). Without ``holdout`` it trains all ``epochs``.
    """
    gen = torch.Generator().manual_seed(seed)
    target = torch.as_tensor(np.asarray(y, dtype=np.float32), device=x.device)
    n_in = float(target.sum())
    pos_weight = torch.tensor((len(target) - n_in) / max(n_in, 1.0), device=x.device)
    lossf = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=fused_on(x.device))
    if holdout is not None:
        held_x, held_y = holdout[0], torch.as_tensor(np.asarray(holdout[1], dtype=np.float32))
    best_loss, best_state, kept = float("inf"), None, epochs
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(target), generator=gen).to(x.device)
        for start in range(0, len(perm), batch_size):
            b = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            lossf(model(x[b]).squeeze(-1), target[b]).backward()
            opt.step()
        if holdout is None:
            continue
        loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(predict_logit(model, held_x, batch_size)),
                                                        held_y, pos_weight=pos_weight.cpu()))
        if loss < best_loss:
            best_loss, kept = loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - kept >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return kept


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
