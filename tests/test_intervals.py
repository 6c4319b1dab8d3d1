"""Bootstrap intervals and the empirical epsilon lower bound, against direct computations."""


import numpy as np
import pytest
from scipy.stats import beta
from sklearn.metrics import roc_auc_score

from mia.errors import MiaError
from mia.metrics import (BOOTSTRAP_METRICS, FPR_TARGETS, INTERVAL_METRICS, _resample_counts,
                         _weighted_metrics, attack_metrics, bootstrap_intervals, clopper_pearson,
                         epsilon_lower_bound, interval_metrics, roc, tpr_at_fpr)


def scored(n: int, shift: float, seed: int, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    member = np.zeros(n, bool)
    member[rng.permutation(n)[: n // 2]] = True
    scores = rng.normal(size=n) + shift * member
    if ties:
        scores[: n // 4] = np.round(scores[: n // 4], 1)
    return scores, member


def test_unit_weights_reproduce_the_point_metrics():
    scores, member = scored(3000, 1.0, 0)
    s_in, s_out = np.sort(scores[member]), np.sort(scores[~member])
    ones_in, ones_out = np.ones((1, len(s_in)), int), np.ones((1, len(s_out)), int)
    got = _weighted_metrics(s_in, s_out, ones_in, ones_out)
    want = attack_metrics(scores, member)
    for m in BOOTSTRAP_METRICS:
        assert got[m][0] == pytest.approx(want[m], abs=1e-12), m


def test_weighted_metrics_match_an_explicit_resample():
    scores, member = scored(800, 0.8, 1)
    s_in, s_out = np.sort(scores[member]), np.sort(scores[~member])
    rng = np.random.default_rng(5)
    w_in, w_out = _resample_counts(rng, len(s_in), 3), _resample_counts(rng, len(s_out), 3)
    got = _weighted_metrics(s_in, s_out, w_in, w_out)
    for b in range(3):
        rs = np.r_[np.repeat(s_in, w_in[b]), np.repeat(s_out, w_out[b])]
        rm = np.r_[np.ones(len(s_in), bool), np.zeros(len(s_out), bool)]
        assert got["auc"][b] == pytest.approx(roc_auc_score(rm, rs), abs=1e-12)
        fpr, tpr, _ = roc(rs, rm)
        for a in FPR_TARGETS:
            assert got[f"tpr_at_fpr_{a:g}"][b] == pytest.approx(tpr_at_fpr(fpr, tpr, a), abs=1e-12)


def test_resamples_are_stratified():
    """Members and non-members are resampled apart (each side keeps its size) with replacement:
    a count per item, mean 1 and variance 1 - 1/n over many resamples, every resample its own."""
    counts = _resample_counts(np.random.default_rng(0), 50, 2000)
    assert counts.shape == (2000, 50) and (counts.sum(axis=1) == 50).all()
    assert counts.mean() == pytest.approx(1.0) and counts.var() == pytest.approx(1 - 1 / 50, abs=0.03)
    assert (counts == 0).any(axis=1).mean() > 0.99  # with replacement: items left out of almost every resample
    assert len({row.tobytes() for row in counts}) == 2000


def test_bootstrap_resamples_each_side_apart(monkeypatch):
    import mia.metrics as metrics

    sizes = []
    original = metrics._resample_counts
    monkeypatch.setattr(metrics, "_resample_counts", lambda rng, n, b: sizes.append((n, b)) or original(rng, n, b))
    scores, member = scored(300, 0.5, 1)
    bootstrap_intervals(scores[:-100], member[:-100], n_boot=50)  # 150 members, 50 non-members
    assert sorted(sizes) == [(int((~member[:-100]).sum()), 50), (int(member[:-100].sum()), 50)]


def test_intervals_contain_the_estimate_and_shrink_with_more_samples():
    widths = []
    for n in (1000, 16000):
        scores, member = scored(n, 1.0, 2)
        point = attack_metrics(scores, member)
        ci = bootstrap_intervals(scores, member, n_boot=200, seed=0)
        assert list(ci) == list(BOOTSTRAP_METRICS)
        for m in ("auc", "tpr_at_fpr_0.1", "tpr_at_fpr_0.01"):
            lo, hi = ci[m]
            assert lo <= point[m] <= hi, (n, m, lo, point[m], hi)
        widths.append(ci["auc"][1] - ci["auc"][0])
    assert widths[1] < widths[0] / 2.5  # ~1/sqrt(16) = 1/4 in theory


def test_intervals_are_seeded_and_respect_the_level():
    scores, member = scored(2000, 0.5, 3)
    a = bootstrap_intervals(scores, member, seed=4)
    assert a == bootstrap_intervals(scores, member, seed=4)
    narrow = bootstrap_intervals(scores, member, level=0.5, seed=4)
    assert narrow["auc"][1] - narrow["auc"][0] < a["auc"][1] - a["auc"][0]


def test_intervals_cut_equal_tails_off_the_resampled_metrics():
    # a 90% interval leaves 5% of the resamples below it and 5% above it: the draws the function makes,
    # repeated here from the same seed
    scores, member = scored(1000, 0.5, 9, ties=False)
    ci = bootstrap_intervals(scores, member, n_boot=2000, level=0.9, seed=2)
    rng = np.random.default_rng(2)
    s_in, s_out = np.sort(scores[member]), np.sort(scores[~member])
    auc = _weighted_metrics(s_in, s_out, _resample_counts(rng, len(s_in), 2000),
                            _resample_counts(rng, len(s_out), 2000))["auc"]
    lo, hi = ci["auc"]
    assert 80 <= (auc < lo).sum() <= 110 and 80 <= (auc > hi).sum() <= 110


def test_perfect_separation_gives_one_one():
    member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    scores = np.r_[np.linspace(10, 11, 500), np.linspace(0, 1, 500)]
    ci = bootstrap_intervals(scores, member)
    for m in BOOTSTRAP_METRICS:
        assert ci[m] == (1.0, 1.0), m


def test_bootstrap_is_one_vectorized_pass(monkeypatch):
    """The speed claim (benchmarks/, not a timed test): all resamples in one weighted pass over
    sorted scores, no sort and no ROC per resample."""
    import mia.metrics as metrics

    calls = []
    original = metrics._weighted_metrics
    monkeypatch.setattr(metrics, "_weighted_metrics",
                        lambda s_in, s_out, w_in, w_out: calls.append(w_in.shape) or original(s_in, s_out, w_in, w_out))
    monkeypatch.setattr("sklearn.metrics.roc_curve", lambda *a, **k: pytest.fail("a ROC per resample"))
    scores, member = scored(1000, 0.7, 6)
    bootstrap_intervals(scores, member, n_boot=200)
    assert calls == [(200, int(member.sum()))]


def test_clopper_pearson_against_scipy_by_hand():
    # 3 successes out of 20 at one-sided 97.5%: the textbook Beta quantiles
    lo, hi = clopper_pearson(3, 20, 0.975)
    assert lo == pytest.approx(beta.ppf(0.025, 3, 18))
    assert hi == pytest.approx(beta.ppf(0.975, 4, 17))
    assert 0.032 < lo < 0.033 and 0.378 < hi < 0.380  # the two-sided 95% interval of 3/20
    assert clopper_pearson(0, 20, 0.975) == (0.0, pytest.approx(1 - 0.025 ** (1 / 20)))
    assert clopper_pearson(20, 20, 0.975) == (pytest.approx(0.025 ** (1 / 20)), 1.0)


def test_epsilon_lower_bound_by_hand():
    # 10 members, 100 non-members; from the top: 4 members, 1 non-member, 1 member, then a mix
    member = np.r_[np.ones(10, bool), np.zeros(100, bool)]
    scores = np.r_[[10, 9, 8, 7, 6, 0.5, 0.4, 0.3, 0.2, 0.1], [6.5], np.linspace(0, 1, 99)]
    eps = epsilon_lower_bound(scores, member, fpr=0.01, level=0.95)
    # at FPR <= 1% the best point flags 5 members (TPR 0.5) and 1 non-member (FPR 0.01)
    c = 0.975
    fpr_hi = beta.ppf(c, 2, 99)
    tpr_lo = beta.ppf(1 - c, 5, 6)
    want = max(0.0, np.log(tpr_lo / fpr_hi), np.log((1 - fpr_hi) / (1 - tpr_lo)))
    assert eps == pytest.approx(want)
    assert eps > 0
    # delta lowers it
    assert epsilon_lower_bound(scores, member, fpr=0.01, delta=0.1) < eps


def test_epsilon_lower_bound_with_delta_where_the_second_inequality_binds():
    # 100 members, 100 non-members: 20 non-members score highest, then every member, then the other
    # non-members. At FPR <= 0.2 the point flags every member and 20 non-members, and the bound
    # 1 - FPR <= e^eps (1 - TPR) + delta is the tighter one
    member = np.r_[np.zeros(20, bool), np.ones(100, bool), np.zeros(80, bool)]
    scores = -np.arange(200.0)
    c = 0.975
    fpr_hi, tpr_lo = beta.ppf(c, 21, 80), beta.ppf(1 - c, 100, 1)
    for delta in (0.0, 0.05):
        want = max(0.0, np.log((tpr_lo - delta) / fpr_hi), np.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
        assert np.log((1 - fpr_hi - delta) / (1 - tpr_lo)) == pytest.approx(want)
        assert epsilon_lower_bound(scores, member, fpr=0.2, delta=delta) == pytest.approx(want)


def test_epsilon_lower_bound_is_zero_for_random_scores():
    zeros = 0
    for seed in range(20):
        scores, member = scored(2000, 0.0, seed, ties=False)
        zeros += epsilon_lower_bound(scores, member) == 0.0
    assert zeros >= 18  # a 95% bound: a positive value is a false claim of leakage


def test_epsilon_lower_bound_is_positive_and_sensible_for_strong_separation():
    scores, member = scored(20000, 4.0, 7, ties=False)
    eps = epsilon_lower_bound(scores, member, fpr=0.01)
    # TPR at 1% FPR is ~0.78 here: the plain estimate is log(0.78 / 0.01) = 4.4
    point = attack_metrics(scores, member)["tpr_at_fpr_0.01"]
    assert 3.0 < eps < np.log(point / 0.01)
    perfect = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    eps_perfect = epsilon_lower_bound(np.r_[np.ones(1000), np.zeros(1000)], perfect)
    # FP = 0 of 1000: FPR_hi = 1 - 0.025^(1/1000) ~ 3.7e-3, TPR_lo ~ 0.996: eps ~ 5.6
    assert 5.0 < eps_perfect < 6.0


def test_interval_metrics_names_and_errors():
    scores, member = scored(1000, 1.0, 8)
    m = interval_metrics(scores, member, n_boot=50)
    assert tuple(m) == INTERVAL_METRICS
    assert INTERVAL_METRICS[:2] == ("auc_ci_low", "auc_ci_high")
    assert "tpr_at_fpr_0.001_ci_low" in INTERVAL_METRICS and INTERVAL_METRICS[-1] == "epsilon_lb"
    assert all(np.isfinite(v) for v in m.values())
    with pytest.raises(MiaError, match="level"):
        bootstrap_intervals(scores, member, level=1.5)
    with pytest.raises(MiaError, match="fpr"):
        epsilon_lower_bound(scores, member, fpr=0.0)
    with pytest.raises(MiaError, match="one class"):
        interval_metrics(scores, np.ones(len(scores), bool))
