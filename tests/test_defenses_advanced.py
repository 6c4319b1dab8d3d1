"""DP-SGD, confidence masking, MemGuard and SELENA on a small task where an undefended MLP leaks.

One fixed setting for every test: Purchase-like data with 10 classes (2000
rows, 500 members), the ``mlp`` recipe for 15 epochs, and one shadow model
trained on the attacker's population so that shadow-trained attacks (``nn``)
can run. Leakage is the AUC of an attack on the balanced query set.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mia import audit
from mia.attacks import ShadowSignals, run_attack
from mia.data import Dataset, make_split
from mia.defenses import make_defense
from mia.defenses.dpsgd import _GhostStep, dp_model, sample_rate, steps_per_epoch
from mia.defenses.masking import MaskedModel
from mia.defenses.memguard import memguard_probs
from mia.defenses.selena import (answering_models, assign_nonmembers, distill, identify_model,
                                 split_ai_outputs, training_sets)
from mia.errors import MiaError
from mia.metrics import attack_metrics
from mia.models import build_model
from mia.signals import Signals
from mia.train import TrainConfig, predict_logits
from mia.train.predict import accuracy


@dataclasses.dataclass
class Setting:
    config: audit.TargetConfig
    data: object
    split: object
    query: np.ndarray
    is_member: np.ndarray
    shadows: list
    baseline: audit.TrainedModel
    baseline_aucs: dict


def aucs(model: nn.Module | torch.Tensor, s: Setting, attacks=("loss", "nn")) -> dict[str, float]:
    """Attack AUCs on the query set, from a model or from its logits on ``s.query``."""
    logits = model if isinstance(model, torch.Tensor) else predict_logits(model, s.data, s.query)
    signals = Signals(logits.numpy(), s.data.y[torch.as_tensor(s.query)].numpy())
    return {a: attack_metrics(run_attack(a, signals, s.shadows).scores, s.is_member)["auc"] for a in attacks}


def fit(s: Setting, defense: str, **params) -> audit.TrainedModel:
    config = dataclasses.replace(s.config, defense=defense, defense_params=params)
    return audit.fit(config, s.data, s.split.members, s.split.validation, s.split.nonmembers, seed=0,
                     progress=False)


@pytest.fixture(scope="module")
def s() -> Setting:
    config = audit.resolve_config("purchase-synth", model="mlp", dataset_params={"n": 2000, "classes": 10},
                                  train_overrides={"epochs": 15})
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    query, is_member = split.query()
    pop = split.population
    half = len(pop) // 2
    shadow = audit.fit(config, data, pop[:half], split.validation, pop[half:], seed=5, progress=False)
    shadows = [ShadowSignals(Signals(predict_logits(shadow.model, data, pop).numpy(),
                                     data.y[torch.as_tensor(pop)].numpy()),
                             np.arange(len(pop)) < half)]
    setting = Setting(config, data, split, query, is_member, shadows, None, {})
    setting.baseline = fit(setting, "none")
    setting.baseline_aucs = aucs(setting.baseline.model, setting)
    assert setting.baseline_aucs["loss"] > 0.7 and setting.baseline.test_accuracy > 0.85  # it leaks and learns
    return setting


# ---------------------------------------------------------------- DP-SGD


@pytest.fixture(scope="module")
def dp(s) -> audit.TrainedModel:
    return fit(s, "dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0)


def test_dpsgd_reports_the_opacus_accountant_epsilon(s, dp):
    from opacus.accountants import RDPAccountant

    from mia.defenses.dpsgd import DP_SCALE

    # the DP recipe: DP_SCALE x the recipe's batch size and learning rate
    n = len(s.split.members)
    recipe = dataclasses.replace(s.config.train, batch_size=s.config.train.batch_size * DP_SCALE)
    q, steps = min(1.0, recipe.batch_size / n), math.ceil(n / recipe.batch_size) * recipe.epochs
    accountant = RDPAccountant()
    accountant.history = [(1.0, q, steps)]
    assert (sample_rate(n, recipe.batch_size), steps_per_epoch(n, recipe.batch_size)) == (q, steps // recipe.epochs)
    assert dp.defense_metrics["dp.epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    assert dp.defense_metrics["dp.delta"] == 1e-5 and dp.defense_metrics["dp.noise_multiplier"] == 1.0


def test_dpsgd_lowers_leakage(s, dp):
    leak = aucs(dp.model, s, ("loss",))["loss"]
    assert leak < s.baseline_aucs["loss"] - 0.1, (leak, s.baseline_aucs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dp.model.modules())
    assert not any(hasattr(p, "grad_sample") for p in dp.model.parameters())  # a plain module is released


def test_dpsgd_step_clips_each_sample_and_averages_over_the_expected_batch():
    """One step is sum_i clip(g_i, C) / (q n), per-sample gradients from torch.func (float64, no noise).

    Per sample, not per microbatch (the mia_prune bug), and divided by the expected batch size q n (32)
    rather than the Poisson batch's actual size (16).
    """
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = dp_model(build_model("cnn-small", (3, 16, 16), 10)).double()
    x, y = torch.randn(16, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (16,))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def sample_loss(p, xi, yi):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], 1).norm(dim=1)
    clip = float(norms.median())  # half the samples are clipped, half not
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    assert (factor < 1).any() and (factor == 1).any()
    recipe = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant")
    _GhostStep(model, recipe, sigma=0.0, max_grad_norm=clip, expected_batch=32, total_steps=1, seed=0)(x, y)
    for name, p in model.named_parameters():
        expected = torch.einsum("i,i...->...", factor, grads[name]) / 32
        assert torch.allclose(params[name] - p.detach(), expected, rtol=1e-9, atol=1e-12), name


def test_dpsgd_noise_has_std_sigma_times_the_clipping_norm_over_the_expected_batch():
    """An empty Poisson batch's step is noise alone: N(0, (sigma C)^2) per coordinate over the expected batch."""
    torch.manual_seed(0)
    model = dp_model(build_model("mlp", (64,), 10))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    recipe = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant")
    step = _GhostStep(model, recipe, sigma=2.0, max_grad_norm=0.5, expected_batch=10, total_steps=1, seed=0)
    step.empty()
    step.close()
    moved = before - torch.cat([p.detach().flatten() for p in model.parameters()])
    assert len(moved) > 10_000
    assert float(moved.mean()) == pytest.approx(0.0, abs=0.005)
    assert float(moved.std()) == pytest.approx(2.0 * 0.5 / 10, rel=0.03)


def test_dpsgd_fit_steps_with_its_noise_clipping_norm_and_expected_batch(monkeypatch):
    """The defense's own sigma and max_grad_norm reach the step, and the gradient sum is divided by the
    expected Poisson batch q n (not the training-set size)."""
    import mia.defenses.dpsgd as dpsgd

    made = []

    class Recorded(dpsgd._GhostStep):
        def __init__(self, model, config, sigma, max_grad_norm, expected_batch, total_steps, seed):
            made.append((sigma, max_grad_norm, expected_batch, config.batch_size))
            super().__init__(model, config, sigma, max_grad_norm, expected_batch, total_steps, seed)

    monkeypatch.setattr(dpsgd, "_GhostStep", Recorded)
    config = audit.resolve_config("digits", train_overrides={"epochs": 1})
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    make_defense("dp-sgd", {"noise_multiplier": 1.3, "max_grad_norm": 0.7, "batch_size": 40}).fit(
        lambda: build_model("mlp", data.input_shape, data.num_classes), data, split.members,
        split.validation, config.train, progress=False)
    n = len(split.members)
    assert made == [(1.3, 0.7, round(sample_rate(n, 40) * n), 40)]
    assert made[0][2] == 40


def test_dpsgd_recipe_overrides_are_used(s):
    out = fit(s, "dp-sgd", noise_multiplier=1.0, batch_size=50, lr=0.002, epochs=3)
    assert len(out.history) == 3
    defense = make_defense("dp-sgd", {"batch_size": 50, "lr": 0.002})
    recipe = defense.recipe(s.config.train)
    assert (recipe.batch_size, recipe.lr, recipe.epochs) == (50, 0.002, s.config.train.epochs)


def test_dpsgd_target_epsilon_is_kept(s):
    out = fit(s, "dp-sgd", epsilon=4.0)
    assert 3.5 < out.defense_metrics["dp.epsilon"] <= 4.0
    assert out.defense_metrics["dp.noise_multiplier"] > 1.0


def test_a_loose_rdp_order_is_one_warning_of_ours_not_opacus_advice(s):
    """Opacus warns at every loose order, also at the extreme sigmas a noise search probes: only the spent
    epsilon's order is worth a word, and ours is one line without Opacus' file path."""
    from mia.defenses.client_dp import client_epsilon

    def warned(call) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        return [str(w.message) for w in caught]

    assert warned(lambda: make_defense("dp-sgd", {"epsilon": 0.5}).resolve_noise(
        1000, dataclasses.replace(s.config.train, epochs=1, batch_size=32))) == []  # Opacus: 10+ warnings
    spent = warned(lambda: fit(s, "dp-sgd", noise_multiplier=5.0, epochs=1, batch_size=32))  # a large sigma: the largest order
    assert not any("Optimal order" in t for t in spent), spent
    assert [t for t in spent if "RDP order" in t] == [
        "dp-sgd: the best RDP order is at the end of the accountant's range, so epsilon is a valid but looser "
        "upper bound than it could be (accountant=prv gives a tighter one)"]
    assert warned(lambda: client_epsilon(100.0, 0.5, 1, 1e-5)) == []  # a probe
    assert [t[:30] for t in warned(lambda: client_epsilon(100.0, 0.5, 1, 1e-5, report=True))] == [
        "client-dp: the best RDP order "]


def test_an_unreachable_dp_epsilon_is_a_one_line_error(s):
    with pytest.raises(MiaError, match=r"dp-sgd epsilon=0.01 cannot be reached in \d+ noisy steps"):
        make_defense("dp-sgd", {"epsilon": 0.01}).resolve_noise(1000, s.config.train)


def test_a_dp_batch_that_holds_every_training_row_is_told():
    """DP-SGD's default batch is 4x the recipe's: on a small training set it can hold every row, so training
    silently became 1 full-batch step an epoch (purchase-synth n=2000: 30 steps, test accuracy 0.03)."""
    config = audit.resolve_config("digits", train_overrides={"epochs": 1})
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    rows = len(split.members)
    with pytest.warns(UserWarning, match=rf"the batch \({rows + 1}\) holds all {rows} training rows"):
        make_defense("dp-sgd", {"noise_multiplier": 0.5, "batch_size": rows + 1}).fit(
            lambda: build_model("mlp", data.input_shape, data.num_classes), data, split.members,
            split.validation, config.train, progress=False)


def test_dpsgd_converts_batchnorm_and_trains_images():
    """A BatchNorm CNN with in-place ReLUs on 8x8 digits: GroupNorm, out-of-place, NCHW, finite training."""
    config = audit.resolve_config("digits", model="cnn-small", train_overrides={"epochs": 2})
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)

    def make() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))

    defense = make_defense("dp-sgd", {"noise_multiplier": 0.5})
    model, result = defense.fit(make, data, split.members, split.validation, config.train, progress=False)
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert defense.metrics()["dp.epsilon"] > 0


def test_dpsgd_unsupported_model_is_a_one_line_error(s):
    class RunningScale(nn.Module):  # a trainable layer with a running statistic: Opacus refuses it
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(600))
            self.register_buffer("running", torch.zeros(600))

        def forward(self, x):
            return x * self.weight

    class Net(nn.Sequential):
        pass

    with pytest.raises(MiaError, match="dp-sgd cannot train model Net") as err:
        dp_model(Net(RunningScale(), nn.Linear(600, 10)))
    assert "\n" not in str(err.value)
    for name in ("resnet18", "wrn28-2", "vgg16"):  # every registry BatchNorm model converts
        model = dp_model(build_model(name, (3, 32, 32), 10, "bn"))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), name


def test_dpsgd_delta_must_be_below_one_over_n(s):
    defense = make_defense("dp-sgd", {"delta": 0.01})
    with pytest.raises(MiaError, match="must be < 1/n"):
        defense.fit(lambda: build_model("mlp", (600,), 10), s.data, s.split.members, s.split.validation,
                    s.config.train, progress=False)


# ---------------------------------------------------------------- confidence masking


def test_confidence_masking_keeps_the_label_and_at_most_k_probabilities(s):
    out = fit(s, "confidence-masking", top_k=3, decimals=2)
    rows = np.concatenate([s.query, s.split.population])
    released = predict_logits(out.model, s.data, rows)
    raw = predict_logits(out.network, s.data, rows)
    assert torch.equal(released.argmax(1), raw.argmax(1))
    probs = released.exp()
    assert int((probs > 1e-20).sum(1).max()) <= 3
    kept = probs[probs > 1e-20]
    assert torch.allclose(kept, (kept * 100).round() / 100, atol=1e-5)  # rounded to 2 decimals


def test_confidence_masking_breaks_rounding_ties_for_the_label():
    logits = torch.log(torch.tensor([[0.496, 0.504, 0.0], [0.3, 0.3, 0.4], [0.334, 0.333, 0.333]]))
    logits = torch.cat([logits, torch.randn(500, 3) * 30])  # also saturated rows and near ties
    for top_k, decimals in [(1, 0), (2, 1), (0, 1), (3, 4)]:
        released = MaskedModel(nn.Identity(), top_k, decimals)(logits)
        assert torch.equal(released.argmax(1), logits.argmax(1)), (top_k, decimals)


# ---------------------------------------------------------------- MemGuard


@pytest.fixture(scope="module")
def memguard(s):
    """The released model and its outputs (released and raw) on the query set plus 300 population rows.

    MemGuard answers every query with an optimization, so the outputs are computed once here.
    """
    defense = make_defense("memguard", {"epsilon": 1.0}, seed=0)
    network, _ = defense.fit(lambda: build_model("mlp", s.data.input_shape, s.data.num_classes), s.data,
                             s.split.members, s.split.validation, s.config.train, progress=False)
    release = defense.release(network)
    rows = np.concatenate([s.query, s.split.population[:300]])
    return release, predict_logits(release, s.data, rows), predict_logits(network, s.data, rows)


def test_memguard_never_changes_the_label_and_keeps_the_budget(s, memguard):
    release, released, raw = memguard
    assert torch.equal(released.argmax(1), raw.argmax(1))  # label-only attacks see the undefended model
    assert release.label_model is release.model
    p, p0 = released.double().exp(), torch.softmax(raw.double(), 1)
    assert torch.allclose(p.sum(1), torch.ones(len(p), dtype=torch.float64), atol=1e-4)
    assert float((p - p0).abs().sum(1).max()) <= 1.0 + 1e-4
    assert float((p - p0).abs().sum(1).median()) > 1e-2  # it does perturb


def test_memguard_lowers_score_based_leakage(s, memguard):
    _, released, raw = memguard
    n = len(s.query)
    leak, undefended = aucs(released[:n], s, ("loss", "nn")), aucs(raw[:n], s, ("loss", "nn"))
    assert leak["loss"] < undefended["loss"] - 0.1, (leak, undefended)
    assert leak["nn"] < undefended["nn"] - 0.1, (leak, undefended)


def test_memguard_small_budget_is_respected(s, memguard):
    release, _, raw = memguard
    logits = raw[:200].double()
    for eps in (0.1, 0.5):
        p = memguard_probs(logits, release.defender, eps, 100)
        assert float((p - torch.softmax(logits, 1)).abs().sum(1).max()) <= eps + 1e-9
        assert torch.equal(p.argmax(1), logits.argmax(1))


# ---------------------------------------------------------------- SELENA


def test_selena_assignment_is_balanced_and_excludes_the_answering_models():
    a = assign_nonmembers(103, 7, 3, seed=1)
    assert (a.sum(1) == 3).all() and a.sum(0).max() - a.sum(0).min() <= 1
    sets = training_sets(a, seed=1)
    assert len({len(row) for row in sets}) == 1
    for m, rows in enumerate(sets):
        assert not a[rows, m].any()  # sub-model m trains on none of the rows it answers for
    assert np.array_equal(assign_nonmembers(103, 7, 3, seed=1), a)
    assert not np.array_equal(assign_nonmembers(103, 7, 3, seed=2), a)
    # a training row, given in any order, is answered by its own assigned sub-models
    train_idx = np.random.default_rng(3).permutation(np.arange(1000, 1103))
    queries = train_idx[::-1]
    assert np.array_equal(answering_models(a, train_idx, queries), a[::-1])


@pytest.fixture(scope="module")
def selena(s):
    defense = make_defense("selena", {"k": 10, "l": 4}, seed=0)
    config = s.config.train
    model, _ = defense.fit(lambda: build_model("mlp", s.data.input_shape, s.data.num_classes), s.data,
                           s.split.members, s.split.validation, config, progress=False)
    return defense, model


def test_selena_never_answers_a_training_row_with_a_model_that_saw_it(s, selena):
    defense, _ = selena
    ai = defense.split_ai
    members = s.split.members
    answer = answering_models(ai.assignment, ai.train_idx, members, ai.seed)
    for m in range(len(ai.models)):
        trained_on = set(ai.train_idx[ai.train_sets[m]].tolist())
        assert not trained_on & set(members[answer[:, m]].tolist())
    assert (answer.sum(1) == 4).all()
    others = answering_models(ai.assignment, ai.train_idx, s.split.nonmembers, ai.seed)
    assert (others.sum(1) == 4).all()
    # the answer is the mean softmax of exactly those sub-models
    rows = members[:20]
    out = split_ai_outputs(ai.models, ai.assignment, ai.train_idx, s.data, rows, ai.seed)
    probs = torch.stack([torch.softmax(predict_logits(m, s.data, rows), 1) for m in ai.models], 1)
    mask = torch.as_tensor(answer[:20], dtype=torch.float32)[:, :, None]
    assert torch.allclose(out, (probs * mask).sum(1) / 4, atol=1e-6)


def test_selena_lowers_leakage_with_a_small_utility_loss(s, selena):
    _, model = selena
    leak = aucs(model, s, ("loss", "nn"))
    assert leak["loss"] < s.baseline_aucs["loss"] - 0.04, (leak, s.baseline_aucs)
    assert leak["nn"] < s.baseline_aucs["nn"] - 0.04, (leak, s.baseline_aucs)
    acc = accuracy(model, s.data, s.split.nonmembers)
    assert acc > s.baseline.test_accuracy - 0.06, (acc, s.baseline.test_accuracy)


def test_selena_distillation_targets_follow_the_rows(s):
    """The soft labels reach the loss with their own rows: shifted labels are learned as shifted."""
    members, classes = s.split.members, s.data.num_classes
    shifted = (s.data.y[torch.as_tensor(members)] + 1) % classes
    model, _ = distill(lambda: build_model("mlp", s.data.input_shape, classes), s.data, members,
                       s.split.validation, torch.nn.functional.one_hot(shifted, classes).float(),
                       dataclasses.replace(s.config.train, select_best=False), seed=0, progress=False)
    agree = (predict_logits(model, s.data, members).argmax(1) == shifted).float().mean()
    assert agree > 0.9, agree


def test_selena_runs_on_augmented_images():
    """Image rows go through the recipe's crop+flip during distillation; sub-models train stacked."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(240) % 4
    x = (torch.rand(240, 3, 12, 12, generator=gen) * 60 + y.view(-1, 1, 1, 1) * 50).to(torch.uint8)
    data = Dataset("toy-images", x, y, 4, "image", mean=(0.5,) * 3, std=(0.25,) * 3, augment=True)
    config = audit.resolve_config("digits", model="cnn-small", train_overrides={"epochs": 2, "augment": True})
    defense = make_defense("selena", {"k": 5, "l": 2}, seed=0)
    model, result = defense.fit(functools.partial(build_model, "cnn-small", (3, 12, 12), 4), data,
                                np.arange(160), np.arange(160, 240), config.train, progress=False)
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert len(defense.split_ai.models) == 5
    assert torch.isfinite(predict_logits(model, data, np.arange(240))).all()


def test_selena_recognizes_the_registry_model_to_train_many_at_once(s):
    assert identify_model(lambda: build_model("mlp", s.data.input_shape, 10), s.data) == ("mlp", "bn")
    assert identify_model(lambda: nn.Linear(600, 10), s.data) is None


def test_split_ai_of_a_model_the_registry_does_not_know_trains_each_sub_model_on_its_own_rows(s):
    """A Python user's own factory (no registry name to stack): the sub-models train one after another,
    each on the rows of its set and none of the rows it answers for."""
    from mia.defenses.selena import train_split_ai

    def own():
        return nn.Sequential(nn.Linear(s.data.input_shape[0], 64), nn.ReLU(), nn.Linear(64, s.data.num_classes))

    assert identify_model(own, s.data) is None
    config = dataclasses.replace(s.config.train, epochs=15, select_best=False)
    ai = train_split_ai(own, s.data, s.split.members, s.split.validation, config, k=4, l=2, seed=0, progress=False)
    assert len(ai.models) == 4 and len({id(m) for m in ai.models}) == 4
    for m, model in enumerate(ai.models):
        seen = ai.train_idx[ai.train_sets[m]]
        answered = ai.train_idx[ai.assignment[:, m]]
        assert not set(seen.tolist()) & set(answered.tolist())
        fit_seen = accuracy(model, s.data, seen)
        assert fit_seen > 0.85 and fit_seen > accuracy(model, s.data, answered) + 0.15, m  # 0.91 vs 0.64


# ---------------------------------------------------------------- user errors


@pytest.mark.parametrize("name, params, match", [
    ("selena", {"k": 10, "l": 10}, "l < k"),
    ("selena", {"k": 5, "l": 7}, "l < k"),
    ("dp-sgd", {"epsilon": -1.0}, "epsilon"),
    ("dp-sgd", {"noise_multiplier": -1.0}, "noise_multiplier"),
    ("dp-sgd", {"max_grad_norm": 0.0}, "max_grad_norm"),
    ("memguard", {"budget": 1.0}, "no parameter 'budget'"),
    ("cofedmid", {"trusted_clients": 1}, "coalition of one"),
    ("memguard", {"epsilon": 5.0}, "epsilon"),
    ("confidence-masking", {"top_k": "two"}, "not a valid int"),
    ("selena", {"K": 1}, "parameter k=1 must be in"),  # K is k: names match regardless of case
    ("selena", {"k": 12, "Q": 3}, "no parameter 'Q'; known: distill_epochs, k, l"),
])
def test_bad_parameters_are_one_line_errors(name, params, match):
    with pytest.raises(MiaError, match=match) as err:
        make_defense(name, params)
    assert "\n" not in str(err.value)


def test_parameter_names_match_regardless_of_case():
    defense = make_defense("selena", {"K": "12", "L": "4"})  # as the SELENA paper writes them
    assert (defense.k, defense.l) == (12, 4)


# ---------------------------------------------------------------- selena-adaptive


def adaptive_auc(s: Setting, model: nn.Module, config: audit.TargetConfig) -> float:
    """AUC of ``selena-adaptive`` (shadow Split-AI k=10, l=4) against ``model`` on the query set."""
    query, population = (Signals(predict_logits(model, s.data, rows).numpy(), s.data.y[torch.as_tensor(rows)].numpy())
                         for rows in (s.query, s.split.population))
    params = {"k": 10, "l": 4}
    split_ai = audit.split_ai_reference(config, s.data, s.split, query, population, params, seed=3, progress=False)
    out = run_attack("selena-adaptive", query, [], params, split_ai=split_ai)
    # scored on the members it does not know (half of them, by default) and every non-member
    assert out.evaluated.sum() == len(s.is_member) - round(0.5 * s.is_member.sum())
    assert out.evaluated[~s.is_member].all()
    scores, predictions, member = out.restricted(s.is_member)
    return attack_metrics(scores, member, predictions)["auc"]


def test_selena_adaptive_compares_target_and_shadow_by_hand():
    """Its four features: phi difference, KL(target || shadow), both phis (a mutant computing the KL the other
    way round, KL(shadow || target) with the sign flipped, survived the adaptive-attack tests)."""
    from mia.attacks.adaptive import comparison_features

    target = np.array([[3.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    shadow = np.array([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0]])
    labels = np.array([0, 1])
    pt, ps = (np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in (target, shadow))
    phi_t, phi_s = (np.log(p[[0, 1], labels] / (1 - p[[0, 1], labels])) for p in (pt, ps))
    kl = (pt * np.log(pt / ps)).sum(1)
    np.testing.assert_allclose(comparison_features(target, shadow, labels),
                               np.stack([phi_t - phi_s, kl, phi_t, phi_s], axis=1), rtol=1e-10)


def test_selena_adaptive_finds_a_memorizing_target(s):
    assert adaptive_auc(s, s.baseline.model, s.config) > 0.75


def test_selena_adaptive_is_at_chance_on_a_model_that_never_saw_the_members(s):
    outsider = audit.fit(s.config, s.data, s.split.validation, s.split.population[:100], s.split.nonmembers,
                         seed=1, progress=False)
    assert abs(adaptive_auc(s, outsider.model, s.config) - 0.5) < 0.06


def test_selena_adaptive_takes_k_and_l_from_the_target_defense(s, monkeypatch):
    seen = {}
    import mia.defenses.selena as selena_module

    def spy(make_model, data, train_idx, val_idx, config, k, l, seed=0, progress=True):
        seen.update(k=k, l=l, rows=len(train_idx), overlap=len(set(train_idx) & set(s.split.members)))
        raise MiaError("stop")

    monkeypatch.setattr(selena_module, "train_split_ai", spy)
    config = dataclasses.replace(s.config, defense="selena", defense_params={"k": 7, "l": 3})
    signals = Signals(np.zeros((len(s.query), 10)), np.zeros(len(s.query), dtype=np.int64))
    with pytest.raises(MiaError, match="stop"):
        audit.split_ai_reference(config, s.data, s.split, signals, signals, {"known_fraction": 0.2}, progress=False)
    # the target's k and l; known members are a fifth of the audited ones, the rest population rows
    assert seen["k"] == 7 and seen["l"] == 3 and seen["rows"] == len(s.split.members)
    assert seen["overlap"] == round(0.2 * s.is_member.sum())


@pytest.mark.parametrize("params, match", [({"known_fraction": 1.0}, "known_fraction"), ({"c": 0}, "c ")])
def test_selena_adaptive_bad_parameters_are_one_line_errors(params, match):
    signals = Signals(np.zeros((4, 3)), np.zeros(4, dtype=np.int64))
    with pytest.raises(MiaError, match=match):
        run_attack("selena-adaptive", signals, [], params)


def test_selena_adaptive_knowing_every_member_is_a_one_line_error_naming_known_fraction():
    """known_fraction=0.999 is in (0, 1) but rounds to every audited member: nothing left to score (it failed
    after the shadow Split-AI trained, with "membership labels hold only one class")."""
    config = audit.resolve_config("digits", model="mlp")
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    signals = Signals(np.zeros((4, 3)), np.zeros(4, dtype=np.int64))
    with pytest.raises(MiaError, match="known_fraction=0.999 .*lower known_fraction") as err:
        audit.split_ai_reference(config, data, split, signals, signals, {"known_fraction": 0.999}, progress=False)
    assert "\n" not in str(err.value)


def test_selena_adaptive_without_a_split_ai_says_how_to_get_one():
    signals = Signals(np.zeros((4, 3)), np.zeros(4, dtype=np.int64))
    with pytest.raises(MiaError, match="shadow Split-AI"):
        run_attack("selena-adaptive", signals, [])


def test_confidence_masking_lowers_score_based_leakage(s):
    # top-1 rounded to one decimal: most confidences collapse onto a few values, members' and non-members' alike
    masked = fit(s, "confidence-masking", top_k=1, decimals=1)
    leak = aucs(masked.model, s, ("loss", "nn"))
    assert leak["loss"] < s.baseline_aucs["loss"] - 0.04, (leak, s.baseline_aucs)
    assert leak["nn"] < s.baseline_aucs["nn"] - 0.04, (leak, s.baseline_aucs)
    assert masked.test_accuracy == pytest.approx(s.baseline.test_accuracy)  # labels are kept


def _memguard_one_row(z0: torch.Tensor, defender, epsilon: float, max_iter: int) -> torch.Tensor:
    """Algorithm 1 of MemGuard for one row, as the module docstring reads it: a full sort at every step, a success
    restarting from the row's own logits with c3 ten times larger and a fresh count of steps."""
    import torch.nn.functional as F

    s0 = torch.softmax(z0, -1)
    label = int(z0.argmax())
    h0 = float(defender(s0[None])[0])
    best = s0
    if abs(h0 - 0.5) > 1e-5:
        side, c3, z, steps = math.copysign(1.0, h0 - 0.5), 0.1, z0.clone(), 0
        while True:
            z = z.detach().requires_grad_(True)
            p = torch.softmax(z, -1)
            h = defender(p[None])[0]
            wrong = torch.cat([z[:label], z[label + 1:]]).max()
            loss = (h - 0.5).abs() + 10.0 * F.relu(wrong - z[label]) + c3 * (p - s0).abs().sum()
            (grad,) = torch.autograd.grad(loss, z)
            if (float(h.detach()) - 0.5) * side <= 0 and int(z.argmax()) == label:
                best, c3, z, steps = p.detach(), c3 * 10.0, z0.clone(), 0
                if c3 > 1e5:
                    break
            else:
                z, steps = z.detach() - 0.1 * grad / grad.norm(), steps + 1
                if steps >= max_iter:
                    break
    distance = float((best - s0).abs().sum())
    return s0 + min(1.0, epsilon / distance) * (best - s0) if distance > 0 else s0


def test_memguard_search_matches_a_row_by_row_reading_of_algorithm_1():
    """The batched search (its rows at their own pace, a kept sort order) gives each row the answer of the
    paper's loop run on that row alone (mutants that went on from the success instead of restarting, kept the step
    count across rounds or re-sorted a stale row ascending survived the tests on the released model)."""
    from mia.defenses.memguard import train_defender

    g = torch.Generator().manual_seed(0)
    members, nonmembers = 3.0 * torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g)
    defender = train_defender(members, nonmembers, seed=0)
    # the defender's classifier says "member" more often of the members' sharper outputs
    assert defender(torch.softmax(members.double(), -1)).mean() > defender(torch.softmax(nonmembers.double(), -1)).mean() + 0.2
    logits = (torch.randn(10, 5, generator=g) * torch.linspace(0.3, 2.0, 10)[:, None]).double()
    for epsilon, max_iter in ((2.0, 30), (0.3, 10)):
        batched = memguard_probs(logits, defender, epsilon, max_iter)
        by_row = torch.stack([_memguard_one_row(z, defender, epsilon, max_iter) for z in logits])
        assert (by_row - torch.softmax(logits, -1)).abs().sum(1).gt(1e-3).sum() >= 5  # it perturbs
        assert torch.allclose(batched, by_row, atol=1e-9, rtol=0), (batched - by_row).abs().max()
