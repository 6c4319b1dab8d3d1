"""Reference-model attacks: LiRA (online, offline), RMIA, and LiRA's global-threshold baseline.

These attacks compare the target with reference models on the audited
samples themselves (:class:`mia.attacks.base.ReferenceSignals`): ``phi`` is
the logit-scaled true-label confidence ``log(p_y / (1 - p_y))`` per query
view, ``inclusion[m, n]`` whether reference model ``m`` trained on sample
``n``.

* ``lira-online`` (Carlini et al., S&P 2022): per sample and view, a Gaussian
  fitted to the phi of the models that trained on the sample (IN) and one to
  those that did not (OUT); the score is the log-likelihood ratio
  ``log N(phi_t; mu_in, sd_in) - log N(phi_t; mu_out, sd_out)``, averaged over
  views. The location is the **median** over models, the scale the standard
  deviation (``ddof=0``), both as the official code (``plot.py``) does.
* ``lira-offline``: the one-sided test of the paper (Algorithm 1, offline):
  ``log Phi((phi_t - mu_out) / sd_out)``, larger phi = member. (The official
  demo scores ``-log N(phi_t; mu_out, sd_out)``, a two-sided test that also
  flags samples the target is unusually *unsure* of; the paper's test is the
  one implemented.) In an online pool only the models where the sample is
  OUT count.
* ``rmia`` (Zarifzadeh et al., ICML 2024): ``r(x) = p(x|theta) / Pr(x)`` with
  ``p = sigmoid(phi / T)`` averaged over views, ``Pr(x)`` the mean of ``p`` over
  reference models (``mode="online"``: all; ``"offline"``: the OUT models and
  ``Pr(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2``). The score is the fraction of
  population samples ``z`` with ``r(x) / r(z) > gamma``. The temperature
  ``T`` is the softmax temperature of LeakPro's RMIA, applied to the
  true-label margin ``phi`` (the only per-view signal stored): at ``T = 1``
  the probabilities of a memorizing model saturate at 1 and the ratios of
  its members and confident non-members become indistinguishable; a larger
  ``T`` keeps them apart (purchase-synth, 2 reference models: AUC 0.983 ->
  0.996, TPR at 0.1% FPR 0.43 -> 0.57 at ``T = 4``, offline).
* ``global-threshold`` (Yeom et al. 2018; LiRA's baseline): ``-loss`` of the
  target, one threshold fitted on the reference models.

Choices the papers leave open, and what is done here:

* **Few models.** A sample with fewer than 2 IN (or OUT) models has no
  per-sample spread: it gets the side's global scale (the pooled
  within-sample standard deviation over samples with >= 2 models, the
  "fixed variance" of LiRA; if no sample has 2, the other side's; if
  neither, the marginal spread). A sample with **no** IN model (about a
  quarter of them with 4 models: a sample is IN for about a third) has its
  IN Gaussian predicted from its OUT models: per view, a least-squares line
  from the OUT median to the IN median over the samples that have both
  gives the location, and the IN side's scale widened by the line's
  residual spread the scale (a sample with no OUT model likewise). The line
  adapts to the target: on a generalizing model it is about ``OUT + gap``
  (slope near 1), on a memorizing one nearer a constant (every member's phi
  is high, whatever its OUT models say). With one reference model no sample
  has both sides, and the side's marginal Gaussian stands in. Measured
  against the two extremes (the pools of ``benchmarks/reference_comparison.py``,
  LiRA online AUC / TPR at 0.1% FPR at 2 and 4 models): the marginal
  Gaussian, a prior the same for every sample, 0.572 / 0.596 on digits and
  0.996/0.369, 0.997/0.553 on purchase-synth; the OUT Gaussian shifted by
  the mean IN-OUT gap, a one-sided test, 0.592 / 0.609 and 0.976/0.072,
  0.991/0.319 (it loses the memorizing target's low-FPR end); the line
  0.575 / 0.597 and 0.996/0.371, 0.997/0.556. On a barely trained digits
  target (5 epochs, 4 models) the samples without IN models stay below
  chance under every choice but the shifted one (0.41 against 0.56): with
  so little leakage, a wider IN than OUT Gaussian flags the non-members the
  target is unusually unsure of; LiRA offline and RMIA are the attacks for
  few models there.
* **Fixed variance** (``variance="fixed"``): one scale per side, pooled over
  samples and views around each sample's own mean. The official code takes
  ``np.std`` of all IN phi (between-sample spread included) and uses it for
  OUT too, which is a typo; with equal scales the ranking does not depend on
  the scale at all, so this only matters when the IN and OUT scales differ.
* **Which scale** (``variance="auto"``, the default): the one with the higher
  TPR at 1% FPR when reference models play the target on the population
  (the pseudo-targets below), as RMIA's settings are chosen; see
  :data:`VARIANCES` for why not a fixed number of models.
* **Scales** are floored at :data:`SD_FLOOR` (phi is stored in float16, so
  models can agree exactly and a zero spread would make the ratio infinite).
* **RMIA's mode, T, a and gamma**, when not given (``mode="auto"``, the
  default, and no value), are chosen on the reference models only, as the
  RMIA authors tune ``a``: each of a few reference models in turn plays the
  target on the population (its own inclusion is the truth), the others are
  its references, and the combination of mode, :data:`TEMPERATURE_GRID`,
  :data:`A_GRID` (offline) and :data:`GAMMA_GRID` with the best mean AUC
  wins (earlier grid entries win ties). Online is not always better: in our
  pools a sample is IN for about a third of the models, so with few models
  the online ``Pr(x)`` leans on the OUT side, and offline with ``a`` wins
  (purchase-synth, 2 models: 0.983 vs 0.892). With one reference model there
  is nothing to tune: offline, ``T = 1``, ``a = 0.3`` (RMIA's suggestion for
  small offline pools) and ``gamma = 1``.
* **Decisions** (for balanced accuracy) are ``score > threshold_`` with the
  threshold that maximizes balanced accuracy on the same pseudo-targets
  (leave-one-model-out on the population, where membership is known), never
  on the evaluation data. The pseudo-targets' statistics come from M - 1
  models, the target's from M: the threshold is slightly conservative. When
  no pseudo-target can be built (one model, or a population of one class),
  the natural null thresholds are used: log-likelihood ratio 0 (LiRA online),
  the OUT median (LiRA offline), half the population (RMIA), ``p_y = 0.5``
  (global threshold).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from mia.attacks.base import Attack, AttackSpec, ReferenceSignals, ShadowSignals, register
from mia.attacks.threshold import fit_thresholds
from mia.errors import MiaError, NothingToScore
from mia.metrics import roc, tpr_at_fpr
from mia.registry import Param
from mia.signals import Signals, loss

VARIANCES = ("fixed", "per-example")
"""LiRA's scales; ``variance="auto"`` takes the one with the higher TPR at :data:`VARIANCE_FPR` on the
pseudo-targets (earlier entries win ties, and ``fixed`` without pseudo-targets).

Why not a rule on the number of models: the LiRA paper (section VI-B) finds
per-example scales need about 64 shadow models, but which one wins depends
on the data, not only on M. Measured on our pools (an audited sample is IN for
about a third of the models): on purchase-synth fixed wins at every M tried
(TPR at 0.1% FPR 0.73 vs 0.45 with 128 models), on digits per-example wins
from 16 models on (TPR at 1% FPR 0.065 vs 0.031)."""
VARIANCE_FPR = 0.01
"""The false-positive rate at which LiRA's ``auto`` variance compares the two scales (LiRA's regime)."""
RMIA_MODES = ("auto", "online", "offline")
SD_FLOOR = 1e-3
"""Smallest scale of a LiRA Gaussian, in logit units (float16 phi steps by ~1e-3 near 1)."""
A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())
GAMMA_GRID = (1.0, 1.5, 2.0, 4.0)
TEMPERATURE_GRID = (1.0, 2.0, 4.0, 8.0)
DEFAULT_A, DEFAULT_GAMMA, DEFAULT_TEMPERATURE, DEFAULT_MODE = 0.3, 1.0, 1.0, "offline"
CALIBRATION_MODELS = 4
"""How many reference models play the target to fit thresholds and RMIA's a and gamma."""
CALIBRATION_SAMPLES = 8192
"""Population samples drawn per pseudo-target: half are audited, half serve as RMIA's z."""
PHI_CLIP = 80.0
"""|phi| is clipped here so that float32 ``exp(+-phi)`` stays finite and normal (RMIA only:
beyond it the model is certain either way)."""


# ---------------------------------------------------------------- LiRA statistics


@dataclass
class Gaussians:
    """Per sample and view, the Gaussian of one side (IN or OUT): ``N x V`` float32, and
    ``count`` (``N``), how many models the sample's own statistics came from."""

    mu: np.ndarray
    sd: np.ndarray
    count: np.ndarray


def _models_last(phi: np.ndarray) -> np.ndarray:
    """``M x N x V`` (any float dtype) as float32 ``N x V x M``, C-contiguous: models on the
    fast axis so that sorting and masked sums run over contiguous rows. Always a copy: callers
    work on it in place (with one float32 model the transpose alone would be a view of ``phi``)."""
    return np.array(np.asarray(phi).transpose(1, 2, 0), dtype=np.float32, order="C", copy=True)


def _value_at(sorted_rows: np.ndarray, position: np.ndarray) -> np.ndarray:
    """``sorted_rows[n, v, position[n]]`` for every ``n, v``."""
    m = sorted_rows.shape[-1]
    pos = np.clip(position, 0, m - 1)[:, None, None]
    pos = np.broadcast_to(pos, (*sorted_rows.shape[:2], 1))
    return np.take_along_axis(sorted_rows, pos, axis=-1)[..., 0]


def _median(sorted_rows: np.ndarray, start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Median of the ``count[n]`` sorted values from ``start[n]`` on (garbage where count is 0)."""
    lo = _value_at(sorted_rows, start + (count - 1) // 2)
    hi = _value_at(sorted_rows, start + count // 2)
    return (lo + hi) / 2


def lira_statistics(phi: np.ndarray, inclusion: np.ndarray, variance: str = "per-example",
                    sides: tuple[str, ...] = ("in", "out")) -> dict[str, Gaussians | None]:
    """IN and OUT Gaussians of every sample and view; ``None`` for a side no model holds.

    Vectorized over samples, views and models: one sort of the ``N x V x M``
    array, with every OUT entry shifted above every IN entry so that each row
    holds its IN values then its OUT values in order (the medians then sit at
    known positions), and masked moments as one batched matrix product each.
    The OUT values come back within float32 rounding of the shift (~1e-5).
    Fallbacks for samples with fewer than 2 or no models of a side: see the
    module docstring.
    """
    if variance not in VARIANCES:
        raise MiaError(f"LiRA variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
    x = _models_last(phi)
    inc = np.ascontiguousarray(np.asarray(inclusion, dtype=bool).T)  # N x M
    n, v, m = x.shape
    if x.size == 0:
        raise MiaError("reference signals hold no samples or no models")
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise MiaError("reference models' phi holds NaN or infinite values; recompute the pool signals")
    k_in = inc.sum(axis=1)
    count = {"in": k_in, "out": m - k_in}
    start = {"in": np.zeros(n, dtype=np.int64), "out": k_in}

    shift = np.float32(hi - lo + 1.0)
    key = x + np.where(inc, np.float32(0), shift)[:, None, :]
    key.sort(axis=-1)
    med = {s: _median(key, start[s], count[s]) for s in ("in", "out")}  # both: each side's fallback reads the other
    med["out"] -= shift
    del key

    # moments of each side centred on that side's own median and summed over that side only, so
    # that float32 does not cancel. A centre shared by both sides does: on a memorizing target (IN
    # phi ~ 15 +- 0.01, OUT ~ 0) the IN values sit ~7 from the mean over all models, and
    # s2 / k - mean^2 loses a variance of 1e-4 to float32 rounding of ~50; so does an OUT sum taken
    # as all minus IN (2 OUT models agreeing to 0.003 beside 14 IN models spread by 0.8). Either
    # put per-example scales off by up to several times.
    centre = {s: np.where((count[s] > 0)[:, None], med[s], np.float32(0)) for s in ("in", "out")}
    x -= np.where(inc[:, None, :], centre["in"][..., None], centre["out"][..., None])
    w = np.stack([inc, ~inc], axis=-1).astype(np.float32)  # N x M x 2: IN, OUT
    s1 = np.matmul(x, w)
    x *= x
    s2 = np.matmul(x, w)
    del x
    sums = {"in": (s1[..., 0], s2[..., 0]), "out": (s1[..., 1], s2[..., 1])}

    moments = {s: _side_moments(centre[s].astype(np.float64), *sums[s], count[s]) for s in ("in", "out")}
    g = {s: _gaussians(med[s], moments[s], moments["out" if s == "in" else "in"], count[s], variance)
         for s in ("in", "out")}
    if g["in"] is not None and g["out"] is not None:
        both = (count["in"] > 0) & (count["out"] > 0)
        for side, other in (("in", "out"), ("out", "in")):
            none = count[side] == 0
            if none.any():
                _fill_missing_side(g[side], g[other], none, med[side][both], med[other][both], moments[side])
    return {s: g[s] for s in sides}


def _fill_missing_side(own: Gaussians, other: Gaussians, none: np.ndarray, own_med: np.ndarray,
                       other_med: np.ndarray, moments: "_Moments") -> None:
    """The Gaussian of a side for the samples ``none`` that have no model of it, predicted from their other side.

    Per view, a least-squares line ``mu_own = a + b * mu_other`` over the samples
    that have both sides (``own_med``/``other_med``) gives the location from the
    sample's own other-side median; the scale is the side's, widened by the line's
    residual spread. With fewer than 3 such samples (one reference model) the
    side's marginal Gaussian stands in. See the module docstring for why.
    """
    if len(own_med) < 3:
        own.mu[none] = moments.marginal_mu
        own.sd[none] = np.maximum(moments.marginal_sd, SD_FLOOR)
        return
    x, y = other_med.astype(np.float64), own_med.astype(np.float64)  # B x V
    dx, dy = x - x.mean(axis=0), y - y.mean(axis=0)
    b = (dx * dy).sum(axis=0) / np.maximum((dx * dx).sum(axis=0), 1e-12)
    a = y.mean(axis=0) - b * x.mean(axis=0)
    residual = ((y - a - b * x) ** 2).mean(axis=0)
    own.mu[none] = (a + b * other.mu[none]).astype(np.float32)
    own.sd[none] = np.sqrt(own.sd[none].astype(np.float64) ** 2 + residual).astype(np.float32)


@dataclass
class _Moments:
    """One side's per-sample spread and its population-level summaries."""

    sd: np.ndarray  # N x V, per sample (meaningful where count >= 2)
    pooled_sd: float | None  # within-sample spread pooled over samples with >= 2 models
    marginal_mu: np.ndarray | None  # V: mean over all of the side's entries
    marginal_sd: np.ndarray | None  # V


def _side_moments(centre: np.ndarray, s1: np.ndarray, s2: np.ndarray, count: np.ndarray) -> _Moments:
    """Per-sample and pooled spread of one side from centred sums (float64 where it adds up)."""
    k = count.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_c = s1 / k
        var = np.maximum(s2 / k - mean_c * mean_c, 0.0)
    sd = np.sqrt(var).astype(np.float32)
    several = count >= 2
    pooled = None
    if several.any():
        ss = (var[several] * k[several]).sum(dtype=np.float64)
        pooled = float(np.sqrt(ss / (k[several].sum() * var.shape[1])))
    total = k.sum()
    if total == 0:
        return _Moments(sd, pooled, None, None)
    # marginal moments of x = centre + c over all entries, from the per-row sums
    s1 = s1.astype(np.float64)
    sum_x = (k * centre + s1).sum(axis=0)
    sum_x2 = (k * centre * centre + 2 * centre * s1 + s2.astype(np.float64)).sum(axis=0)
    mu = sum_x / total
    marginal_sd = np.sqrt(np.maximum(sum_x2 / total - mu * mu, 0.0))
    return _Moments(sd, pooled, mu, marginal_sd)


def _gaussians(median: np.ndarray, own: _Moments, other: _Moments, count: np.ndarray,
               variance: str) -> Gaussians | None:
    """One side's Gaussians with the scale fallbacks of the module docstring (samples without models of
    the side are filled in by :func:`lira_statistics`)."""
    if own.marginal_mu is None:
        return None
    if own.pooled_sd is not None:
        global_sd = own.pooled_sd
    elif other.pooled_sd is not None:
        global_sd = other.pooled_sd
    else:
        global_sd = float(np.sqrt(np.mean(own.marginal_sd ** 2)))
    if variance == "per-example":
        sd = np.where((count >= 2)[:, None], own.sd, np.float32(global_sd))
    else:
        sd = np.full_like(own.sd, global_sd)
    sd = np.maximum(sd, SD_FLOOR).astype(np.float32)
    return Gaussians(median.astype(np.float32), sd, count)


def _log_normal(t: np.ndarray, g: Gaussians) -> np.ndarray:
    z = (t - g.mu) / g.sd
    return -0.5 * z * z - np.log(g.sd) - np.float32(0.5 * np.log(2 * np.pi))


def lira_online_scores(target_phi: np.ndarray, g_in: Gaussians, g_out: Gaussians) -> np.ndarray:
    """Mean over views of ``log N(phi_t; IN) - log N(phi_t; OUT)`` (float64 ``N``)."""
    t = np.asarray(target_phi, dtype=np.float32)
    return (_log_normal(t, g_in) - _log_normal(t, g_out)).mean(axis=1, dtype=np.float64)


def lira_offline_scores(target_phi: np.ndarray, g_out: Gaussians) -> np.ndarray:
    """Mean over views of ``log Phi((phi_t - mu_out) / sd_out)`` (float64 ``N``)."""
    t = np.asarray(target_phi, dtype=np.float64)
    return log_ndtr((t - g_out.mu) / g_out.sd).mean(axis=1)


# ---------------------------------------------------------------- RMIA


def _view_means(phi: np.ndarray, temperatures: tuple[float, ...] = (1.0,)
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per temperature ``T``: ``(mean_v sigmoid(phi / T), mean_v sigmoid(-phi / T))`` over the last axis.

    Both tails are kept: ``p`` is exact where it is small and ``1 - p`` where
    ``p`` is close to 1, so the log of either is exact (see :func:`_log_p`).
    With ``e = exp(-phi / T)``, ``p = 1 / (1 + e)`` and ``1 - p = e * p``,
    both without cancellation in float32 for ``|phi / T| <= 80``; the
    elementwise work is float32 over chunks of rows, each chunk read and
    converted once for all temperatures. Results are float64.
    """
    phi = np.asarray(phi)
    lead, v = phi.shape[:-1], phi.shape[-1]
    flat = phi.reshape(-1, v)
    means = [(np.empty(flat.shape[0], dtype=np.float64), np.empty(flat.shape[0], dtype=np.float64))
             for _ in temperatures]
    step = 1 << 16
    for i in range(0, flat.shape[0], step):
        raw = flat[i:i + step].astype(np.float32)
        for (p_mean, q_mean), t in zip(means, temperatures):
            f = np.multiply(raw, np.float32(-1.0 / t))
            np.clip(f, -PHI_CLIP, PHI_CLIP, out=f)
            e = np.exp(f, out=f)
            p = e + np.float32(1.0)
            np.reciprocal(p, out=p)
            e *= p
            p_mean[i:i + step] = p.sum(axis=-1)
            q_mean[i:i + step] = e.sum(axis=-1)
    return [((p_mean / v).reshape(lead), (q_mean / v).reshape(lead)) for p_mean, q_mean in means]


def _log_p(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``log p`` from ``p`` and ``q = 1 - p``, each used where it is exact."""
    with np.errstate(divide="ignore"):
        return np.where(p < 0.5, np.log(np.maximum(p, 1e-300)), np.log1p(-np.minimum(q, 0.5)))


@dataclass
class ReferenceProbabilities:
    """Per sample, the view-averaged ``p_y`` of the reference models: means over all models
    and over the OUT models (``p`` and ``q = 1 - p`` both), and the OUT count."""

    p_all: np.ndarray
    q_all: np.ndarray
    p_out: np.ndarray
    q_out: np.ndarray
    n_out: np.ndarray

    @classmethod
    def from_means(cls, p: np.ndarray, q: np.ndarray, inclusion: np.ndarray) -> "ReferenceProbabilities":
        """From the models' view-averaged ``p`` and ``q = 1 - p`` (``M x N`` each)."""
        out = ~np.asarray(inclusion, dtype=bool)
        n_out = out.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            p_out = (p * out).sum(axis=0) / n_out
            q_out = (q * out).sum(axis=0) / n_out
        return cls(p.mean(axis=0), q.mean(axis=0), p_out, q_out, n_out)

    def log_prior(self, mode: str, a: float) -> np.ndarray:
        """``log Pr(x)``. Offline, ``((1 + a) p_OUT + (1 - a)) / 2``, whose complement is
        ``(1 + a) / 2 * q_OUT``; a sample with no OUT model falls back to the online mean."""
        online = _log_p(self.p_all, self.q_all)
        if mode == "online":
            return online
        p = ((1 + a) * self.p_out + (1 - a)) / 2
        q = (1 + a) / 2 * self.q_out
        return np.where(self.n_out > 0, _log_p(np.nan_to_num(p), np.nan_to_num(q)), online)


@dataclass
class RmiaInputs:
    """What RMIA's score needs at one temperature, computed once and reused over the mode, a and gamma grids."""

    log_p_x: np.ndarray  # N: log p(x | target)
    ref_x: ReferenceProbabilities
    log_p_z: np.ndarray  # Z
    ref_z: ReferenceProbabilities

    @classmethod
    def of(cls, reference: ReferenceSignals, temperature: float = 1.0) -> "RmiaInputs":
        return cls.at(reference, (temperature,))[temperature]

    @classmethod
    def at(cls, reference: ReferenceSignals, temperatures: tuple[float, ...]) -> dict[float, "RmiaInputs"]:
        """The inputs at each temperature, reading the reference signals once."""
        if reference.population_target_phi.shape[0] == 0:
            raise MiaError("RMIA needs population samples (the z of its pairwise test); the "
                           "reference signals hold none")
        x, refs_x, z, refs_z = (_view_means(a, temperatures) for a in (
            reference.target_phi, reference.phi, reference.population_target_phi, reference.population_phi))
        return {t: cls(_log_p(*x[k]), ReferenceProbabilities.from_means(*refs_x[k], reference.inclusion),
                       _log_p(*z[k]), ReferenceProbabilities.from_means(*refs_z[k], reference.population_inclusion))
                for k, t in enumerate(temperatures)}

    def log_ratios(self, mode: str, a: float) -> tuple[np.ndarray, np.ndarray]:
        return (self.log_p_x - self.ref_x.log_prior(mode, a),
                self.log_p_z - self.ref_z.log_prior(mode, a))


def rmia_scores(log_rx: np.ndarray, log_rz: np.ndarray, gammas) -> np.ndarray:
    """RMIA's score, the share of ``z`` with ``r(x) / r(z) > gamma``, ties broken by ``r(x)``.

    ``len(gammas) x N`` (or ``N`` for a scalar). ``r(z) < r(x) / gamma`` is
    counted by one sort of the ``z`` and a binary search per ``x``:
    ``O((N + Z) log Z)``, no ``N x Z`` matrix. The score is
    ``(count + u) / (Z + 1)`` with ``u = 1/2 + arctan(log r(x)) / pi`` in
    (0, 1): a lexicographic refinement that orders samples with the same
    count by their own ratio and never reorders different counts. Why: on a
    memorizing target with few reference models many members, and a few
    non-members, dominate every ``z``; as one tie they make the ROC jump past
    the lowest false-positive rates (purchase-synth, 2 models: TPR at 0.1%
    FPR 0.00 as a tie, 0.31 ordered; 16 models 0.73 -> 0.76; AUC unchanged).
    """
    g = np.atleast_1d(np.asarray(gammas, dtype=np.float64))
    rz = np.sort(log_rz)
    log_rx = np.asarray(log_rx, dtype=np.float64)
    counts = np.searchsorted(rz, log_rx[None, :] - np.log(g)[:, None], side="left")
    scores = (counts + (0.5 + np.arctan(log_rx) / np.pi)[None, :]) / (len(rz) + 1)
    return scores[0] if np.ndim(gammas) == 0 else scores


def _auc_rows(scores: np.ndarray, is_member: np.ndarray) -> np.ndarray:
    """Rank-based AUC (ties count half) of every row of ``scores``."""
    from scipy.stats import rankdata  # here, not at the top: scipy.stats' import is a second of every `mia` start

    ranks = rankdata(scores, axis=-1)
    n_in = int(is_member.sum())
    n_out = len(is_member) - n_in
    return (ranks[:, is_member].sum(axis=1) - n_in * (n_in + 1) / 2) / (n_in * n_out)


@dataclass(frozen=True)
class RmiaParams:
    """RMIA's settings: how ``Pr(x)`` is formed (mode, a), the temperature, the pairwise threshold."""

    mode: str
    temperature: float
    a: float
    gamma: float


def select_rmia_params(calibration: dict[float, list[tuple[RmiaInputs, np.ndarray]]], mode: str,
                       temperature: float | None, a: float | None, gamma: float | None) -> RmiaParams:
    """The settings with the best mean AUC over the pseudo-targets (earlier grid entries win ties).

    ``calibration`` maps each temperature to try to the pseudo-targets' inputs
    at that temperature. Only reference data enters: the pseudo-targets are
    reference models on population samples. Given values are kept
    (``mode="auto"``: both modes are tried); without pseudo-targets the
    defaults are used.
    """
    if not any(calibration.values()):
        return RmiaParams(DEFAULT_MODE if mode == "auto" else mode,
                          DEFAULT_TEMPERATURE if temperature is None else temperature,
                          DEFAULT_A if a is None else a, DEFAULT_GAMMA if gamma is None else gamma)
    modes = ["online", "offline"] if mode == "auto" else [mode]
    g_grid = list(GAMMA_GRID) if gamma is None else [gamma]
    best, best_auc = None, -np.inf
    for t, inputs in calibration.items():
        for m in modes:
            for a_value in ([a] if a is not None else (list(A_GRID) if m == "offline" else [DEFAULT_A])):
                total = sum(_auc_rows(rmia_scores(*x.log_ratios(m, a_value), g_grid), member)
                            for x, member in inputs)
                j = int(np.argmax(total))
                if total[j] > best_auc:
                    best, best_auc = RmiaParams(m, float(t), float(a_value), float(g_grid[j])), total[j]
    return best


# ---------------------------------------------------------------- pseudo-targets


def pseudo_targets(reference: ReferenceSignals, seed: int) -> list[tuple[ReferenceSignals, np.ndarray]]:
    """Reference models playing the target on population samples, with their true membership.

    For each of up to :data:`CALIBRATION_MODELS` (seeded) reference models ``m``:
    up to :data:`CALIBRATION_SAMPLES` population samples, split in half: audited ``x`` (membership
    = ``m``'s inclusion) and RMIA's ``z`` (only those ``m`` did not train on,
    as the real target never trained on the population); the other models
    are the references. Models whose drawn ``x`` hold one class only are
    skipped. Empty with a single reference model.
    """
    m_count = reference.num_models
    z_count = reference.population_target_phi.shape[0]
    if m_count < 2 or z_count < 4:
        return []
    rng = np.random.default_rng(seed)
    pop_phi, pop_inc = reference.population_phi, np.asarray(reference.population_inclusion, bool)
    out = []
    for m in np.sort(rng.choice(m_count, size=min(CALIBRATION_MODELS, m_count), replace=False)):
        idx = rng.permutation(z_count)[:CALIBRATION_SAMPLES]
        x_idx, z_idx = np.sort(idx[: len(idx) // 2]), np.sort(idx[len(idx) // 2:])
        z_idx = z_idx[~pop_inc[m, z_idx]]
        member = pop_inc[m, x_idx]
        if member.all() or not member.any() or len(z_idx) == 0:
            continue
        others = np.delete(np.arange(m_count), m)[:, None]
        out.append((ReferenceSignals(
            target_phi=pop_phi[m, x_idx], phi=pop_phi[others, x_idx[None, :]],
            inclusion=pop_inc[others, x_idx[None, :]],
            population_target_phi=pop_phi[m, z_idx], population_phi=pop_phi[others, z_idx[None, :]],
            population_inclusion=pop_inc[others, z_idx[None, :]]), member))
    return out


def calibrated_threshold(scores: list[np.ndarray], members: list[np.ndarray], fallback: float) -> float:
    """The balanced-accuracy-optimal threshold on pooled pseudo-target scores (or ``fallback``)."""
    if not scores:
        return float(fallback)
    s, mem = np.concatenate(scores), np.concatenate(members)
    (tau,), (fitted,) = fit_thresholds(s, mem, np.zeros(len(s), dtype=np.int64), 1)
    return float(tau) if fitted else float(fallback)


# ---------------------------------------------------------------- attacks


class ReferenceAttack(Attack):
    """``fit(shadows, reference)`` keeps the reference signals and fits ``threshold_`` on
    pseudo-targets; ``decision_function(target)`` scores the audited samples of ``reference``."""

    name: str = ""
    fallback_threshold: float = 0.0

    def __init__(self, seed: int = 0):
        self.seed = seed

    @abstractmethod
    def score(self, reference: ReferenceSignals) -> np.ndarray:
        """Scores of ``reference.target_phi``'s samples (larger = member)."""

    def calibration_scores(self, calibration: list[tuple[ReferenceSignals, np.ndarray]]) -> list[np.ndarray]:
        """The pseudo-targets' scores the threshold is fitted on; an attack that chooses settings
        on the pseudo-targets chooses them here, from the same scores."""
        return [self.score(r) for r, _ in calibration]

    def fit(self, shadows: list[ShadowSignals], reference: ReferenceSignals) -> "ReferenceAttack":
        self.reference_ = reference
        calibration = pseudo_targets(reference, self.seed)
        self.threshold_ = calibrated_threshold(self.calibration_scores(calibration),
                                               [mem for _, mem in calibration], self.fallback_threshold)
        return self

    def decision_function(self, signals: Signals) -> np.ndarray:
        n = self.reference_.target_phi.shape[0]
        if len(signals) != n:
            raise MiaError(f"attack {self.name!r} was fitted on reference signals of {n} audited "
                           f"samples but is asked to score {len(signals)}")
        return self.target_scores(signals)

    def target_scores(self, signals: Signals) -> np.ndarray:
        """The target's scores: by default from ``reference.target_phi``, which holds the
        target's phi aligned with the reference models' (``signals`` are the same samples)."""
        return self.score(self.reference_)


def _check_choice(attack: str, param: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise MiaError(f"attack {attack!r}: {param} must be one of {', '.join(choices)}, got {value!r}")
    return value


class _Lira(ReferenceAttack):
    """What both LiRA tests share: the variance setting, given or chosen on the pseudo-targets."""

    def __init__(self, variance: str = "auto", seed: int = 0):
        super().__init__(seed)
        self.variance = _check_choice(self.name, "variance", variance, ("auto", *VARIANCES))

    def calibration_scores(self, calibration: list[tuple[ReferenceSignals, np.ndarray]]) -> list[np.ndarray]:
        """With ``variance="auto"``, the scale whose pseudo-target scores reach the higher TPR at
        :data:`VARIANCE_FPR` (the first on ties, and without pseudo-targets); its scores."""
        best_tpr, best_scores = -1.0, []
        for variance in VARIANCES if self.variance == "auto" else (self.variance,):
            scores = [self.scores(r, variance) for r, _ in calibration]
            tpr = sum(tpr_at_fpr(*roc(s, member)[:2], VARIANCE_FPR) for s, (_, member) in zip(scores, calibration))
            if tpr > best_tpr:
                self.variance_, best_tpr, best_scores = variance, tpr, scores
        return best_scores

    def chosen(self) -> dict:
        return {"variance": self.variance_} if self.variance == "auto" else {}

    def score(self, reference: ReferenceSignals) -> np.ndarray:
        return self.scores(reference, self.variance_)

    @abstractmethod
    def scores(self, reference: ReferenceSignals, variance: str) -> np.ndarray:
        """The test's scores with the given scales."""


class LiraOnline(_Lira):
    """LiRA online: IN/OUT Gaussian likelihood ratio per sample (see the module docstring)."""

    name = "lira-online"
    fallback_threshold = 0.0  # likelihood ratio 1

    def scores(self, reference: ReferenceSignals, variance: str) -> np.ndarray:
        stats = lira_statistics(reference.phi, reference.inclusion, variance)
        if stats["in"] is None:  # an offline pool; or an online one whose few-row models missed them all
            rows = int(reference.inclusion[0].sum() + reference.population_inclusion[0].sum())
            raise NothingToScore(f"attack 'lira-online' needs reference models trained on the audited samples, "
                                 f"and none of the {reference.num_models} trained on any of the "
                                 f"{reference.phi.shape[1]}: an offline pool trains none (--pool online), and an "
                                 f"online one's models train on as many rows as the target did ({rows}), too few "
                                 "to draw them; add --reference-models, or use lira-offline or rmia")
        if stats["out"] is None:
            raise NothingToScore("attack 'lira-online' needs reference models that did not train on the "
                                 "audited samples; every model trained on all of them")
        return lira_online_scores(reference.target_phi, stats["in"], stats["out"])


class LiraOffline(_Lira):
    """LiRA offline: one-sided test against the OUT Gaussian (see the module docstring)."""

    name = "lira-offline"
    fallback_threshold = float(np.log(0.5))  # above the OUT median

    def scores(self, reference: ReferenceSignals, variance: str) -> np.ndarray:
        g_out = lira_statistics(reference.phi, reference.inclusion, variance, sides=("out",))["out"]
        if g_out is None:
            raise MiaError("attack 'lira-offline' needs reference models that did not train on the "
                           "audited samples; every model trained on all of them")
        return lira_offline_scores(reference.target_phi, g_out)


class Rmia(ReferenceAttack):
    """RMIA: pairwise likelihood ratio against population samples (see the module docstring)."""

    name = "rmia"
    fallback_threshold = 0.5

    def __init__(self, mode: str = "auto", a: float | None = None, gamma: float | None = None,
                 temperature: float | None = None, seed: int = 0):
        super().__init__(seed)
        self.mode = _check_choice(self.name, "mode", mode, RMIA_MODES)
        if a is not None and not 0.0 <= a <= 1.0:
            raise MiaError(f"attack 'rmia': a must be in [0, 1], got {a}")
        if gamma is not None and not gamma > 0:
            raise MiaError(f"attack 'rmia': gamma must be positive, got {gamma}")
        if temperature is not None and not temperature > 0:
            raise MiaError(f"attack 'rmia': temperature must be positive, got {temperature}")
        self.a, self.gamma, self.temperature = a, gamma, temperature

    def fit(self, shadows: list[ShadowSignals], reference: ReferenceSignals) -> "Rmia":
        self.reference_ = reference
        mode = self.mode
        if not reference.inclusion.any():
            # An offline pool: online Pr(x) of an audited sample would average OUT models only (offline
            # with a = 1), while the pseudo-targets, population samples IN for some models, would judge
            # and calibrate the real online test; so only offline is chosen, or asked
            if mode == "online":
                raise MiaError("attack 'rmia' mode=online needs reference models trained on the audited "
                               "samples; use the online pool (pool_mode online, --pool online) or mode=offline")
            mode = "offline"
        pseudo = pseudo_targets(reference, self.seed)
        temperatures = TEMPERATURE_GRID if self.temperature is None else (self.temperature,)
        per_target = [(RmiaInputs.at(r, temperatures), member) for r, member in pseudo]
        calibration = {t: [(inputs[t], member) for inputs, member in per_target] for t in temperatures}
        self.params_ = select_rmia_params(calibration, mode, self.temperature, self.a, self.gamma)
        self.mode_, self.temperature_ = self.params_.mode, self.params_.temperature
        self.a_, self.gamma_ = self.params_.a, self.params_.gamma
        chosen = calibration.get(self.temperature_, [])
        self.threshold_ = calibrated_threshold([self._scores(x) for x, _ in chosen], [m for _, m in chosen],
                                               self.fallback_threshold)
        return self

    def chosen(self) -> dict:
        given = {"mode": self.mode if self.mode != "auto" else None, "temperature": self.temperature,
                 "a": self.a, "gamma": self.gamma}
        return {k: v for k, v in vars(self.params_).items() if given[k] is None}

    def _scores(self, inputs: RmiaInputs) -> np.ndarray:
        return rmia_scores(*inputs.log_ratios(self.mode_, self.a_), self.gamma_)

    def score(self, reference: ReferenceSignals) -> np.ndarray:
        return self._scores(RmiaInputs.of(reference, self.temperature_))


class GlobalThreshold(ReferenceAttack):
    """LiRA's global-threshold baseline: ``-loss`` of the target, one threshold.

    The threshold is fitted on the reference models playing the target on the
    population (their ``-loss`` is ``log sigmoid(phi)`` of view 0, exactly the
    plain input's ``log p_y``); the target's own score comes from its logits.
    """

    name = "global-threshold"
    fallback_threshold = float(np.log(0.5))  # p_y = 0.5

    def score(self, reference: ReferenceSignals) -> np.ndarray:
        phi0 = np.asarray(reference.target_phi[:, 0], dtype=np.float64)
        return -np.logaddexp(0.0, -phi0)  # log sigmoid(phi) = -loss

    def target_scores(self, signals: Signals) -> np.ndarray:
        return -loss(signals.logits, signals.labels)


_VARIANCE = Param(str, "auto", "'per-example': each sample's own spread over models; "
                               "'fixed': one global spread per IN/OUT (better with few models); "
                               f"'auto': the one with the higher TPR at {VARIANCE_FPR:.0%} FPR on the reference "
                               "models playing the target")
_REFERENCE = frozenset({"reference"})

register(AttackSpec("lira-online", LiraOnline,
                    "LiRA online: per-sample IN/OUT Gaussian likelihood ratio (Carlini et al. 2022)",
                    {"variance": _VARIANCE}, needs=_REFERENCE, family="reference"))
register(AttackSpec("lira-offline", LiraOffline,
                    "LiRA offline: one-sided test against the OUT Gaussian (Carlini et al. 2022)",
                    {"variance": _VARIANCE}, needs=_REFERENCE, family="reference"))
register(AttackSpec("rmia", Rmia,
                    "RMIA: pairwise likelihood ratio against population samples (Zarifzadeh et al. 2024)",
                    {"mode": Param(str, "auto", "'online': Pr(x) over all reference models; "
                                                "'offline': OUT models only, corrected by a; "
                                                "'auto': the better of the two on the reference models"),
                     "temperature": Param(float, None, "p = sigmoid(phi / T), the softmax temperature of the "
                                                       "true-label margin; default: chosen on the reference "
                                                       "models"),
                     "a": Param(float, None, "offline correction Pr = ((1+a) p_OUT + 1 - a) / 2; "
                                             "default: chosen on the reference models"),
                     "gamma": Param(float, None, "pairwise threshold on r(x)/r(z); default: chosen "
                                                 "on the reference models")},
                    needs=_REFERENCE, family="reference"))
register(AttackSpec("global-threshold", GlobalThreshold,
                    "LiRA's baseline: -loss with one threshold fitted on the reference models (Yeom et al.)",
                    {}, needs=_REFERENCE, family="reference"))
