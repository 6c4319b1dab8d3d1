"""Federated-learning defenses: client DP, upload quantization and sparsification, InstaHide.

Each test drives one hook directly (``upload`` or ``batch``) on small seeded
tensors on the CPU, and checks what the defense promises: clipping and noise
scale, the reported epsilon, quantization levels and unbiasedness, top-k
selection, InstaHide's coefficients and sign mask.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mia.defenses import DEFENSES, make_defense
from mia.defenses.client_dp import client_epsilon
from mia.errors import MiaError

FL_DEFENSES = ("client-dp", "quantization", "sparsification", "instahide")
LAYERS = [slice(0, 300), slice(300, 310), slice(310, 500)]


def updates_with_norms(norms, size: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(norms), size, generator=g)
    return rows / rows.norm(dim=1, keepdim=True) * torch.tensor(norms, dtype=torch.float32)[:, None]


def upload(defense, updates: torch.Tensor, round: int = 1, layers=LAYERS) -> torch.Tensor:
    k = len(updates)
    return defense.upload(updates, np.arange(k), torch.full((k,), 1 / k), round, layers)


# ---- client-dp -------------------------------------------------------------------------------------------

def test_client_dp_clips_then_adds_noise_of_the_right_scale():
    sigma, clip, rounds = 0.8, 2.0, 400  # a clipping norm other than 1: the noise std is sigma * C, not sigma
    defense = make_defense("client-dp", {"noise_multiplier": sigma, "max_update_norm": clip}, seed=3)
    defense.plan(rounds, 0.25)
    updates = updates_with_norms([10.0, 10.0, 3.0, 0.5])
    clipped = updates.clone()
    clipped[:3] *= clip / updates[:3].norm(dim=1, keepdim=True)
    uploads = torch.stack([upload(defense, updates, r) for r in range(1, rounds + 1)])  # rounds x K x P
    noise = uploads - clipped
    assert abs(noise.std().item() / (sigma * clip) - 1) < 0.05
    mean = uploads.mean(0)
    # the mean's projection on each clipped direction is the clipped norm (std of the estimate: sigma C / 20)
    proj = (mean * clipped).sum(1) / clipped.norm(dim=1)
    assert torch.allclose(proj, torch.tensor([clip, clip, clip, 0.5]), atol=4 * sigma * clip / math.sqrt(rounds))
    # and what is left is noise only: ||mean - clipped||^2 ~ P sigma^2 / rounds, no bias on top
    ratio = (mean - clipped).norm(dim=1) / math.sqrt(updates.shape[1] * (sigma * clip) ** 2 / rounds)
    assert ((ratio > 0.9) & (ratio < 1.1)).all(), ratio


def test_client_dp_noise_is_seeded_by_seed_and_round():
    updates = updates_with_norms([2.0, 0.3])
    a, b = make_defense("client-dp", seed=1), make_defense("client-dp", seed=1)
    a.plan(5, 0.5), b.plan(5, 0.5)
    first = upload(a, updates, 4)
    upload(b, updates, 1)
    assert torch.equal(first, upload(b, updates, 4))  # independent of the rounds computed before
    assert not torch.equal(first, upload(a, updates, 5))
    c = make_defense("client-dp", seed=2)
    c.plan(5, 0.5)
    assert not torch.equal(first, upload(c, updates, 4))


def test_client_dp_epsilon_matches_an_independent_computation():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    sigma, q, rounds, delta = 2.0, 0.2, 30, 1e-5
    defense = make_defense("client-dp", {"noise_multiplier": sigma, "delta": delta})
    defense.plan(rounds, q)
    updates = updates_with_norms([1.0, 1.0])
    for r in range(1, rounds + 1):
        upload(defense, updates, r)
    metrics = defense.metrics()
    assert metrics["dp.delta"] == delta and metrics["dp.noise_multiplier"] == sigma
    # independently: per round, the Renyi divergence of "no upload w.p. 1-q, else N(2C-shifted, (sigma C)^2)"
    # with the outcome observed: log(1 - q + q exp(a (a-1) Delta^2 / (2 s^2))) / (a - 1), Delta / s = 2 / sigma
    orders = RDPAccountant.DEFAULT_ALPHAS
    moments = [a * (a - 1) * (2 / sigma) ** 2 / 2 for a in orders]  # log E[ratio^a] of the Gaussian, in nats
    rdp = [rounds * (x + math.log(q + (1 - q) * math.exp(-x))) / (a - 1) for a, x in zip(orders, moments)]
    expected = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]
    assert metrics["dp.epsilon"] == pytest.approx(expected, rel=1e-9)
    # the server sees who uploads: Poisson subsampled-Gaussian accounting at q would claim less
    sgm = RDPAccountant()
    for _ in range(rounds):
        sgm.step(noise_multiplier=sigma / 2, sample_rate=q)
    assert metrics["dp.epsilon"] > 1.5 * sgm.get_epsilon(delta)
    # with every client in every round both are the Gaussian mechanism composed over the rounds
    full = RDPAccountant()
    for _ in range(rounds):
        full.step(noise_multiplier=sigma / 2, sample_rate=1.0)
    assert client_epsilon(sigma, 1.0, rounds, delta) == pytest.approx(full.get_epsilon(delta), rel=1e-9)


@pytest.mark.parametrize("target", [2.0, 8.0])
def test_client_dp_target_epsilon_is_reached_not_exceeded(target):
    rounds, q = 50, 0.1
    defense = make_defense("client-dp", {"epsilon": target})
    defense.plan(rounds, q)
    updates = updates_with_norms([1.0])
    for r in range(1, rounds + 1):
        upload(defense, updates, r)
    eps = defense.metrics()["dp.epsilon"]
    assert 0.9 * target <= eps <= target
    assert defense.metrics()["dp.noise_multiplier"] != 1.0


def test_client_dp_needs_a_plan():
    with pytest.raises(MiaError):
        upload(make_defense("client-dp"), updates_with_norms([1.0]))


@pytest.mark.parametrize("params", [{"epsilon": -1.0}, {"noise_multiplier": 0.0}, {"noise_multiplier": -1.0},
                                    {"max_update_norm": 0.0}, {"delta": 0.0}, {"delta": 1.0}])
def test_client_dp_bad_params_raise(params):
    from mia.defenses.client_dp import ClientDP

    spec = DEFENSES.get("client-dp")
    values = {k: p.default for k, p in spec.params.items()} | params
    with pytest.raises(MiaError):
        make_defense("client-dp", params)  # the spec's ranges
    with pytest.raises(MiaError):
        ClientDP(**values)  # and the class itself, built directly


# ---- quantization ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 4])
def test_quantization_levels_per_layer(bits):
    updates = torch.randn(3, 500, generator=torch.Generator().manual_seed(0))
    updates[:, 300:310] *= 1e-3  # layers on very different scales
    out = upload(make_defense("quantization", {"bits": bits}), updates)
    for row, orig in zip(out, updates):
        for layer in LAYERS:
            values, ref = row[layer], orig[layer]
            lo, hi = ref.min(), ref.max()
            assert len(values.unique()) <= 2 ** bits
            assert values.min() >= lo and values.max() <= hi
            grid = lo + torch.arange(2 ** bits) * (hi - lo) / (2 ** bits - 1)
            assert torch.isclose(values[:, None], grid[None], rtol=0, atol=1e-6 * float(hi - lo)).any(1).all()


def test_quantization_is_unbiased_and_seeded():
    updates = torch.randn(2, 500, generator=torch.Generator().manual_seed(1))
    defense = make_defense("quantization", {"bits": 2}, seed=5)
    outs = torch.stack([upload(defense, updates, r) for r in range(1, 401)])
    step = (updates.amax(1) - updates.amin(1)).max() / 3
    # each coordinate's mean over 400 rounds is within 4 std (std <= step / 2 / 20) of the input
    assert (outs.mean(0) - updates).abs().max() < 4 * step / 2 / 20
    assert (outs.mean(0) - updates).abs().mean() < 0.2 * (outs[0] - updates).abs().mean()
    assert torch.equal(outs[6], upload(defense, updates, 7))
    assert not torch.equal(outs[6], outs[7])


def test_quantization_bad_bits_raise():
    for bits in (0, 17):
        with pytest.raises(MiaError):
            make_defense("quantization", {"bits": bits})


# ---- sparsification --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 0.1021, 1.0])  # 0.1021: 51.05 -> 52 kept
def test_sparsification_keeps_the_top_k(fraction):
    updates = torch.randn(4, 500, generator=torch.Generator().manual_seed(2))
    out = upload(make_defense("sparsification", {"fraction": fraction}), updates)
    k = math.ceil(fraction * 500)
    for row, orig in zip(out, updates):
        kept = row != 0
        assert kept.sum() == k
        assert torch.equal(row[kept], orig[kept])  # values kept as they are
        assert orig[kept].abs().min() >= orig[~kept].abs().max() if k < 500 else True


def test_sparsification_layerwise_keeps_the_top_of_every_layer():
    updates = torch.randn(3, 500, generator=torch.Generator().manual_seed(3))
    updates[:, 300:310] *= 1e-3  # a whole-vector top-k would drop this layer entirely
    whole = upload(make_defense("sparsification", {"fraction": 0.2}), updates)
    assert (whole[:, 300:310] == 0).all()
    out = upload(make_defense("sparsification", {"fraction": 0.2, "layerwise": True}), updates)
    for row, orig in zip(out, updates):
        for layer in LAYERS:
            values, ref = row[layer], orig[layer]
            kept = values != 0
            assert kept.sum() == math.ceil(0.2 * len(ref))
            assert torch.equal(values[kept], ref[kept])
            assert ref[kept].abs().min() >= ref[~kept].abs().max()


# ---- instahide -------------------------------------------------------------------------------------------

def instahide_batch(seed: int = 0, n: int = 64, **params):
    defense = make_defense("instahide", params)
    defense.bind(n)
    inputs = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(100))
    labels = torch.arange(n)  # one class per row: a target row shows every coefficient
    mixed, targets = defense.batch(inputs, labels, torch.Generator().manual_seed(seed))
    return inputs, mixed, targets


@pytest.mark.parametrize("k", [2, 3, 6])
def test_instahide_mixes_with_bounded_first_coefficient(k):
    inputs, mixed, targets = instahide_batch(k=k)
    assert mixed.shape == inputs.shape and targets.shape == (64, 64)
    assert torch.allclose(targets.sum(1), torch.ones(64))
    own = targets.diagonal()  # a row never mixes with itself, so this is lam_1
    assert torch.equal(targets.argmax(1), torch.arange(64))
    assert (own >= 0.5).all() and (own <= 0.65).all()
    assert own.max() - own.min() > 0.05  # drawn per row, not one value per batch
    assert ((targets > 0).sum(1) <= k).all() and ((targets > 0).sum(1) >= 2).all()


def test_instahide_sign_flip_is_a_mask_on_the_plain_mix():
    _, flipped, targets = instahide_batch(seed=4)
    _, plain, plain_targets = instahide_batch(seed=4, sign_flip=False)
    assert torch.equal(targets, plain_targets)  # the mask is drawn last: the same mix
    assert torch.allclose(flipped.abs(), plain.abs())
    negated = (flipped * plain < 0).float().mean().item()
    assert 0.45 < negated < 0.55
    # the plain mix is the targets' coefficients applied to the inputs
    inputs, _, _ = instahide_batch(seed=4)
    assert torch.allclose(plain, torch.einsum("ij,jchw->ichw", targets, inputs), atol=1e-5)


def test_instahide_is_reproducible_and_needs_classes():
    _, a, ta = instahide_batch(seed=7)
    _, b, tb = instahide_batch(seed=7)
    _, c, _ = instahide_batch(seed=8)
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    with pytest.raises(MiaError):
        make_defense("instahide").batch(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long),
                                        torch.Generator().manual_seed(0))
    with pytest.raises(MiaError):
        make_defense("instahide", {"lam_low": 0.7, "lam_high": 0.6})


def test_mixup_binds_classes_and_mixes_pairs_of_rows():
    """Each mixed row is lam * x_i + (1 - lam) * x_j, its target the same mix of two one-hot labels
    (the federated run itself: tests/test_fl.py::test_batch_defenses_train_each_client_through_their_hooks)."""
    mixup = make_defense("mixup")
    mixup.bind(5)
    x, labels = torch.randn(8, 4), torch.arange(8) % 5
    mixed, targets = mixup.batch(x, labels, torch.Generator().manual_seed(0))
    assert mixed.shape == (8, 4) and targets.shape == (8, 5)
    assert "federated" in DEFENSES.get("mixup").scenarios
    assert torch.allclose(targets.sum(1), torch.ones(8)) and ((targets > 0).sum(1) <= 2).all()
    two = [i for i in range(8) if (targets[i] > 0).sum() == 2]  # partner of another class: lam readable
    assert two
    lam = float(targets[two[0], labels[two[0]]])  # one lam for the batch
    for i in range(8):
        partners = [j for j in range(8) if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)]
        assert partners, i


# ---- registry --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FL_DEFENSES)
def test_registered_for_federated_and_round_trips(name):
    spec = DEFENSES.get(name)
    assert "federated" in spec.scenarios
    defense = make_defense(name, {k: p.default for k, p in spec.params.items()})
    again = make_defense(name, defense.params)  # the CLI resolves every parameter, then the run re-checks them
    assert again.params == defense.params
    as_strings = make_defense(name, {k: str(v) for k, v in defense.params.items()})
    assert as_strings.params == defense.params
    for param in spec.params.values():
        assert param.choices is not None or param.allows(param.default)
