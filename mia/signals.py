"""Per-sample signals of a model on a query set, computed once and stored.

Attacks are functions of stored signals: running ten attacks does not query
the model ten times, and re-running an attack does not retrain anything. The
stored form is the logits (everything score-based derives from them) plus, for
SAMIA, the output sensitivity to input noise, and, for the label-only
attacks, per-sample statistics of the predicted labels on many perturbed
queries (:func:`mia.label_signals.label_only_signals`).

The derived signals (:func:`loss`, :func:`confidence`, ...) take logits and
labels as numpy arrays and return float64 per-sample arrays. They work from
``log_softmax`` in float64, never from ``log(softmax)``: a model that is very
sure of a training sample (the case membership inference is about) has
probabilities that round to 0 or 1 in float32, and the log of those is -inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mia.data.base import Dataset
from mia.errors import MiaError
from mia.train.predict import predict_logits, resolve_device


@dataclass
class Signals:
    """One model's outputs on one query set.

    ``logits``: float32 ``N x C`` (a reference pool's shadows: float16, as
    stored; :func:`mia.attacks.base.pool` stacks shadows as float32);
    ``labels``: int64 ``N``; ``sensitivity``:
    float32 ``N x C`` or None (only SAMIA needs it); ``phi``: ``N x V`` or
    None, the logit-scaled true-label confidence (:func:`logit_confidence`) on
    each fixed query view of :func:`mia.data.augment.query_views` (view 0 is
    the plain input), what LiRA and RMIA compare with reference models;
    ``label_only``: None or ``{kind: float64 N}`` from
    :func:`mia.label_signals.label_only_signals`, what the label-only attacks threshold.
    """

    logits: np.ndarray
    labels: np.ndarray
    sensitivity: np.ndarray | None = None
    phi: np.ndarray | None = None
    label_only: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` as an uncompressed .npz (exactly that file name)."""
        path = Path(path)
        arrays = {"logits": np.asarray(self.logits, dtype=np.float32),
                  "labels": np.asarray(self.labels, dtype=np.int64)}
        if self.sensitivity is not None:
            arrays["sensitivity"] = np.asarray(self.sensitivity, dtype=np.float32)
        if self.phi is not None:
            arrays["phi"] = np.asarray(self.phi, dtype=np.float32)
        for kind, values in (self.label_only or {}).items():
            arrays[f"{_LABEL_ONLY_PREFIX}{kind}"] = np.asarray(values, dtype=np.float64)
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Signals":
        """Read what :meth:`save` wrote (no pickles: the file may come from elsewhere)."""
        path = Path(path)
        if not path.is_file():
            raise MiaError(f"no signals file at {path}; compute it with "
                           "mia.signals.compute_signals")
        with np.load(path, allow_pickle=False) as z:
            sens = z["sensitivity"] if "sensitivity" in z.files else None
            phi = z["phi"] if "phi" in z.files else None
            label_only = {k[len(_LABEL_ONLY_PREFIX):]: z[k] for k in z.files
                          if k.startswith(_LABEL_ONLY_PREFIX)}
            return cls(z["logits"], z["labels"], sens, phi, label_only or None)


_LABEL_ONLY_PREFIX = "label_only."


# ---------------------------------------------------------------- computing


def compute_signals(model: nn.Module, data: Dataset, idx, *, sensitivity: bool = False,
                    views: list[tuple[int, int, bool]] | None = None,
                    draws: int = 10, eps: float = 1e-3, seed: int = 0, batch_size: int = 1024,
                    device: str | torch.device = "auto", progress: bool = False) -> Signals:
    """Query ``model`` once on rows ``idx`` of ``data``; optionally its SAMIA sensitivity.

    ``views`` (from :func:`mia.data.augment.query_views`) adds ``phi``, the
    logit-scaled confidence on each view.

    ``progress`` shows a bar over the queries (rows times passes): the
    sensitivity's ``draws + 1`` passes and the views' passes take minutes on a
    real-size set, which went by without a word (one CPU core: 95 s for the
    target of Purchase100, 98662 audited and 78930 population rows; 10 to 25
    minutes for CIFAR-10's 30000 audited rows with ``cnn-small`` and its 18 views).

    The sensitivity (Yuan & Zhang, USENIX Security 2022) is, per class c,
    ``mean_k |softmax(f(x + eps*u_k))_c - softmax(f(x))_c| / eps`` over ``draws``
    Gaussian directions ``u_k ~ N(0, I)`` on the model input (after
    ``data.inputs``). It is computed in float32 without autocast: differences
    of size ``eps`` vanish in bf16.
    """
    idx = np.asarray(idx)
    passes = 1 + (draws + 1 if sensitivity else 0) + len(views or ())
    bar = tqdm(total=len(idx) * passes, desc="signals", unit="query", leave=False, disable=not progress)
    try:
        logits = predict_logits(model, data, idx, batch_size=batch_size, device=device, on_batch=bar.update)
        labels = data.y[torch.as_tensor(idx, dtype=torch.long).to(data.y.device)].cpu().numpy()
        sens = None
        if sensitivity:
            sens = output_sensitivity(model, data, idx, draws=draws, eps=eps, seed=seed,
                                      batch_size=batch_size, device=device, on_batch=bar.update)
        phi = None if views is None else view_phi(model, data, idx, views, batch_size=batch_size, device=device,
                                                  on_batch=bar.update)
    finally:
        bar.close()
    return Signals(logits.numpy().astype(np.float32), labels.astype(np.int64), sens, phi)


@torch.no_grad()
def view_phi(model: nn.Module, data: Dataset, idx, views: list[tuple[int, int, bool]], *,
             batch_size: int = 1024, device: str | torch.device = "auto",
             on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Float32 ``N x V``: :func:`logit_confidence` of ``model`` on each fixed view of rows ``idx``.

    Views are shifts and flips of the raw rows (:func:`mia.data.augment.shift_flip`);
    tabular data has the single identity view. ``on_batch(rows)`` follows each batch of each view.
    """
    idx = np.asarray(idx)
    labels = data.y[torch.as_tensor(idx, dtype=torch.long).to(data.y.device)].cpu()
    if len(idx) == 0 or not views:
        return np.zeros((len(idx), len(views)), dtype=np.float32)
    return torch.stack([_phi(predict_logits(model, data, idx, batch_size, device, view=tuple(v),
                                            on_batch=on_batch), labels)
                        for v in views], dim=1).numpy().astype(np.float32)


def _phi(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logit_y - logsumexp_{i != y} logit_i`` in float32 torch (see :func:`logit_confidence`)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


@torch.no_grad()
def output_sensitivity(model: nn.Module, data: Dataset, idx, *, draws: int = 10,
                       eps: float = 1e-3, seed: int = 0, batch_size: int = 1024,
                       device: str | torch.device = "auto",
                       on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Float32 ``N x C`` SAMIA sensitivity (see :func:`compute_signals`).

    All draws of a batch go through the model in one forward pass of at most
    ``batch_size`` rows; the noise comes from a seeded generator, so the
    result depends only on ``seed`` and the batch size. ``on_batch(queries)``
    follows each pass with the rows it queried (``draws + 1`` per sample).
    """
    if draws < 1 or eps <= 0:
        raise MiaError(f"sensitivity needs draws >= 1 and eps > 0, got draws={draws}, eps={eps}")
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    step = max(1, batch_size // (draws + 1))
    out = None  # filled in place: see mia.train.predict.predict_logits
    for start in range(0, len(idx), step):
        rows = idx[start:start + step].to(data.x.device)
        x = data.inputs(data.x[rows].to(device))
        noise = torch.randn((draws, *x.shape), generator=gen, device=device, dtype=x.dtype)
        batch = torch.cat([x.unsqueeze(0), x.unsqueeze(0) + eps * noise]).flatten(0, 1)
        p = torch.softmax(model(batch).float(), dim=-1).view(draws + 1, len(x), -1)
        sens = (p[1:] - p[0]).abs().mean(0) / eps
        if out is None:
            out = torch.empty((len(idx), *sens.shape[1:]), dtype=torch.float32)
        out[start:start + len(rows)].copy_(sens)
        if on_batch is not None:
            on_batch(len(batch))
    model.train(was_training)
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out.numpy()


# ---------------------------------------------------------------- derived signals


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Float64 log-probabilities, shifted by the row max so that nothing overflows."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _true(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.take_along_axis(values, np.asarray(labels, dtype=np.int64)[:, None], axis=1)[:, 0]


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's ``phi = log(p_y / (1 - p_y))``, as ``logit_y - logsumexp_{i != y} logit_i``.

    The second form is exact and stays finite where ``p_y`` rounds to 1.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    true = np.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    others = logits.copy()
    np.put_along_axis(others, labels[:, None], -np.inf, axis=1)
    top = others.max(axis=1)
    return true - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))


def loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy ``-log p_y``."""
    return -_true(log_softmax(logits), labels)


def confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probability of the true label ``p_y``."""
    return np.exp(_true(log_softmax(logits), labels))


def correctness(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1.0 where the top-1 prediction is the label, else 0.0."""
    return (np.asarray(logits).argmax(axis=1) == np.asarray(labels)).astype(np.float64)


def entropy(logits: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Prediction entropy ``-sum_i p_i log p_i`` (the label is not used)."""
    logp = log_softmax(logits)
    return -(np.exp(logp) * logp).sum(axis=1)


def hconf(logits: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Top-1 confidence ``max_i p_i`` (the label is not used).

    mia_prune's "Hconf" returns the true-label confidence instead, which is
    just :func:`confidence` again; this is the top-1 confidence its paper means.
    """
    return np.exp(log_softmax(logits).max(axis=1))


def log1m_softmax(logits: np.ndarray) -> np.ndarray:
    """Float64 ``log(1 - p_i)`` for every class, exact even when ``p_i`` rounds to 1.

    ``log(1 - p_i) = logsumexp_{j != i} z_j - logsumexp_j z_j``. The
    leave-one-out sum is shifted by the largest remaining logit (the row max,
    or the runner-up for the argmax class), so it is at least 1 and never
    cancels: no clamping is needed, and a confidently wrong class gets its true
    (large) penalty rather than a clamp's.
    """
    z = np.asarray(logits, dtype=np.float64)
    n, c = z.shape
    if c < 2:
        raise MiaError(f"signals need at least 2 classes, got {c}")
    rows = np.arange(n)
    top = z.argmax(axis=1)
    m1 = z[rows, top]
    rest = z.copy()
    rest[rows, top] = -np.inf
    m2 = rest.max(axis=1)
    e1 = np.exp(z - m1[:, None])
    s1 = e1.sum(axis=1)
    lse = m1 + np.log(s1)
    # every class but the argmax: leave-one-out sum shifted by the row max (>= 1: contains the max)
    with np.errstate(divide="ignore"):  # the argmax column is 0 here, replaced just below
        out = m1[:, None] + np.log(s1[:, None] - e1) - lse[:, None]
    # the argmax class: sum of the others shifted by the runner-up (>= 1)
    out[rows, top] = m2 + np.log(np.exp(rest - m2[:, None]).sum(axis=1)) - lse
    return out


def mentr(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal's modified entropy.

    ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``: low for a
    confident correct prediction, high for a confident wrong one (unlike the
    plain entropy, which is low for both).
    """
    labels = np.asarray(labels, dtype=np.int64)
    logp = log_softmax(logits)
    log1mp = log1m_softmax(logits)
    p = np.exp(logp)
    onehot = np.zeros_like(p, dtype=bool)
    onehot[np.arange(len(labels)), labels] = True
    true_term = -np.exp(_true(log1mp, labels)) * _true(logp, labels)
    other = -np.where(onehot, 0.0, p * log1mp).sum(axis=1)
    return true_term + other


SIGNALS = {"loss": loss, "confidence": confidence, "correctness": correctness,
           "entropy": entropy, "mentr": mentr, "hconf": hconf}
"""The derived per-sample signals by name, each ``f(logits, labels) -> float64 N``."""
