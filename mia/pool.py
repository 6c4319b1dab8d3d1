"""Reference-model pools: trained once, stored, reused and grown.

LiRA and RMIA compare the target with reference models trained on random
subsets of the attacker's data (as large as the target's training set); threshold and learned attacks fit on shadow
models; pruning defenses need memorization scores. All of them are served by
one mechanism: a *pool* of M models with the target's recipe.

* **Identity.** A pool is named by a hash of everything that shapes its models
  and signals (dataset and its parameters, the audited and population
  indices, architecture, recipe, defense, mode, query views): the same audit
  run twice finds the same pool.
* **Layout.** Its samples are the target's audited query set (``N``) followed
  by the attacker's population (``Z``, minus a slice the pool keeps for its
  models' best-epoch selection). Model ``m`` trains on as many samples as the
  target did (at most half of its candidates), drawn from its own seed: the
  population only (``offline``) or the population and the audited samples
  (``online``, so that every audited sample is IN for a good share of the
  models). Same-sized training sets keep the reference models' IN/OUT
  behaviour calibrated to the target's (LiRA, section V). Because model
  ``m``'s draw depends only on ``m``, a pool of 32 grows to 64 by training
  32 more.
* **Storage.** One ``.npz`` per model in a folder: its inclusion row, per-view
  ``phi`` (float16) and whether its top-1 label is right (what mem-scores
  read) on all pool samples, and its float16 logits and SAMIA sensitivity on
  the population (what it serves as a shadow). :mod:`mia.tracking` keeps that
  folder as the artifacts of an MLflow run, so the core runs without MLflow.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mia.attacks import ReferenceSignals, ShadowSignals
from mia.data import Dataset, Split
from mia.data.augment import query_views
from mia.errors import MiaError
from mia.label_signals import applicable_kinds, label_only_signals
from mia.lock import exclusive
from mia.signals import Signals, compute_signals

MODES = ("online", "offline")
#: Models of a pool that also store label-only signals on the population: they are what
#: the label-only attacks fit thresholds on, and their queries (boundary searches) are costly.
LABEL_ONLY_MODELS = 2
#: Share of the population the pool keeps aside for its models' model selection.
VALIDATION_FRACTION = 0.1
IDENTITY_FILE = "pool.json"
#: The arrays of every model file (:func:`_save_model`), and the prefix of its optional label-only ones.
_MODEL_ARRAYS = ("inclusion", "correct", "population_logits", "phi", "sensitivity")
_LABEL_ONLY_PREFIX = "label_only."
#: Identity fields that tell cached pools apart without changing which models a pool draws: the
#: architecture's fingerprint (an edited model must not reuse the old one's pool, but the same recipe on
#: the same data draws the same training sets and seeds, so results recorded before the field stay
#: reproducible).
CACHE_ONLY = ("architecture",)


@dataclass(frozen=True)
class PoolPlan:
    """What a pool is: its identity and the samples its models train on and are queried on."""

    key: str
    mode: str
    audited: np.ndarray  # N dataset indices: the target's balanced query set
    population: np.ndarray  # Z dataset indices: attacker data the models are queried on
    validation: np.ndarray  # the pool models' shared selection set (never trained on or scored)
    train_size: int  # rows each model trains on: the target's member count, at most half the candidates
    views: tuple[tuple[int, int, bool], ...]
    identity: dict
    draw_key: str = ""  # what the models' seeds derive from: the key without CACHE_ONLY fields

    @property
    def samples(self) -> np.ndarray:
        """Every sample the pool's models are queried on: audited, then population."""
        return np.concatenate([self.audited, self.population])

    @property
    def candidates(self) -> np.ndarray:
        """Positions (into :attr:`samples`) of the samples a model may train on."""
        n, z = len(self.audited), len(self.population)
        start = 0 if self.mode == "online" else n
        return np.arange(start, n + z)

    def seed(self, m: int) -> int:
        return (int((self.draw_key or self.key)[:8], 16) + m) % (2**31 - 1)

    def inclusion(self, m: int) -> np.ndarray:
        """Bool over :attr:`samples`: the :attr:`train_size` candidates model ``m`` trains on."""
        chosen = np.random.default_rng(self.seed(m)).permutation(self.candidates)[: self.train_size]
        mask = np.zeros(len(self.audited) + len(self.population), dtype=bool)
        mask[chosen] = True
        return mask


def plan_pool(identity: dict, split: Split, mode: str = "online", augment: bool = False) -> PoolPlan:
    """The pool for a target's recipe (``identity``: its config, without seeds) and split."""
    if mode not in MODES:
        raise MiaError(f"unknown pool mode {mode!r}; known: {', '.join(MODES)}")
    audited, _ = split.query()
    rng = np.random.default_rng(split.seed)
    population = rng.permutation(split.population)
    n_val = max(1, int(round(VALIDATION_FRACTION * len(population))))
    validation, population = np.sort(population[:n_val]), np.sort(population[n_val:])
    if len(population) < 4:
        raise MiaError(f"the attacker's population has only {len(population)} samples left for reference "
                       "models; lower --member-fraction/--nonmember-fraction/--validation-fraction")
    views = tuple(query_views(augment))
    n_candidates = len(population) + (len(audited) if mode == "online" else 0)
    train_size = min(len(split.members), n_candidates // 2)
    full = {**identity, "mode": mode, "views": [list(v) for v in views], "train_size": train_size,
            "audited": _digest(audited), "population": _digest(population), "validation": _digest(validation)}
    key = _hash(full)
    draw_key = _hash({k: v for k, v in full.items() if k not in CACHE_ONLY})
    return PoolPlan(key, mode, audited, population, validation, train_size, views, full, draw_key)


def _hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


# ---------------------------------------------------------------- storage


def pool_lock(store: str, key: str):
    """While held, this process alone grows or reads pool ``key`` of ``store`` (a folder or a tracking store)
    on this machine; another one asking waits, then finds the models (:func:`mia.lock.exclusive`)."""
    return exclusive(f"pool {store} {key}", f"reference pool {key[:8]}")


def model_file(root: Path, m: int) -> Path:
    return Path(root) / f"model_{m:05d}.npz"


def pool_size(root: Path) -> int:
    """How many consecutive models (0, 1, ...) the folder holds."""
    m = 0
    while model_file(root, m).is_file():
        m += 1
    return m


#: What loading a truncated or foreign model file raises.
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def drop_unreadable(root: Path) -> int:
    """Delete the first model file that cannot be opened and every one after it; returns how many.

    A copy killed midway (an artifact store's upload or download is no atomic
    rename) leaves a truncated ``.npz`` that :func:`pool_size` would count and
    every later load would fail on; the models from there on are retrained.
    """
    have = pool_size(root)
    for m in range(have):
        try:
            with np.load(model_file(root, m), allow_pickle=False) as f:
                if not set(_MODEL_ARRAYS) <= set(f.files):
                    raise ValueError("missing arrays")  # a file of another layout: retrained too
        except UNREADABLE:
            for later in range(m, have):
                model_file(root, later).unlink()
            warnings.warn(f"pool model {m} in {root} could not be read; retraining models {m}..{have - 1}")
            return have - m
    return 0


def write_identity(plan: PoolPlan, root: Path) -> None:
    """Name the folder's pool in ``pool.json``, or refuse a folder that holds another pool.

    Written whole or not at all, like the model files: another audit of the
    recipe reading it while it was written (scripts sharing ``./.mia-cache``)
    found it empty and failed in ``json``; one left unreadable is a one-line error.
    """
    path = Path(root) / IDENTITY_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text()).get("key")
        except (ValueError, AttributeError):
            raise MiaError(f"pool folder {root} has an unreadable {IDENTITY_FILE}; delete the folder and its "
                           "models are trained again") from None
        if stored != plan.key:
            raise MiaError(f"pool folder {root} holds pool {stored}, not {plan.key}; use another folder")
        return
    text = json.dumps({"key": plan.key, **plan.identity}, indent=1, sort_keys=True, default=str)
    with tempfile.NamedTemporaryFile("w", dir=root, prefix=f"{IDENTITY_FILE}.", suffix=".tmp", delete=False) as f:
        f.write(text)
    Path(f.name).replace(path)


def _half(x: np.ndarray) -> np.ndarray:
    """float16, saturating: a diverged model's logits beyond float16's range become its largest finite value,
    not infinities whose differences are NaN in every attack downstream."""
    limit = np.finfo(np.float16).max
    return np.clip(x, -limit, limit).astype(np.float16)


def _save_model(root: Path, m: int, inclusion: np.ndarray, queried: Signals, population: Signals) -> Path:
    """Model ``m``'s file, written whole or not at all (a killed run leaves no half-written model behind).

    ``queried`` are its signals on every pool sample, the population last; ``population`` its signals with
    the sensitivity on the population. Correctness is that of the stored float16 logits, as it was when
    whole logits were stored.
    """
    logits = _half(queried.logits)
    return _write(model_file(root, m), dict(
        inclusion=inclusion, correct=logits.argmax(axis=1) == queried.labels,
        population_logits=logits[len(logits) - len(population):], phi=_half(queried.phi),
        sensitivity=_half(population.sensitivity), **_label_only_arrays(population.label_only)))


def _label_only_arrays(label_only: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Label-only signals as a model file's arrays: prefixed names, float32."""
    return {f"{_LABEL_ONLY_PREFIX}{k}": v.astype(np.float32) for k, v in (label_only or {}).items()}


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``arrays`` as the .npz ``path``, written whole or not at all.

    The temporary file is this writer's own: two audits of one recipe at once
    (scripts sharing ``./.mia-cache``) wrote the same ``model_00000.tmp``, one
    truncating the other's, and the second rename failed.
    """
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{path.stem}.", suffix=".tmp", delete=False) as f:
        tmp = Path(f.name)
        try:
            np.savez(f, **arrays)
        except BaseException:
            tmp.unlink()
            raise
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class PoolGrowth:
    """What :func:`grow_pool` wrote: new models' files, and stored models' files that gained label-only kinds."""

    new: list[Path]
    relabelled: list[Path]


def grow_pool(plan: PoolPlan, root: Path, size: int, config, data: Dataset,
              progress: bool = True, on_saved: Callable[[Path], None] | None = None) -> PoolGrowth:
    """Make sure ``root`` holds models ``0 .. size-1``; train only the missing ones.

    ``config`` is the target's :class:`mia.audit.TargetConfig`. Each model's
    file is written as soon as it is trained (its stack, when models train
    stacked), and ``on_saved(path)`` called, so that a run killed or crashed
    while growing a large pool keeps the models already trained: the next
    one trains only the rest. Returns the files written.

    The first :data:`LABEL_ONLY_MODELS` models also store the label-only
    signals of ``config.label_only`` (those that apply to the data). They are not
    part of the pool's identity: a stored model that lacks a kind asked now
    is trained again (its seed and training set are its own, so it is the same
    model, to float32 rounding on the CPU) and the kind added to its file, so
    audits that ask for different label-only attacks share one pool.
    """
    from mia.audit import fit_many

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_identity(plan, root)
    drop_unreadable(root)
    have = pool_size(root)
    kinds = applicable_kinds(config.label_only, data, plan.population)
    lacking = {m: todo for m in range(min(have, size, LABEL_ONLY_MODELS))
               if (todo := [k for k in kinds if k not in _label_only_kinds(root, m)])}
    models = [*lacking, *range(have, size)]
    if not models:
        return PoolGrowth([], [])
    inclusions = np.stack([plan.inclusion(m) for m in models])
    samples = plan.samples
    train_sets = np.stack([samples[row] for row in inclusions])
    written = []

    def label_only(model, m: int, todo: list[str]) -> dict[str, np.ndarray] | None:
        if m >= LABEL_ONLY_MODELS or not todo:
            return None
        return label_only_signals(model, data, plan.population, kinds=tuple(todo), seed=plan.seed(m),
                                  device=config.train.device, progress=progress)

    def save(i: int, model) -> None:
        m = models[i]
        if m in lacking:
            written.append(_add_label_only(root, m, label_only(model, m, lacking[m])))
        else:
            queried = compute_signals(model, data, samples, views=list(plan.views), device=config.train.device,
                                      progress=progress)
            population = compute_signals(model, data, plan.population, sensitivity=True, seed=plan.seed(m),
                                         device=config.train.device, progress=progress)
            population.label_only = label_only(model, m, kinds)
            written.append(_save_model(root, m, inclusions[i], queried, population))
        if on_saved is not None:
            on_saved(written[-1])

    fit_many(config, data, train_sets, plan.validation, [plan.seed(m) for m in models], progress, on_trained=save)
    return PoolGrowth(written[len(lacking):], written[:len(lacking)])


def stored_label_only_kinds(root: Path) -> set[str]:
    """The label-only kinds that every model of the folder meant to hold them (the first
    :data:`LABEL_ONLY_MODELS`) stores: an audit asking for these trains nothing for them."""
    try:
        kinds = [_label_only_kinds(root, m) for m in range(min(pool_size(root), LABEL_ONLY_MODELS))]
    except UNREADABLE:  # a file that cannot be read stores nothing known
        return set()
    return set.intersection(*kinds) if kinds else set()


def _label_only_kinds(root: Path, m: int) -> set[str]:
    """The label-only kinds model ``m``'s file stores."""
    with np.load(model_file(root, m), allow_pickle=False) as f:
        return {k.removeprefix(_LABEL_ONLY_PREFIX) for k in f.files if k.startswith(_LABEL_ONLY_PREFIX)}


def _add_label_only(root: Path, m: int, label_only: dict[str, np.ndarray]) -> Path:
    """Model ``m``'s file with ``label_only`` added, replaced whole (readers see the old file or the new)."""
    path = model_file(root, m)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return _write(path, {**arrays, **_label_only_arrays(label_only)})


# ---------------------------------------------------------------- reading


def feldman_scores(correct: np.ndarray, inclusion: np.ndarray) -> np.ndarray:
    """Per row: accuracy of the models that trained on it minus that of the others (0 without both)."""
    n_in, n_out = inclusion.sum(0), (~inclusion).sum(0)
    p_in = (correct & inclusion).sum(0) / np.maximum(n_in, 1)
    p_out = (correct & ~inclusion).sum(0) / np.maximum(n_out, 1)
    return np.where((n_in > 0) & (n_out > 0), p_in - p_out, 0.0)


@dataclass
class PoolSignals:
    """The first M models of a pool, stacked: what attacks and mem-scores read."""

    plan: PoolPlan
    labels: np.ndarray  # over plan.samples
    inclusion: np.ndarray  # M x (N + Z) bool
    correct: np.ndarray  # M x (N + Z) bool: the model's top-1 label is the true one
    population_logits: np.ndarray  # M x Z x C float16
    phi: np.ndarray  # M x (N + Z) x V float16
    sensitivity: np.ndarray  # M x Z x C float16
    label_only: list[dict[str, np.ndarray]]  # per model: {kind: Z}, empty past LABEL_ONLY_MODELS

    @property
    def num_models(self) -> int:
        return len(self.inclusion)

    def shadows(self) -> list[ShadowSignals]:
        """Each model as a shadow: its signals on the population, members being what it trained on.

        The arrays are float16 views of the stored ones, not float32 copies (Purchase100: 57 MB a model,
        3.6 GB at 64, held through the whole attack stage): the derived signals compute in float64 from
        whatever they are given, and :func:`mia.attacks.base.pool` stacks what it keeps as float32.
        """
        n = len(self.plan.audited)
        pop_labels = self.labels[n:]
        return [ShadowSignals(Signals(self.population_logits[m], pop_labels, self.sensitivity[m], self.phi[m, n:],
                                      self.label_only[m] or None),
                              self.inclusion[m, n:])
                for m in range(self.num_models)]

    def reference(self, target: Signals, target_population: Signals,
                  population_index: np.ndarray) -> ReferenceSignals:
        """LiRA/RMIA's view: the target and the pool on the audited samples and the population.

        ``target`` holds the target's signals on ``plan.audited``;
        ``target_population`` its signals on the dataset rows
        ``population_index`` (the split's population, which contains the
        pool's).
        """
        n = len(self.plan.audited)
        if target.phi is None or target_population.phi is None:
            raise MiaError("the target's signals have no per-view phi; retrain it with this version of mia")
        order = np.argsort(population_index)
        where = order[np.searchsorted(population_index, self.plan.population, sorter=order)]
        if not np.array_equal(np.asarray(population_index)[where], self.plan.population):
            raise MiaError("the target's population signals do not cover the pool's population; "
                           "attack with the split the target was trained with")
        return ReferenceSignals(
            target_phi=target.phi, phi=self.phi[:, :n], inclusion=self.inclusion[:, :n],
            population_target_phi=target_population.phi[where],
            population_phi=self.phi[:, n:], population_inclusion=self.inclusion[:, n:])

    def mem_scores(self) -> np.ndarray:
        """Feldman & Zhang memorization per pool sample: P[correct | IN] - P[correct | OUT].

        Estimated from the pool's own IN/OUT models; a sample no model trained
        on (or none left out) scores 0, the estimator's value without evidence.
        """
        return feldman_scores(self.correct, self.inclusion)

    def mem_scores_of(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`mem_scores` of the dataset rows ``rows`` (aligned with it); each must be a pool sample.

        An online pool's samples hold the target's audited members, so a
        pruning run reads its training rows' mem-scores here (all of them when
        the split has at least as many non-members as members).
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        samples = self.plan.samples
        order = np.argsort(samples)
        where = order[np.clip(np.searchsorted(samples, rows, sorter=order), 0, len(samples) - 1)]
        missing = int((samples[where] != rows).sum())
        if missing:
            raise MiaError(f"{missing} of the {len(rows)} rows are not samples of reference pool "
                           f"{self.plan.key[:8]} ({self.plan.mode}); mem-scores from a pool need an online pool "
                           "over a split with at least as many non-members as members, else use "
                           "mem_source=halves")
        return self.mem_scores()[where]


def load_pool(plan: PoolPlan, root: Path, size: int, data: Dataset) -> PoolSignals:
    """The first ``size`` models of the pool in ``root``, stacked."""
    have = pool_size(root)
    if have < size:
        raise MiaError(f"pool {plan.key} holds {have} models, {size} asked; grow it first")
    files = [np.load(model_file(root, m), allow_pickle=False) for m in range(size)]
    labels = data.y.cpu().numpy()[plan.samples]
    try:
        if any(f["inclusion"].shape != (len(plan.samples),) for f in files):
            raise MiaError(f"pool {plan.key} in {root} does not match its plan; delete the folder and retrain")
        stacked = {k: np.stack([f[k] for f in files]) for k in _MODEL_ARRAYS}
        label_only = [{k.removeprefix(_LABEL_ONLY_PREFIX): f[k].astype(np.float64) for k in f.files
                       if k.startswith(_LABEL_ONLY_PREFIX)} for f in files]
    finally:
        for f in files:
            f.close()
    return PoolSignals(plan, labels.astype(np.int64), label_only=label_only, **stacked)
