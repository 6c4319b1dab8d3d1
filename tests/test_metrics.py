"""Attack metrics against scikit-learn and hand-computed cases."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mia.errors import MiaError
from mia.metrics import (FPR_TARGETS, METRICS, attack_metrics, balanced_accuracy,
                         roc, tpr_at_fpr)


def test_auc_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    member = rng.random(500) < 0.5
    scores = rng.normal(size=500) + 0.7 * member
    scores[:50] = np.round(scores[:50])  # some ties
    m = attack_metrics(scores, member)
    assert m["auc"] == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    fpr, tpr, _ = roc(scores, member)
    assert m["advantage"] == pytest.approx(np.max(tpr - fpr))
    assert m["balanced_accuracy"] == pytest.approx(0.5 + m["advantage"] / 2)
    assert list(m) == list(METRICS)


def test_perfect_and_reversed_scores():
    member = np.array([True] * 5 + [False] * 5)
    scores = np.arange(10, 0, -1).astype(float)  # members score highest
    m = attack_metrics(scores, member)
    assert m["auc"] == 1.0 and m["advantage"] == 1.0 and m["balanced_accuracy"] == 1.0
    for a in FPR_TARGETS:
        assert m[f"tpr_at_fpr_{a:g}"] == 1.0
    r = attack_metrics(-scores, member)
    assert r["auc"] == 0.0 and r["advantage"] == 0.0
    assert r["tpr_at_fpr_0.1"] == 0.0


def test_tpr_at_fpr_by_hand():
    # scores descending: M N M M N N N N N N  (3 members, 7 non-members... use 10 non-members)
    member = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    scores = np.arange(13, 0, -1).astype(float)
    fpr, tpr, _ = roc(scores, member)
    # 10 non-members: FPR 0 -> TPR 1/3; FPR 0.1 -> TPR 1 (after the next two members)
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(fpr, tpr, 0.05) == pytest.approx(1 / 3)
    assert tpr_at_fpr(fpr, tpr, 0.1) == 1.0
    m = attack_metrics(scores, member)
    assert m["tpr_at_fpr_0.01"] == pytest.approx(1 / 3)
    assert m["tpr_at_fpr_0.1"] == 1.0
    assert m["advantage"] == pytest.approx(0.9)
    # AUC: the one non-member above two of the three members costs 2 of 30 pairs
    assert m["auc"] == pytest.approx(28 / 30)


def test_no_interpolation_between_roc_points():
    fpr = np.array([0.0, 0.0, 0.2, 1.0])
    tpr = np.array([0.0, 0.3, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.1) == 0.3  # linear interpolation would say 0.6


def test_tied_operating_points_are_kept_for_tpr_at_fpr():
    """Three tied top scores, each 5 non-members and 10 members (1000 of each): the threshold at the
    second level has FPR 0.01 and TPR 0.02; scikit-learn's default ROC drops it (it lies on the line
    between its neighbours) and read 0.01."""
    member = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    scores = np.zeros(2000)
    for level in (3, 2, 1):
        scores[np.flatnonzero(member)[(3 - level) * 10:(4 - level) * 10]] = level
        scores[1000 + np.arange((3 - level) * 5, (4 - level) * 5)] = level
    m = attack_metrics(scores, member)
    assert m["tpr_at_fpr_0.01"] == pytest.approx(0.02)
    assert m["tpr_at_fpr_0.001"] == 0.0  # the top level already costs 5 false positives
    brute = max(((scores >= t) & member).sum() / 1000 for t in np.unique(scores)
                if ((scores >= t) & ~member).sum() <= 10)
    assert m["tpr_at_fpr_0.01"] == pytest.approx(brute)


def test_tpr_at_a_hundredth_of_a_percent_only_with_enough_nonmembers():
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(10_000, bool), np.zeros(10_000, bool)]
    scores = rng.normal(size=20_000) + 2.0 * member
    m = attack_metrics(scores, member)
    top = np.sort(scores[~member])[-1]  # FPR 1e-4 = one false positive: members above the second-highest
    second = np.sort(scores[~member])[-2]
    assert m["tpr_at_fpr_0.0001"] == pytest.approx((scores[member] > second).mean()) and top > second
    assert "tpr_at_fpr_0.0001" not in attack_metrics(scores[:9_000].tolist() + scores[10_000:19_000].tolist(),
                                                     np.r_[np.ones(9_000, bool), np.zeros(9_000, bool)])


def test_balanced_accuracy_from_predictions():
    member = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    # TPR 3/4, TNR 5/6
    assert balanced_accuracy(pred, member) == pytest.approx((0.75 + 5 / 6) / 2)
    scores = np.linspace(1, 0, 10)
    m = attack_metrics(scores, member, predictions=pred)
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 5 / 6) / 2)
    assert m["advantage"] == 1.0  # the ROC-optimal figure is separate


def test_infinite_scores_keep_their_order():
    member = np.array([1, 1, 0, 0], dtype=bool)
    m = attack_metrics(np.array([np.inf, 2.0, 1.0, -np.inf]), member)
    assert m["auc"] == 1.0


@pytest.mark.parametrize("scores,member,match", [
    (np.zeros(3), np.array([1, 0]), "3 scores but 2"),
    (np.zeros(3), np.ones(3, dtype=bool), "only one class"),
    (np.zeros(3), np.zeros(3, dtype=bool), "only one class"),
    (np.array([0.0, np.nan]), np.array([1, 0]), "NaN"),
    (np.zeros(2), np.array([2, 0]), "boolean"),
])
def test_errors(scores, member, match):
    with pytest.raises(MiaError, match=match):
        attack_metrics(scores, member)


def test_prediction_length_mismatch():
    with pytest.raises(MiaError, match="predictions"):
        attack_metrics(np.zeros(4), np.array([1, 0, 1, 0]), predictions=np.zeros(3, dtype=bool))


def test_plot_roc_writes_a_log_log_png(tmp_path):
    from mia.report import plot_roc

    rng = np.random.default_rng(1)
    member = rng.random(400) < 0.5
    curves = {}
    for name, shift in [("weak", 0.2), ("strong", 2.0)]:
        fpr, tpr, _ = roc(rng.normal(size=400) + shift * member, member)
        curves[name] = (fpr, tpr)
    path = plot_roc(curves, tmp_path / "plots" / "roc.png", title="toy")
    assert path == tmp_path / "plots" / "roc.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_low_fpr_note_names_the_tprs_that_allow_no_false_positive():
    from mia.metrics import low_fpr_note

    assert low_fpr_note(1000) is None
    assert low_fpr_note(449).startswith("449 non-members: tpr_at_fpr_0.001 allows no false positive")
    assert low_fpr_note(60).startswith("60 non-members: tpr_at_fpr_0.01, tpr_at_fpr_0.001 allow no false "
                                       "positive, so each reads the TPR at FPR 0")  # not "so it reads"


def test_near_chance_note_speaks_only_of_a_target_that_barely_beats_a_uniform_guess():
    from mia.metrics import near_chance_note

    # a federation of 50 Purchase clients at its default rounds released a model at 0.018 on 100 classes
    note = near_chance_note(0.0184, 100, "federated")
    assert note.startswith("the target's test accuracy 0.0184 is near a uniform guess's 0.0100 (100 classes)")
    assert note.endswith("(--rounds, --local-epochs, --local-lr)")
    assert near_chance_note(0.14, 10).endswith("(--epochs, --lr)")  # 0.04 of the 0.9 from a guess to 1
    assert near_chance_note(0.52, 2) is not None
    for accuracy, classes in [(0.15, 10), (0.06, 100), (0.53, 2), (0.9, 10), (float("nan"), 10)]:
        assert near_chance_note(accuracy, classes) is None, (accuracy, classes)  # DP-SGD at 0.06 of 100: noted apart
