"""Label-only attacks: thresholds on what the released model's top-1 labels reveal.

A model that releases only labels still leaks membership through how robust
its correct labels are (Choquette-Choo et al., ICML 2021; Li & Zhang, CCS
2021): a training sample sits deeper inside its class region, so its label
survives more perturbations. The perturbation statistics are per-sample
signals computed once per model (:func:`mia.label_signals.label_only_signals`,
stored in :attr:`mia.signals.Signals.label_only`); each attack here is a
threshold on one of them, larger = member:

* ``aug``: fraction of shifted (and flipped) views still correct;
* ``boundary``: L2 distance to the decision boundary, found with labels only
  (HopSkipJump, Chen et al. 2020; ``mode="black-box"``, signal ``boundary``)
  or with gradients (``mode="white-box"``, signal ``boundary-wb``);
  misclassified samples are at distance 0;
* ``noise-flip``: fraction of random k-bit flips that keep the label (binary
  tabular data).

One global threshold, fitted on the shadow models' signals for their own
members and non-members (:func:`mia.attacks.threshold.fit_thresholds`);
decisions are ``score > threshold_``.
"""

from __future__ import annotations

import numpy as np

from mia.attacks.base import Attack, AttackSpec, ShadowSignals, register
from mia.attacks.threshold import best_threshold
from mia.errors import MiaError
from mia.registry import Param
from mia.signals import Signals

BOUNDARY_MODES = {"black-box": "boundary", "white-box": "boundary-wb"}
"""``boundary`` attack mode -> the label-only signal it thresholds."""


_ONLY_FOR = {"aug": ", which exist for image data only",
             "noise-flip": ", which exist for binary tabular data only (every feature 0 or 1)"}
"""Why a signal asked for in training can still be missing: it is left out of data it does not apply to
(tabular rows with other values got no ``noise-flip``, and the message said to train with it, as it had)."""


def label_only_signal(signals: Signals, kind: str, attack: str, whose: str) -> np.ndarray:
    """Float64 ``signals.label_only[kind]``, or a one-line error that says how to compute it.

    ``whose`` is a possessive for the message ("target's", "shadow models'").
    """
    values = (signals.label_only or {}).get(kind)
    if values is None:
        raise MiaError(f"attack {attack!r} needs the {whose} label-only {kind!r} signals{_ONLY_FOR.get(kind, '')}"
                       f"{'; on such data' if kind in _ONLY_FOR else ';'} train with --label-only {kind} "
                       f"(mia.label_signals.label_only_signals(..., kinds=({kind!r},)) in Python)")
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(signals),):
        raise MiaError(f"attack {attack!r}: the {whose} label-only {kind!r} signals hold shape "
                       f"{values.shape} for {len(signals)} samples; recompute them on the same query set")
    return values


class LabelOnlyAttack(Attack):
    """Global threshold on one label-only signal; see the module docstring."""

    name: str = ""
    kind: str = ""

    def __init__(self, seed: int = 0):
        self.seed = seed  # unused: the fit is deterministic

    def fit(self, shadows: list[ShadowSignals]) -> "LabelOnlyAttack":
        scores = np.concatenate([label_only_signal(s.signals, self.kind, self.name, "shadow models'")
                                 for s in shadows])
        member = np.concatenate([s.is_member for s in shadows])
        self.threshold_ = best_threshold(scores, member)
        return self

    def decision_function(self, signals: Signals) -> np.ndarray:
        return label_only_signal(signals, self.kind, self.name, "target's")


class AugAttack(LabelOnlyAttack):
    """Fraction of augmented views classified correctly (Choquette-Choo et al. 2021)."""

    name, kind = "aug", "aug"


class NoiseFlipAttack(LabelOnlyAttack):
    """Fraction of random bit flips that keep the label correct (Choquette-Choo et al. 2021)."""

    name, kind = "noise-flip", "noise-flip"


class BoundaryAttack(LabelOnlyAttack):
    """Distance to the decision boundary (Li & Zhang 2021; Choquette-Choo et al. 2021)."""

    name = "boundary"

    def __init__(self, mode: str = "black-box", seed: int = 0):
        if mode not in BOUNDARY_MODES:
            raise MiaError(f"attack 'boundary': mode must be one of {', '.join(BOUNDARY_MODES)}, "
                           f"got {mode!r}")
        super().__init__(seed)
        self.mode = mode
        self.kind = BOUNDARY_MODES[mode]


register(AttackSpec("aug", AugAttack,
                    "fraction of shifted/flipped views still correct (Choquette-Choo et al.)",
                    needs=frozenset({"label_only:aug"}), family="label-only"))
register(AttackSpec("boundary", BoundaryAttack,
                    "L2 distance to the decision boundary (Li & Zhang; Choquette-Choo et al.)",
                    {"mode": Param(str, "black-box", "'black-box': HopSkipJump on labels (signal "
                                                     "'boundary'); 'white-box': gradient search "
                                                     "(signal 'boundary-wb')")},
                    needs=frozenset({"label_only:boundary"}), family="label-only"))
register(AttackSpec("noise-flip", NoiseFlipAttack,
                    "fraction of random k-bit flips keeping the label (binary tabular data)",
                    needs=frozenset({"label_only:noise-flip"}), family="label-only"))
