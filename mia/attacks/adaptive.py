"""``selena-adaptive``: compare the target with a shadow Split-AI the attacker builds.

SELENA (Tang et al. 2022, REFERENCE.md section 5) releases a model distilled
from Split-AI, whose answer on each training row comes from sub-models that
never saw it. Its adaptive attacker knows the defense and part of the
training set: it trains its own Split-AI (same ``k``, ``l`` and recipe) on the
members it knows plus population rows, so that for every query it holds an
answer from models that did not train on that query, and compares the
target's output with it. A distilled member was fitted to exactly such an
answer; an undefended member sits above it (memorization), a non-member near
it or below. What separates the two is learned, not assumed: per query, the
features

* ``phi_target - phi_shadow`` (LiRA's logit-scaled true-label confidence of
  the target, calibrated by the shadow Split-AI's),
* ``KL(target || shadow)`` over all classes,
* ``phi_target`` and ``phi_shadow``,

go into a logistic regression fitted on calibration rows whose membership the
attacker knows: its known members (target members) against as many
population rows (target non-members), both answered by the shadow Split-AI's
sub-models that never trained on them. The calibration is balanced, so the
decision threshold is 0 (``p(member) = 0.5``).

The shadow Split-AI and its answers are built by :func:`mia.audit.split_ai_reference`
(:class:`SplitAISignals`); this module only scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mia.attacks.base import Attack, AttackSpec, ShadowSignals, register
from mia.errors import MiaError
from mia.registry import Param
from mia.signals import Signals, log_softmax, logit_confidence


@dataclass
class SplitAISignals:
    """A shadow Split-AI's answers beside the target's outputs: what ``selena-adaptive`` compares.

    Logits may be log-probabilities (the Split-AI answer is a mean of
    softmaxes). ``query_logits`` lines up with the audited query set;
    calibration rows are the attacker's known members and population rows.
    """

    query_logits: np.ndarray  # N x C: shadow Split-AI on the audited samples
    calibration_target_logits: np.ndarray  # R x C: the target on the calibration rows
    calibration_logits: np.ndarray  # R x C: shadow Split-AI on the calibration rows
    calibration_labels: np.ndarray  # R
    calibration_member: np.ndarray  # R bool: a known member of the target
    query_known: np.ndarray | None = None  # N bool: audited rows the attacker knows (not scored); None: none

    def __post_init__(self):
        self.calibration_member = np.asarray(self.calibration_member, dtype=bool)
        if self.query_known is not None:
            self.query_known = np.asarray(self.query_known, dtype=bool)
            if len(self.query_known) != len(self.query_logits):
                raise MiaError(f"split-ai signals: query_known holds {len(self.query_known)} rows, query_logits "
                               f"{len(self.query_logits)}")
        r = len(self.calibration_member)
        for name in ("calibration_target_logits", "calibration_logits", "calibration_labels"):
            if len(getattr(self, name)) != r:
                raise MiaError(f"split-ai signals: {name} holds {len(getattr(self, name))} rows, "
                               f"calibration_member {r}; build them from the same calibration rows")
        if self.calibration_member.all() or not self.calibration_member.any():
            raise MiaError("selena-adaptive needs both known members and non-members to calibrate on; "
                           "raise known_fraction or give the attacker population rows")


def comparison_features(target_logits: np.ndarray, shadow_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``n x 4``: phi difference, KL(target || shadow), phi of the target, phi of the shadow."""
    phi_t, phi_s = logit_confidence(target_logits, labels), logit_confidence(shadow_logits, labels)
    log_t, log_s = log_softmax(target_logits), log_softmax(shadow_logits)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(1)
    return np.stack([phi_t - phi_s, kl, phi_t, phi_s], axis=1)


class SelenaAdaptive(Attack):
    """Logistic regression on target-vs-shadow-Split-AI features; see the module docstring."""

    def __init__(self, known_fraction: float = 0.5, k: int = 0, l: int = 0, c: float = 1.0, seed: int = 0):
        if not 0 < known_fraction < 1:
            raise MiaError(f"selena-adaptive known_fraction must be in (0, 1), got {known_fraction}")
        if c <= 0:
            raise MiaError(f"selena-adaptive c (inverse regularization) must be > 0, got {c}")
        self.known_fraction, self.k, self.l, self.c, self.seed = known_fraction, k, l, c, seed
        self.threshold_ = 0.0

    def fit(self, shadows: list[ShadowSignals], split_ai: SplitAISignals) -> "SelenaAdaptive":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        s = split_ai
        x = comparison_features(s.calibration_target_logits, s.calibration_logits, s.calibration_labels)
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=1000))
        self.model_.fit(np.nan_to_num(x), s.calibration_member)
        self.split_ai_ = s
        # the known members trained the shadow Split-AI and the regression: scored on them, the attack
        # would be graded on what it was told
        self.evaluated_ = None if s.query_known is None else ~s.query_known
        return self

    def decision_function(self, signals: Signals) -> np.ndarray:
        shadow = self.split_ai_.query_logits
        if len(shadow) != len(signals):
            raise MiaError(f"selena-adaptive: the shadow Split-AI answered {len(shadow)} queries but the target "
                           f"has {len(signals)} audited samples; build both from the same query set")
        x = comparison_features(signals.logits, shadow, signals.labels)
        return self.model_.decision_function(np.nan_to_num(x))


register(AttackSpec(
    "selena-adaptive", SelenaAdaptive,
    "adaptive attack on SELENA: a shadow Split-AI built from known members, compared with the target "
    "(Tang et al. 2022)",
    {"known_fraction": Param(float, 0.5, "fraction of the audited members the attacker knows (calibration "
                                         "and shadow Split-AI training)"),
     "k": Param(int, 0, "shadow Split-AI sub-models (0: the target's selena k, else 25)"),
     "l": Param(int, 0, "sub-models per row that do not train on it (0: the target's selena l, else 10)"),
     "c": Param(float, 1.0, "inverse L2 regularization of the logistic regression")},
    needs=frozenset({"split-ai"}), family="adaptive", pool=False))
