"""Attack metrics: ROC, AUC, TPR at low FPR, advantage, balanced accuracy.

Every attack reports the same six numbers (:data:`METRICS`; and
``tpr_at_fpr_0.0001`` where there are at least 10,000 non-members), logged to
MLflow as ``<attack>.<metric>``.

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

Uncertainty (:func:`interval_metrics`, logged as ``<attack>.<name>`` for the
names in :data:`INTERVAL_METRICS`): stratified percentile-bootstrap
intervals of the AUC and of each TPR at low FPR (:func:`bootstrap_intervals`),
and an empirical lower bound on the differential-privacy epsilon that the
attack's operating point at FPR 1% proves (:func:`epsilon_lower_bound`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import betaincinv

from mia.errors import MiaError

FPR_TARGETS = (0.1, 0.01, 0.001)
"""The FPRs at which every attack reports its TPR."""


def tpr_metric(alpha: float) -> str:
    """The metric name for TPR at FPR ``alpha``: ``tpr_at_fpr_0.001`` for 0.001."""
    return f"tpr_at_fpr_{alpha:g}"


METRICS = ("auc", "balanced_accuracy", "advantage", *(tpr_metric(a) for a in FPR_TARGETS))
"""The metrics of one attack, in the order they are reported."""

LOW_FPR = 1e-4
"""Also reported (``tpr_at_fpr_0.0001``) where at least ``1 / LOW_FPR`` non-members make it an
operating point rather than the ROC's first step (REFERENCE.md section 1: "when there are enough")."""


NEAR_CHANCE = 0.05
"""A target whose test accuracy closes less than this share of the gap from a uniform guess (``1 / C``) to 1 is
noted as near chance (:func:`near_chance_note`)."""


def near_chance_note(test_accuracy: float, num_classes: int, scenario: str = "centralized") -> str | None:
    """A note for the reader where the target barely beats a uniform guess, else None.

    Such a model has learned too little for its leakage to describe the recipe: the black-box attacks read near
    0.5 on it whatever the defense, so a defense seems to work there that has nothing to do. A federation of 50
    Purchase clients with 100 rows each, 10 rounds at the default local rate, released one at 0.018 (100
    classes), and its audit printed chance-level AUCs for every black-box attack without a word.
    """
    guess = 1.0 / num_classes
    if not test_accuracy - guess < NEAR_CHANCE * (1.0 - guess):
        return None
    longer = "--rounds, --local-epochs, --local-lr" if scenario == "federated" else "--epochs, --lr"
    return (f"the target's test accuracy {test_accuracy:.4f} is near a uniform guess's {guess:.4f} "
            f"({num_classes} classes): it learned too little for its leakage to say much; train it longer "
            f"or faster ({longer})")


def low_fpr_note(nonmembers: int) -> str | None:
    """A note for the reader where a reported ``tpr_at_fpr_<a>`` allows no false positive among
    ``nonmembers`` (``nonmembers * a < 1``: the figure is the TPR at FPR 0), else None."""
    below = [tpr_metric(a) for a in FPR_TARGETS if nonmembers * a < 1]
    if not below:
        return None
    one = len(below) == 1
    return (f"{nonmembers} non-members: {', '.join(below)} allow{'s' if one else ''} no false positive, so "
            f"{'it reads' if one else 'each reads'} the TPR at FPR 0 (docs/protocol.md, Metrics)")


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

    Larger scores mean "more likely a member". Every operating point is kept:
    scikit-learn's default drops points on a straight line between their
    neighbours, and with tied scores such a point can be the best TPR at a
    given FPR (a tie of 5 non-members and 10 members on each of the top three
    scores, 1000 of each: TPR at 1% FPR read 0.01 instead of 0.02).
    """
    scores, is_member = _check(scores, is_member)
    return _roc(is_member, scores)


def _roc(is_member: np.ndarray, scores: np.ndarray):
    from sklearn.metrics import roc_curve  # here, not at the top: scikit-learn's import is a second of every `mia` start

    return roc_curve(is_member, scores, drop_intermediate=False)


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
    """The six metrics of :data:`METRICS` for one attack on one evaluation set (and TPR at
    :data:`LOW_FPR` where there are enough non-members).

    ``predictions`` are the attacker's own member decisions (threshold fitted
    on shadow data); without them ``balanced_accuracy`` is the ROC-optimal
    ``0.5 + advantage / 2`` (see the module docstring for why the attacker's
    decisions are the honest figure).
    """
    from sklearn.metrics import roc_auc_score  # as in _roc

    scores, is_member = _check(scores, is_member)
    fpr, tpr, _ = _roc(is_member, scores)
    advantage = float(np.max(tpr - fpr))
    out = {"auc": float(roc_auc_score(is_member, scores))}
    out["balanced_accuracy"] = (0.5 + advantage / 2 if predictions is None
                                else balanced_accuracy(predictions, is_member))
    out["advantage"] = advantage
    for a in FPR_TARGETS:
        out[tpr_metric(a)] = tpr_at_fpr(fpr, tpr, a)
    if (~is_member).sum() >= round(1 / LOW_FPR):
        out[tpr_metric(LOW_FPR)] = tpr_at_fpr(fpr, tpr, LOW_FPR)
    return out


# ---------------------------------------------------------------- uncertainty

BOOTSTRAP_METRICS = ("auc", *(tpr_metric(a) for a in FPR_TARGETS))
"""The metrics that get a bootstrap interval."""

INTERVAL_METRICS = (*(f"{m}_ci_{end}" for m in BOOTSTRAP_METRICS for end in ("low", "high")),
                    "epsilon_lb")
"""The uncertainty metrics of one attack (suffixes of ``<attack>.``), in the order reported."""


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``n_boot x n``: how often each of ``n`` items is drawn in each resample of size ``n``."""
    draws = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)


def _cumulative(counts: np.ndarray) -> np.ndarray:
    """Row-wise counts of the items before each position: ``n_boot x (n + 1)``, first column 0."""
    out = np.zeros((counts.shape[0], counts.shape[1] + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=out[:, 1:])
    return out


def _weighted_metrics(s_in: np.ndarray, s_out: np.ndarray, w_in: np.ndarray,
                      w_out: np.ndarray) -> dict[str, np.ndarray]:
    """AUC and TPRs at :data:`FPR_TARGETS` of each row of draw counts (see :func:`bootstrap_intervals`).

    ``s_in``, ``s_out``: sorted member and non-member scores; ``w_in``,
    ``w_out``: ``n_boot x n`` draw counts (all ones give the plain metrics).
    """
    n_in, n_out = int(w_in[0].sum()), int(w_out[0].sum())
    c_in, c_out = _cumulative(w_in), _cumulative(w_out)
    below = np.searchsorted(s_out, s_in, side="left")
    upto = np.searchsorted(s_out, s_in, side="right")
    wins = c_out[:, below] + 0.5 * (c_out[:, upto] - c_out[:, below])  # n_boot x n_in
    out = {"auc": (w_in * wins).sum(axis=1) / (n_in * n_out)}
    at_or_above = n_out - c_out[:, :-1]  # drawn non-members scoring >= s_out[j]
    rows = np.arange(len(w_in))
    for a in FPR_TARGETS:
        allowed = int(np.floor(a * n_out * (1 + 1e-9)))
        over = (at_or_above > allowed).sum(axis=1)  # leading positions with too many FPs
        cut = np.where(over > 0, s_out[np.maximum(over - 1, 0)], -np.inf)
        out[tpr_metric(a)] = (n_in - c_in[rows, np.searchsorted(s_in, cut, side="right")]) / n_in
    return out


def bootstrap_intervals(scores, is_member, n_boot: int = 200, level: float = 0.95,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of the AUC and of every ``tpr_at_fpr_<a>``.

    Members and non-members are resampled separately (stratified), so every
    resample keeps the evaluation's class sizes, as a re-run of the audit
    would. Each resample is a vector of draw counts, and both metrics are
    computed from counts without materializing resampled score arrays: the
    AUC from, per member, the resampled number of non-members below it (ties
    count half), and the TPR at FPR ``a`` from the resampled non-member score
    above which at most ``floor(a * n_out)`` non-members lie (the same
    no-interpolation rule as :func:`tpr_at_fpr`). Cost ``O(n_boot * n)``.
    """
    if not 0 < level < 1:
        raise MiaError(f"confidence level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise MiaError(f"n_boot must be at least 1, got {n_boot}")
    scores, is_member = _check(scores, is_member)
    s_in, s_out = np.sort(scores[is_member]), np.sort(scores[~is_member])
    rng = np.random.default_rng(seed)
    samples = _weighted_metrics(s_in, s_out, _resample_counts(rng, len(s_in), n_boot),
                                _resample_counts(rng, len(s_out), n_boot))
    lo, hi = (1 - level) / 2, (1 + level) / 2
    return {k: (float(np.quantile(v, lo)), float(np.quantile(v, hi))) for k, v in samples.items()}


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds ``(lower, upper)`` on a binomial rate, each holding
    with probability ``confidence``: ``Beta(1 - c; k, n - k + 1)`` and ``Beta(c; k + 1, n - k)``."""
    lower = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, 1 - confidence))  # the Beta quantile
    upper = 1.0 if k == n else float(betaincinv(k + 1, n - k, confidence))
    return lower, upper


def epsilon_lower_bound(scores, is_member, fpr: float = 0.01, delta: float = 0.0,
                        level: float = 0.95) -> float:
    """An empirical lower bound on the epsilon of (epsilon, delta)-DP that this attack proves.

    At the ROC point with empirical FPR ``<= fpr`` and the highest TPR (the
    point closest to ``fpr`` from below; the lowest FPR among equal TPRs), with ``FP`` of ``n_out``
    non-members and ``TP`` of ``n_in`` members flagged, one-sided
    Clopper-Pearson bounds at confidence ``c = (1 + level) / 2`` each (so
    that both hold together with probability ``>= level``):
    ``FPR_hi = Beta^-1(c; FP + 1, n_out - FP)``,
    ``TPR_lo = Beta^-1(1 - c; TP, n_in - TP + 1)``. Any (epsilon, delta)-DP
    training gives ``TPR <= e^eps FPR + delta`` and
    ``1 - FPR <= e^eps (1 - TPR) + delta`` (Kairouz et al. 2015), hence,
    as in Jagielski et al. 2020 and Nasr et al. 2021::

        eps_lb = max(0, log((TPR_lo - delta) / FPR_hi),
                        log((1 - FPR_hi - delta) / (1 - TPR_lo)))

    (a term whose numerator is not positive is dropped). The threshold is
    read off the evaluation data, which is the usual practice for this
    statistic; the bound is about the audited training run, not a proof for
    the training algorithm.
    """
    if not 0 < fpr < 1:
        raise MiaError(f"fpr must be in (0, 1), got {fpr}")
    if not 0 < level < 1:
        raise MiaError(f"confidence level must be in (0, 1), got {level}")
    scores, is_member = _check(scores, is_member)
    n_in, n_out = int(is_member.sum()), int((~is_member).sum())
    f, t, _ = _roc(is_member, scores)
    ok = np.flatnonzero(f <= fpr * (1 + 1e-9))
    i = ok[np.argmax(t[ok])]
    fp, tp = int(round(f[i] * n_out)), int(round(t[i] * n_in))
    c = (1 + level) / 2
    _, fpr_hi = clopper_pearson(fp, n_out, c)
    tpr_lo, _ = clopper_pearson(tp, n_in, c)
    terms = [0.0]
    if tpr_lo - delta > 0 and fpr_hi > 0:
        terms.append(float(np.log((tpr_lo - delta) / fpr_hi)))
    if 1 - fpr_hi - delta > 0 and tpr_lo < 1:
        terms.append(float(np.log((1 - fpr_hi - delta) / (1 - tpr_lo))))
    return max(terms)


def interval_metrics(scores, is_member, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """The :data:`INTERVAL_METRICS` of one attack: 95% bootstrap bounds and ``epsilon_lb`` at FPR 0.01, delta 0."""
    ci = bootstrap_intervals(scores, is_member, n_boot=n_boot, seed=seed)
    out = {}
    for m in BOOTSTRAP_METRICS:
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = ci[m]
    out["epsilon_lb"] = epsilon_lower_bound(scores, is_member)
    return out
