"""Every black-box attack on synthetic signals of a memorizing model and of a non-leaking one."""

import numpy as np
import pytest
import torch

from mia.attacks import ATTACKS, AttackOutput, ShadowSignals, run_attack
from mia.attacks.threshold import fit_thresholds
from mia.errors import MiaError
from mia.metrics import attack_metrics
from mia.signals import Signals, log_softmax

C = 10


def synth(n: int, boost: float, seed: int, noise: float = 1.5) -> Signals:
    """Logits with the true class boosted by ``boost``: a larger boost = a more confident model.

    Class k is also intrinsically easier (+0.15 k), so per-class calibration matters.
    The sensitivity mimics a smooth model's: p(1 - p) times a random gain.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    z = rng.normal(0, noise, (n, C))
    z[np.arange(n), y] += boost + 0.15 * y
    p = np.exp(log_softmax(z))
    sens = p * (1 - p) * rng.gamma(4.0, 0.5, (n, C))
    return Signals(z.astype(np.float32), y, sens.astype(np.float32))


def concat(a: Signals, b: Signals) -> tuple[Signals, np.ndarray]:
    sig = Signals(np.concatenate([a.logits, b.logits]), np.concatenate([a.labels, b.labels]),
                  np.concatenate([a.sensitivity, b.sensitivity]))
    return sig, np.r_[np.ones(len(a), bool), np.zeros(len(b), bool)]


MEMBER_BOOST, NONMEMBER_BOOST = 4.0, 1.5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """SAMIA on CPU uses torch's threads; on a small shared test box two threads
    stall each other at every op (100 s instead of 4 s here), so this module uses one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def shadows() -> list[ShadowSignals]:
    out = []
    for k in range(2):
        sig, member = concat(synth(1000, MEMBER_BOOST, 10 + k),
                             synth(1000, NONMEMBER_BOOST, 20 + k))
        out.append(ShadowSignals(sig, member))
    return out


@pytest.fixture(scope="module")
def leaky_target():
    return concat(synth(1000, MEMBER_BOOST, 1), synth(1000, NONMEMBER_BOOST, 2))


@pytest.fixture(scope="module")
def null_target():
    """'Members' drawn from the same distribution as non-members: nothing to find."""
    return concat(synth(1000, NONMEMBER_BOOST, 3), synth(1000, NONMEMBER_BOOST, 4))


def test_registry_order():
    assert ATTACKS.names() == ["loss", "confidence", "correctness", "entropy", "mentr", "hconf",
                               "nn", "nn-top3", "nn-cls", "nn-nasr", "samia",
                               "lira-online", "lira-offline", "rmia", "global-threshold",
                               "aug", "boundary", "noise-flip", "selena-adaptive"]
    assert ATTACKS.get("samia").needs == frozenset({"sensitivity"})
    assert {ATTACKS.get(n).family for n in ATTACKS} == {"threshold", "learned", "reference",
                                                            "label-only", "adaptive"}


SHADOW_ATTACKS = [n for n in ATTACKS.names() if ATTACKS.get(n).family in ("threshold", "learned")]


@pytest.mark.parametrize("name", SHADOW_ATTACKS)
def test_attacks_find_a_memorizing_model_and_nothing_in_a_fair_one(name, shadows, leaky_target,
                                                                   null_target):
    """One fit per attack scores both targets at once (scores are per sample: an attack
    fitted on shadows does not look at the other target samples)."""
    (leaky, member), (null, null_member) = leaky_target, null_target
    both = Signals(np.concatenate([leaky.logits, null.logits]),
                   np.concatenate([leaky.labels, null.labels]),
                   np.concatenate([leaky.sensitivity, null.sensitivity]))
    out = run_attack(name, both, shadows, seed=0)
    assert isinstance(out, AttackOutput)
    assert out.scores.shape == (len(both),) and out.predictions.dtype == bool
    n = len(leaky)
    m = attack_metrics(out.scores[:n], member, out.predictions[:n])
    # correctness is a binary score: its AUC is 0.5 + (acc_in - acc_out) / 2 (here ~0.7)
    assert m["auc"] > (0.6 if name == "correctness" else 0.8), m
    assert m["balanced_accuracy"] > (0.6 if name == "correctness" else 0.7), m
    null_m = attack_metrics(out.scores[n:], null_member, out.predictions[n:])
    assert abs(null_m["auc"] - 0.5) < 0.07, null_m
    assert abs(null_m["balanced_accuracy"] - 0.5) < 0.07, null_m


@pytest.mark.parametrize("mode", ["class", "global"])
@pytest.mark.parametrize("name", ["loss", "mentr", "confidence"])
def test_class_and_global_thresholds(name, mode, shadows, leaky_target, null_target):
    target, member = leaky_target
    out = run_attack(name, target, shadows, {"thresholds": mode})
    m = attack_metrics(out.scores, member, out.predictions)
    assert m["auc"] > 0.8 and m["balanced_accuracy"] > 0.7
    null, null_member = null_target  # the negative control: nothing to find
    n = run_attack(name, null, shadows, {"thresholds": mode})
    assert abs(attack_metrics(n.scores, null_member, n.predictions)["auc"] - 0.5) < 0.07


def test_class_thresholds_are_per_class():
    """Class k is easier by k here: one threshold per class beats one for all, and the scores are the
    signal minus the row's class threshold."""
    def task(seed):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, C, 4000)
        member = rng.random(4000) < 0.5
        z = rng.normal(0, 1.0, (4000, C))
        z[np.arange(4000), y] += 1.5 * y + 2.0 * member
        return Signals(z.astype(np.float32), y), member

    shadow_signals, shadow_member = task(0)
    target, member = task(1)
    shadows = [ShadowSignals(shadow_signals, shadow_member)]
    per_class = run_attack("confidence", target, shadows, {"thresholds": "class"})
    one = run_attack("confidence", target, shadows, {"thresholds": "global"})
    bal = {k: attack_metrics(o.scores, member, o.predictions)["balanced_accuracy"]
           for k, o in (("class", per_class), ("global", one))}
    assert bal["class"] > bal["global"] + 0.05, bal
    # scores = signal - tau[y]: within a class they order as the signal, across classes they do not
    for c in range(C):
        rows = target.labels == c
        assert np.ptp(per_class.scores[rows] - one.scores[rows]) < 1e-6 * max(1.0, np.abs(one.scores).max())


def test_global_threshold_predictions_are_score_above_threshold(shadows, leaky_target):
    target, _ = leaky_target
    out = run_attack("loss", target, shadows, {"thresholds": "global"})
    # one threshold: the predictions are a top segment of the scores
    assert out.scores[out.predictions].min() > out.scores[~out.predictions].max()


def test_fit_thresholds_by_hand():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 10.0, 9.0, 8.0, 7.0])
    member = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    tau, fitted = fit_thresholds(scores, member, groups, 3)
    # group 0: cutting between 4 and 3 gives TPR 2/3, FPR 0 (J 2/3); between 2 and 1: J 1 - 1/2
    assert tau[0] == 3.5 and tau[1] == 9.5
    assert fitted.tolist() == [True, True, False]
    # ties are never split
    tau, _ = fit_thresholds(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0], bool),
                            np.zeros(3, int), 1)
    assert tau[0] == 0.5
    # equally good cuts: the highest wins. Top 2 (TPR 2/3, FPR 0) ties top 5 (TPR 1, FPR 2/6),
    # which won when J was a float difference (1 - 1/3 rounds above 2/3)
    member = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    tau, _ = fit_thresholds(np.arange(9.0)[::-1], member, np.zeros(9, int), 1)
    assert tau[0] == 6.5
    # a reversed signal: no cut beats flagging every row, whose threshold sits one unit below the lowest score
    tau, _ = fit_thresholds(np.array([3.0, 2.0, 1.5]), np.array([0, 0, 1], bool), np.zeros(3, int), 1)
    assert tau[0] == 0.5


def test_class_thresholds_fall_back_to_global_for_unseen_classes(shadows, leaky_target):
    target, _ = leaky_target
    only_members_of_class_0 = [ShadowSignals(s.signals, s.is_member | (s.signals.labels == 0))
                               for s in shadows]
    out = run_attack("loss", target, only_members_of_class_0)
    glob = run_attack("loss", target, only_members_of_class_0, {"thresholds": "global"})
    cls0 = target.labels == 0
    np.testing.assert_array_equal(out.predictions[cls0], glob.predictions[cls0])


@pytest.mark.parametrize("name", ["loss", "mentr"])
def test_threshold_attacks_score_one_shadow_at_a_time(name, shadows, leaky_target, monkeypatch):
    """The fit computes the signal shadow by shadow, never on all shadows' logits at once (float64 copies of
    M x Z x C logits: 16 GB for 64 reference models on Purchase100), and fits what the pooled rows give."""
    from mia.attacks import ATTACKS
    from mia.signals import SIGNALS

    signal, seen = SIGNALS[name], []
    monkeypatch.setitem(SIGNALS, name, lambda logits, labels: seen.append(len(logits)) or signal(logits, labels))
    cls = ATTACKS.get(name).cls
    split = cls().fit(shadows)
    assert seen and max(seen) == max(len(s.signals) for s in shadows)
    pooled = Signals(np.concatenate([s.signals.logits for s in shadows]),
                     np.concatenate([s.signals.labels for s in shadows]))
    one = cls().fit([ShadowSignals(pooled, np.concatenate([s.is_member for s in shadows]))])
    np.testing.assert_array_equal(split.class_tau_, one.class_tau_)
    assert cls(thresholds="global").fit(shadows).threshold_ == cls(thresholds="global").fit(
        [ShadowSignals(pooled, np.concatenate([s.is_member for s in shadows]))]).threshold_
    np.testing.assert_array_equal(split.decision_function(leaky_target[0]), one.decision_function(leaky_target[0]))


def test_a_class_with_few_shadow_rows_takes_the_global_threshold(shadows):
    """A threshold fitted on a handful of rows is noise: below min_class_rows members or non-members a class
    takes the global one, above it its own."""
    from mia.attacks import ATTACKS

    loss = ATTACKS.get("loss").cls
    labels = np.concatenate([s.signals.labels for s in shadows])
    member = np.concatenate([s.is_member for s in shadows])
    rows = np.minimum(np.bincount(labels[member]), np.bincount(labels[~member]))
    cut = int(np.sort(rows)[len(rows) // 2])  # about half the classes have fewer rows than this, one has as many
    tau_global = loss(thresholds="global").fit(shadows).threshold_
    own = loss(min_class_rows=1).fit(shadows).class_tau_
    mixed = loss(min_class_rows=cut).fit(shadows).class_tau_
    few = rows < cut
    assert few.any() and (~few).any() and (rows == cut).any()
    np.testing.assert_array_equal(mixed[few], tau_global)
    np.testing.assert_array_equal(mixed[~few], own[~few])
    assert not np.allclose(own[few], tau_global)
    assert not np.allclose(own[rows == cut], tau_global)  # exactly min_class_rows: a threshold of its own
    with pytest.raises(MiaError, match="min_class_rows must be >= 1"):
        loss(min_class_rows=0)


@pytest.mark.parametrize("name", ["nn-cls", "nn-nasr", "samia"])
def test_a_class_the_shadows_lack_does_not_blow_up_learned_attacks(name, shadows, leaky_target):
    target, _ = leaky_target
    keep = [s.signals.labels != 4 for s in shadows]
    without_4 = [ShadowSignals(Signals(s.signals.logits[k], s.signals.labels[k], s.signals.sensitivity[k]),
                               s.is_member[k]) for s, k in zip(shadows, keep)]
    scores = run_attack(name, target, without_4, {"epochs": 3}, seed=0).scores
    seen, unseen = scores[target.labels != 4], scores[target.labels == 4]
    spread = seen.max() - seen.min()
    assert seen.min() - spread <= unseen.min() and unseen.max() <= seen.max() + spread, (unseen.min(), unseen.max())


def test_nasr_takes_a_last_batch_of_one_row(shadows):
    """257 shadow rows leave one row in the last training batch of 256, and 4097 target rows one in the last
    batch of 4096 scored: nn-nasr's network returned an N-vector, whose squeeze made that row a 0-d tensor
    (a ValueError in the loss, and a RuntimeError where the batches' logits are concatenated)."""
    s = shadows[0]
    keep = np.r_[0:129, 1000:1128]  # members, then non-members
    few = ShadowSignals(Signals(s.signals.logits[keep], s.signals.labels[keep], s.signals.sensitivity[keep]),
                        s.is_member[keep])
    rows = np.arange(4097) % len(s.signals)
    target = Signals(s.signals.logits[rows], s.signals.labels[rows], s.signals.sensitivity[rows])
    out = run_attack("nn-nasr", target, [few], {"epochs": 1}, seed=0)
    assert out.scores.shape == (4097,) and np.isfinite(out.scores).all()


def test_learned_attacks_see_the_features_they_name():
    """Each learned attack's input, by hand: nn the softmax sorted high to low, nn-top3 its three largest,
    nn-cls the softmax in class order and the one-hot label, nn-nasr the log-softmax and the one-hot label
    (its output branch gets the log-softmax), each standardized on the shadow rows (mutants sorting low to
    high, feeding nn-nasr the softmax, swapping its branches and multiplying by the std all survived)."""
    from mia.attacks.learned import _Branches

    sig = Signals(np.array([[0.0, 2.0, -1.0, 1.0], [3.0, 0.0, 0.5, -2.0]], np.float32), np.array([2, 0]))
    logp = log_softmax(sig.logits)
    p = np.exp(logp)
    onehot = np.array([[0, 0, 1, 0], [1, 0, 0, 0]], float)
    feats = {name: ATTACKS.get(name).cls().features(sig) for name in ("nn", "nn-top3", "nn-cls", "nn-nasr")}
    np.testing.assert_allclose(feats["nn"], [p[0, [1, 3, 0, 2]], p[1, [0, 2, 1, 3]]], rtol=1e-12)
    np.testing.assert_allclose(feats["nn-top3"], feats["nn"][:, :3], rtol=0)
    np.testing.assert_allclose(feats["nn-cls"], np.concatenate([p, onehot], axis=1), rtol=1e-12)
    np.testing.assert_allclose(feats["nn-nasr"], np.concatenate([logp, onehot], axis=1), rtol=1e-12)
    torch.manual_seed(0)
    branches, x = _Branches(4), torch.randn(5, 8)
    torch.testing.assert_close(branches(x)[:, 0], branches.net(x[:, :4], x[:, 4:]))
    small, member = concat(synth(100, MEMBER_BOOST, 5), synth(100, NONMEMBER_BOOST, 6))
    attack = ATTACKS.get("nn").cls(epochs=1).fit([ShadowSignals(small, member)])
    scaled = attack._tensor(small).numpy()
    np.testing.assert_allclose(scaled.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(scaled.std(0), 1, atol=1e-3)


def test_the_attack_network_weighs_members_and_nonmembers_equally():
    """On features that carry nothing, 9 members to 1 non-member: the positive class weighted by n_out / n_in
    leaves the member logit near 0 (p = 0.5) rather than log 9 (a mutant inverting the weight survived)."""
    from torch import nn

    from mia.attacks._train import fit_binary, init_seeded, predict_logit

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(2000, 3)), dtype=torch.float32)
    y = rng.random(2000) < 0.9
    model = init_seeded(lambda: nn.Linear(3, 1), 0)
    fit_binary(model, x, y, epochs=20, lr=1e-2, seed=0)
    assert abs(float(np.mean(predict_logit(model, x)))) < 0.2


def test_learned_attacks_are_seeded(shadows, leaky_target):
    target, _ = leaky_target
    a = run_attack("nn", target, shadows, {"epochs": 3}, seed=7)
    b = run_attack("nn", target, shadows, {"epochs": "3"}, seed=7)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch():
    """Random labels on noise: the held-out loss rises once the network memorizes, so training stops
    ``patience`` epochs after its best one, and keeps the weights a plain run of that many epochs gives."""
    from torch import nn

    from mia.attacks._train import fit_binary, init_seeded

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(600, 20)), dtype=torch.float32)
    y = rng.random(600) < 0.5

    def build():
        return nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 1))

    model, training_batches = init_seeded(build, 0), []
    model.register_forward_hook(lambda module, args, out: training_batches.append(module.training))
    kept = fit_binary(model, x[:500], y[:500], epochs=30, lr=1e-2, seed=0, batch_size=50,
                      holdout=(x[500:], y[500:]), patience=2)
    assert 1 <= kept < 28 and sum(training_batches) == (kept + 2) * 10  # 10 batches an epoch
    plain = init_seeded(build, 0)
    assert fit_binary(plain, x[:500], y[:500], epochs=kept, lr=1e-2, seed=0, batch_size=50) == kept
    for a, b in zip(model.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


def test_samia_stops_early_and_still_finds_a_memorizing_model(shadows, leaky_target):
    """With a generous epoch budget it stops after a few epochs, as strong as training them all
    (patience=0: every epoch, every row)."""
    target, member = leaky_target
    samia = ATTACKS.get("samia").cls
    stopped, full = samia(epochs=8).fit(shadows), samia(epochs=8, patience=0).fit(shadows)
    assert stopped.epochs_ < 8 and full.epochs_ == 8
    aucs = [attack_metrics(a.decision_function(target), member)["auc"] for a in (stopped, full)]
    assert aucs[0] > 0.8 and abs(aucs[0] - aucs[1]) < 0.02, aucs


def test_samia_net_computes_what_torch_encoder_layers_compute():
    """SamiaNet runs its nn.TransformerEncoderLayer weights through its own function: same outputs."""
    from mia.attacks.samia import SamiaNet

    torch.manual_seed(0)
    net, tokens = SamiaNet(dim=32, layers=2, heads=4), torch.randn(8, 12, 3)

    def by_torch():
        return net.head(net.encoder(net.embed(tokens)).mean(dim=1))

    torch.testing.assert_close(net(tokens), by_torch())  # training mode
    net.eval()
    with torch.no_grad():  # torch's inference fast path
        torch.testing.assert_close(net(tokens), by_torch())


def test_held_out_rows_come_beyond_max_rows_where_the_shadows_have_more(shadows):
    from mia.attacks._train import pool_with_holdout
    from mia.attacks.base import pool

    rows = sum(len(s.is_member) for s in shadows)  # 4000: a tenth held out
    _, _, held = pool_with_holdout(shadows, 1000, 0, holdout=True)
    assert held.sum() == rows // 10 and (~held).sum() == 1000
    _, _, held = pool_with_holdout(shadows, 10 * rows, 0, holdout=True)
    assert held.sum() == rows // 10 and (~held).sum() == rows - rows // 10
    plain, plain_member = pool(shadows, 1000, 0)
    sig, member, held = pool_with_holdout(shadows, 1000, 0, holdout=False)
    assert not held.any() and np.array_equal(sig.logits, plain.logits) and np.array_equal(member, plain_member)


def test_learned_attacks_subsample_each_shadow_before_stacking():
    """``pool(shadows, max_rows)`` keeps the rows a seeded subsample of the stacked set keeps, without stacking every
    shadow first (float32 copies of all M shadows' logits and sensitivity for each learned attack: 3.6 GB at 64
    reference models on Purchase100)."""
    import tracemalloc

    from mia.attacks.base import pool

    many = [ShadowSignals(synth(4000, 3.0, 50 + k), np.random.default_rng(k).random(4000) < 0.5) for k in range(8)]
    logits = np.concatenate([s.signals.logits for s in many])
    sens = np.concatenate([s.signals.sensitivity for s in many])
    labels = np.concatenate([s.signals.labels for s in many])
    member = np.concatenate([s.is_member for s in many])
    keep = np.sort(np.random.default_rng(7).choice(len(member), 1000, replace=False))
    tracemalloc.start()
    sig, got = pool(many, 1000, seed=7)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(sig.logits, logits[keep])
    np.testing.assert_array_equal(sig.sensitivity, sens[keep])
    np.testing.assert_array_equal(sig.labels, labels[keep])
    np.testing.assert_array_equal(got, member[keep])
    assert peak < logits.nbytes / 4  # about the kept rows, not the 32000 stacked ones
    whole, whole_member = pool(many)
    np.testing.assert_array_equal(whole.logits, logits)
    np.testing.assert_array_equal(whole_member, member)


def test_unknown_attack_and_params(shadows, leaky_target):
    target, _ = leaky_target
    with pytest.raises(MiaError, match="unknown attack 'lossy'; known: .*loss"):
        run_attack("lossy", target, shadows)
    with pytest.raises(MiaError, match="no parameter 'epoch'; known: .*epochs"):
        run_attack("nn", target, shadows, {"epoch": 3})
    with pytest.raises(MiaError, match="thresholds"):
        run_attack("loss", target, shadows, {"thresholds": "per-sample"})
    with pytest.raises(MiaError, match="epochs"):
        run_attack("nn", target, shadows, {"epochs": "many"})
    with pytest.raises(MiaError, match="lr"):
        run_attack("nn", target, shadows, {"lr": "fast"})


def test_shadow_requirements(shadows, leaky_target):
    target, _ = leaky_target
    with pytest.raises(MiaError, match="at least one shadow"):
        run_attack("loss", target, [])
    all_in = [ShadowSignals(shadows[0].signals, np.ones(len(shadows[0].signals), bool))]
    with pytest.raises(MiaError, match="only members"):
        run_attack("loss", target, all_in)
    with pytest.raises(MiaError, match="samples but"):
        ShadowSignals(shadows[0].signals, np.ones(3, bool))


def test_samia_without_sensitivity_names_the_fix(shadows, leaky_target):
    target, _ = leaky_target
    bare = Signals(target.logits, target.labels)
    with pytest.raises(MiaError, match=r"sensitivity=True"):
        run_attack("samia", bare, shadows)
    bare_shadows = [ShadowSignals(Signals(s.signals.logits, s.signals.labels), s.is_member)
                    for s in shadows]
    with pytest.raises(MiaError, match=r"sensitivity=True"):
        run_attack("samia", target, bare_shadows)
    run_attack("loss", bare, bare_shadows)  # threshold attacks do not need it


def test_nan_scores_name_the_attack_and_the_likely_cause(shadows, leaky_target):
    from mia.audit import run_attacks

    target, member = leaky_target
    broken = Signals(np.full_like(target.logits, np.nan), target.labels)
    with pytest.raises(MiaError, match=r"^attack loss: .* NaN.* may have diverged"):
        run_attacks(["loss"], broken, member, shadows, progress=False)
