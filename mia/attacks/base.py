"""What every black-box attack shares: its inputs, its output, its registry.

An attack is a small scikit-learn-style estimator: constructed from its
parameters (and a seed), ``fit`` on shadow signals (a shadow model's outputs
on its own members and non-members), then ``decision_function`` on the
target's signals. It never sees the target's membership: the evaluation
(:mod:`mia.metrics`) does. Member decisions are ``score > threshold_``, with
``threshold_`` fitted on the shadows too, so the reported balanced accuracy is
what the attacker would really reach.

Reference-model attacks (family ``"reference"``: LiRA, RMIA, and LiRA's
global-threshold baseline, :mod:`mia.attacks.reference`) compare the target
with reference models on the audited samples themselves. Their spec lists
``"reference"`` in ``needs``; :func:`run_attack` then calls
``fit(shadows, reference)`` with a :class:`ReferenceSignals` (the only way
they receive it); an attack that needs ``"split-ai"`` (``selena-adaptive``)
gets ``fit(shadows, split_ai)``, and every other attack keeps ``fit(shadows)``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from mia.errors import PLUGIN_HINT, MiaError
from mia.plugins import call_users
from mia.registry import Param, Registry, coerce
from mia.signals import Signals


@dataclass
class ShadowSignals:
    """A shadow model's signals on its own members and non-members."""

    signals: Signals
    is_member: np.ndarray

    def __post_init__(self):
        self.is_member = np.asarray(self.is_member).astype(bool)
        if len(self.is_member) != len(self.signals):
            raise MiaError(f"shadow signals hold {len(self.signals)} samples but "
                           f"{len(self.is_member)} membership labels")


@dataclass
class ReferenceSignals:
    """Reference models beside the target, on the same samples and views: what LiRA/RMIA compare.

    ``phi`` arrays hold the logit-scaled true-label confidence
    (:func:`mia.signals.logit_confidence`) per view (``V`` views; view 0 is
    the plain input). The audited samples are the target's balanced query set
    (``N``); the population samples (``Z``) are attacker data that RMIA uses
    as its reference points ``z``. ``inclusion[m, n]`` says whether reference
    model ``m`` trained on sample ``n``: in an offline pool no model trained on
    an audited sample.
    """

    target_phi: np.ndarray  # N x V
    phi: np.ndarray  # M x N x V
    inclusion: np.ndarray  # M x N bool
    population_target_phi: np.ndarray  # Z x V
    population_phi: np.ndarray  # M x Z x V
    population_inclusion: np.ndarray  # M x Z bool

    @property
    def num_models(self) -> int:
        return int(self.phi.shape[0])


@dataclass
class AttackOutput:
    """Per-sample scores (larger = more likely a member) and boolean member decisions."""

    scores: np.ndarray
    predictions: np.ndarray
    chosen: dict = field(default_factory=dict)  # settings the attack chose itself (e.g. RMIA's temperature)
    evaluated: np.ndarray | None = None  # boolean mask of the rows its metrics count (None: all)

    def restricted(self, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, predictions, is_member)`` on the rows that count: an attack that knew some
        audited rows (``selena-adaptive``'s known members) is not scored on them."""
        keep = slice(None) if self.evaluated is None else self.evaluated
        return self.scores[keep], self.predictions[keep], np.asarray(is_member)[keep]


class Attack(ABC):
    """Base class: ``fit(shadows) -> self``, ``decision_function(signals) -> scores``.

    Subclasses take their parameters as keyword arguments (plus ``seed``) and
    set ``threshold_`` in ``fit``; decisions are ``score > threshold_``.
    """

    threshold_: float = 0.0

    def __init__(self, seed: int = 0, **params):
        """The spec's parameters become attributes, as a :class:`mia.defenses.Defense`'s do: a user's attack
        needs no ``__init__`` of its own (one it writes must take the parameters and ``seed=0``)."""
        self.seed = seed
        for key, value in params.items():
            setattr(self, key, value)

    @abstractmethod
    def fit(self, shadows: list[ShadowSignals]) -> "Attack":
        """Learn from shadow models' signals on their own members and non-members."""

    @abstractmethod
    def decision_function(self, signals: Signals) -> np.ndarray:
        """Per-sample membership scores, larger = more likely a member."""

    def chosen(self) -> dict:
        """Settings the fitted attack chose for itself (left to it by the user), for the record."""
        return {}


def pool(shadows: list[ShadowSignals], max_rows: int | None = None, seed: int = 0) -> tuple[Signals, np.ndarray]:
    """All shadows' signals stacked into one float32 set, with their membership.

    ``max_rows`` caps the set with a seeded subsample: learned attacks gain
    little from more rows than that, and a pool of 64 models on a large
    population would otherwise cost minutes per attack. The subsample is
    taken from each shadow before anything is stacked: stacking first made
    float32 copies of every shadow's logits and sensitivity only to keep
    ``max_rows`` of them (Purchase100: 57 MB a reference model, 3.6 GB at 64,
    for each learned attack).
    """
    sizes = [len(s.is_member) for s in shadows]
    total = sum(sizes)
    if max_rows is None or total <= max_rows:
        parts = [slice(None)] * len(shadows)
    else:  # the rows a subsample of the stacked set would keep, found in each shadow
        keep = np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False))
        cuts = np.searchsorted(keep, np.cumsum([0, *sizes]))
        parts = [keep[a:b] - start for a, b, start in zip(cuts[:-1], cuts[1:], np.cumsum([0, *sizes]))]
    sens = [s.signals.sensitivity for s in shadows]
    signals = Signals(np.concatenate([s.signals.logits[p] for s, p in zip(shadows, parts)], dtype=np.float32),
                      np.concatenate([s.signals.labels[p] for s, p in zip(shadows, parts)]),
                      None if any(x is None for x in sens) else
                      np.concatenate([x[p] for x, p in zip(sens, parts)], dtype=np.float32))
    return signals, np.concatenate([s.is_member[p] for s, p in zip(shadows, parts)])


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its class, documented parameters and the signals it needs."""

    name: str
    cls: type
    description: str
    params: dict[str, Param] = field(default_factory=dict)
    needs: frozenset[str] = frozenset()  # extra inputs beyond logits: {"sensitivity"}, {"reference"}
    family: str = "threshold"  # "threshold" | "learned" | "reference"
    pool: bool = True  # fitted on the reference pool's models (False: builds its own, as selena-adaptive)

    def __post_init__(self):
        """A user's attack class (``MIA_PLUGINS``) of the wrong form is a one-line error when registered, not a
        TypeError traceback when the audit reaches it: it is constructed as ``cls(**params, seed=seed)``."""
        if not (isinstance(self.cls, type) and issubclass(self.cls, Attack)):
            raise MiaError(f"attack {self.name}: cls must be a subclass of mia.attacks.base.Attack, got {self.cls!r}")
        try:
            inspect.signature(self.cls).bind(**{k: p.default for k, p in self.params.items()}, seed=0)
        except TypeError:
            wanted = ", ".join([*self.params, "seed=0"])
            raise MiaError(f"attack {self.name}: {self.cls.__name__}{inspect.signature(self.cls)} must take its "
                           f"parameters and the seed as keyword arguments: def __init__(self, {wanted})") from None


ATTACKS: Registry[AttackSpec] = Registry("attack", hint=PLUGIN_HINT)


def register(spec: AttackSpec) -> AttackSpec:
    """Add ``spec`` to :data:`ATTACKS` (the order of registration is the listing order)."""
    return ATTACKS.register(spec.name, spec)


def resolve_params(spec: AttackSpec, params: dict | None) -> dict:
    """The attack's full parameters: defaults overridden by ``params`` (typed by :func:`coerce`)."""
    given = coerce(spec.params, dict(params or {}), f"attack {spec.name!r}")
    for k, v in given.items():
        kind = spec.params[k].type
        if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
            raise MiaError(f"attack {spec.name!r} parameter {k}={v!r} is not a valid "
                           f"{kind.__name__}")
        spec.params[k].check(f"attack {spec.name!r}", k, given[k])
    return {k: given.get(k, p.default) for k, p in spec.params.items()}


def _check_inputs(spec: AttackSpec, target: Signals, shadows: list[ShadowSignals]) -> None:
    for s in shadows:
        if s.signals.logits.shape[1] != target.logits.shape[1]:
            raise MiaError(f"shadow signals have {s.signals.logits.shape[1]} classes but the "
                           f"target's have {target.logits.shape[1]}; use shadows of the same task")
    if spec.needs & _OWN_MODELS:
        return  # these attacks learn from their own models; shadows, if given, only have to match
    if not shadows:
        raise MiaError(f"attack {spec.name!r} needs at least one shadow model's signals; "
                       "train shadow models (--reference-models >= 1)")
    pooled = np.concatenate([s.is_member for s in shadows])
    if pooled.all() or not pooled.any():
        raise MiaError(f"attack {spec.name!r}: the shadow signals hold only "
                       f"{'members' if pooled.all() else 'non-members'}; give both")
    if "sensitivity" in spec.needs and (
            target.sensitivity is None or any(s.signals.sensitivity is None for s in shadows)):
        raise MiaError(f"attack {spec.name!r} needs the output sensitivity of the target and "
                       "shadow models; compute signals with compute_signals(..., sensitivity=True)")


def check_reference(name: str, target: Signals, reference: ReferenceSignals | None) -> None:
    """One-line errors for a missing reference pool or arrays whose shapes do not line up."""
    if reference is None:
        raise MiaError(f"attack {name!r} needs reference models' signals on the audited samples; "
                       "train a reference pool with --reference-models M")
    r = reference
    shapes = {k: np.shape(getattr(r, k)) for k in ("target_phi", "phi", "inclusion",
                                                   "population_target_phi", "population_phi",
                                                   "population_inclusion")}
    if len(shapes["target_phi"]) != 2 or len(shapes["phi"]) != 3 or shapes["phi"][0] < 1:
        raise MiaError(f"attack {name!r}: reference signals need target_phi N x V and phi M x N x V "
                       f"with M >= 1, got {shapes['target_phi']} and {shapes['phi']}")
    m, (n, v) = shapes["phi"][0], shapes["target_phi"]
    z = shapes["population_target_phi"][0] if shapes["population_target_phi"] else 0
    want = {"phi": (m, n, v), "inclusion": (m, n), "population_target_phi": (z, v),
            "population_phi": (m, z, v), "population_inclusion": (m, z)}
    for k, shape in want.items():
        if shapes[k] != shape:
            raise MiaError(f"attack {name!r}: reference signals' {k} has shape {shapes[k]}, expected "
                           f"{shape} (M={m} models, N={n} audited, Z={z} population, V={v} views)")
    if len(target) != n:
        raise MiaError(f"attack {name!r}: the target has {len(target)} audited samples but the "
                       f"reference signals hold {n}; build both from the same query set")


_OWN_MODELS = frozenset({"reference", "split-ai"})
"""``needs`` of attacks fitted on models of their own rather than on the shadows' signals."""


def run_attack(name: str, target: Signals, shadows: list[ShadowSignals],
               params: dict | None = None, seed: int = 0,
               reference: ReferenceSignals | None = None, split_ai=None) -> AttackOutput:
    """Fit attack ``name`` on ``shadows`` and score ``target`` (whose membership it never sees).

    Attacks whose spec needs ``"reference"`` are fitted with
    ``fit(shadows, reference)``, those that need ``"split-ai"`` with
    ``fit(shadows, split_ai)`` (a :class:`mia.attacks.adaptive.SplitAISignals`);
    the others ignore both.
    """
    spec = ATTACKS.get(name)
    kwargs = resolve_params(spec, params)
    _check_inputs(spec, target, shadows)
    attack = call_users(f"attack {name!r}: its constructor", spec.cls, **kwargs, seed=seed)
    if "reference" in spec.needs:
        check_reference(name, target, reference)
        extra = (reference,)
    elif "split-ai" in spec.needs:
        if split_ai is None:
            raise MiaError(f"attack {name!r} needs a shadow Split-AI's answers; build them with "
                           "mia.audit.split_ai_reference (mia attack does when the attack is asked for)")
        extra = (split_ai,)
    else:
        extra = ()
    fitted = call_users(f"attack {name!r}: its fit", attack.fit, shadows, *extra)  # a user's bug: one line
    attack = attack if fitted is None else fitted  # a user's fit that forgot ``return self``
    scores = np.asarray(call_users(f"attack {name!r}: its decision_function", attack.decision_function, target),
                        dtype=np.float64)
    if scores.shape != (len(target),):
        raise MiaError(f"attack {name!r}: decision_function returned shape {scores.shape} for {len(target)} "
                       f"samples; return one score per sample, shape ({len(target)},), larger for members")
    return AttackOutput(scores=scores, predictions=scores > attack.threshold_, chosen=attack.chosen(),
                        evaluated=getattr(attack, "evaluated_", None))
