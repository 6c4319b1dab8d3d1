"""Many models at once (``mia.train.many``): stacked training under vmap, and the one-by-one fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mia.train.many as many
from mia.data.augment import PADDING, crop_flip_at
from mia.data.base import Dataset
from mia.errors import MiaError
from mia.models import build_model
from mia.train import TrainConfig, predict_logits, seed_everything, train
from mia.train.many import default_max_stack, stackable, train_many


@pytest.fixture(scope="module")
def digits(digits_images) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """sklearn digits as 1x8x8 uint8 images: a pool of 1300 rows to draw train sets from, 497 validation rows."""
    data = digits_images
    perm = np.random.default_rng(0).permutation(len(data))
    return data, perm[:1300], perm[1300:]


def halves(pool: np.ndarray, m: int, n: int, seed: int = 1) -> np.ndarray:
    """``m`` random train sets of ``n`` rows each from ``pool`` (as LiRA draws its reference models')."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(pool, n, replace=False) for _ in range(m)])


def adam(**kw) -> TrainConfig:
    return TrainConfig(**{"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
                          "batch_size": 64, "epochs": 3, "augment": False, "device": "cpu", **kw})


def sgd(**kw) -> TrainConfig:
    """SGD with every elementwise option on: momentum, Nesterov, weight decay, a step schedule."""
    return TrainConfig(**{"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                          "weight_decay": 5e-4, "schedule": "step", "batch_size": 64, "epochs": 3,
                          "augment": False, "device": "cpu", **kw})


def run(data, sets, val, config, seeds, model="mlp", norm="bn", **kw) -> list[nn.Module]:
    return train_many(model, data.input_shape, data.num_classes, norm, data, sets, val, config, seeds,
                      progress=False, **kw)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return list(model.state_dict().values())


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(weights(a), weights(b)))


def close(a: nn.Module, b: nn.Module, atol: float) -> bool:
    """Equal weights, up to ``atol`` (0: bit for bit)."""
    return all(torch.allclose(p, q, rtol=0.0, atol=atol) for p, q in zip(weights(a), weights(b)))


def accuracy(model: nn.Module, data: Dataset, idx: np.ndarray) -> float:
    return int((predict_logits(model, data, idx, device="cpu").argmax(1) == data.y[idx]).sum()) / len(idx)


# ---------------------------------------------------------------- which models stack


def test_stackable_models():
    assert all(stackable(name, "bn") for name in ("mlp", "fc", "cnn-small", "alexnet"))
    assert not any(stackable(name, "bn") for name in ("resnet18", "wrn28-2", "vgg16", "densenet121"))
    assert stackable("resnet18", "gn") and stackable("wrn16-2", "gn")  # GroupNorm keeps no running stats


def test_stack_size_follows_the_memory_budget():
    small = build_model("mlp", (1, 8, 8), 10)
    large = build_model("cnn-small", (3, 32, 32), 10)
    cpu = torch.device("cpu")
    assert default_max_stack(small, (1, 8, 8), 64, cpu) == 256
    assert 1 <= default_max_stack(large, (3, 32, 32), 128, cpu) < default_max_stack(large, (3, 32, 32), 8, cpu)


def test_stack_size_probes_a_model_on_its_own_device():
    """A federation asks with its global model already on the training device (CUDA): the probe forward
    must run there. The meta device stands in for CUDA, where a CPU probe input failed the forward."""
    cpu = torch.device("cpu")
    for name, shape in (("mlp", (1, 8, 8)), ("cnn-small", (3, 32, 32))):
        model = build_model(name, shape, 10)
        expected = default_max_stack(model, shape, 64, cpu)
        assert default_max_stack(model.to("meta"), shape, 64, cpu) == expected


def test_cuda_stack_budget_counts_the_allocators_unused_blocks_as_free(monkeypatch):
    """On CUDA the driver reports blocks torch's caching allocator holds unused (an earlier stack's) as
    taken; the allocator reuses them, so the budget counts them free and a later stack is not smaller."""
    model = build_model("cnn-small", (3, 32, 32), 10)
    cuda = torch.device("cuda")
    gib = 2 ** 30

    def stack(reserved: int, allocated: int) -> int:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 80 * gib))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)
        return default_max_stack(model, (3, 32, 32), 32, cuda)

    fresh = stack(0, 0)
    assert 1 < fresh < 256
    assert stack(8 * gib, 2 * gib) > 3 * fresh  # 2 GiB free per the driver, 6 GiB more cached unused
    assert stack(8 * gib, 8 * gib) == fresh  # cached and in use: not free


# ---------------------------------------------------------------- stacked path


def test_stacked_models_learn_and_differ(digits):
    data, pool, val = digits
    models = run(data, halves(pool, 4, 650), val, adam(epochs=8), seeds=[0, 1, 2, 3])
    assert len(models) == 4 and len({id(m) for m in models}) == 4
    assert all(isinstance(m, nn.Module) and not m.training for m in models)
    assert all(accuracy(m, data, val) > 0.85 for m in models)
    assert not any(same(a, b) for i, a in enumerate(models) for b in models[i + 1:])


@pytest.mark.parametrize("stack", [True, False], ids=["stacked", "one-by-one"])
def test_each_model_is_handed_over_as_it_is_done_in_order(digits, stack):
    """What a pool stores as it grows: model m when its stack (or itself) is done, before the next trains."""
    data, pool, val = digits
    handed, starts = [], []
    import mia.train.many as many

    stack_of, one = many._train_stack, many.train

    def note_stack(models, *args, **kwargs):
        starts.append(len(handed))
        return stack_of(models, *args, **kwargs)

    def note_one(*args, **kwargs):
        starts.append(len(handed))
        return one(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(many, "_train_stack", note_stack)
        patch.setattr(many, "train", note_one)
        models = run(data, halves(pool, 3, 200), val[:100], adam(epochs=1), seeds=[0, 1, 2], stack=stack,
                     max_stack=2, on_trained=lambda m, model: handed.append((m, model)))
    assert [m for m, _ in handed] == [0, 1, 2] and all(a is b for (_, a), b in zip(handed, models))
    assert starts == ([0, 2] if stack else [0, 1, 2])  # each chunk starts once the one before was handed over


@pytest.mark.parametrize("stack", [True, False], ids=["stacked", "one-by-one"])
def test_models_not_kept_are_freed_before_the_next_stack_trains(digits, stack):
    """``keep=False`` (a growing pool, which stores each model as it is handed over): none is returned, and
    the models of a stack are garbage once the next stack trains, so memory holds one stack however many
    train. The models handed over are those ``keep=True`` returns."""
    import gc
    import weakref

    data, pool, val = digits
    sets, config = halves(pool, 4, 200), adam(epochs=1)
    alive, handed = [], []

    def note(m: int, model: nn.Module) -> None:
        gc.collect()
        alive.append(sum(ref() is not None for ref in handed))  # earlier stacks' models still reachable
        handed.append(weakref.ref(model))
        copies.append({k: v.clone() for k, v in model.state_dict().items()})

    copies = []
    assert run(data, sets, val[:100], config, seeds=[0, 1, 2, 3], stack=stack, max_stack=2, on_trained=note,
               keep=False) == []
    kept = run(data, sets, val[:100], config, seeds=[0, 1, 2, 3], stack=stack, max_stack=2)
    assert alive == ([0, 1, 0, 1] if stack else [0, 0, 0, 0])  # only the own stack's earlier model
    assert all(torch.equal(copy[k], v) for copy, model in zip(copies, kept) for k, v in model.state_dict().items())


@pytest.mark.parametrize("scenario", ["defense", "federated"])
def test_fit_many_not_keeping_frees_each_model_before_the_next_trains(scenario, monkeypatch):
    """``fit_many`` past :func:`train_many` (one model at a time through a defense, or a federation
    each): model m is garbage once model m + 1 starts training. Its loop variable (and the federations'
    generator frame) held it on, two models in memory where the docstring promises one."""
    import gc
    import weakref

    from mia import audit
    from mia.data import make_split
    from mia.fl.config import FLConfig

    fields = ({"defense": "label-smoothing"} if scenario == "defense" else
              {"scenario": "federated", "fl": FLConfig(clients=2, rounds=1)})
    config = audit.resolve_config("digits", seed=0, train_overrides={"epochs": 1}, **fields)
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    sets = halves(split.members, 3, 100)
    handed, alive = [], []
    starts = "fit" if scenario == "defense" else "simulate"
    trains = getattr(audit._fit, starts)

    def counted(*args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in handed))
        return trains(*args, **kwargs)

    monkeypatch.setattr(audit._fit, starts, counted)
    audit.fit_many(config, data, sets, split.members[:100], [0, 1, 2], progress=False,
                   on_trained=lambda m, model: handed.append(weakref.ref(model)))
    assert len(handed) == 3 and alive == [0, 0, 0]


@pytest.mark.parametrize("config", [adam(), sgd()], ids=["adam", "sgd-nesterov-wd-step"])
def test_a_model_does_not_depend_on_its_neighbours_or_the_chunking(digits, config):
    """Model m's RNG streams and arithmetic are its own: alone, in a stack of 5, or in chunks of 2.

    On the CPU vmap runs every slice through the same batched kernels whatever
    M is and the optimizers are elementwise, but the fused optimizer kernels
    round an element differently on their vector and scalar paths, so models
    agree to float32 rounding (at most 4e-8 after these 3 epochs), not bit for bit.
    """
    data, pool, val = digits
    sets, seeds = halves(pool, 5, 300), [10, 11, 12, 13, 14]
    one_chunk = run(data, sets, val[:200], config, seeds)
    chunked = run(data, sets, val[:200], config, seeds, max_stack=2)
    alone = run(data, sets[2:3], val[:200], config, seeds[2:3])[0]
    assert all(close(a, b, 1e-6) for a, b in zip(one_chunk, chunked))
    assert close(alone, one_chunk[2], 1e-6)


def test_stacked_models_stop_at_stop_epoch_like_the_one_training_loop(digits):
    """``stop_epoch`` (reference models stopped where their target was) cuts the stacked run too."""
    data, pool, val = digits
    sets = halves(pool, 2, 300)
    config = sgd(epochs=6, stop_epoch=2, select_best=False)
    stacked = run(data, sets, val[:100], config, seeds=[3, 4])[0]
    seed_everything(3)
    alone = build_model("mlp", data.input_shape, data.num_classes)
    train(alone, data, sets[0], val[:100], TrainConfig(**{**config.to_dict(), "seed": 3}), progress=False)
    longer = run(data, sets, val[:100], sgd(epochs=6, stop_epoch=3, select_best=False), seeds=[3, 4])[0]
    assert close(stacked, alone, 1e-5) and not close(stacked, longer, 1e-3)


def test_stacked_model_matches_the_one_training_loop(digits):
    """Same init, permutations and recipe as ``mia.train.train`` with that seed.

    Not bit for bit: a vmapped linear layer is a batched matmul, the plain one
    an ``addmm``, and their float32 roundings differ (~1e-7), so the weights
    agree to a tight tolerance and the predictions agree.
    """
    data, pool, val = digits
    sets = halves(pool, 2, 400)
    config = adam(epochs=4)
    stacked = run(data, sets, val, config, seeds=[5, 6])[1]
    seed_everything(6)
    alone = build_model("mlp", data.input_shape, data.num_classes)
    train(alone, data, sets[1], val, TrainConfig(**{**config.to_dict(), "seed": 6}), progress=False)
    for p, q in zip(weights(stacked), weights(alone)):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    same_predictions = predict_logits(stacked, data, val).argmax(1) == predict_logits(alone, data, val).argmax(1)
    assert same_predictions.float().mean() > 0.99


def test_each_model_keeps_its_own_best_epoch(digits):
    """With a constant rate, an e-epoch run passes through epoch e of a longer one (same draws, same steps),

    so the best-epoch run must return, per model, the weights of the epoch where
    that model's validation accuracy peaked, not a common epoch.
    """
    data, pool, val = digits
    sets, seeds, epochs = halves(pool, 3, 300), [20, 21, 22], 8
    config = adam(lr=0.01, epochs=epochs)  # a high rate on few rows: validation accuracy jumps around
    per_epoch = [run(data, sets, val, adam(lr=0.01, epochs=e, select_best=False), seeds)
                 for e in range(1, epochs + 1)]
    accs = np.array([[accuracy(m, data, val) for m in ms] for ms in per_epoch])  # epochs x models
    best = run(data, sets, val, config, seeds)
    best_epochs = accs.argmax(0)
    for m, model in enumerate(best):
        assert accuracy(model, data, val) == accs[:, m].max()
        assert same(model, per_epoch[best_epochs[m]][m])
    assert (best_epochs < epochs - 1).any()  # some model's best is not simply its last epoch
    assert len(set(best_epochs)) > 1  # and the models peak at different epochs


def test_stacked_models_keep_the_earliest_of_equally_good_epochs(digits):
    """Ties keep the earlier epoch, as in the one training loop: at so small a rate no prediction changes, and
    each model holds its first epoch's weights."""
    data, pool, val = digits
    sets, seeds = halves(pool, 2, 200), [30, 31]
    best = run(data, sets, val[:200], adam(lr=1e-8, epochs=3), seeds, stack=True)
    first = run(data, sets, val[:200], adam(lr=1e-8, epochs=1, select_best=False), seeds, stack=True)
    last = run(data, sets, val[:200], adam(lr=1e-8, epochs=3, select_best=False), seeds, stack=True)
    for b, f, l in zip(best, first, last):
        assert same(b, f) and not same(b, l)


def test_augmented_conv_stack_is_chunking_independent():
    """Each model's crop and flip draws are its own, so chunking changes no draw.

    Not bit for bit: under vmap a convolution of M models is one grouped
    convolution with M groups, and oneDNN picks its kernel by the group count,
    so conv models in different stack sizes agree to float32 rounding only.
    """
    g = torch.Generator().manual_seed(0)
    data = Dataset("tiny-rgb", torch.randint(0, 256, (80, 3, 8, 8), dtype=torch.uint8, generator=g),
                   torch.randint(0, 4, (80,), generator=g), 4, "image",
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment=True)
    sets = halves(np.arange(64), 2, 32)
    config = adam(epochs=2, batch_size=16, augment=True, select_best=False)
    together = run(data, sets, None, config, [3, 4], model="cnn-small")
    apart = run(data, sets, None, config, [3, 4], model="cnn-small", max_stack=1)
    for a, b in zip(together, apart):
        for p, q in zip(weights(a), weights(b)):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)  # other draws: ~1e-2 apart
    assert not same(*together)


def test_crop_flip_at_crops_the_padded_image_at_the_given_offsets_and_flips():
    """The gather of stacked training, where each model draws its own offsets: image i is the ``H x W`` window
    at (dy[i], dx[i]) of the zero-padded image, mirrored where ``flipped[i]``."""
    x = torch.randint(0, 256, (12, 3, 6, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    dy, dx = (torch.randint(0, 2 * PADDING + 1, (12,), generator=g) for _ in range(2))
    flipped = torch.randint(0, 2, (12,), generator=g).bool()
    out = crop_flip_at(x, dy, dx, flipped)
    padded = torch.nn.functional.pad(x, (PADDING,) * 4)
    for i in range(12):
        window = padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 7]
        assert torch.equal(out[i], window.flip(-1) if flipped[i] else window)
    assert flipped.any() and not flipped.all() and (dy != PADDING).any()  # the cases are all there


# ---------------------------------------------------------------- fallback path


def test_batch_norm_models_train_one_by_one_on_one_module(digits, monkeypatch):
    data, pool, val = digits
    sets, config = halves(pool, 2, 32), sgd(epochs=2, batch_size=16, lr=0.01)
    trained_on = []

    def spy(model, *args, **kwargs):
        trained_on.append(id(model))
        return train(model, *args, **kwargs)

    monkeypatch.setattr(many, "train", spy)
    models = run(data, sets, val[:32], config, seeds=[7, 8], model="resnet18")
    assert len(trained_on) == 2 and trained_on[0] == trained_on[1]  # one module object, reloaded
    assert all(id(m) not in trained_on and not m.training for m in models)
    seed_everything(8)
    alone = build_model("resnet18", data.input_shape, data.num_classes)
    train(alone, data, sets[1], val[:32], TrainConfig(**{**config.to_dict(), "seed": 8}), progress=False)
    assert same(models[1], alone)  # exactly what the one loop gives with that seed
    assert not same(models[0], models[1])


def test_stack_false_is_the_one_loop_exactly(digits):
    data, pool, val = digits
    sets, config = halves(pool, 2, 200), adam(epochs=2)
    models = run(data, sets, val, config, seeds=[3, 4], stack=False)
    seed_everything(4)
    alone = build_model("mlp", data.input_shape, data.num_classes)
    train(alone, data, sets[1], val, TrainConfig(**{**config.to_dict(), "seed": 4}), progress=False)
    assert same(models[1], alone)


def test_on_the_cpu_only_small_steps_stack(digits, monkeypatch):
    cpu = torch.device("cpu")
    assert many.stack_pays(build_model("mlp", (1, 8, 8), 10), cpu)
    assert not many.stack_pays(build_model("fc", (600,), 100), cpu)  # 1.3M parameters
    data, pool, val = digits
    trained_one_by_one = []

    def spy(*args, **kwargs):
        trained_one_by_one.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(many, "train", spy)
    run(data, halves(pool, 2, 100), val[:50], adam(epochs=1), seeds=[0, 1])
    assert trained_one_by_one == []
    monkeypatch.setattr(many, "CPU_STACK_MAX_PARAMS", 0)
    run(data, halves(pool, 2, 100), val[:50], adam(epochs=1), seeds=[0, 1])
    assert trained_one_by_one == [1, 1]


# ---------------------------------------------------------------- user errors


@pytest.mark.parametrize("sets,seeds,kw,match", [
    (np.zeros((2, 4), dtype=np.int64), [1], {}, "one seed per model"),
    (np.zeros(4, dtype=np.int64), [1], {}, "M x n"),
    (np.full((1, 4), 10_000), [1], {}, "outside"),
    (np.zeros((1, 4), dtype=np.int64), [1], {"max_stack": 0}, "max_stack"),
])
def test_bad_arguments_are_user_errors(digits, sets, seeds, kw, match):
    data, _, val = digits
    with pytest.raises(MiaError, match=match):
        run(data, sets, val, adam(), seeds, **kw)


def test_batch_norm_models_stack_when_asked_and_match_the_one_training_loop(digits):
    """stack=True stacks BatchNorm too: each model's running statistics are its own slice, as if trained alone.

    Two epochs at a small rate: the stacked (grouped) convolutions round differently from one model's, and
    at lr 0.05 over 3 epochs one seed's trajectory amplified that to 0.04 in the stem's weights on an AMD EPYC
    (1e-7 for the other seed), where CI's machine stayed within 1e-4; a model reading another's
    statistics would be off from the first epoch."""
    data, pool, val = digits
    sets, config = halves(pool, 2, 200), sgd(batch_size=32, lr=0.01, epochs=2)
    assert not stackable("wrn10-1", "bn")  # not by default: see module_stackable
    stacked = run(data, sets, val, config, seeds=[5, 6], model="wrn10-1", stack=True)
    for m, seed in enumerate([5, 6]):  # model 0 too: its module also sized the stack (a forward that must not train)
        seed_everything(seed)
        alone = build_model("wrn10-1", data.input_shape, data.num_classes)
        train(alone, data, sets[m], val, TrainConfig(**{**config.to_dict(), "seed": seed}), progress=False)
        for (name, p), q in zip(stacked[m].state_dict().items(), alone.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4, msg=name)  # running statistics included
        assert (predict_logits(stacked[m], data, val).argmax(1) == predict_logits(alone, data, val).argmax(1)).all()
    assert not torch.equal(stacked[0].state_dict()["blocks.0.bn1.running_mean"],
                           stacked[1].state_dict()["blocks.0.bn1.running_mean"])


def test_dropout_and_foreign_buffers_never_stack():
    assert not many.module_stackable(nn.Sequential(nn.Linear(2, 2), nn.Dropout()), batchnorm=True)
    odd = nn.Linear(2, 2)
    odd.register_buffer("count", torch.zeros(()))
    assert not many.module_stackable(odd, batchnorm=True)
    assert many.module_stackable(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), batchnorm=True)


def test_select_best_needs_validation_rows(digits):
    data, pool, _ = digits
    with pytest.raises(MiaError, match="select_best needs validation rows"):
        run(data, halves(pool, 1, 10), None, adam(), [0])
