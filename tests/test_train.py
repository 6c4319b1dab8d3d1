"""Device batch augmentation, the training loop and the default recipes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mia.data.augment import crop_flip
from mia.data.base import Dataset
from mia.errors import MiaError
from mia.models import build_model
from mia.train import (TrainConfig, TrainResult, default_config, predict_logits, seed_everything,
                       train)
from mia.train.loop import METRICS, SCHEDULES

# ---------------------------------------------------------------- augmentation


def distinct_images(n: int = 16, c: int = 3, h: int = 6, w: int = 7, dtype=torch.float32) -> torch.Tensor:
    """Images whose pixel values are all different and non-zero, so a crop identifies its offset."""
    return (torch.arange(n * c * h * w) % 250 + 1).view(n, c, h, w).to(dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_keeps_shape_and_dtype(dtype):
    x = distinct_images(dtype=dtype)
    out = crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


def test_crop_is_a_translation_of_the_padded_image():
    x = distinct_images()
    p, (h, w) = 2, x.shape[2:]
    out = crop_flip(x, padding=p, flip=False, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 1  # offsets are drawn per sample


def test_flip_flips_about_half():
    x = distinct_images(n=64)
    out = crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(2))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped ^ kept).all())
    assert 16 < int(flipped.sum()) < 48


def test_crop_flip_is_reproducible_with_a_seeded_generator():
    x = distinct_images(dtype=torch.uint8)
    a = crop_flip(x, generator=torch.Generator().manual_seed(3))
    b = crop_flip(x, generator=torch.Generator().manual_seed(3))
    c = crop_flip(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_shift_flip_translates_with_zero_fill_and_the_query_views_are_lira_s_eighteen():
    """The fixed views reference attacks average over (mutants that shifted the wrong way or padded too little for
    a horizontal shift survived: no test queried an augmented view)."""
    from mia.data.augment import query_views, shift_flip

    x = distinct_images(n=2)
    expected = torch.zeros_like(x)
    expected[..., 1:, :5] = x[..., :5, 2:]  # content moved down 1 row and left 2 columns, zeros where it left
    assert torch.equal(shift_flip(x, 1, -2, False), expected)
    assert torch.equal(shift_flip(x, 1, -2, True), expected.flip(-1))
    expected = torch.zeros_like(x)
    expected[..., 3:] = x[..., :4]
    assert torch.equal(shift_flip(x, 0, 3, False), expected)
    assert torch.equal(shift_flip(x, 0, 0, False), x)
    views = query_views(True, shift=4)
    assert len(views) == len(set(views)) == 18 and views[0] == (0, 0, False)
    assert {(dy, dx) for dy, dx, _ in views} == {(a, b) for a in (-4, 0, 4) for b in (-4, 0, 4)}
    assert query_views(False) == [(0, 0, False)]


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def digits(digits_images) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """sklearn digits as 1x8x8 uint8 images, with 1200 training and 597 validation rows."""
    data = digits_images
    perm = np.random.default_rng(0).permutation(len(data))
    return data, perm[:1200], perm[1200:]


def adam(**kw) -> TrainConfig:
    return TrainConfig(**{"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
                          "batch_size": 64, "epochs": 2, **kw})


def fit(data, train_idx, val_idx, config, model_name="mlp", seed=0, **kw) -> tuple[nn.Module, TrainResult]:
    seed_everything(seed)  # the caller seeds the initialization
    model = build_model(model_name, data.input_shape, data.num_classes)
    return model, train(model, data, train_idx, val_idx, config, progress=False, **kw)


def accuracy(model, data, idx) -> float:
    return int((predict_logits(model, data, idx).argmax(1) == data.y[idx]).sum()) / len(idx)


def test_mlp_learns_digits(digits):
    data, tr, va = digits
    model, result = fit(data, tr, va, default_config("digits", "mlp", epochs=10))
    assert result.best_val_accuracy > 0.9
    assert len(result.history) == 10 and result.wall_time > 0
    assert not model.training


def test_training_leaves_cudnn_benchmark_mode_as_it_found_it(digits, monkeypatch):
    """Training on CUDA turns the mode on for its fixed shapes; what runs after (boundary searches, queries)
    must not re-tune per new batch shape. On this CPU a loss hook plays the CUDA branch's part."""
    from mia.train import TrainHooks

    class TurnsItOn(TrainHooks):
        def loss(self, logits, targets, labels, epoch):
            torch.backends.cudnn.benchmark = True
            return super().loss(logits, targets, labels, epoch)

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    data, tr, va = digits
    fit(data, tr[:128], va[:64], adam(epochs=1), hooks=TurnsItOn())
    assert torch.backends.cudnn.benchmark is False


def test_same_seed_same_weights(digits):
    data, tr, va = digits
    cfg = adam(select_best=False)
    a, ra = fit(data, tr[:300], va[:100], cfg)
    b, rb = fit(data, tr[:300], va[:100], cfg)
    c, _ = fit(data, tr[:300], va[:100], TrainConfig(**{**cfg.to_dict(), "seed": 1}))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_select_best_keeps_the_best_validation_epoch(digits):
    data, tr, va = digits
    # a high learning rate on few rows: validation accuracy peaks before the last epoch
    model, result = fit(data, tr[:400], va[:300], adam(lr=0.03, epochs=8))
    vals = [h["val_accuracy"] for h in result.history]
    assert result.best_epoch == int(np.argmax(vals))
    assert result.best_val_accuracy == vals[result.best_epoch]
    assert vals[result.best_epoch] > vals[-1]  # the kept weights are not simply the last ones
    assert accuracy(model, data, va[:300]) == pytest.approx(result.best_val_accuracy, abs=1e-9)


def test_select_best_keeps_the_earliest_of_equally_good_epochs(digits):
    data, tr, va = digits
    # so small a rate that no prediction changes: every epoch ties on validation accuracy
    model, result = fit(data, tr[:300], va[:200], adam(lr=1e-8, epochs=3))
    vals = [h["val_accuracy"] for h in result.history]
    assert len(set(vals)) == 1
    assert result.best_epoch == 0
    first, _ = fit(data, tr[:300], va[:200], adam(lr=1e-8, epochs=1, select_best=False))
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), first.state_dict().values()))


def test_without_select_best_the_last_epoch_is_kept(digits):
    data, tr, va = digits
    model, result = fit(data, tr[:400], va[:300], adam(lr=0.03, epochs=4, select_best=False))
    assert result.best_epoch == 3
    assert accuracy(model, data, va[:300]) == pytest.approx(result.history[-1]["val_accuracy"], abs=1e-9)
    _, no_val = fit(data, tr[:200], [], adam(epochs=1, select_best=False))
    assert math.isnan(no_val.best_val_accuracy)


def test_schedule_shapes():
    assert SCHEDULES.get("cosine")(0.0) == 1.0 and SCHEDULES.get("cosine")(1.0) == pytest.approx(0.0)
    assert [SCHEDULES.get("step")(t) for t in (0.0, 0.49, 0.5, 0.74, 0.75, 0.99)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert SCHEDULES.get("constant")(0.7) == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_learning_rate_per_epoch(digits, schedule):
    data, tr, va = digits
    cfg = TrainConfig(optimizer="sgd", lr=0.1, schedule=schedule, epochs=4, batch_size=64, select_best=False)
    _, result = fit(data, tr[:256], va[:10], cfg)
    lrs = [h["lr"] for h in result.history]  # the rate of each epoch's last step
    expected = {"cosine": None, "step": [0.1, 0.1, 0.01, 0.001], "constant": [0.1] * 4}[schedule]
    if expected is None:
        assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.01 * 0.1
    else:
        assert lrs == pytest.approx(expected)


def test_stop_epoch_stops_the_schedule_where_a_full_run_was(digits):
    """Reference models stop where the target did: the full run's schedule and steps, cut short."""
    data, tr, va = digits
    cfg = TrainConfig(optimizer="sgd", lr=0.1, schedule="cosine", epochs=5, batch_size=64, select_best=False)
    _, full_result = fit(data, tr[:256], va[:10], cfg)
    _, result = fit(data, tr[:256], va[:10], TrainConfig(**{**cfg.to_dict(), "stop_epoch": 2}))
    assert len(result.history) == 2 and result.best_epoch == 1
    assert [h["lr"] for h in result.history] == [h["lr"] for h in full_result.history[:2]]  # the 5-epoch cosine
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in full_result.history[:2]]
    assert TrainConfig(epochs=5, stop_epoch=9).epochs_run == 5 and TrainConfig(epochs=5).epochs_run == 5


def test_on_epoch_gets_every_epoch_and_the_documented_keys(digits):
    data, tr, va = digits
    calls = []
    _, result = fit(data, tr[:200], va[:50], adam(epochs=3), on_epoch=lambda e, m: calls.append((e, m)))
    assert [e for e, _ in calls] == [0, 1, 2]
    assert all(set(m) == set(METRICS) == {"train_loss", "train_accuracy", "val_accuracy", "lr", "epoch_time"}
               for _, m in calls)
    assert [m for _, m in calls] == result.history


def test_augmented_image_training_runs():
    g = torch.Generator().manual_seed(0)
    data = Dataset("tiny-rgb", torch.randint(0, 256, (96, 3, 16, 16), dtype=torch.uint8, generator=g),
                   torch.randint(0, 4, (96,), generator=g), 4, "image",
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment=True)
    cfg = default_config("image", "cnn-small", epochs=2, augment=True)
    _, result = fit(data, np.arange(64), np.arange(64, 96), cfg, model_name="cnn-small")
    assert len(result.history) == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)


def test_a_lone_final_row_is_not_a_batch_norm_batch(digits):
    data, tr, va = digits
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    result = train(model, data, tr[:65], va[:20], adam(epochs=2), progress=False)  # 65 = 64 + 1
    assert len(result.history) == 2


@pytest.mark.parametrize("change,match", [
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"schedule": "linear"}, "unknown schedule 'linear'"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"stop_epoch": 0}, r"stop_epoch must be in \[1, epochs=2\], got 0"),
])
def test_bad_config_is_a_user_error(digits, change, match):
    data, tr, va = digits
    with pytest.raises(MiaError, match=match):
        fit(data, tr[:64], va[:10], adam(**change))


def test_cpu_bf16_trains_under_autocast_where_the_cpu_has_it(digits, monkeypatch):
    """``--cpu-bf16``: bf16 steps on the CPU (different weights, same skill); refused without native bf16."""
    import mia.train.loop as loop

    data, tr, va = digits
    if not loop.cpu_has_bf16():  # a CPU without AVX512-BF16/AMX: the one-line refusal is all there is
        with pytest.raises(MiaError, match="no native bf16"):
            fit(data, tr, va, adam(epochs=4, cpu_bf16=True, device="cpu"))
        return
    fp32, r32 = fit(data, tr, va, adam(epochs=4, device="cpu", select_best=False))
    bf16, r16 = fit(data, tr, va, adam(epochs=4, cpu_bf16=True, device="cpu", select_best=False))
    assert not all(torch.equal(p, q) for p, q in zip(fp32.state_dict().values(), bf16.state_dict().values()))
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # autocast: float32 master weights
    assert r16.history[-1]["val_accuracy"] > 0.9
    assert abs(r16.history[-1]["val_accuracy"] - r32.history[-1]["val_accuracy"]) < 0.03
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    with pytest.raises(MiaError, match="--cpu-bf16: this CPU has no native bf16"):
        fit(data, tr[:64], va[:10], adam(cpu_bf16=True, device="cpu"))


def test_select_best_needs_validation_rows(digits):
    data, tr, _ = digits
    with pytest.raises(MiaError, match="select_best needs validation rows"):
        fit(data, tr[:64], np.array([], dtype=np.int64), adam())


@pytest.mark.parametrize("train_idx,val_idx,match", [
    (np.ones(1797, dtype=bool), [5, 6], "train_idx is a boolean mask"),  # as long ints: row 1, 1797 times
    ([-1, 3], [5, 6], r"train_idx holds indices outside 0\.\.1796"),  # -1 would wrap to the last row
    ([1797, 3], [5, 6], r"train_idx holds indices outside 0\.\.1796"),
    ([1, 2], [5, 9999], r"val_idx holds indices outside 0\.\.1796"),
    (np.array([[1, 2], [3, 4]]), [5, 6], "train_idx must be one-dimensional"),
])
def test_bad_indices_are_user_errors_not_silent_rows(digits, train_idx, val_idx, match):
    """A mask, a negative or an out-of-range index is a one-line error, as in ``train_many``."""
    data, _, _ = digits
    with pytest.raises(MiaError, match=match):
        fit(data, train_idx, val_idx, adam(epochs=1))


# ---------------------------------------------------------------- recipes


def test_default_recipes():
    cnn = default_config("cifar10", "resnet18")
    assert (cnn.optimizer, cnn.lr, cnn.momentum, cnn.weight_decay, cnn.schedule, cnn.batch_size) == \
        ("sgd", 0.1, 0.9, 5e-4, "cosine", 128)
    assert default_config("image", "wrn16-4").optimizer == "sgd"
    tab = default_config("tabular", "fc")
    assert (tab.optimizer, tab.lr, tab.weight_decay, tab.batch_size, tab.epochs) == ("adam", 1e-3, 0.0, 128, 30)
    small = default_config("digits", "mlp")
    assert (small.optimizer, small.lr, small.batch_size, small.epochs) == ("adam", 1e-3, 64, 30)
    assert default_config("tabular", "mlp").batch_size == 128
    assert default_config("digits", "cnn-small", epochs=3, seed=7).epochs == 3


def test_default_config_rejects_unknown_names():
    with pytest.raises(MiaError, match="unknown training option"):
        default_config("digits", "mlp", epochz=3)
    with pytest.raises(MiaError, match="unknown model"):
        default_config("digits", "resnet19")


def test_a_compiled_forward_compiles_a_bounded_number_of_shapes_and_runs_the_others_eagerly():
    """A federation of uneven clients ends each client on a last batch of its own size: with a static graph
    every one of them compiled again (CUDA only; here the two callables stand in for compiled and eager)."""
    from mia.train.loop import ShapeBoundedForward

    calls = []
    forward = ShapeBoundedForward(lambda x: calls.append(("compiled", len(x))), lambda x: calls.append(("eager", len(x))),
                                  max_shapes=2)
    for size in (128, 116, 128, 97, 116, 53):
        forward(torch.zeros(size, 3))
    assert calls == [("compiled", 128), ("compiled", 116), ("compiled", 128), ("eager", 97), ("compiled", 116),
                     ("eager", 53)]


def test_the_optimizer_takes_the_recipes_momentum_nesterov_and_weight_decay():
    """Mutants dropping the recipe's nesterov or weight decay (SGD and Adam) survived every training test."""
    from mia.train.loop import make_optimizer

    model = nn.Linear(3, 2)
    sgd = make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.05, momentum=0.8, nesterov=True,
                                            weight_decay=0.01))
    group = sgd.param_groups[0]
    assert isinstance(sgd, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.05, 0.8, True, 0.01)
    adam = make_optimizer(model, TrainConfig(optimizer="adam", lr=0.002, weight_decay=0.03))
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.param_groups[0]["lr"], adam.param_groups[0]["weight_decay"]) == (0.002, 0.03)


def test_a_reused_optimizer_trains_each_model_as_a_fresh_one_would(digits):
    """Many models trained on one module share its optimizer: no momentum and no decayed learning rate of the
    previous model carries over (a mutant keeping the optimizer's state survived)."""
    import copy

    from mia.train.loop import make_optimizer

    data, tr, _ = digits
    cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine", epochs=1, batch_size=64,
                      select_best=False)
    seed_everything(0)
    model = build_model("mlp", data.input_shape, data.num_classes)
    start = copy.deepcopy(model.state_dict())
    train(model, data, tr[:192], None, cfg, progress=False)
    fresh = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model, cfg)
    for _ in range(2):  # the second model trains on an optimizer the first one used
        model.load_state_dict(start)
        result = train(model, data, tr[:192], None, cfg, progress=False, optimizer=optimizer)
        assert all(torch.equal(model.state_dict()[k], fresh[k]) for k in fresh)
    assert result.history[0]["lr"] < 0.05  # the cosine schedule ran (it decays within the epoch)
