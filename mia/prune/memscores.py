"""Memorization scores of training rows (Feldman & Zhang 2020), for the pruning defenses RSW and RMR.

``mem(i) = P[correct on i | i in train] - P[correct on i | i not in train]``:
high for rows a model gets right only when it has seen them (memorized,
atypical rows), near 0 for rows it gets right (or wrong) either way. WeMeM's
defenses order and regularize fine-tuning by it (:mod:`mia.defenses.memorization`).

Estimation (:func:`estimate_mem_scores`): ``models`` models of the target's
architecture and recipe, each trained on a random half of the training rows,
all at once with :func:`mia.train.many.train_many`. The halves come in
complementary pairs: model ``2k`` trains on a random half, model ``2k + 1`` on
the other half, so every row is IN for exactly half of an even number of
models (every model trains on ``n // 2`` rows, as ``train_many`` needs; with
an odd ``n`` one row per pair sits out of both; an odd ``models`` adds one
unpaired half). The estimator is then the difference of the two empirical
accuracies; a row never IN (or never OUT) scores 0, the estimator's value
without evidence, as in :meth:`mia.pool.PoolSignals.mem_scores`. The models
keep their last epoch (``select_best`` off): there is no separate validation
set, and the estimator needs trained, not selected, models.

Caching: estimation costs ``models`` trainings, so the scores are stored as
one ``.npy`` under ``cache_dir`` (default ``$MIA_CACHE`` or ``./.mia-cache``),
named by a hash of everything that shapes them (architecture and its fingerprint, dataset name,
size and labels, the training rows in order, the recipe minus its device,
``models``, ``seed``). A second call with the same inputs trains nothing. The
file is written to a temporary name and renamed, so a crashed or concurrent
writer never leaves a half-written cache entry; it is read with
``allow_pickle=False``.

Architecture of a model at hand (:func:`architecture_of`): a defense receives
a model factory, not a name; the registered architecture whose module tree
prints the same (``repr``, unchanged by pruning masks) is the one to train.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mia.data.base import Dataset
from mia.errors import MiaError
from mia.lock import exclusive
from mia.models import MODELS, NORMS, architecture_fingerprint, build_model, keyed_norm
from mia.pool import feldman_scores
from mia.train import TrainConfig, predict_logits
from mia.train.many import train_many
from mia.train.recipes import default_config, without_inert_settings

__all__ = ["architecture_of", "default_cache_dir", "estimate_mem_scores", "mem_splits",
           "read_mem_scores_csv"]

CACHE_VERSION = 2
"""Bumped when the estimator or the key changes, so that old cache entries are not read as new ones.
2: the architecture's fingerprint joined the key, inert settings keyed at their defaults."""

_SPLIT_STREAM = 23  # a stream of the seed for the halves and the models' seeds


def default_cache_dir() -> Path:
    """``$MIA_CACHE``, else ``./.mia-cache``."""
    return Path(os.environ.get("MIA_CACHE") or ".mia-cache")


def mem_splits(n: int, models: int, seed: int = 0) -> np.ndarray:
    """``models x n`` inclusion (bool): complementary random halves in pairs, ``n // 2`` rows per model."""
    if models < 2:
        raise MiaError(f"mem-score estimation needs at least 2 models (some IN, some OUT per row), got {models}")
    if n < 2:
        raise MiaError(f"mem-score estimation needs at least 2 training rows to split in halves, got {n}")
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    half = n // 2
    inclusion = np.zeros((models, n), dtype=bool)
    for m in range(0, models, 2):
        perm = rng.permutation(n)
        inclusion[m, perm[:half]] = True
        if m + 1 < models:
            inclusion[m + 1, perm[half:2 * half]] = True  # odd n: perm[-1] sits out of this pair
    return inclusion


def estimate_mem_scores(model_name: str, norm: str, data: Dataset, train_idx: np.ndarray, config: TrainConfig,
                        models: int = 8, seed: int = 0, cache_dir: str | Path | None = None,
                        progress: bool = False) -> np.ndarray:
    """Feldman & Zhang's mem-score of every row of ``train_idx`` (aligned with it), cached on disk.

    Trains ``models`` ``model_name`` models with ``config`` (``select_best``
    off) on complementary random halves of ``train_idx`` (:func:`mem_splits`,
    seeded by ``seed``) and returns ``P[correct | IN] - P[correct | OUT]`` per
    row, in ``[-1, 1]``. See the module docstring for the cache.
    """
    train_idx = np.asarray(train_idx, dtype=np.int64).ravel()
    if len(np.unique(train_idx)) != len(train_idx):
        raise MiaError(f"train_idx holds {len(train_idx) - len(np.unique(train_idx))} duplicate rows; "
                       "pass each training row once")
    config = replace(config, select_best=False)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "mem-scores" / (
        _cache_key(model_name, norm, data, train_idx, config, models, seed) + ".npy")
    with exclusive(f"mem-scores {path.resolve()}", f"mem-scores {path.stem[:8]}"):
        cached = _cached(path, train_idx)  # looked at again under the lock: another process may have written it
        if cached is None:
            cached = _estimate(model_name, norm, data, train_idx, config, models, seed, progress)
            _write_atomic(path, cached)
    return cached


def _cached(path: Path, train_idx: np.ndarray) -> np.ndarray | None:
    if path.exists():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == train_idx.shape:
            return cached
    return None


def _estimate(model_name: str, norm: str, data: Dataset, train_idx: np.ndarray, config: TrainConfig,
              models: int, seed: int, progress: bool) -> np.ndarray:
    inclusion = mem_splits(len(train_idx), models, seed)
    seeds = [int(s) for s in np.random.default_rng([seed, _SPLIT_STREAM, 1]).integers(0, 2 ** 31 - 1, models)]
    sets = np.stack([train_idx[row] for row in inclusion])
    labels = data.y[torch.as_tensor(train_idx, device=data.y.device)].cpu().numpy()
    correct = np.empty((models, len(train_idx)), dtype=bool)

    def score(m: int, model: torch.nn.Module) -> None:
        correct[m] = predict_logits(model, data, train_idx, device=config.device).argmax(1).numpy() == labels

    train_many(model_name, data.input_shape, data.num_classes, norm, data, sets, None, config, seeds=seeds,
               progress=progress, on_trained=score, keep=False)
    return feldman_scores(correct, inclusion)


def read_mem_scores_csv(path: str | Path, train_idx: np.ndarray) -> np.ndarray:
    """Mem-scores for the rows of ``train_idx`` (aligned with it) from a CSV with a header.

    Either one column ``mem_score``, one row per training row in ``train_idx``
    order, or two columns ``index,mem_score`` keyed by dataset index (rows
    not in ``train_idx`` are ignored; every training row must be there once).
    """
    train_idx = np.asarray(train_idx, dtype=np.int64).ravel()
    path = Path(path)
    if not path.is_file():
        raise MiaError(f"mem-score CSV {str(path)!r} not found; pass the path of an existing file")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = list(reader)
    except UnicodeDecodeError:
        raise MiaError(f"mem-score CSV {str(path)!r} is not a UTF-8 text file; pass a CSV with a mem_score "
                       "column") from None
    except (OSError, csv.Error) as exc:
        raise MiaError(f"cannot read mem-score CSV {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if columns not in (["mem_score"], ["index", "mem_score"]):
        raise MiaError(f"mem-score CSV {str(path)!r} has columns {columns}; expected mem_score, "
                       "or index,mem_score")
    try:
        scores = np.array([float(r["mem_score"]) for r in rows], dtype=np.float64)
        index = np.array([int(r["index"]) for r in rows], dtype=np.int64) if "index" in columns else None
    except (TypeError, ValueError):
        raise MiaError(f"mem-score CSV {str(path)!r} holds a value that is not a number") from None
    if not np.isfinite(scores).all():
        raise MiaError(f"mem-score CSV {str(path)!r} holds non-finite scores")
    if len(scores) and (scores.min() < -1 or scores.max() > 1):
        warnings.warn(f"mem-score CSV {str(path)!r} holds scores in [{scores.min():g}, {scores.max():g}], outside "
                      "Feldman's [-1, 1]: RSW orders rows by them as they are, but RMR's tau is on Feldman's scale "
                      "(in [0, 1]): rescale them for RMR",
                      stacklevel=2)
    if index is None:
        if len(scores) != len(train_idx):
            raise MiaError(f"mem-score CSV {str(path)!r} has {len(scores)} rows but there are {len(train_idx)} "
                           "training rows; write one mem_score per training row, or index,mem_score columns")
        return scores
    position = {int(i): k for k, i in enumerate(index)}
    if len(position) != len(index):
        raise MiaError(f"mem-score CSV {str(path)!r} lists some index more than once; list each row once")
    missing = sum(int(i) not in position for i in train_idx)
    if missing:
        raise MiaError(f"mem-score CSV {str(path)!r} misses {missing} of the {len(train_idx)} training rows; "
                       "write a mem_score for every training index")
    return scores[[position[int(i)] for i in train_idx]]


def architecture_of(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> tuple[str, str] | None:
    """``(model_name, norm)`` of the registered architecture that prints like ``model``, or None.

    Candidates are built on the meta device (no memory, no initialization
    cost); architectures that do not fit the data are skipped. Models whose
    layers do not depend on the norm match under the first norm.
    """
    target = repr(model)
    for name in MODELS.names():
        for norm in NORMS:
            try:
                with torch.device("meta"):
                    candidate = build_model(name, input_shape, num_classes, norm)
            except MiaError:
                break  # the architecture does not fit the data, whatever the norm
            if repr(candidate) == target:
                return name, norm
    return None


def _cache_key(model_name: str, norm: str, data: Dataset, train_idx: np.ndarray, config: TrainConfig,
               models: int, seed: int) -> str:
    """The cache entry's name. Settings that change no model (``--norm gn`` on a model without
    normalization layers, :func:`mia.train.recipes.without_inert_settings`) are keyed at their defaults,
    so that they find the scores of the same models, as the reference pools' keys do; the
    architecture's fingerprint, so that a user's own model edited under its name does not."""
    architecture = architecture_fingerprint(model_name, data.input_shape, data.num_classes, norm)
    norm = keyed_norm(model_name, data.input_shape, data.num_classes, norm, architecture)
    try:
        recipe = default_config(data.name, model_name)
    except MiaError:  # a model without a known recipe: its fields keyed as given
        recipe = None
    config = without_inert_settings(config, recipe, augmentable=data.augment and data.kind == "image")
    identity = {"version": CACHE_VERSION, "model": model_name, "architecture": architecture, "norm": norm,
                "dataset": data.name,
                "data": data.fingerprint(), "cuda_bf16": data.x.device.type == "cuda" and config.amp,
                "train_idx": hashlib.sha256(train_idx.tobytes()).hexdigest(),
                "config": {k: v for k, v in config.to_dict().items() if k != "device"},
                "models": models, "seed": seed}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _write_atomic(path: Path, scores: np.ndarray) -> None:
    """``np.save`` to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, scores)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
