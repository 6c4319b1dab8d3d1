"""WeMeM's memorization-aware fine-tuning: RSW, RMR and both (SWMR).

WeMeM (the ``slide``/``slide_re``/``ml2`` options of its code) reads one
number per training row, its Feldman & Zhang mem-score
(:mod:`mia.prune.memscores`), and changes how the pruned model is fine-tuned
on high-memorization rows, the ones whose membership leaks most:

* ``rsw`` (sliding window, high to low): per class, the training rows are
  sorted by mem-score, descending; epoch ``e`` trains only on the window
  ``[s * e, s * e + w)`` of each class's sorted list, so fine-tuning starts
  on the most memorized rows and slides towards the typical ones
  (``rsw-reverse``: ascending, low to high). CIFAR-10: ``s = 50``, ``w = 500``.
* ``rmr`` (memorization regularization): rows with mem-score ``>= tau`` are
  trained with a stronger weight decay. As a loss hook: ``CE + strong_decay /
  2 * ||w||^2 * k / B`` for a batch of ``B`` rows of which ``k`` are high-mem,
  i.e. each high-mem row adds its own ``strong_decay / 2 * ||w||^2`` to the
  mean loss. ``||w||^2`` sums the squares of the trainable parameters (those
  the recipe's own weight decay acts on; ``weight_orig`` in a pruned layer).
* ``swmr``: both, with the window's ``order`` a parameter.

Choices where the paper and the code leave room:

* Each class has its own window: start ``s * e`` wrapped cyclically,
  ``(s * e) mod n_c``, end ``min(start + w, n_c)``, the window clipped at
  the end of the class's list. The reference code computes one end index for all
  classes (a bug with classes of unequal size); here every class takes part
  in every epoch, at most ``w`` of its rows, and once its list is exhausted
  the window starts again from where the cycle puts it (a class shorter
  than ``w`` trains on the rows from its start to its end, all of them only
  when the start wraps to 0). Ties in mem-score keep the rows' order in
  ``train_idx``. A window no smaller than every class makes RSW little more
  than plain fine-tuning (the paper's ``w = 500`` on a dataset with tens of
  rows a class), which ``epoch_rows`` warns about.
* ``epoch`` counts from 0 in every call of the training loop. Iterative
  pruning fine-tunes once per pruning step, so each step slides its own
  window from the top again: every step revisits the rows in the same order.
  The loop's learning-rate schedule spans the steps the windows make, so a
  decaying schedule (cosine, step) reaches its end as WeMeM's per-epoch
  MultiStepLR does.
* Where the mem-scores come from, in order: :meth:`MemScored.set_mem_scores`
  (the caller's), then ``mem_scores_csv``, then the estimator that
  ``mem_source`` names:

  - ``pool`` (default): the reference-model pool (:mod:`mia.pool`). A
    pruning run (:func:`mia.experiment.train_run`) grows the online pool of
    its dense recipe on its split to ``mem_models`` models and sets the
    scores of its members from :meth:`mia.pool.PoolSignals.mem_scores_of`:
    the same pool, stored in MLflow, then serves the attack on the dense
    original (``dense.`` metrics) and any later run of that recipe and
    split, so the models are trained once. Each row is IN for a random
    share of the pool's models (a row with no IN or no OUT model scores 0).
    Where no run supplies pool scores (a shadow model of an adaptive audit,
    a caller of ``fit``), the ``halves`` estimator stands in.
  - ``halves``: :func:`mia.prune.memscores.estimate_mem_scores`, ``mem_models``
    models of the target's architecture (found with
    :func:`mia.prune.memscores.architecture_of`) on complementary halves of
    the training rows, so that every row is IN for exactly half of them,
    with the recipe ``fit`` gets and ``mem_epochs`` epochs when set, cached
    on disk. A pruning run (:func:`mia.audit.fit_pruned`, its target and
    its adaptive reference models alike) estimates them with its dense
    recipe before fine-tuning: they model the memorization of the dense
    training, not of a few fine-tuning epochs from scratch (on digits,
    3-epoch halves models flagged 25 % of the rows at 0.5 or more, 30-epoch
    ones 8 %, the two uncorrelated).

  Once set, the scores stay for every later ``fit`` (one per pruning step)
  and are realigned to its ``train_idx``.
* RMR needs the model's parameters in its loss: ``fit`` binds the model it
  trains; a caller that fine-tunes through :func:`mia.prune.prune_and_finetune`
  with this defense as ``hooks`` (not through ``fit``) calls
  :meth:`RMR.bind_model` with the pruned model first, and must fine-tune on
  the ``train_idx`` the scores were set for (the hooks see positions into it).
"""

from __future__ import annotations

import warnings

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from mia.data.base import Dataset
from mia.defenses.base import Defense, DefenseSpec, EpochCallback, HyperParam, ModelFactory, register
from mia.errors import MiaError
from mia.prune.memscores import architecture_of, estimate_mem_scores, read_mem_scores_csv
from mia.train import TrainConfig, TrainResult

ORDERS = ("high-to-low", "low-to-high")
MEM_SOURCES = ("pool", "halves")


class MemScored(Defense):
    """A defense driven by per-training-row mem-scores: where they come from and how they line up.

    ``_train_idx``, ``_scores`` and ``_labels`` are aligned (position ``i`` is
    training row ``_train_idx[i]``); the hooks receive positions into it.
    """

    name = "mem-scored"
    mem_scores_csv: str
    mem_source: str
    mem_models: int
    mem_epochs: int

    @property
    def wants_pool_scores(self) -> bool:
        """Whether a run should set this defense's mem-scores from its reference pool (see the module docstring)."""
        return self.mem_source == "pool" and not self.mem_scores_csv and self._scores is None

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        self._train_idx: np.ndarray | None = None
        self._scores: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._derived: dict = {}  # what subclasses compute from the scores, dropped when they change

    @property
    def mem_scores(self) -> np.ndarray | None:
        """The mem-score of each training row, aligned with the ``train_idx`` they were set for."""
        return self._scores

    def set_mem_scores(self, train_idx: np.ndarray, scores: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Use ``scores`` (one per row of ``train_idx``, in its order); ``labels`` are the rows' classes
        (RSW needs them; ``fit`` reads them from the data when not given)."""
        train_idx = np.asarray(train_idx, dtype=np.int64).ravel()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if len(scores) != len(train_idx):
            raise MiaError(f"{self.name} got {len(scores)} mem-scores for {len(train_idx)} training rows; "
                           "pass one score per row of train_idx")
        if not np.isfinite(scores).all():
            raise MiaError(f"{self.name} got non-finite mem-scores; pass finite scores (Feldman's are in [-1, 1])")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64).ravel()
            if len(labels) != len(train_idx):
                raise MiaError(f"{self.name} got {len(labels)} labels for {len(train_idx)} training rows; "
                               "pass one label per row of train_idx")
        self._train_idx, self._scores, self._labels = train_idx, scores, labels
        self._derived = {}

    def prepare(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, config: TrainConfig,
                progress: bool = False) -> None:
        """Have mem-scores and labels for ``train_idx``, in its order (see the module docstring)."""
        train_idx = np.asarray(train_idx, dtype=np.int64).ravel()
        if self._scores is None:
            if self.mem_scores_csv:
                scores = read_mem_scores_csv(self.mem_scores_csv, train_idx)
            else:
                scores = self._estimate(make_model, data, train_idx, config, progress)
            self.set_mem_scores(train_idx, scores)
        self._align(train_idx)
        if self._labels is None:
            self._labels = data.y[torch.as_tensor(train_idx, device=data.y.device)].cpu().numpy()
            self._derived = {}

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        self.prepare(make_model, data, train_idx, config, progress)
        return super().fit(make_model, data, train_idx, val_idx, config, on_epoch, progress)

    def _estimate(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, config: TrainConfig,
                  progress: bool) -> np.ndarray:
        with torch.random.fork_rng(devices=[]):  # a probe model must not move the target's initialization
            probe = make_model()
        arch = architecture_of(probe, data.input_shape, data.num_classes)
        if arch is None:
            raise MiaError(f"{self.name} cannot tell which registered architecture the model is, to estimate "
                           "mem-scores; pass mem_scores_csv, or call set_mem_scores")
        recipe = replace(config, epochs=self.mem_epochs) if self.mem_epochs else config
        return estimate_mem_scores(arch[0], arch[1], data, train_idx, recipe, models=self.mem_models,
                                   seed=self.seed, progress=progress)

    def _align(self, train_idx: np.ndarray) -> None:
        """Reorder the scores (and labels) to ``train_idx``; rows without a score are an error."""
        if np.array_equal(self._train_idx, train_idx):
            return
        position = {int(i): k for k, i in enumerate(self._train_idx)}
        missing = sum(int(i) not in position for i in train_idx)
        if missing:
            raise MiaError(f"{self.name} has no mem-score for {missing} of the {len(train_idx)} training rows; "
                           "set the mem-scores for the rows it trains on")
        order = np.array([position[int(i)] for i in train_idx], dtype=np.int64)
        labels = None if self._labels is None else self._labels[order]
        self.set_mem_scores(train_idx, self._scores[order], labels)

    def _need_scores(self) -> np.ndarray:
        if self._scores is None:
            raise MiaError(f"{self.name} has no mem-scores; call set_mem_scores, or train through fit")
        return self._scores


def class_windows(scores: np.ndarray, labels: np.ndarray, order: str = "high-to-low") -> list[np.ndarray]:
    """Per class present (ascending label): its positions sorted by mem-score (ties: by position)."""
    key = -scores if order == "high-to-low" else scores
    windows = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        windows.append(rows[np.argsort(key[rows], kind="stable")])
    return windows


def window_rows(sorted_positions: list[np.ndarray], epoch: int, step: int, window: int) -> np.ndarray:
    """Each class's window for ``epoch``: start ``(step * epoch) mod n_c``, clipped at ``n_c`` (module docstring)."""
    parts = []
    for rows in sorted_positions:
        start = (step * epoch) % len(rows)
        parts.append(rows[start:start + window])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class RSW(MemScored):
    """Epoch hook: train each epoch on a per-class window of the rows sorted by mem-score."""

    name = "rsw"
    order = "high-to-low"
    step: int
    window: int

    def epoch_rows(self, epoch: int) -> torch.Tensor:
        scores = self._need_scores()
        if self._labels is None:
            raise MiaError(f"{self.name} needs each training row's class: pass labels to set_mem_scores, "
                           "or train through fit")
        if "windows" not in self._derived:
            self._derived["windows"] = windows = class_windows(scores, self._labels, self.order)
            largest = max((len(rows) for rows in windows), default=0)
            if self.window >= largest:
                warnings.warn(f"{self.name}: window={self.window} rows per class covers every class here (the "
                              f"largest has {largest} training rows), so the window hardly selects; set "
                              "--defense-param window=... below the class sizes", stacklevel=2)
            stalled = sorted({len(rows) for rows in windows if self.window < len(rows) and self.step % len(rows) == 0})
            if stalled:  # start (step * epoch) mod n_c is 0 in every epoch: the rest of the class never trains
                warnings.warn(f"{self.name}: step={self.step} is a multiple of the size of the classes of "
                              f"{', '.join(map(str, stalled))} training rows, whose window never slides (it trains "
                              f"the same {self.window} rows every epoch); set --defense-param step=... below "
                              "the class sizes", stacklevel=2)
        return torch.from_numpy(window_rows(self._derived["windows"], epoch, self.step, self.window))


class RSWReverse(RSW):
    """RSW from the least to the most memorized rows (mia_prune's ``slide_re``)."""

    name = "rsw-reverse"
    order = "low-to-high"


def squared_norm(model: nn.Module) -> torch.Tensor:
    """``||w||^2`` over the trainable parameters (what weight decay acts on)."""
    return sum(p.square().sum() for p in model.parameters() if p.requires_grad)


class RMR(MemScored):
    """Loss hook: a stronger weight decay on the rows with mem-score ``>= tau``, by their share of the batch."""

    name = "rmr"
    tau: float
    strong_decay: float

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        self._model: nn.Module | None = None
        self._share: torch.Tensor | None = None

    def bind_model(self, model: nn.Module) -> None:
        """The model whose parameters the decay term penalizes: a pruning run binds the pruned model
        before fine-tuning it (``fit`` binds the model it trains)."""
        self._model = model

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        self.prepare(make_model, data, train_idx, config, progress)  # estimation sees the caller's factory

        def build() -> nn.Module:
            model = make_model()
            self.bind_model(model)
            return model

        return super().fit(build, data, train_idx, val_idx, config, on_epoch, progress)

    def high(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Per training row: mem-score ``>= tau`` (bool, on ``device``)."""
        key = ("high", str(device))
        if key not in self._derived:
            self._derived[key] = torch.as_tensor(self._need_scores() >= self.tau, device=device)
        return self._derived[key]

    def positions(self, positions: torch.Tensor) -> None:
        self._share = self.high(positions.device)[positions].float().mean()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        ce = super().loss(logits, targets, labels, epoch)
        if self._model is None:
            raise MiaError(f"{self.name} needs the model's parameters: call bind_model(model) before "
                           "fine-tuning, or train through fit")
        if self._share is None:
            raise MiaError(f"{self.name} needs the batch's rows: run it in mia.train.train, which calls "
                           "positions before each batch")
        return ce + (self.strong_decay / 2) * self._share * squared_norm(self._model)

    def metrics(self) -> dict[str, float]:
        if self._scores is None:
            return {}
        return {"high_mem_share": float((self._scores >= self.tau).mean())}


class SWMR(RSW, RMR):
    """RSW's window and RMR's decay together; ``order`` picks the window's direction."""

    name = "swmr"



_MEM_PARAMS = {
    "mem_scores_csv": HyperParam(str, "", "CSV of mem-scores: column mem_score (train_idx order) or "
                                          "index,mem_score (dataset indices); empty: estimate them"),
    "mem_source": HyperParam(str, "pool", "estimator without a CSV: pool (a run's reference pool of the dense "
                                          "recipe, shared with the attack) or halves (own models on complementary "
                                          "halves)", choices=MEM_SOURCES, search=False),
    "mem_models": HyperParam(int, 8, "models that estimate the mem-scores (without a CSV)", low=2, search=False),
    "mem_epochs": HyperParam(int, 0, "epochs of the halves models (0: the recipe's; in pruning the dense "
                                     "training's)", low=0, search=False),
}
_WINDOW_PARAMS = {
    "step": HyperParam(int, 50, "rows per class the window slides each epoch (the paper's s)",
                       low=1, log=True, search_range=(1, 1000)),
    "window": HyperParam(int, 500, "rows per class in each epoch's window (the paper's w)",
                         low=1, log=True, search_range=(1, 100_000)),
}
_DECAY_PARAMS = {
    "tau": HyperParam(float, 0.5, "mem-score from which a row gets the stronger weight decay",
                       low=0.0, high=1.0, search_range=(0.0, 1.0)),
    "strong_decay": HyperParam(float, 0.1, "weight decay on high-mem rows (loss + decay/2 * ||w||^2 per row)",
                               low=0.0, log=True, search_range=(1e-3, 1.0)),
}
_SCENARIOS = ("pruning", "centralized")

register(DefenseSpec(
    "rsw", RSW,
    "RSW (WeMeM): each epoch trains on a per-class window of the rows sorted by mem-score, sliding from high "
    "to low memorization", scenarios=_SCENARIOS, params={**_WINDOW_PARAMS, **_MEM_PARAMS}))
register(DefenseSpec(
    "rsw-reverse", RSWReverse,
    "RSW from low to high memorization: the window slides from the most typical rows to the most memorized",
    scenarios=_SCENARIOS, params={**_WINDOW_PARAMS, **_MEM_PARAMS}))
register(DefenseSpec(
    "rmr", RMR,
    "RMR (WeMeM): rows with mem-score >= tau get a stronger weight decay", scenarios=_SCENARIOS,
    params={**_DECAY_PARAMS, **_MEM_PARAMS}))
register(DefenseSpec(
    "swmr", SWMR,
    "SWMR (WeMeM): RSW's sliding window and RMR's stronger decay on high-mem rows together",
    scenarios=_SCENARIOS,
    params={**_WINDOW_PARAMS, **_DECAY_PARAMS,
            "order": HyperParam(str, "high-to-low", "direction the window slides through the mem-scores",
                                choices=ORDERS), **_MEM_PARAMS}))
