"""The pruning scenario: pruners, the sparsity schedule, fine-tuning and finalized state_dicts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mia.data import Dataset, load_dataset
from mia.errors import MiaError
from mia.models import build_model
from mia.prune import (PRUNERS, PruneConfig, measured_sparsity, prune_and_finetune,
                       sparsity_schedule)
from mia.prune.layers import classifier, filter_layers, prunable_layers, sync, zero_filters
from mia.train import TrainConfig, predict_logits, seed_everything, train

SHAPES = {"mlp": (1, 8, 8), "cnn-small": (1, 8, 8)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def rows():
    """Disjoint train/val/test rows of digits."""
    perm = np.random.default_rng(0).permutation(1797)
    return perm[:900], perm[900:1200], perm[1200:]


def fresh(name: str, seed: int = 0, norm: str = "bn") -> nn.Module:
    seed_everything(seed)
    shape = (3, 8, 8) if name.startswith("wrn") else SHAPES[name]
    return build_model(name, shape, 10, norm)


def quick(**overrides) -> TrainConfig:
    base = dict(epochs=1, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant",
                augment=False, device="cpu", select_best=True)
    return TrainConfig(**{**base, **overrides})


def accuracy(model: nn.Module, data, idx) -> float:
    return (predict_logits(model, data, idx, device="cpu").argmax(1) == data.y[idx]).float().mean().item()


def effective_weights(model: nn.Module) -> list[torch.Tensor]:
    sync(model)
    return [layer.weight.detach().clone() for layer in prunable_layers(model)]


# ---------------------------------------------------------------- schedule


def test_schedule_increases_to_the_target_pruning_a_constant_share_of_what_remains():
    steps = sparsity_schedule(0.6, 5)
    assert len(steps) == 5 and steps[-1] == 0.6
    assert all(a < b for a, b in zip([0.0] + steps, steps))
    remaining = [1.0] + [1 - s for s in steps]
    ratios = [b / a for a, b in zip(remaining, remaining[1:])]
    assert np.allclose(ratios, 0.4 ** (1 / 5))
    assert sparsity_schedule(0.7, 1) == [0.7]
    assert PruneConfig(sparsity=0.5, iterations=3).schedule() == sparsity_schedule(0.5, 3)


def test_a_pruning_target_is_rounded_and_always_keeps_one_unit():
    """round(sparsity * units), at most units - 1: 0.9 of a 4-filter layer prunes 3 and keeps one (a mutant
    letting it prune all 4, a layer cut off, survived the pruning tests)."""
    from mia.prune.pruners import target_count

    assert [target_count(s, 4) for s in (0.0, 0.3, 0.4, 0.6, 0.9, 0.99)] == [0, 1, 2, 2, 3, 3]
    assert target_count(0.5, 1) == 0 and target_count(0.999, 10_000) == 9990


# ---------------------------------------------------------------- unstructured


@pytest.mark.parametrize("model_name", ["mlp", "cnn-small"])
@pytest.mark.parametrize("pruner", ["l1-unstructured", "l1-global"])
def test_unstructured_reaches_the_target_one_shot_and_stepwise(pruner, model_name):
    model = fresh(model_name)
    before = effective_weights(model)
    PRUNERS.get(pruner)(model, 0.6)
    assert measured_sparsity(model) == pytest.approx(0.6, abs=1e-3)
    after = effective_weights(model)
    for w0, w1 in zip(before, after):  # pruned weights are zero, the others untouched
        assert torch.equal(w1[w1 != 0], w0[w1 != 0])
    pruned = torch.cat([w0[w1 == 0].abs() for w0, w1 in zip(before, after)])
    kept = [w0[w1 != 0].abs() for w0, w1 in zip(before, after)]
    if pruner == "l1-global":  # one threshold across layers
        assert pruned.max() <= torch.cat(kept).min()
    else:  # each layer to the target, by its own magnitudes
        for w0, w1, k in zip(before, after, kept):
            assert (w1 == 0).float().mean().item() == pytest.approx(0.6, abs=1 / w1.numel())
            assert w0[w1 == 0].abs().max() <= k.min()

    model = fresh(model_name)
    for target in sparsity_schedule(0.6, 3):
        PRUNERS.get(pruner)(model, target)
        assert measured_sparsity(model) == pytest.approx(target, abs=1e-3)


@pytest.mark.parametrize("model_name", ["mlp", "cnn-small"])
@pytest.mark.parametrize("pruner", ["l1-unstructured", "l1-global"])
def test_iterative_prune_and_finetune_reaches_the_target(pruner, model_name, digits, rows):
    model = fresh(model_name)
    config = PruneConfig(pruner, sparsity=0.6, iterations=3, finetune_epochs=1)
    result = prune_and_finetune(model, digits, rows[0][:300], rows[1][:100], quick(), config)
    assert result.sparsity == pytest.approx(0.6, abs=1e-3) and result.target == 0.6
    assert result.structured_sparsity is None
    targets = [step.target for step in result.history]
    assert targets == config.schedule() and targets[-1] == 0.6
    for step in result.history:
        assert step.sparsity == pytest.approx(step.target, abs=1e-3)
        assert step.finetune is not None and len(step.finetune.history) == 1
    assert measured_sparsity(model) == pytest.approx(0.6, abs=1e-3)
    assert set(model.state_dict()) == set(fresh(model_name).state_dict())


# ---------------------------------------------------------------- structured


@pytest.mark.parametrize("model_name", ["mlp", "cnn-small"])
@pytest.mark.parametrize("pruner,norm", [("l1-filter", 1), ("l2-filter", 2)])
def test_filter_pruners_zero_whole_filters_with_the_smallest_norms(pruner, norm, model_name):
    model = fresh(model_name)
    head = classifier(model)
    layers = filter_layers(model)
    assert head not in layers and len(layers) == len(prunable_layers(model)) - 1
    before = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in layers]
    head_before = head.weight.detach().clone()
    for target in (0.3, 0.5):  # stepwise, the second step prunes among the remaining filters
        PRUNERS.get(pruner)(model, target)
        sync(model)
        for layer, (w0, b0) in zip(layers, before):
            zeroed = zero_filters(layer)
            channels = len(zeroed)
            assert int(zeroed.sum()) == round(target * channels)  # per layer
            assert torch.equal(layer.weight[~zeroed], w0[~zeroed])  # the other filters untouched
            assert torch.equal(layer.bias[~zeroed], b0[~zeroed]) and not layer.bias[zeroed].any()
        assert torch.equal(head.weight, head_before)
    result_fraction = PRUNERS.get(pruner).pruned_fraction(model)
    total = sum(w0.shape[0] for w0, _ in before)
    assert result_fraction == pytest.approx(sum(round(0.5 * w0.shape[0]) for w0, _ in before) / total)
    for layer, (w0, _) in zip(layers, before):  # the pruned filters have the smallest norms of the layer
        zeroed = zero_filters(layer)
        norms = w0.flatten(1).norm(p=norm, dim=1)
        assert norms[zeroed].max() <= norms[~zeroed].min()


def bn_net() -> nn.Sequential:
    """Conv-BN-ReLU twice, then a linear head: every BatchNorm is fed by one conv."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48, 10))


def test_slimming_zeroes_the_channels_with_the_smallest_gammas_globally():
    torch.manual_seed(0)
    model = bn_net()
    gammas = torch.randperm(20).float() + 1.0  # distinct, so the smallest set is unique
    signs = torch.where(torch.rand(20) < 0.5, -1.0, 1.0)  # the ranking is by |gamma|
    with torch.no_grad():
        model[1].weight.copy_((gammas * signs)[:8])
        model[4].weight.copy_((gammas * signs)[8:])
        model[1].bias.uniform_(0.1, 1.0)
        model[4].bias.uniform_(0.1, 1.0)
    PRUNERS.get("slimming")(model, 0.3)
    PRUNERS.get("slimming")(model, 0.5)
    sync(model)
    expected = gammas <= gammas.sort().values[9]  # the 10 smallest of 20
    for bn, conv, chosen in ((model[1], model[0], expected[:8]), (model[4], model[3], expected[8:])):
        assert torch.equal(bn.weight == 0, chosen) and torch.equal(bn.bias == 0, chosen)
        assert torch.equal(zero_filters(conv), chosen) and torch.equal(conv.bias == 0, chosen)
    assert PRUNERS.get("slimming").pruned_fraction(model) == 0.5
    activations = model[:3](torch.randn(4, 1, 8, 8))
    assert not activations[:, expected[:8]].any()  # the pruned channels are switched off


def test_slimming_never_switches_off_every_channel_of_a_layer():
    """Global ranking would take all 8 channels of a layer whose gammas are all small, cutting the network in
    two; each layer keeps its largest channel and the count comes from the other layer."""
    model = bn_net()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(0.01, 0.08, 8))
        model[4].weight.copy_(torch.linspace(1.0, 2.1, 12))
    PRUNERS.get("slimming")(model, 0.5)
    sync(model)
    assert (model[1].weight != 0).tolist() == [False] * 7 + [True]  # its largest channel stays
    assert int((model[4].weight == 0).sum()) == 3  # 10 of 20 pruned in all
    assert PRUNERS.get("slimming").pruned_fraction(model) == 0.5
    PRUNERS.get("slimming")(model, 0.99)  # as far as it goes: one channel a layer
    sync(model)
    assert [int((bn.weight != 0).sum()) for bn in (model[1], model[4])] == [1, 1]


def test_slimming_without_batchnorm_is_a_one_line_error():
    for model in (fresh("mlp"), fresh("cnn-small"), fresh("wrn10-1", norm="gn")):
        with pytest.raises(MiaError, match=r"slimming prunes BatchNorm channels.*--norm bn") as info:
            PRUNERS.get("slimming")(model, 0.5)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("pruner", sorted(PRUNERS.names()))
def test_pruners_take_channels_last_models_as_cuda_training_leaves_them(pruner):
    """On CUDA mia.train.train converts image models to channels-last in place, and torch's magnitude pruners
    flatten weights with .view(-1), which a channels-last tensor refuses: l1-unstructured and l1-global
    failed the first pruning step of every CNN trained on a GPU. The CPU can hold channels-last tensors
    too: each step (after a fine-tuning that converts back) must prune exactly what the standard layout does."""
    name = "wrn10-1" if pruner == "slimming" else "cnn-small"
    standard, channels_last = fresh(name), fresh(name)
    for target in sparsity_schedule(0.6, 2):
        channels_last.to(memory_format=torch.channels_last)  # what fine-tuning on CUDA leaves
        assert any(p.dim() == 4 and not p.is_contiguous() for p in channels_last.parameters())
        PRUNERS.get(pruner)(standard, target)
        PRUNERS.get(pruner)(channels_last, target)
    for w0, w1 in zip(effective_weights(standard), effective_weights(channels_last)):
        assert torch.equal(w0, w1)
    assert PRUNERS.get(pruner).pruned_fraction(channels_last) == PRUNERS.get(pruner).pruned_fraction(standard) > 0


# ---------------------------------------------------------------- finalized models


@pytest.mark.parametrize("model_name,pruner", [("mlp", "l1-global"), ("cnn-small", "l2-filter"),
                                               ("wrn10-1", "slimming")])
def test_masks_survive_save_and_load_as_plain_state_dicts(model_name, pruner, digits, rows, tmp_path):
    if model_name.startswith("wrn"):  # a BatchNorm model, on 3-channel copies of the digits
        digits = Dataset("digits-rgb", digits.x.expand(-1, 3, -1, -1).contiguous(), digits.y, 10, "image",
                         mean=digits.mean * 3, std=digits.std * 3)
    model = fresh(model_name)
    config = PruneConfig(pruner, sparsity=0.5, iterations=2, finetune_epochs=1)
    result = prune_and_finetune(model, digits, rows[0][:300], rows[1][:100], quick(), config)
    if pruner != "l1-global":
        assert result.structured_sparsity == pytest.approx(0.5, abs=0.02) and 0 < result.sparsity < 1
    state = model.state_dict()
    assert set(state) == set(fresh(model_name).state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    torch.save(state, tmp_path / "pruned.pt")
    loaded = fresh(model_name, seed=1)
    loaded.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    loaded.eval()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value == 0, state[key] == 0), key
    assert measured_sparsity(loaded) == result.sparsity
    x = digits.inputs(digits.x[rows[2][:64]])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_finetuning_keeps_pruned_weights_zero_and_recovers_accuracy(digits, rows):
    train_idx, val_idx, test_idx = rows
    dense = fresh("mlp")
    train(dense, digits, train_idx, val_idx, quick(epochs=4), progress=False)

    model = copy.deepcopy(dense)
    PRUNERS.get("l1-unstructured")(model, 0.9)
    zeros = [w == 0 for w in effective_weights(model)]
    orig = [layer.weight_orig.detach().clone() for layer in prunable_layers(model)]
    train(model, digits, train_idx, val_idx, quick(epochs=2), progress=False)
    after = effective_weights(model)
    assert all(torch.equal(w == 0, z) for w, z in zip(after, zeros))  # still exactly the pruned ones
    assert any(not torch.equal(layer.weight_orig, o) for layer, o in zip(prunable_layers(model), orig))

    config = dict(pruner="l1-unstructured", sparsity=0.9)
    pruned_only = copy.deepcopy(dense)
    prune_and_finetune(pruned_only, digits, train_idx, val_idx, quick(), PruneConfig(**config, finetune_epochs=0))
    tuned = copy.deepcopy(dense)
    result = prune_and_finetune(tuned, digits, train_idx, val_idx, quick(),
                                PruneConfig(**config, finetune_epochs=3))
    assert result.history[0].finetune is not None
    # the model holds the selected (best) fine-tuning epoch, restored through the reparametrization
    assert accuracy(tuned, digits, val_idx) == pytest.approx(result.history[0].finetune.best_val_accuracy)
    assert accuracy(tuned, digits, test_idx) >= accuracy(pruned_only, digits, test_idx)
    assert accuracy(tuned, digits, test_idx) > 0.8
    assert measured_sparsity(tuned) == pytest.approx(0.9, abs=1e-3)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("params,message", [
    (dict(sparsity=0.0), r"sparsity must be in \(0, 1\), got 0.0"),
    (dict(sparsity=1.0), r"sparsity must be in \(0, 1\), got 1.0"),
    (dict(sparsity=1.5), r"sparsity must be in \(0, 1\), got 1.5"),
    (dict(pruner="magnitude"), r"unknown pruner 'magnitude'; known: .*l1-global.*slimming"),
    (dict(iterations=0), r"iterations must be >= 1"),
    (dict(finetune_epochs=-1), r"finetune_epochs must be >= 0"),
])
def test_bad_prune_configs_are_one_line_errors(params, message):
    with pytest.raises(MiaError, match=message) as info:
        PruneConfig(**params)
    assert "\n" not in str(info.value)


def test_fixed_masks_keep_pruned_entries_at_zero_and_restore_the_reparametrization(digits):
    from torch.nn.utils import prune as torch_prune

    from mia.prune.layers import FixedMasks

    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes)
    PRUNERS.get("l1-unstructured")(model, 0.6)
    before = measured_sparsity(model)
    with FixedMasks(model) as plain:
        assert not any(n.endswith("_mask") for n, _ in plain.named_buffers())  # plain tensors inside
        optimizer = torch.optim.Adam(plain.parameters(), lr=0.1, weight_decay=0.1)
        x, y = digits.inputs(digits.x[:64]), digits.y[:64]
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(plain(x), y).backward()
            optimizer.step()
        assert measured_sparsity(plain) == pytest.approx(before)  # gradient masking alone holds the zeros
        # an optimizer that writes the gradient after the backward hooks (Opacus adds DP-SGD's noise so)
        noisy = torch.optim.SGD(plain.parameters(), lr=0.1)
        for p in plain.parameters():
            p.grad = torch.randn_like(p)
        noisy.step()
        assert measured_sparsity(plain) == pytest.approx(before)  # re-masked after the step
        with torch.no_grad():  # a procedure that changes the weights outside any optimizer
            for p in plain.parameters():
                p.add_(0.01)
    assert measured_sparsity(model) == pytest.approx(before)  # re-applied on exit
    assert any(isinstance(h, torch_prune.BasePruningMethod) for m in model.modules()
               for h in m._forward_pre_hooks.values())


@pytest.mark.filterwarnings("ignore:dp-sgd. the best RDP order")  # epsilon 8+ composed: a loose RDP order
def test_dp_sgd_fine_tunes_a_pruned_model_and_keeps_its_sparsity():
    from dataclasses import replace

    from mia import audit
    from mia.data import make_split

    config = audit.resolve_config("digits", train_overrides={"epochs": 3})
    config = replace(config, scenario="pruning", defense="dp-sgd", defense_params={"epsilon": 8.0},
                     prune=PruneConfig(sparsity=0.6, iterations=2, finetune_epochs=2))
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    with pytest.warns(UserWarning, match="finetune.dp.epsilon bounds those steps, not the released model"):
        pruned = audit.fit_pruned(config, data, split.members, split.validation, split.nonmembers, seed=0,
                                  progress=False)
    assert pruned.defense_metrics["sparsity"] == pytest.approx(0.6, abs=1e-3)
    # two fine-tuning steps at a target epsilon of 8 each: the reported epsilon is their composition, named for
    # what it covers (the dense original trained without DP, so the released model has no DP guarantee)
    assert 8.0 < pruned.defense_metrics["finetune.dp.epsilon"] < 16.0
    assert not any(k.startswith("dp.") for k in pruned.defense_metrics)
    assert pruned.test_accuracy > 0.5


def test_dp_sgd_noise_never_reaches_pruned_entries_during_fine_tuning(digits):
    """Opacus adds the noise to every coordinate after the gradient hooks ran: without re-masking after
    each step, all 8192 pruned entries of the first layer were nonzero from epoch 0, and validation
    selected among dense networks."""
    from mia.data import make_split
    from mia.defenses import make_defense
    from mia.prune.layers import FixedMasks
    from mia.train import TrainConfig

    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, norm="gn")
    PRUNERS.get("l1-unstructured")(model, 0.5)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    pruned = first.weight_mask == 0
    split = make_split(len(digits), 0)
    seen = []
    model.train()
    with FixedMasks(model):
        make_defense("dp-sgd").fit(lambda: model, digits, split.members, split.validation,
                                   TrainConfig(device="cpu", epochs=2, lr=0.1, batch_size=64, select_best=False),
                                   on_epoch=lambda epoch, _: seen.append(int((first.weight[pruned] != 0).sum())),
                                   progress=False)
    assert seen == [0, 0]
