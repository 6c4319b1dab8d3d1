"""FedMIA attacks on synthetic server recordings: which attack wins when, NaN rounds, I/O, errors."""

import numpy as np
import pytest
from scipy.stats import norm

from mia.errors import MiaError
from mia.fl.attacks import FL_ATTACKS, FLSignals, round_curves, run_fl_attack
from mia.report.rounds import plot_round_curves
from mia.metrics import INTERVAL_METRICS, METRICS, attack_metrics

R, N, Q = 5, 6, 400
MEMBER = np.arange(Q) < 200  # client 0's members, then non-members held by no client
ALL = ["loss-i", "loss-ii", "loss-iii", "cos-i", "cos-ii", "cos-iii", "grad-norm", "grad-diff"]


def make_signals(seed: int = 1, absent_last: bool = False, difficulty: float = 1.4, noise: float = 2.0,
                 effect: float = 1.4) -> FLSignals:
    """Gaussian stand-ins for the recorded signals.

    Per query a persistent difficulty shared by every client and round
    (sd ``difficulty``), per round and client independent noise (sd
    ``noise``), and for client 0 on its members a shift of ``effect``
    (lower loss, higher cosine). Client 5 skips round 2, client 1 round 3,
    client 2 round 4; with ``absent_last`` client 0 skips round 5.
    """
    rng = np.random.default_rng(seed)
    sampled = np.ones((R, N), bool)
    sampled[1, 5] = sampled[2, 1] = sampled[3, 2] = False
    if absent_last:
        sampled[4, 0] = False
    holds = (np.arange(N) == 0)[:, None] & MEMBER[None]  # N x Q

    def memberness():  # R x N x Q, larger = more member-like
        return (rng.normal(0, difficulty, Q) + rng.normal(0, noise, (R, N, Q)) + effect * holds)

    loss = 3.0 - 0.5 * memberness()
    cos = 0.02 * memberness()
    grad_norm = np.exp(0.5 * rng.normal(size=Q) + 0.2 * rng.normal(size=(R, Q)) - 0.5 * MEMBER)
    d_norm = rng.uniform(3, 5, (R, N, 1))
    grad_diff = 2 * cos * d_norm * np.sqrt(grad_norm)[:, None] - grad_norm[:, None]
    for x in (loss, cos, grad_diff):
        x[~sampled] = np.nan
    return FLSignals(np.arange(1, R + 1), loss, cos, grad_diff, grad_norm)


@pytest.fixture(scope="module")
def signals():
    return make_signals()


def auc(name, s, target, **kw):
    return attack_metrics(run_fl_attack(name, s, target, **kw).scores, MEMBER)["auc"]


def test_registry_order_and_kinds():
    assert FL_ATTACKS.names() == ALL
    assert [n for n in ALL if FL_ATTACKS.get(n).multi_round] == ["loss-ii", "loss-iii", "cos-ii", "cos-iii"]
    assert [n for n in ALL if FL_ATTACKS.get(n).threshold is not None] == ["loss-iii", "cos-iii"]
    assert all("round" in FL_ATTACKS.get(n).params for n in ALL if not FL_ATTACKS.get(n).multi_round)


def test_every_attack_finds_the_target_members(signals):
    for name in ALL:
        out = run_fl_attack(name, signals, 0)
        m = attack_metrics(out.scores, MEMBER, out.predictions)
        assert m["auc"] > 0.6, name
        assert m["balanced_accuracy"] > 0.55, name
        assert out.predictions.dtype == bool and np.isfinite(out.scores).all()


def test_a_client_without_the_members_sees_nothing(signals):
    for name in ("loss-i", "loss-ii", "cos-i", "cos-ii"):
        assert abs(auc(name, signals, 3) - 0.5) < 0.07, name
    # -iii compares client 3 with the other clients, client 0 (the holder) among them, so the
    # members look LESS member-like to it than chance: never above chance, not exactly 0.5
    for name in ("loss-iii", "cos-iii"):
        assert auc(name, signals, 3) < 0.55, name
    # the gradient norm is the global model's: the same for every target
    np.testing.assert_array_equal(run_fl_attack("grad-norm", signals, 3).scores,
                                  run_fl_attack("grad-norm", signals, 0).scores)


def test_temporal_beats_single_and_spatial_beats_temporal_with_hard_samples(signals):
    for family in ("loss", "cos"):
        one, temporal, spatial = (auc(f"{family}-{k}", signals, 0) for k in ("i", "ii", "iii"))
        assert temporal > one + 0.02, family
        assert spatial > temporal + 0.05, family


def test_spatial_score_by_hand(signals):
    s = run_fl_attack("loss-iii", signals, 0).scores
    q = 7
    probs = []
    for r in range(R):
        others = [n for n in range(1, N) if signals.sampled[r, n]]
        x = signals.loss[r, others, q]
        probs.append(norm.sf((signals.loss[r, 0, q] - x.mean()) / x.std(ddof=1)))
    assert s[q] == pytest.approx(-np.log1p(-np.mean(probs)))  # the mean probability, on a log scale
    assert (s >= 0).all()
    out = run_fl_attack("cos-iii", signals, 0)
    np.testing.assert_array_equal(out.predictions, out.scores > np.log(2))  # mean probability above 1/2
    out = run_fl_attack("cos-ii", signals, 0)
    assert out.predictions.sum() == Q // 2  # median threshold on a balanced query set


def test_spatial_scores_keep_their_order_far_beyond_every_other_client():
    """Targets 5 to 40 standard deviations beyond the other clients: a mean probability rounds them all to 1
    (a tie that no threshold splits, so the TPR at low FPR read 0), the log-scale score orders them."""
    s = make_signals()
    loss = s.loss[:1].copy()
    others = loss[0, 1:]
    beyond = np.array([5.0, 10.0, 20.0, 40.0])
    loss[0, 0, :4] = others[:, :4].mean(0) - beyond * others[:, :4].std(0, ddof=1)  # low loss: member-like
    one = FLSignals([1], loss, s.cos[:1], s.grad_diff[:1], s.grad_norm[:1])
    scores = run_fl_attack("loss-iii", one, 0).scores[:4]
    assert np.all(np.diff(scores) > 0) and np.all(np.isfinite(scores)), scores
    assert scores[1] == pytest.approx(-norm.logsf(10.0))


def test_spatial_skips_rounds_with_fewer_than_two_other_clients():
    s = make_signals()
    loss, cos, diff = (x[:2, :3].copy() for x in (s.loss, s.cos, s.grad_diff))
    loss[0, 2] = cos[0, 2] = diff[0, 2] = np.nan  # round 1: only client 1 beside the target
    small = FLSignals([1, 2], loss, cos, diff, s.grad_norm[:2])
    x = loss[1, 1:]
    expect = -norm.logcdf((loss[1, 0] - x.mean(0)) / x.std(0, ddof=1))
    np.testing.assert_allclose(run_fl_attack("loss-iii", small, 0).scores, expect)
    with pytest.raises(MiaError, match="at least two other"):
        run_fl_attack("loss-iii", small, 0, up_to_round=1)


def test_under_all_an_attack_the_rounds_cannot_feed_is_left_out_and_named_explicitly_fails():
    from mia.audit import run_fl_attacks

    s = make_signals()
    two = FLSignals(s.rounds, s.loss[:, :2], s.cos[:, :2], s.grad_diff[:, :2], s.grad_norm)  # a 2-client federation
    with pytest.warns(UserWarning, match="loss-iii left out"):
        kept = run_fl_attacks(["loss-i", "loss-iii"], two, 0, MEMBER, skip_unscorable=True)
    assert [r.name for r in kept] == ["loss-i"] and kept[0].metrics["auc"] > 0.6
    with pytest.raises(MiaError, match=r"^loss-iii: no recorded round .* \(--clients, --client-fraction\)"):
        run_fl_attacks(["loss-i", "loss-iii"], two, 0, MEMBER)


def test_nan_rounds_and_round_parameter():
    s = make_signals(absent_last=True)
    last = run_fl_attack("loss-i", s, 0).scores
    np.testing.assert_array_equal(last, -s.loss[3, 0])
    np.testing.assert_array_equal(last, run_fl_attack("loss-i", s, 0, {"round": "4"}).scores)
    np.testing.assert_array_equal(run_fl_attack("cos-i", s, 0, {"round": 2}).scores, s.cos[1, 0])
    np.testing.assert_allclose(run_fl_attack("loss-ii", s, 0).scores, -s.loss[:4, 0].mean(0))
    for name in ALL:
        assert np.isfinite(run_fl_attack(name, s, 0).scores).all(), name
    with pytest.raises(MiaError, match="not sampled in round 5"):
        run_fl_attack("grad-diff", s, 0, {"round": 5})
    # up_to_round: single-round attacks read the last kept round, multi-round ones all kept rounds
    np.testing.assert_array_equal(run_fl_attack("loss-i", s, 0, up_to_round=3).scores, -s.loss[2, 0])
    np.testing.assert_allclose(run_fl_attack("cos-ii", s, 0, up_to_round=2).scores, s.cos[:2, 0].mean(0))
    np.testing.assert_array_equal(run_fl_attack("grad-norm", s, 0, up_to_round=1).scores, -s.grad_norm[0])


def test_save_load_round_trip(signals, tmp_path):
    path = signals.save(tmp_path / "fl" / "signals.npz")
    with np.load(path, allow_pickle=False) as z:
        assert z["loss"].dtype == np.float32 and z["grad_diff"].dtype == np.float32
    back = FLSignals.load(path)
    np.testing.assert_array_equal(back.rounds, signals.rounds)
    for k in ("loss", "cos", "grad_diff", "grad_norm"):
        np.testing.assert_allclose(getattr(back, k), getattr(signals, k), rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(back.sampled, signals.sampled)
    assert auc("grad-diff", back, 0) == pytest.approx(auc("grad-diff", signals, 0), abs=1e-3)
    with pytest.raises(MiaError, match="no FL signals file"):
        FLSignals.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", rounds=np.arange(3))
    with pytest.raises(MiaError, match="lacks loss"):
        FLSignals.load(tmp_path / "other.npz")


def one_line_error(fn, match):
    with pytest.raises(MiaError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_bad_input_is_a_one_line_error(signals):
    s = signals
    for target in (-1, N, True, 1.0):
        one_line_error(lambda t=target: run_fl_attack("loss-i", s, t), "target client")
    one_line_error(lambda: run_fl_attack("loss-ii", s, 0, {"round": 2}), "takes no parameters \\(got 'round'\\)")
    one_line_error(lambda: run_fl_attack("loss-i", s, 0, {"rounds": 2}), "no parameter 'rounds'")
    one_line_error(lambda: run_fl_attack("loss-i", s, 0, {"round": "x"}), "not a valid int")
    one_line_error(lambda: run_fl_attack("loss-i", s, 0, {"round": 9}), "round 9 was not recorded")
    one_line_error(lambda: run_fl_attack("loss-i", s, 5, {"round": 2}), "not sampled in round 2")
    one_line_error(lambda: run_fl_attack("loss-i", s, 0, up_to_round=0), "no round up to 0")
    one_line_error(lambda: run_fl_attack("nope", s, 0), "unknown FL attack")
    arrays = [x.copy() for x in (s.loss, s.cos, s.grad_diff)]
    for x in arrays:
        x[:, 0] = np.nan  # client 0 never sampled
    never = FLSignals(s.rounds, *arrays, s.grad_norm)
    one_line_error(lambda: run_fl_attack("loss-ii", never, 0), "not sampled in any recorded round")
    a = (s.rounds, s.loss, s.cos, s.grad_diff, s.grad_norm)
    one_line_error(lambda: FLSignals(a[0], a[1], a[2][:, :, :-1], *a[3:]), "cos has shape")
    one_line_error(lambda: FLSignals(*a[:4], a[4][:-1]), "grad_norm has shape")
    one_line_error(lambda: FLSignals(a[0][:-1], *a[1:]), "R x N x Q")
    one_line_error(lambda: FLSignals(a[0][::-1], *a[1:]), "increasing")
    one_line_error(lambda: FLSignals(a[0] - 1, *a[1:]), "1-based")
    one_line_error(lambda: FLSignals(a[0] + 0.5, *a[1:]), "integers")
    cos = a[2].copy()
    cos[0, 0] = np.nan  # client 0 sampled in round 1 by loss, not by cos
    one_line_error(lambda: FLSignals(a[0], a[1], cos, *a[3:]), "other \\(round, client\\) pairs")
    cos[0, 0] = a[2][0, 0]
    cos[0, 0, 3] = np.nan
    one_line_error(lambda: FLSignals(a[0], a[1], cos, *a[3:]), "NaN for some queries")


def test_round_curves_and_plot(tmp_path):
    s = make_signals(absent_last=True)
    curves = round_curves(ALL, s, 0, MEMBER)
    assert list(curves) == ALL
    for name, entries in curves.items():
        assert [e["round"] for e in entries] == [1, 2, 3, 4], name
        assert all(list(e) == ["round", *METRICS] for e in entries)
    # a single-round attack at round r reads round r, a multi-round one rounds <= r
    assert curves["loss-i"][1]["auc"] == pytest.approx(
        attack_metrics(-s.loss[1, 0], MEMBER)["auc"])
    assert curves["loss-ii"][0]["auc"] == pytest.approx(curves["loss-i"][0]["auc"])
    assert curves["loss-iii"][-1]["auc"] > curves["loss-iii"][0]["auc"]  # more rounds, better
    band = round_curves("cos-iii", s, 0, MEMBER, intervals=True, seed=1)
    assert set(INTERVAL_METRICS) <= set(band["cos-iii"][0])
    assert band["cos-iii"][0]["auc_ci_low"] <= band["cos-iii"][0]["auc"] <= band["cos-iii"][0]["auc_ci_high"]
    with pytest.raises(MiaError, match="membership labels"):
        round_curves(ALL, s, 0, MEMBER[:-1])
    path = plot_round_curves({**curves, **band}, tmp_path / "plots" / "rounds.png", title="client 0")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(MiaError, match="no round curves"):
        plot_round_curves({"loss-i": []}, tmp_path / "empty.png")
