"""One small interface for every defense, and the registry ``--defense`` reads.

A defense is a registered name with typed, documented hyperparameters (each
with the values it may take and, unless ``search=False``, the part of them
``mia tune`` searches by default) and the scenarios it applies to. It acts at
one or more hook points, and overrides only those:

* inside the one training loop (:class:`mia.train.TrainHooks`): the batch
  (mixup), the loss (label smoothing, RelaxLoss, HAMP), early stopping;
* the whole training procedure (:meth:`Defense.fit`: DP-SGD, AdvReg, SELENA);
* the released outputs (:meth:`Defense.release`: MemGuard, confidence
  masking, HAMP's output modification): every query of the target (signals,
  views) goes through the released model, so attacks see what a user would
  (label-only queries of a release that keeps the network's labels go to the
  network, which answers the same labels);
* in federated learning, the client uploads (:meth:`Defense.upload`: client
  DP, quantization, sparsification, CoFedMID's perturbation): the server,
  its aggregate and every FL attack see the defended uploads only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from mia.data.base import Dataset
from mia.errors import PLUGIN_HINT, MiaError
from mia.registry import Param, Registry, coerce
from mia.train import TrainConfig, TrainHooks, TrainResult, train


@dataclass(frozen=True)
class HyperParam(Param):
    """A defense hyperparameter: a :class:`mia.registry.Param` (type, default, help, the values it may take:
    ``low``/``high``/``open_low``, ``choices``) and what a search explores.

    ``search_range`` (with ``log`` for a log scale) is what ``mia tune``
    explores by default, a sensible part of the valid range; a user may set
    any valid value, and a YAML space may search any valid range.
    ``search=False`` keeps a validated setting out of the default search space:
    one that changes how a quantity is estimated (mem-score models), not where
    the defense sits between privacy and utility.
    """

    log: bool = False
    search: bool = True
    search_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class DefenseSpec:
    name: str
    cls: type["Defense"]
    description: str
    scenarios: tuple[str, ...] = ("centralized", "pruning")
    params: dict[str, HyperParam] = field(default_factory=dict)

    def __post_init__(self):
        for key, p in self.params.items():  # a plugin's mistake shows at registration, not in a study,
            # as a one-line MiaError like every other mistake in what a user registers
            if p.search and p.choices is None and p.type in (int, float):
                if p.search_range is None or not all(p.allows(v) for v in p.search_range) \
                        or not p.search_range[0] < p.search_range[1]:
                    raise MiaError(f"defense {self.name}: searched parameter {key} needs a search_range "
                                   f"(low < high) inside its valid range {p.valid_range()}")
                if p.log and p.search_range[0] <= 0:
                    raise MiaError(f"defense {self.name}: parameter {key} is searched on a log scale, so its "
                                   f"search_range must start above 0, got {p.search_range}")
        self._check_class()

    def _check_class(self) -> None:
        """A user's defense class of the wrong form is a one-line error when registered, as an attack's is, not a
        TypeError traceback in an audit or in every trial of a study: it is built as ``cls(seed=seed, **params)``."""
        if not (isinstance(self.cls, type) and issubclass(self.cls, Defense)):
            raise MiaError(f"defense {self.name}: cls must be a subclass of mia.defenses.Defense, got {self.cls!r}")
        try:
            inspect.signature(self.cls).bind(seed=0, **{k: p.default for k, p in self.params.items()})
        except TypeError:
            wanted = ", ".join(["seed=0", *self.params])
            raise MiaError(f"defense {self.name}: {self.cls.__name__}{inspect.signature(self.cls)} must take the seed "
                           f"and its hyperparameters as keyword arguments: def __init__(self, {wanted}) (or no "
                           f"__init__: Defense's sets them as attributes)") from None


DEFENSES: Registry[DefenseSpec] = Registry("defense", hint=PLUGIN_HINT)

ModelFactory = Callable[[], nn.Module]
GlobalLoss = Callable[[np.ndarray], np.ndarray]  # dataset rows -> per-row loss of the current global model
EpochCallback = Callable[[int, dict], None]


class Defense(TrainHooks):
    """Plain training and released outputs as they are; subclasses override their hook points.

    Hyperparameters arrive as keyword arguments, already typed and checked
    against the spec; ``seed`` seeds whatever randomness the defense adds.
    """

    name = "none"  # the registered name, set by make_defense
    num_classes: int | None = None  # set by bind, before training

    def __init__(self, seed: int = 0, **params):
        self.seed = seed
        self.params = params
        for key, value in params.items():
            setattr(self, key, value)

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        """Train a model on ``train_idx`` (select on ``val_idx``); the default is the one loop with these hooks."""
        self.bind(data.num_classes)
        model = make_model()
        result = train(model, data, train_idx, val_idx, config, on_epoch=on_epoch, progress=progress, hooks=self)
        return model, result

    def release(self, model: nn.Module) -> nn.Module:
        """The model as users query it; the default releases its logits unchanged."""
        return model

    def schedule(self, config: TrainConfig) -> TrainConfig:
        """The recipe whose epochs the released model's best epoch counts: ``config``, unless :meth:`fit`
        trains by its own (DP-SGD's batch, rate and epochs; SELENA's distillation epochs). Plain
        reference models stop at the target's epoch only where they share its schedule."""
        return config

    def upload(self, updates: torch.Tensor, clients: np.ndarray, weights: torch.Tensor, round: int,
               layers: list[slice]) -> torch.Tensor:
        """Federated: what the server receives from this round's sampled clients; the default sends them as they are.

        ``updates`` is ``K x P``: row ``k`` is client ``clients[k]``'s
        flattened ``w_local - w_global``; ``weights`` (``K``, summing to 1) are
        the aggregation weights; ``round`` counts from 1; ``layers`` are the
        slices of the flat vector that hold each parameter tensor (for
        layer-wise operations). Returns the ``K x P`` uploads the server sees
        and aggregates as ``w_global + server_lr * weights @ uploads``.
        """
        return updates

    # ---- federated learning: the simulation (:mod:`mia.fl.simulation`) calls these; defaults do nothing

    def clients(self, num_clients: int) -> None:
        """Before round 1: the number of clients in the federation."""

    def plan(self, rounds: int, sample_rate: float) -> None:
        """Before round 1: the number of rounds and the share of clients sampled in each (for accounting)."""

    def bind(self, num_classes: int) -> None:
        """Before training (the audit, the default :meth:`fit` and the federated simulation call it):
        the number of classes, for hooks that build soft labels (:meth:`classes`) and for settings that
        depend on it (an override raises a one-line :class:`MiaError` where the data rules a setting out)."""
        self.num_classes = int(num_classes)

    def classes(self) -> int:
        """The number of classes :meth:`bind` gave, for hooks that build soft labels over them."""
        if self.num_classes is None:
            raise MiaError(f"{self.name} builds soft labels over the dataset's classes: train through "
                           f"{type(self).__name__}.fit or call bind(num_classes) first")
        return self.num_classes

    def local_rows(self, client: int, rows: np.ndarray, round: int, global_loss: "GlobalLoss") -> np.ndarray:
        """The rows client ``client`` trains on in ``round`` (default: all of its rows).

        ``global_loss(rows)`` is the per-row loss of the round's global model.
        """
        return rows

    def client_hooks(self, client: int) -> TrainHooks:
        """The training-loop hooks of client ``client``'s local training (default: this defense's own)."""
        return self

    def after_round(self, round: int, global_loss: "GlobalLoss") -> None:
        """After the aggregation of ``round``; ``global_loss`` now evaluates the new global model."""

    def state_dict(self) -> dict:
        """What a federated checkpoint must keep for a resumed run to continue exactly (plain values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    def metrics(self) -> dict[str, float]:
        """What the defense reports after training (e.g. DP-SGD's epsilon)."""
        return {}


class ReleasedModel(nn.Module):
    """A model whose outputs pass through ``transform`` (probabilities in, probabilities out).

    Its forward returns log-probabilities, floored at ``log(1e-30)``, so every
    signal (softmax, loss, LiRA's phi) reads the released probabilities.
    """

    def __init__(self, model: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model, self.transform = model, transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.transform(torch.softmax(self.model(x).float(), dim=-1))
        return probs.clamp_min(1e-30).log()


def register(spec: DefenseSpec) -> DefenseSpec:
    return DEFENSES.register(spec.name, spec)


def make_defense(name: str, params: dict | None = None, seed: int = 0) -> Defense:
    """The defense ``name`` with ``params`` (strings from the CLI or typed values), checked."""
    spec = DEFENSES.get(name)
    given = coerce(spec.params, dict(params or {}), f"defense {name}")
    for key, value in given.items():
        spec.params[key].check(f"defense {name}", key, value)
    values = {k: p.default for k, p in spec.params.items()}
    values.update(given)
    defense = spec.cls(seed=seed, **values)
    defense.name = name  # as registered: what messages call it
    return defense


def check_scenario(name: str, scenario: str) -> None:
    spec = DEFENSES.get(name)
    if scenario not in spec.scenarios:
        raise MiaError(f"defense {name} applies to {', '.join(spec.scenarios)}, not {scenario}")


register(DefenseSpec("none", Defense, "no defense: plain training, outputs released as they are",
                     scenarios=("centralized", "federated", "pruning")))
