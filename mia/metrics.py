"""Attack metrics: ROC, AUC, TPR at low FPR, advantage, balanced accuracy.

Every attack reports the same six numbers (:data:`METRICS`), logged to MLflow
as ``<attack>.<metric>`` (:func:`metric_names`).

Two choices differ from the source systems on purpose:

- ``balanced_accuracy`` is that of the attacker's *own* decisions, whose
  threshold (or classifier) was fitted on shadow data. SELENA and mia_prune
  picked the threshold on the evaluation data itself, which reports what an
  oracle attacker would reach, not what an attacker can do. The ROC-optimal
  figure is still reported, as ``advantage = max(TPR - FPR)`` (the best
  balanced accuracy over thresholds is ``0.5 + advantage / 2``).
- ``tpr_at_fpr_<a>`` is the highest TPR among ROC points with FPR <= a, with
  no interpolation between points: an attacker can only run at operating
  points that exist, and interpolating would credit it with a TPR no
  threshold achieves (it matters at FPR 0.1% where there are few points).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from mia.errors import MiaError

FPR_TARGETS = (0.1, 0.01, 0.001)
"""The FPRs at which every attack reports its TPR."""


def tpr_metric(alpha: float) -> str:
    """The metric name for TPR at FPR ``alpha``: ``tpr_at_fpr_0.001`` for 0.001."""
    return f"tpr_at_fpr_{alpha:g}"


METRICS = ("auc", "balanced_accuracy", "advantage", *(tpr_metric(a) for a in FPR_TARGETS))
"""The metrics of one attack, in the order they are reported."""


def metric_names(attack: str | None = None) -> list[str]:
    """The metric names, prefixed ``<attack>.`` when an attack is given (the MLflow keys)."""
    return [f"{attack}.{m}" if attack else m for m in METRICS]


def _check(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_member = np.asarray(is_member).ravel()
    if len(scores) != len(is_member):
        raise MiaError(f"{len(scores)} scores but {len(is_member)} membership labels; "
                       "give one score per query sample")
    if is_member.dtype != bool:
        if not np.isin(is_member, (0, 1)).all():
            raise MiaError("membership labels must be boolean (or 0/1)")
        is_member = is_member.astype(bool)
    n_in = int(is_member.sum())
    if n_in == 0 or n_in == len(is_member):
        raise MiaError("membership labels hold only one class; evaluate on both members and "
                       "non-members")
    if np.isnan(scores).any():
        raise MiaError(f"{int(np.isnan(scores).sum())} attack scores are NaN; the attack "
                       "produced invalid scores for these samples")
    if not np.isfinite(scores).all():
        # keep the order, drop the infinities that scikit-learn rejects
        finite = scores[np.isfinite(scores)]
        lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 0.0)
        scores = np.clip(scores, lo - 1.0, hi + 1.0)
    return scores, is_member


def roc(scores, is_member) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of "member if score >= threshold" (scikit-learn's ``roc_curve``).

    Larger scores mean "more likely a member". Collinear points are dropped;
    every corner (and so every best TPR at a given FPR) is kept.
    """
    scores, is_member = _check(scores, is_member)
    return roc_curve(is_member, scores)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, alpha: float) -> float:
    """The highest TPR among ROC points with FPR <= ``alpha`` (no interpolation).

    The ROC starts at (0, 0), so the answer exists (it is 0 when no threshold
    reaches FPR <= alpha with any true positive).
    """
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    ok = fpr <= alpha * (1 + 1e-9)  # k/n == alpha must count despite rounding
    return float(tpr[ok].max()) if ok.any() else 0.0


def balanced_accuracy(predictions, is_member) -> float:
    """``(TPR + TNR) / 2`` of boolean member decisions."""
    pred = np.asarray(predictions).ravel()
    is_member = np.asarray(is_member).ravel().astype(bool)
    if len(pred) != len(is_member):
        raise MiaError(f"{len(pred)} predictions but {len(is_member)} membership labels")
    pred = pred.astype(bool)
    return float((pred[is_member].mean() + (~pred[~is_member]).mean()) / 2)


def attack_metrics(scores, is_member, predictions=None) -> dict[str, float]:
    """The six metrics of :data:`METRICS` for one attack on one evaluation set.

    ``predictions`` are the attacker's own member decisions (threshold fitted
    on shadow data); without them ``balanced_accuracy`` is the ROC-optimal
    ``0.5 + advantage / 2`` (see the module docstring for why the attacker's
    decisions are the honest figure).
    """
    scores, is_member = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(is_member, scores)
    advantage = float(np.max(tpr - fpr))
    out = {"auc": float(roc_auc_score(is_member, scores))}
    out["balanced_accuracy"] = (0.5 + advantage / 2 if predictions is None
                                else balanced_accuracy(predictions, is_member))
    out["advantage"] = advantage
    for a in FPR_TARGETS:
        out[tpr_metric(a)] = tpr_at_fpr(fpr, tpr, a)
    return out
