"""CoFedMID: pairwise masks that cancel in the aggregate, class-guided rows, the bandit, and FedAvg on digits.

The hooks are driven directly on small seeded inputs (uploads on random
tensors, local rows with a fake global loss that knows the labels); one end to
end run on digits checks that the coalition's target client leaks less at
about the same global accuracy.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mia import audit
from mia.data import make_split
from mia.defenses import make_defense
from mia.defenses.cofedmid import class_groups
from mia.defenses.hamp import HAMP
from mia.errors import MiaError
from mia.fl.attacks import run_fl_attack
from mia.fl.config import FLConfig
from mia.fl.simulation import simulate
from mia.metrics import attack_metrics
from mia.train import TrainHooks

LAYERS = [slice(0, 200), slice(200, 210), slice(210, 400)]


class FakeLoss:
    """A global loss over rows ``0..n-1`` with labels ``labels``: ``loss[row]``, and ``.data.y`` as the simulation's."""

    def __init__(self, labels: np.ndarray, loss: np.ndarray):
        self.data = SimpleNamespace(y=torch.as_tensor(labels))
        self.loss = np.asarray(loss, dtype=np.float64)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.loss[np.asarray(rows)]


# ---------------------------------------------------------------- aggregation-neutral perturbation


@pytest.mark.parametrize("equal", [True, False])
def test_perturbation_cancels_in_the_aggregate_and_changes_each_member_upload(equal):
    g = torch.Generator().manual_seed(0)
    updates = torch.randn(5, 400, generator=g) * torch.tensor([0.01, 1.0, 0.1, 0.5, 2.0])[:, None]
    weights = torch.full((5,), 0.2) if equal else torch.tensor([0.05, 0.4, 0.1, 0.25, 0.2])
    clients = np.array([0, 1, 2, 5, 7])  # coalition 0..2: rows 0, 1, 2
    defense = make_defense("cofedmid", {"trusted_clients": 3}, seed=4)
    out = defense.upload(updates.clone(), clients, weights, 3, LAYERS)
    scale = (weights[:, None] * updates).abs().sum(0).max()
    assert torch.allclose(weights @ out, weights @ updates, atol=1e-5 * float(scale), rtol=0)
    for k in range(3):  # each member's upload moves by about its masks' size, layer by layer
        for layer in LAYERS:
            change = (out[k, layer] - updates[k, layer]).norm() / updates[:3, layer].pow(2).mean().sqrt()
            assert change > 0.5 * np.sqrt(layer.stop - layer.start), (k, layer)
    assert torch.equal(out[3:], updates[3:])
    assert defense.metrics()["cofedmid.perturbed_rounds"] == 1
    # seeded by (seed, round): the same round draws the same masks, another round others
    assert torch.equal(out, defense.upload(updates.clone(), clients, weights, 3, LAYERS))
    assert not torch.allclose(out, defense.upload(updates.clone(), clients, weights, 4, LAYERS))


def test_mask_size_follows_noise_scale_and_one_member_is_not_perturbed():
    g = torch.Generator().manual_seed(1)
    updates = torch.randn(3, 400, generator=g)
    weights = torch.tensor([0.5, 0.25, 0.25])
    defense = make_defense("cofedmid", {"noise_scale": 2.0})
    out = defense.upload(updates, np.array([0, 1, 3]), weights, 1, LAYERS)
    mask = (out[0] - updates[0]) * weights[0]  # one pair: the mask itself
    rms = updates[:2, LAYERS[2]].pow(2).mean().sqrt()
    assert float(mask[LAYERS[2]].std() / rms) == pytest.approx(2.0, rel=0.15)
    assert torch.allclose(-(out[1] - updates[1]) * weights[1], mask, atol=1e-6)
    alone = defense.upload(updates, np.array([1, 2, 3]), weights, 2, LAYERS)
    assert torch.equal(alone, updates)
    assert defense.metrics()["cofedmid.unperturbed_uploads"] == 1  # the lone member's upload, as it was
    off = make_defense("cofedmid", {"perturb": False})
    assert torch.equal(off.upload(updates, np.array([0, 1, 3]), weights, 1, LAYERS), updates)


def test_half_coalition_needs_the_number_of_clients():
    defense = make_defense("cofedmid", {"trusted_clients": 0})
    with pytest.raises(MiaError, match="clients"):
        defense.upload(torch.zeros(2, 400), np.array([0, 1]), torch.full((2,), 0.5), 1, LAYERS)
    defense.clients(8)
    assert [defense.trusted(c) for c in range(8)] == [True] * 4 + [False] * 4
    assert defense.metrics()["cofedmid.trusted_clients"] == 4
    with pytest.raises(MiaError, match="trusted_clients"):
        make_defense("cofedmid", {"trusted_clients": 5}).clients(4)


@pytest.mark.parametrize("clients", [2, 3])
def test_half_of_fewer_than_four_clients_is_refused_like_a_coalition_of_one(clients):
    """Half of 2 or 3 clients is one member, whose masks have no partner: it ran with every upload left
    unperturbed (perturbed_rounds 0), while trusted_clients=1 said so in one line."""
    with pytest.raises(MiaError, match="coalition of one"):
        make_defense("cofedmid", {"trusted_clients": 0}).clients(clients)
    make_defense("cofedmid", {"trusted_clients": 2}).clients(clients)  # a pair of them is fine


def test_plan_warns_where_sampling_often_leaves_a_member_without_a_partner():
    """A pair at --client-fraction 0.5 of 10 clients: 5 sampled, the partner among the other 4 of 9 in
    4/9 of a member's rounds, so 5/9 of its uploads reach the server unmasked."""
    pair = make_defense("cofedmid", {"trusted_clients": 2})
    pair.clients(10)
    with pytest.warns(UserWarning, match="no partner in about 56% of its rounds"):
        pair.plan(10, 0.5)
    half = make_defense("cofedmid", {"trusted_clients": 0})
    half.clients(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        half.plan(10, 0.5)  # 4 partners among 9: alone in C(5,4)/C(9,4) = 4% of its rounds
        pair.plan(10, 1.0)


# ---------------------------------------------------------------- class-guided partition


def test_class_groups_are_contiguous_and_balanced_by_rows():
    labels = np.repeat(np.arange(10), 10)
    assert [g.tolist() for g in class_groups(labels, 2)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    skewed = np.concatenate([np.zeros(40, int), np.repeat(np.arange(1, 5), 10)])
    assert [g.tolist() for g in class_groups(skewed, 2)] == [[0], [1, 2, 3, 4]]
    assert len(class_groups(np.full(9, 3), 2)) == 1  # one class: nothing to partition


def test_members_train_on_their_class_group_plus_recycled_high_loss_rows():
    labels = np.repeat(np.arange(10), 8)  # 80 rows, groups {0..4} and {5..9} of 40 rows each
    loss = np.random.default_rng(0).random(80)
    fake = FakeLoss(labels, loss)
    rows = np.arange(80)
    plain = make_defense("cofedmid", {"compensation": False})
    groups = {0: set(range(5)), 1: set(range(5, 10))}
    for r in (1, 2, 3, 4):
        for client in (0, 1):
            got = plain.local_rows(client, rows, r, fake)
            assert set(labels[got]) == groups[(r + client) % 2], (r, client)
            assert len(got) == 40
        assert np.array_equal(plain.local_rows(2, rows, r, fake), rows)  # not in the coalition
    assert plain.metrics()["cofedmid.trained_fraction"] == 0.5
    assert type(plain.client_hooks(0)) is TrainHooks

    defense = make_defense("cofedmid", {"recycle": 0.25})
    got = defense.local_rows(0, rows, 1, fake)  # round 1: group 1 trained, group 0 held back
    held = rows[labels < 5]
    recycled = np.setdiff1d(got, rows[labels >= 5])
    assert set(rows[labels >= 5]) <= set(got) and len(recycled) == 10
    assert set(recycled) == set(held[np.argsort(-loss[held])[:10]])  # the 10 highest-loss held-back rows
    assert defense.metrics()["cofedmid.trained_fraction"] == pytest.approx(0.625)
    assert isinstance(defense.client_hooks(0), HAMP) and type(defense.client_hooks(2)) is TrainHooks
    assert np.array_equal(defense.local_rows(3, rows, 1, fake), rows)
    assert np.array_equal(make_defense("cofedmid", {"partition": False}).local_rows(0, rows, 1, fake), rows)


# ---------------------------------------------------------------- the bandit


def test_bandit_tries_every_arm_then_prefers_the_most_rewarding():
    labels = np.repeat(np.arange(9), 4)  # 3 groups of 3 classes
    group = labels // 3
    before = FakeLoss(labels, np.ones(36))
    after = FakeLoss(labels, np.where(group == 2, 0.2, 0.95))  # recycling group 2 pays: reward 0.8, else 0.05
    rows = np.arange(36)
    defense = make_defense("cofedmid", {"parts": 3, "recycle": 0.5}, seed=3)
    picks = []
    for r in range(1, 91):
        counts = list(defense._bandit(0)[0])
        defense.local_rows(0, rows, r, before)
        defense.after_round(r, after)
        picks.append(int(np.argmax(np.subtract(defense.counts[0], counts))))
        assert picks[-1] != (r + 0) % 3  # never the group trained this round
        if r == 6:
            assert min(defense.counts[0]) >= 1  # UCB1 tries every arm early
    assert defense.sums[0][2] == pytest.approx(0.8 * defense.counts[0][2])
    late = [p for r, p in zip(range(1, 91), picks) if r > 45 and r % 3 != 2]  # rounds where group 2 can be chosen
    assert np.mean(np.asarray(late) == 2) > 0.8
    # the statistics resume exactly: a restored defense picks as the running one
    restored = make_defense("cofedmid", {"parts": 3, "recycle": 0.5}, seed=3)
    restored.load_state_dict(defense.state_dict())
    assert restored.state_dict() == defense.state_dict()
    for r in range(91, 97):
        assert np.array_equal(defense.local_rows(0, rows, r, before), restored.local_rows(0, rows, r, before))
        defense.after_round(r, after), restored.after_round(r, after)
    assert restored.state_dict() == defense.state_dict()


def test_ucb1_by_hand_and_recycling_rounds_half_up():
    """UCB1's bonus shrinks with an arm's pulls: a rarely pulled arm with a lower mean wins (a mutant dropping
    the 1 / n_a from the bonus, a greedy bandit, survived); ties are drawn at random. A pull recycles
    round(recycle * size) rows, half up (a mutant truncating survived)."""
    from mia.defenses.cofedmid import ucb1

    rng = np.random.default_rng(0)
    # means 0.6 and 0.5; bonuses sqrt(2 ln 11 / 10) = 0.69 and sqrt(2 ln 11) = 2.19
    assert ucb1([10, 1], [6.0, 0.5], [0, 1], rng) == 1
    assert ucb1([50, 50, 1], [40.0, 10.0, 0.0], [0, 1], rng) == 0  # arm 2 is not eligible
    assert ucb1([3, 0, 2], [1.0, 0.0, 2.0], [0, 1, 2], rng) == 1  # an untried arm first
    assert {ucb1([4, 4], [2.0, 2.0], [0, 1], np.random.default_rng(s)) for s in range(20)} == {0, 1}
    defense = make_defense("cofedmid", {"recycle": 0.25})
    assert [defense._recycled(n) for n in (40, 41, 42, 2, 1)] == [10, 10, 11, 1, 0]


def test_a_group_too_small_to_recycle_from_is_no_arm():
    """A 1-row class group recycles round(0.25) = 0 rows: as an arm it was never counted, stayed
    "untried" and was pulled every round it was held back, recycling nothing."""
    labels = np.r_[np.zeros(60, int), np.ones(1, int), np.full(59, 2)]  # groups {0}, {1}, {2}
    fake = FakeLoss(labels, np.random.default_rng(0).random(120))
    defense = make_defense("cofedmid", {"parts": 3, "recycle": 0.25})
    rows = np.arange(120)
    for r in range(1, 31):
        trained = len(defense.local_rows(0, rows, r, fake))
        defense.after_round(r, fake)
        active = len(np.flatnonzero(np.isin(labels, [r % 3])))
        assert trained > active  # every round recycles something
    assert defense.counts[0][1] == 0 and min(defense.counts[0][0], defense.counts[0][2]) > 0


# ---------------------------------------------------------------- FedAvg on digits


def test_cofedmid_lowers_the_coalition_client_leakage_at_similar_accuracy(one_thread):
    config = audit.resolve_config("digits", seed=1)
    data = audit.load_data(config)
    split = make_split(len(data), 1, config.split)
    fl = FLConfig(clients=4, rounds=20, local_epochs=2, lr=0.1)
    attacks = ("loss-ii", "cos-ii", "loss-iii", "cos-iii")
    results = {}
    for name in ("none", "cofedmid"):
        defense = make_defense(name, {"trusted_clients": 2} if name == "cofedmid" else None, seed=1)
        _, state, fed = simulate(config.model, config.norm, data, split, fl, config.train, defense, 1,
                                 progress=False, stack=False)
        aucs = {a: attack_metrics(run_fl_attack(a, state.signals, 0).scores, fed.is_member)["auc"] for a in attacks}
        results[name] = (max(aucs.values()), state.history[-1]["test_accuracy"], aucs, defense.metrics())
    (leak, acc, _, _), (leak_d, acc_d, _, metrics) = results["none"], results["cofedmid"]
    assert leak_d < leak - 0.025, results
    assert acc_d > acc - 0.08, results
    assert metrics["cofedmid.perturbed_rounds"] == 20 and 0.5 < metrics["cofedmid.trained_fraction"] < 0.75


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("params", [{"trusted_clients": -1}, {"parts": 1}, {"recycle": -0.1}, {"recycle": 1.5},
                                    {"noise_scale": -1.0}])
def test_bad_parameters_are_one_line_errors(params):
    with pytest.raises(MiaError, match="cofedmid"):
        make_defense("cofedmid", params)


def test_parameters_round_trip_and_validate_in_the_constructor():
    from mia.defenses.cofedmid import CoFedMID

    defense = make_defense("cofedmid")
    again = make_defense("cofedmid", defense.params)
    assert again.params == defense.params and defense.params["trusted_clients"] == 2
    with pytest.raises(MiaError, match="parts >= 2"):
        CoFedMID(**{**defense.params, "parts": 1})
