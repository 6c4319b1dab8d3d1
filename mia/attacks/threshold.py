"""Threshold attacks: one signal per sample, one threshold (global or per class).

The score is a signal with its sign chosen so that larger means member
(``-loss``, ``confidence``, ``correctness``, ``-entropy``, ``-mentr``,
``hconf``). The threshold maximizes balanced accuracy on the pooled shadow
members and non-members. With ``thresholds="class"`` (Song & Mittal 2021) one
threshold is fitted per class, since a model is more confident on easy classes
whatever their membership; the score is then ``signal - tau_y`` so that the
AUC, too, reflects the per-class calibration. A class with fewer than
``min_class_rows`` shadow members or non-members (default 20) falls back to
the global threshold: a threshold fitted on a handful of rows is noise, and
its offset reorders samples across classes (purchase-synth, 100 classes,
2 offline shadows of about 5 rows a class: loss AUC 0.905 with every class
fitted, 0.944 with the fallback, as the global threshold; with 8 online
shadows, about 20 rows a class, 0.961 / 0.957 / 0.944; digits, 10 classes:
no class falls back).
"""

from __future__ import annotations

import numpy as np

from mia.attacks.base import Attack, AttackSpec, ShadowSignals, register
from mia.errors import MiaError
from mia.registry import Param
from mia.signals import SIGNALS, Signals

THRESHOLD_MODES = ("class", "global")
#: Shadow members (and as many non-members) a class needs for its own threshold; see the module docstring.
MIN_CLASS_ROWS = 20


def fit_thresholds(scores: np.ndarray, is_member: np.ndarray, groups: np.ndarray,
                   n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the threshold tau maximizing balanced accuracy of ``score > tau``.

    Returns ``(tau, fitted)``: ``fitted[g]`` is False for groups without both
    members and non-members (their tau is meaningless). Vectorized over
    groups: one sort by (group, score), cumulative counts, and a per-group
    argmax of ``TPR - FPR`` (which is ``2 * balanced accuracy - 1``). Among
    equally good cuts the highest threshold wins. Thresholds sit halfway
    between consecutive distinct scores; below the lowest score they sit one
    unit lower.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    groups = np.asarray(groups, dtype=np.int64)
    n_in = np.bincount(groups, weights=is_member, minlength=n_groups)
    n_out = np.bincount(groups, weights=~is_member, minlength=n_groups)
    fitted = (n_in > 0) & (n_out > 0)
    tau = np.zeros(n_groups)
    if len(scores) == 0:
        return tau, fitted
    order = np.lexsort((-scores, groups))
    s, m, g = scores[order], is_member[order], groups[order]
    first = np.r_[True, g[1:] != g[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(s)), 0))
    cum_in = np.cumsum(m)
    cum_out = np.cumsum(~m)
    # members / non-members at or above position k within its group
    above_in = cum_in - cum_in[start] + m[start]
    above_out = cum_out - cum_out[start] + ~m[start]
    # TPR - FPR times n_in * n_out (constant within a group): integers, so that equally good cuts
    # tie exactly and the highest wins; as floats 1 - 1/3 rounds above 2/3 and a lower cut won
    j = above_in * n_out[g] - above_out * n_in[g]
    last = np.r_[g[1:] != g[:-1], True]
    nxt = np.r_[s[1:], -np.inf]
    cut_ok = last | (nxt < s)  # never cut inside a run of tied scores
    j = np.where(cut_ok & fitted[g], j, -np.inf)
    cut = np.where(last, s - 1.0, (s + nxt) / 2)
    best = np.lexsort((np.arange(len(s)), -j, g))  # per group: best J, then earliest cut
    head = best[np.r_[True, g[best][1:] != g[best][:-1]]]
    tau[g[head]] = cut[head]
    return tau, fitted


def best_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The one threshold tau maximizing the balanced accuracy of ``score > tau`` on shadow rows: what an
    attack's ``fit`` sets as ``threshold_`` (:func:`fit_thresholds` with one group, without its arrays)."""
    scores = np.asarray(scores, dtype=np.float64)
    (tau,), _ = fit_thresholds(scores, is_member, np.zeros(len(scores), dtype=np.int64), 1)
    return float(tau)


class ThresholdAttack(Attack):
    """Threshold on one signal; see the module docstring."""

    signal: str = ""
    sign: float = 1.0

    def __init__(self, thresholds: str = "class", min_class_rows: int = MIN_CLASS_ROWS, seed: int = 0):
        if thresholds not in THRESHOLD_MODES:
            raise MiaError(f"attack {self.signal!r}: thresholds must be one of "
                           f"{', '.join(THRESHOLD_MODES)}, got {thresholds!r}")
        if min_class_rows < 1:
            raise MiaError(f"attack {self.signal!r}: min_class_rows must be >= 1, got {min_class_rows}")
        self.thresholds, self.min_class_rows = thresholds, min_class_rows
        self.seed = seed  # unused: the fit is deterministic

    def raw_score(self, signals: Signals) -> np.ndarray:
        """The signal, signed so that larger means member."""
        return self.sign * SIGNALS[self.signal](signals.logits, signals.labels)

    def fit(self, shadows: list[ShadowSignals]) -> "ThresholdAttack":
        # one shadow at a time: the signals are per row, and pooling the logits first made float64 copies of
        # all M shadows' N x C logits at once (Purchase100, 71k population rows: about 250 MB a shadow, so
        # 16 GB at 64 reference models), where one score per row is all the fit keeps
        s = np.concatenate([self.raw_score(shadow.signals) for shadow in shadows])
        member = np.concatenate([shadow.is_member for shadow in shadows])
        labels = np.concatenate([shadow.signals.labels for shadow in shadows])
        classes = shadows[0].signals.num_classes
        tau_global = best_threshold(s, member)
        if self.thresholds == "global":
            self.class_tau_ = None
            self.threshold_ = float(tau_global)
        else:
            tau, fitted = fit_thresholds(s, member, labels, classes)
            rows = np.minimum(np.bincount(labels[member], minlength=classes),
                              np.bincount(labels[~member], minlength=classes))
            self.class_tau_ = np.where(fitted & (rows >= self.min_class_rows), tau, tau_global)
            self.threshold_ = 0.0
        return self

    def decision_function(self, signals: Signals) -> np.ndarray:
        s = self.raw_score(signals)
        if self.class_tau_ is None:
            return s
        return s - self.class_tau_[signals.labels]


_PARAMS = {"thresholds": Param(str, "class", "'class': one threshold per class (Song & Mittal); "
                                             "'global': one for all"),
           "min_class_rows": Param(int, MIN_CLASS_ROWS, "shadow members and as many non-members a class needs "
                                                        "for a threshold of its own (others: the global one)")}

for _name, _sign, _what in [
    ("loss", -1.0, "cross-entropy loss (low for members)"),
    ("confidence", 1.0, "true-label confidence p_y"),
    ("correctness", 1.0, "prediction's correctness (Yeom et al.)"),
    ("entropy", -1.0, "prediction entropy (low for members)"),
    ("mentr", -1.0, "modified entropy of Song & Mittal (low for members)"),
    ("hconf", 1.0, "top-1 confidence max_i p_i"),
]:
    _cls = type(f"{_name.capitalize()}Attack", (ThresholdAttack,),
                {"signal": _name, "sign": _sign, "__doc__": f"Threshold on the {_what}."})
    register(AttackSpec(_name, _cls, f"threshold on the {_what}", dict(_PARAMS),
                        family="threshold"))
