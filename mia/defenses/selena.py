"""SELENA (Tang et al., USENIX Security 2022): Split-AI, then self-distillation.

Split-AI trains ``k`` sub-models; every training row is assigned ``l`` of them
that do NOT train on it (sub-model ``m`` trains on the rows not assigned to
it). Asked about a training row, Split-AI answers with the mean softmax of
that row's ``l`` sub-models, none of which saw it; asked about any other
input, it answers with the ``l`` sub-models assigned to a random training
row, so both kinds of query get the same kind of answer. Self-distillation
then trains one fresh model of the recipe's architecture on the training
rows with the Split-AI answers as soft labels; that model is what SELENA
releases (it is queried directly, with no membership-dependent logic left).

Choices where the paper leaves room:

* the assignment is balanced (:func:`assign_nonmembers`): rows take, in a
  seeded random order, the ``l`` least-loaded sub-models (random among ties),
  so every sub-model is assigned ``n*l/k`` rows, give or take one, and the
  ``l``-subsets stay random. :func:`mia.train.many.train_many` needs equal
  training-set sizes, so a sub-model assigned one row fewer than the most
  loaded one also leaves one random other row out of its training set (a
  row it neither trains on nor answers for).
* the sub-models train many at a time (:func:`mia.train.many.train_many`)
  with the target's recipe, each keeping its best validation epoch, and the
  distilled model trains in the one loop (:func:`mia.train.train`) through
  its hooks: soft cross-entropy on the Split-AI labels, the recipe's
  augmentation on the inputs, best validation epoch (``distill_epochs``
  epochs; 0 = the recipe's).
* "another input" is decided by dataset index (the defender knows its
  training rows); the random training row of a non-member is a seeded
  function of its index, so repeated queries get the same answer.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia.data.augment import crop_flip
from mia.data.base import Dataset
from mia.defenses.base import Defense, DefenseSpec, EpochCallback, HyperParam, ModelFactory, register
from mia.errors import MiaError
from mia.models import MODELS, build_model
from mia.train import TrainConfig, TrainHooks, TrainResult, predict_logits, resolve_device, train

_ASSIGN_STREAM, _SEED_STREAM, _TRIM_STREAM, _OTHER_STREAM, _AUGMENT_STREAM = 4, 5, 6, 7, 8
"""Streams of the defense seed: each random choice draws from its own, independent of the others."""


def assign_nonmembers(n: int, k: int, l: int, seed: int = 0) -> np.ndarray:
    """``n x k`` bool: row ``i`` marks the ``l`` sub-models that do NOT train on training row ``i``.

    Balanced: rows, in a seeded random order, take the ``l`` least-loaded
    sub-models (random among equals), so column sums differ by at most one.
    """
    if not 1 <= l < k:
        raise MiaError(f"selena needs 1 <= l < k (each row needs sub-models that train on it), got k={k}, l={l}")
    rng = np.random.default_rng([seed, _ASSIGN_STREAM])
    out = np.zeros((n, k), dtype=bool)
    load = np.zeros(k, dtype=np.int64)
    for i in rng.permutation(n):
        pick = np.lexsort((rng.random(k), load))[:l]
        out[i, pick] = True
        load[pick] += 1
    return out


def training_sets(assignment: np.ndarray, seed: int = 0) -> np.ndarray:
    """``k x m`` positions (into the training rows) each sub-model trains on: all rows not assigned to it.

    Every set has the size of the smallest (:func:`mia.train.many.train_many`
    trains equal sizes): a sub-model with spare rows drops random ones.
    """
    rng = np.random.default_rng([seed, _TRIM_STREAM])
    free = [np.flatnonzero(~column) for column in assignment.T]
    size = min(len(rows) for rows in free)
    return np.stack([np.sort(rng.choice(rows, size, replace=False)) if len(rows) > size else rows
                     for rows in free])


def answering_models(assignment: np.ndarray, train_idx: np.ndarray, idx: np.ndarray, seed: int = 0) -> np.ndarray:
    """``len(idx) x k`` bool: the sub-models whose mean answers each query (dataset indices ``idx``).

    A training row gets its own assigned sub-models; any other row those of a
    random training row, a seeded function of its index.
    """
    train_idx, idx = np.asarray(train_idx), np.asarray(idx, dtype=np.int64)
    order = np.argsort(train_idx)
    where = np.searchsorted(train_idx[order], idx).clip(max=len(train_idx) - 1)
    is_train = train_idx[order][where] == idx
    rows = np.where(is_train, order[where], (_hash(idx, seed) % np.uint64(len(train_idx))).astype(np.int64))
    return assignment[rows]


def _hash(values: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 of ``values`` and ``seed``: a seeded pseudo-random, repeatable draw per index."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(seed * _OTHER_STREAM + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@torch.no_grad()
def split_ai_outputs(models: list[nn.Module], assignment: np.ndarray, train_idx: np.ndarray, data: Dataset,
                     idx: np.ndarray, seed: int = 0, device: str = "auto") -> torch.Tensor:
    """Split-AI's answer (float32 probabilities, ``len(idx) x C``, on the CPU) on rows ``idx`` of ``data``.

    ``assignment[i, m]`` says sub-model ``m`` did not train on ``train_idx[i]``
    and answers for it (:func:`answering_models`); each sub-model runs only on
    the queries it answers.
    """
    idx = np.asarray(idx, dtype=np.int64)
    mask = answering_models(assignment, train_idx, idx, seed)
    out = torch.zeros(len(idx), data.num_classes)
    for m, model in enumerate(models):
        rows = np.flatnonzero(mask[:, m])
        if len(rows):
            out[torch.as_tensor(rows)] += torch.softmax(predict_logits(model, data, idx[rows], device=device), -1)
    return out / torch.as_tensor(mask.sum(1), dtype=torch.float32)[:, None]


@dataclass
class SplitAI:
    """Trained sub-models with their assignment: what SELENA distills and an adaptive attack imitates."""

    models: list[nn.Module]
    assignment: np.ndarray  # n_train x k: True = the sub-model does not train on the row and answers for it
    train_sets: np.ndarray  # k x m: positions in train_idx each sub-model trained on
    train_idx: np.ndarray
    seed: int

    def outputs(self, data: Dataset, idx: np.ndarray, device: str = "auto") -> torch.Tensor:
        return split_ai_outputs(self.models, self.assignment, self.train_idx, data, idx, self.seed, device)


def train_split_ai(make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
                   config: TrainConfig, k: int, l: int, seed: int = 0, progress: bool = True) -> SplitAI:
    """Assign, then train the ``k`` sub-models with ``config`` (many at a time where the model is known)."""
    train_idx = np.asarray(train_idx, dtype=np.int64)
    assignment = assign_nonmembers(len(train_idx), k, l, seed)
    sets = training_sets(assignment, seed)
    seeds = [int(s) for s in np.random.default_rng([seed, _SEED_STREAM]).integers(0, 2**31 - 1, k)]
    known = identify_model(make_model, data)
    if known is not None:
        from mia.train.many import train_many

        models = train_many(known[0], data.input_shape, data.num_classes, known[1], data, train_idx[sets],
                            val_idx, config, seeds, progress=progress)
    else:
        models = []
        for m, rows in enumerate(sets):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seeds[m])
                model = make_model()
            train(model, data, train_idx[rows], val_idx, replace(config, seed=seeds[m]), progress=False)
            models.append(model)
    return SplitAI(models, assignment, sets, train_idx, seed)


def identify_model(make_model: ModelFactory, data: Dataset) -> tuple[str, str] | None:
    """``(model name, norm)`` that ``make_model`` builds, so sub-models can train stacked; None if unknown.

    Read from a ``functools.partial`` of :func:`mia.models.build_model`, from
    ``model_name``/``norm`` attributes, or else by matching the built module's
    structure against the registry's models (built on the meta device: no
    memory, no initialization).
    """
    if isinstance(make_model, functools.partial) and make_model.func is build_model and make_model.args:
        return str(make_model.args[0]), str(make_model.keywords.get("norm", "bn"))
    if hasattr(make_model, "model_name"):
        return str(make_model.model_name), str(getattr(make_model, "norm", "bn"))
    try:
        with torch.device("meta"):
            built = repr(make_model())
    except Exception:  # a factory that cannot build on the meta device: train one by one
        return None
    with torch.device("meta"):
        for name in MODELS.names():
            for norm in ("bn", "gn"):
                try:
                    if repr(build_model(name, data.input_shape, data.num_classes, norm)) == built:
                        return name, norm
                except MiaError:
                    break
    return None


class _Rows(Dataset):
    """Training then validation rows addressed by position, so a hook knows which rows a batch holds.

    ``x`` holds positions (``N x 1``); :meth:`inputs` looks the rows up,
    applies the recipe's crop+flip to training rows, normalizes, and records
    the positions in ``last``. The one loop calls ``inputs`` on each training
    batch right before its ``batch`` hook (:class:`_SoftTargets` reads ``last``).
    """

    def __init__(self, base: Dataset, rows: np.ndarray, n_train: int, device: torch.device, augment: bool,
                 seed: int):
        positions = torch.arange(len(rows), device=device)[:, None]
        super().__init__(base.name, positions, base.y[torch.as_tensor(rows, device=base.y.device)].to(device),
                         base.num_classes, base.kind, base.mean, base.std, augment=False)
        self.base, self.n_train = base, n_train
        self.table = base.x[torch.as_tensor(rows, device=base.x.device)].to(device)
        self.augment_rows = augment and base.kind == "image" and self.table.dim() == 4
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        self.last: torch.Tensor | None = None

    def _check_form(self) -> None:
        """``x`` holds positions, not features: the rows come from ``base``, checked when it was made."""

    def inputs(self, xb: torch.Tensor) -> torch.Tensor:
        pos = xb[:, 0]
        self.last = pos
        raw = self.table[pos]
        if self.augment_rows:  # training rows only, without a host sync: validation rows stay as they are
            train_rows = (pos < self.n_train).view(-1, 1, 1, 1)
            raw = torch.where(train_rows, crop_flip(raw, generator=self.generator), raw)
        return self.base.inputs(raw)


class _SoftTargets(TrainHooks):
    """Self-distillation in the one loop: each batch's targets are its rows' Split-AI probabilities."""

    def __init__(self, rows: _Rows, soft: torch.Tensor):
        self.rows, self.soft = rows, soft

    def batch(self, inputs: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self.rows.last
        if pos is None or len(pos) != len(labels):
            raise RuntimeError("selena: the training loop did not call Dataset.inputs right before the batch hook")
        return inputs, self.soft[pos]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return -(targets * F.log_softmax(logits.float(), -1)).sum(-1).mean()


def distill(make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            soft: torch.Tensor, config: TrainConfig, seed: int, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
    """A fresh ``make_model()`` trained on ``train_idx`` with soft labels ``soft`` (one row per training row)."""
    device = resolve_device(config.device)
    n_train, n_val = len(train_idx), len(val_idx)
    rows = _Rows(data, np.concatenate([train_idx, val_idx]), n_train, device, config.augment and data.augment,
                 np.random.default_rng([seed, _AUGMENT_STREAM]).integers(2**31 - 1))
    model = make_model()
    result = train(model, rows, np.arange(n_train), np.arange(n_train, n_train + n_val), config, on_epoch=on_epoch,
                   progress=progress, hooks=_SoftTargets(rows, soft.to(device)))
    return model, result


class Selena(Defense):
    """Split-AI sub-models, then a self-distilled release (module docstring)."""

    k: int
    l: int
    distill_epochs: int

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if not 1 <= self.l < self.k:
            raise MiaError(f"selena needs 1 <= l < k (each row needs sub-models that train on it), got "
                           f"k={self.k}, l={self.l}")
        if self.distill_epochs < 0:
            raise MiaError(f"selena distill_epochs must be >= 0 (0 = the recipe's), got {self.distill_epochs}")
        self.split_ai: SplitAI | None = None

    def schedule(self, config: TrainConfig) -> TrainConfig:
        return replace(config, epochs=self.distill_epochs or config.epochs)  # the distillation's

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        start = time.perf_counter()
        train_idx, val_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)
        if len(train_idx) < self.k:
            raise MiaError(f"selena needs at least k={self.k} training rows, got {len(train_idx)}")
        self.split_ai = train_split_ai(make_model, data, train_idx, val_idx, config, self.k, self.l, self.seed,
                                       progress)
        soft = self.split_ai.outputs(data, train_idx, config.device)
        recipe = self.schedule(config)
        model, result = distill(make_model, data, train_idx, val_idx, soft, recipe, self.seed, on_epoch, progress)
        return model, replace(result, wall_time=time.perf_counter() - start)


register(DefenseSpec(
    "selena", Selena,
    "SELENA (Tang et al. 2022): Split-AI over k sub-models (each row answered by l that never saw it), "
    "then self-distillation into one released model",
    scenarios=("centralized",),  # pruned fine-tuning: see docs/protocol.md, "Pruning"
    # the searched box lies where l < k holds at every point: with k over (5, 50) and l over (1, 24) a
    # random sampler drew l >= k in 72 of 400 trials, each a failed trial; it holds the paper's K=25, L=10
    params={
        "k": HyperParam(int, 25, "number of Split-AI sub-models", low=2, search_range=(11, 50)),
        "l": HyperParam(int, 10, "sub-models per training row that do not train on it (l < k)", low=1,
                          search_range=(1, 10)),
        "distill_epochs": HyperParam(int, 0, "epochs of the self-distillation (default 0: the recipe's epochs)", low=0,
                                     search=False),  # the recipe's knob, 0 = its epochs
    }))
