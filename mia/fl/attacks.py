"""FedMIA attacks on one federated-learning client, from what an honest-but-curious server records.

The server sees every sampled client's upload in every round. On a fixed
query set (the target client's members, then non-members that are the same
samples for every client and round) it records, per round, client and query,
the loss of the client's upload, the cosine between the query's gradient on
the round's global model and the client's update ``D = w_global - w_local``,
the gradient difference ``||D||^2 - ||D - g||^2``, and (per round and query)
the gradient norm ``||g||^2``: an :class:`FLSignals`. The attacks turn these
into per-sample scores, larger = member (FedMIA, Zhu et al. 2025):

- ``*-i`` (single round): the target's signal in one round;
- ``*-ii`` (multi-temporal): its mean over the rounds the target was sampled
  in, which averages out per-round noise;
- ``*-iii`` (multi-spatial): per round, the probability ``p`` under a
  Gaussian fit to the other sampled clients' signals (the non-members'
  distribution, as no other client holds the target's data) that a non-member
  looks less like a member than the target's value does, averaged over rounds,
  and scored as ``-log(1 - mean p)`` (same order; computed from the Gaussian
  tail in log space, so that samples far beyond every other client keep their
  order where ``mean p`` rounds to 1, beyond about 8 standard deviations).
  Comparing with the other clients removes how hard a sample is for every
  model, which the temporal mean keeps;
- ``grad-norm`` and ``grad-diff``: one round's gradient norm (members have
  small gradients) and gradient difference (a member's gradient is part of
  ``D``, which is ``lr`` times the summed gradients).

Member decisions, for the balanced accuracy (an attack never sees
membership): a ``*-iii`` score is a probability on a log scale, so the
decision is ``mean p > 0.5``, ``score > log 2``; the other scores have no calibrated scale, and the attacker
knows the query set is balanced (the game's prior of 1/2), so the threshold is
the median of the target's own scores. Unlike :mod:`mia.attacks`, nothing is
fitted on shadow models: the other clients are the reference.

:func:`round_curves` evaluates each attack as the rounds go by (what plots of
AUC and TPR at 0.1% FPR over rounds, :func:`mia.report.rounds.plot_round_curves`, draw).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from scipy.special import log_ndtr, logsumexp

from mia.attacks.base import AttackOutput, resolve_params
from mia.errors import MiaError, NothingToScore
from mia.metrics import attack_metrics, interval_metrics
from mia.registry import Param, Registry

CLIENT_SIGNALS = ("loss", "cos", "grad_diff")
"""The R x N x Q arrays of :class:`FLSignals` (NaN where a client was not sampled)."""

MIN_STD = 1e-8
"""The floor of the other clients' standard deviation in the ``*-iii`` attacks."""

LAST_SAMPLED = -1
"""The ``round`` parameter's default: the last recorded round the target was sampled in."""


@dataclass
class FLSignals:
    """What the server recorded on a fixed query set (the target client's members, then non-members
    that are the same samples for every client and round)."""

    rounds: np.ndarray  # R ints: the recorded round numbers (1-based, increasing)
    loss: np.ndarray  # R x N x Q: cross-entropy of client n's upload on query q; NaN where not sampled
    cos: np.ndarray  # R x N x Q: cosine(g_q, D_n), D_n = w_global - w_local_n; NaN where not sampled
    grad_diff: np.ndarray  # R x N x Q: ||D_n||^2 - ||D_n - g_q||^2; NaN where not sampled
    grad_norm: np.ndarray  # R x Q: ||g_q||^2 on the round's global model

    def __post_init__(self):
        rounds = np.asarray(self.rounds)
        if rounds.ndim != 1 or len(rounds) == 0:
            raise MiaError(f"FL signals need a non-empty 1-D array of round numbers, got shape {rounds.shape}")
        if not (np.issubdtype(rounds.dtype, np.number) and np.all(rounds == np.round(rounds))):
            raise MiaError(f"FL round numbers must be integers, got {rounds.tolist()}")
        self.rounds = rounds.astype(np.int64)
        if self.rounds[0] < 1 or np.any(np.diff(self.rounds) <= 0):
            raise MiaError(f"FL round numbers must be 1-based and increasing, got {self.rounds.tolist()}")
        for k in (*CLIENT_SIGNALS, "grad_norm"):
            setattr(self, k, np.asarray(getattr(self, k), dtype=np.float64))
        if self.loss.ndim != 3 or self.loss.shape[0] != len(self.rounds) or 0 in self.loss.shape:
            raise MiaError(f"FL loss must be R x N x Q with R={len(self.rounds)} recorded rounds, "
                           f"got shape {self.loss.shape}")
        r, n, q = self.loss.shape
        for k, shape in {"cos": (r, n, q), "grad_diff": (r, n, q), "grad_norm": (r, q)}.items():
            if getattr(self, k).shape != shape:
                raise MiaError(f"FL {k} has shape {getattr(self, k).shape}, expected {shape} "
                               f"(R={r} rounds, N={n} clients, Q={q} queries)")
        sampled = self.sampled
        for k in CLIENT_SIGNALS:
            x = getattr(self, k)
            if not np.array_equal(~np.isnan(x).all(axis=2), sampled):
                raise MiaError(f"FL {k} is NaN for other (round, client) pairs than loss; NaN must mark "
                               "exactly the clients not sampled in a round")
            if np.isnan(x[sampled]).any():
                raise MiaError(f"FL {k} has NaN for some queries of a sampled client; NaN may only mark "
                               "a client not sampled in a round")
        if np.isnan(self.grad_norm).any():
            raise MiaError("FL grad_norm has NaN; it is the global model's gradient norm, recorded every round")

    @property
    def sampled(self) -> np.ndarray:
        """R x N bool: whether client n was sampled (uploaded) in each recorded round."""
        return ~np.isnan(self.loss).all(axis=2)

    @property
    def num_clients(self) -> int:
        return int(self.loss.shape[1])

    @property
    def num_queries(self) -> int:
        return int(self.loss.shape[2])

    def target_rounds(self, target: int) -> np.ndarray:
        """The recorded round numbers in which client ``target`` was sampled."""
        return self.rounds[self.sampled[:, _check_target(self, target)]]

    def up_to(self, round: int) -> FLSignals:
        """The signals of the recorded rounds ``<= round``."""
        keep = self.rounds <= round
        if not keep.any():
            raise MiaError(f"no round up to {round} was recorded; recorded rounds: {self.rounds.tolist()}")
        return FLSignals(self.rounds[keep], self.loss[keep], self.cos[keep], self.grad_diff[keep],
                         self.grad_norm[keep])

    def save(self, path) -> Path:
        """One compressed ``.npz`` at exactly ``path`` (float32: float16 loses gradient values)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k).astype(np.float32) for k in (*CLIENT_SIGNALS, "grad_norm")}
        with open(path, "wb") as f:
            np.savez_compressed(f, rounds=self.rounds, **arrays)
        return path

    @classmethod
    def load(cls, path) -> FLSignals:
        """The signals :meth:`save` wrote to ``path`` (no pickles are read)."""
        path = Path(path)
        if not path.is_file():
            raise MiaError(f"no FL signals file at {path}; record them first")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("rounds", *CLIENT_SIGNALS, "grad_norm") if k not in z.files]
            if missing:
                raise MiaError(f"{path} is not an FL signals file: it lacks {', '.join(missing)}")
            return cls(z["rounds"], z["loss"], z["cos"], z["grad_diff"], z["grad_norm"])


def _check_target(signals: FLSignals, target) -> int:
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or \
            not 0 <= target < signals.num_clients:
        raise MiaError(f"target client must be an index in 0..{signals.num_clients - 1}, got {target!r}")
    return int(target)


def _values(signals: FLSignals, signal: str, target: int) -> np.ndarray:
    """R x Q: the target's recorded ``signal`` (``grad_norm`` is the global model's, the same for all)."""
    return signals.grad_norm if signal == "grad_norm" else getattr(signals, signal)[:, target]


# ---------------------------------------------------------------- scoring functions

def _one_round(signals: FLSignals, target: int, round: int = LAST_SAMPLED, *, signal: str,
               sign: float) -> np.ndarray:
    """``sign`` times the target's ``signal`` in one round (default: the last it was sampled in)."""
    sampled = signals.sampled[:, target]
    if round == LAST_SAMPLED:
        i = int(np.flatnonzero(sampled)[-1])
    else:
        hits = np.flatnonzero(signals.rounds == round)
        if len(hits) == 0:
            raise MiaError(f"round {round} was not recorded; recorded rounds: {signals.rounds.tolist()}")
        i = int(hits[0])
        if not sampled[i]:
            raise MiaError(f"client {target} was not sampled in round {round}; it was in rounds "
                           f"{signals.rounds[sampled].tolist()}")
    return sign * _values(signals, signal, target)[i]


def _temporal(signals: FLSignals, target: int, *, signal: str, sign: float) -> np.ndarray:
    """``sign`` times the target's mean ``signal`` over the rounds it was sampled in."""
    return sign * _values(signals, signal, target)[signals.sampled[:, target]].mean(axis=0)


def _spatial(signals: FLSignals, target: int, *, signal: str, sign: float) -> np.ndarray:
    """``-log(1 - p)``, ``p`` the mean over rounds of ``Phi(sign * (x_target - mu) / sigma)``, with ``mu``,
    ``sigma`` the other sampled clients' mean and standard deviation per query (rounds with fewer than two
    skipped). ``1 - p`` is the mean of the tails ``Phi(-z)``, summed in log space: in float64 ``p`` itself
    rounds to 1 beyond z of about 8.3, and a handful of other clients' spread puts members there (on
    purchase-synth with 4 clients, 17 members and 3 non-members tied at 1, so the TPR at 1% FPR read 0 at
    AUC 0.80)."""
    x = getattr(signals, signal)
    others = signals.sampled & (np.arange(signals.num_clients) != target)
    use = signals.sampled[:, target] & (others.sum(axis=1) >= 2)
    if not use.any():
        raise NothingToScore(f"no recorded round has client {target} and at least two other sampled clients to "
                             "compare it with; train with 3 or more clients sampled a round (--clients, "
                             "--client-fraction), or leave out the *-iii attacks")
    log_tails = []
    for r in np.flatnonzero(use):
        out = x[r, others[r]]
        mu, sigma = out.mean(axis=0), np.maximum(out.std(axis=0, ddof=1), MIN_STD)
        log_tails.append(log_ndtr(-sign * (x[r, target] - mu) / sigma))  # log(1 - Phi(z))
    return np.log(len(log_tails)) - logsumexp(log_tails, axis=0)


# ---------------------------------------------------------------- registry

@dataclass(frozen=True)
class FLAttackSpec:
    """A registered FL attack: ``score(signals, target, **params)`` -> per-query scores (larger = member).

    ``multi_round``: it combines every recorded round the target was sampled
    in (else it reads one round). ``threshold``: the member decision is
    ``score > threshold`` (``None``: above the median of the scores, see the
    module docstring).
    """

    name: str
    score: Callable[..., np.ndarray]
    description: str
    params: dict[str, Param] = field(default_factory=dict)
    multi_round: bool = False
    threshold: float | None = None


FL_ATTACKS: Registry[FLAttackSpec] = Registry("FL attack")

_ROUND = {"round": Param(int, LAST_SAMPLED, "the recorded round to attack; -1: the last one the target "
                                            "was sampled in")}


def _register_family(signal: str, sign: float, what: str, member: str) -> None:
    prefix = signal.replace("_", "-")
    FL_ATTACKS.register(f"{prefix}-i", FLAttackSpec(
        f"{prefix}-i", partial(_one_round, signal=signal, sign=sign),
        f"the target's {what} in one round ({member} = member)", dict(_ROUND)))
    FL_ATTACKS.register(f"{prefix}-ii", FLAttackSpec(
        f"{prefix}-ii", partial(_temporal, signal=signal, sign=sign),
        f"multi-temporal: the target's mean {what} over the rounds it was sampled in", multi_round=True))
    FL_ATTACKS.register(f"{prefix}-iii", FLAttackSpec(
        f"{prefix}-iii", partial(_spatial, signal=signal, sign=sign),
        f"multi-spatial: Gaussian probability, against the other sampled clients, that a non-member's "
        f"{what} is less member-like, averaged over rounds, as -log(1 - p)", multi_round=True,
        threshold=float(np.log(2.0))))  # p > 1/2


_register_family("loss", -1.0, "loss", "low")
_register_family("cos", 1.0, "gradient-update cosine", "high")
FL_ATTACKS.register("grad-norm", FLAttackSpec(
    "grad-norm", partial(_one_round, signal="grad_norm", sign=-1.0),
    "minus the global model's squared gradient norm in one round (members have small gradients)",
    dict(_ROUND)))
FL_ATTACKS.register("grad-diff", FLAttackSpec(
    "grad-diff", partial(_one_round, signal="grad_diff", sign=1.0),
    "||D||^2 - ||D - g||^2 of the target's update in one round (high = member)", dict(_ROUND)))


# ---------------------------------------------------------------- running

def run_fl_attack(name: str, signals: FLSignals, target: int, params: dict | None = None,
                  up_to_round: int | None = None) -> AttackOutput:
    """Score the query set for client ``target`` with FL attack ``name`` (membership never seen).

    ``up_to_round`` keeps the recorded rounds ``<= up_to_round`` only: a
    single-round attack's default round is then the last of those the target
    was sampled in. A single-round attack's ``round`` must be one the target
    was sampled in (``grad-norm`` too, so all attacks read the same rounds).
    """
    spec = FL_ATTACKS.get(name)
    kwargs = resolve_params(spec, params)  # reads only .name and .params
    target = _check_target(signals, target)
    if up_to_round is not None:
        signals = signals.up_to(up_to_round)
    if not signals.sampled[:, target].any():
        upto = "" if up_to_round is None else f" up to round {up_to_round}"
        raise MiaError(f"client {target} was not sampled in any recorded round{upto}; attack another "
                       "client or record more rounds")
    scores = np.asarray(spec.score(signals, target, **kwargs), dtype=np.float64)
    threshold = float(np.median(scores)) if spec.threshold is None else spec.threshold
    return AttackOutput(scores=scores, predictions=scores > threshold)


def round_curves(names: Sequence[str] | str, signals: FLSignals, target: int, is_member,
                 intervals: bool = False, seed: int = 0) -> dict[str, list[dict]]:
    """``{attack: [{"round": r, **attack_metrics}, ...]}`` over the rounds ``r`` the target was sampled in.

    Each entry evaluates the attack with ``up_to_round=r``: a single-round
    attack reads round ``r`` itself, a multi-round one rounds ``<= r``. A
    round where a ``*-iii`` attack has no round with two other sampled
    clients yet is left out of its curve. ``intervals`` adds
    :func:`mia.metrics.interval_metrics` (bootstrap intervals seeded by
    ``seed``, and ``epsilon_lb``) to every entry.
    """
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        FL_ATTACKS.get(name)
    is_member = np.asarray(is_member)
    if len(is_member) != signals.num_queries:
        raise MiaError(f"{len(is_member)} membership labels but {signals.num_queries} query samples")
    curves: dict[str, list[dict]] = {}
    for name in names:
        curves[name] = []
        for r in signals.target_rounds(target):
            try:
                out = run_fl_attack(name, signals, target, up_to_round=int(r))
            except NothingToScore:
                continue
            entry = {"round": int(r), **attack_metrics(out.scores, is_member, out.predictions)}
            if intervals:
                entry.update(interval_metrics(out.scores, is_member, seed=seed))
            curves[name].append(entry)
    return curves
