"""The one training loop: targets, shadows, reference models and defenses all fit here.

Why it is fast (DESIGN.md, "Speed"): the selected rows are moved to the device
once (uint8 for images, 4x smaller than float); each epoch draws one
permutation on the device and slices batches out of it; crop+flip runs on the
whole batch on the device; loss and accuracy accumulate as device tensors and
are read once per epoch, so no step waits for the host. On CUDA the forward
runs under bf16 autocast and image models use channels-last memory; on the
CPU only with ``cpu_bf16`` (:func:`autocast_on`).

Reproducibility: the permutation and augmentation draw from a local generator
seeded with ``config.seed``, so they do not depend on (or disturb) the global
RNG. The model's initialization is the caller's: call :func:`seed_everything`
before building the model. With both, two runs on the CPU give identical
weights; CUDA kernels (cuDNN autotuning, atomics) are fast rather than
bit-exact.

Partial batches: the last, smaller batch of an epoch is trained on, except
when it holds a single row: one-row batches break BatchNorm in training mode
and add noise for no benefit, so that one row (a different one each epoch)
waits for the next permutation.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia.data.augment import crop_flip
from mia.data.base import Dataset
from mia.errors import Diverged, MiaError
from mia.registry import Registry
from mia.train.config import TrainConfig
from mia.train.predict import resolve_device

EpochCallback = Callable[[int, dict], None]
Indices = np.ndarray | torch.Tensor | Sequence[int]

OptimizerFactory = Callable[[list[nn.Parameter], TrainConfig, bool], torch.optim.Optimizer]
"""``make(params, config, fused) -> optimizer``; ``fused`` is :func:`fused_on` the parameters' device."""

FUSED_DEVICES = ("cuda", "cpu")
"""Devices where the optimizers run as one fused kernel over all parameters.

On the CPU too (torch >= 2.5): the per-parameter loop makes about ten passes
over the optimizer state, the fused kernel one. Measured on 2 cores
(``benchmarks/cpu_step.py``): a step of the Purchase ``fc`` net 1.3-1.6x
faster (Adam and SGD with Nesterov momentum), 16 of them stacked 1.4x."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_on(device: torch.device, config: TrainConfig) -> bool:
    """Whether training steps run under bf16 autocast on ``device``.

    On CUDA with ``config.amp`` (the default). On the CPU only when asked
    (``config.cpu_bf16``, ``--cpu-bf16``): on a CPU with native bf16 it about
    halves a step of the ``fc`` net and of CNNs (``benchmarks/cpu_step.py``),
    but CPU runs stay float32 by default, so that their results are the exact,
    reproducible reference. Queries (signals, predictions) run in float32 on the CPU either way.
    """
    if device.type == "cuda":
        return config.amp
    return device.type == "cpu" and config.amp and config.cpu_bf16


COMPILED_SHAPES = 4
"""Input shapes one compiled forward serves before it runs new ones eagerly: a centralized run's four
(full and last training batch, full and last validation batch) stay compiled."""


def compile_for_cuda(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` under ``torch.compile`` with CUDA graphs (mode ``"reduce-overhead"``), for ``config.compile``.

    Why CUDA graphs and not the default mode: on an H100 a ResNet-18 step at
    batch 128 is bound by the host launching kernels, not by the GPU (eager
    and default-compiled steps alike took 10-13 ms, all of it kernel launches;
    replaying one captured graph took 4 ms; benchmarks/RESULTS.md, CUDA
    sections). Each call begins a new CUDA-graph step, so a caller must use a
    call's outputs before the next call, as the trainer does.

    The graph is static (``dynamic=False``): every new input shape compiles
    again, which a federation of uneven clients, each ending on a last batch
    of its own size, paid in one compilation per client. So the first
    :data:`COMPILED_SHAPES` shapes are compiled and any later one runs ``model``
    eagerly (the same parameters, the same gradients).
    """
    compiled = torch.compile(model, dynamic=False, mode="reduce-overhead")
    return ShapeBoundedForward(compiled, model, COMPILED_SHAPES)


class ShapeBoundedForward:
    """``compiled`` for the first ``max_shapes`` input shapes it sees, ``eager`` for the others."""

    def __init__(self, compiled: Callable, eager: Callable, max_shapes: int):
        self.compiled, self.eager, self.max_shapes = compiled, eager, max_shapes
        self.shapes: set[tuple[int, ...]] = set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.shapes and len(self.shapes) >= self.max_shapes:
            return self.eager(x)
        self.shapes.add(shape)
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x)


def fused_on(device: torch.device) -> bool:
    """Whether the optimizers run fused on ``device`` (see :data:`FUSED_DEVICES`)."""
    return device.type in FUSED_DEVICES

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
OPTIMIZERS.register("sgd", lambda params, c, fused: torch.optim.SGD(
    params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay, fused=fused))
OPTIMIZERS.register("adam", lambda params, c, fused: torch.optim.Adam(
    params, lr=c.lr, weight_decay=c.weight_decay, fused=fused))


def cosine(t: float) -> float:
    """Cosine decay from 1 to 0 over training (``t`` is the fraction of steps done)."""
    return 0.5 * (1.0 + math.cos(math.pi * t))


def step(t: float) -> float:
    """x0.1 at 50% and again at 75% of training (the classic CIFAR step schedule)."""
    return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))


def constant(t: float) -> float:
    return 1.0


SCHEDULES: Registry[Callable[[float], float]] = Registry("schedule")
"""Learning-rate factor as a function of the fraction of training done, applied every step."""
for _fn in (cosine, step, constant):
    SCHEDULES.register(_fn.__name__, _fn)

METRICS = ("train_loss", "train_accuracy", "val_accuracy", "lr", "epoch_time")
"""Keys of the per-epoch metrics dict passed to ``on_epoch`` and kept in the history."""


class TrainHooks:
    """Where a defense acts inside the loop; the defaults are plain training.

    ``batch`` may transform the model inputs and return soft targets (mixup,
    InstaHide); ``loss`` turns logits and targets into the loss to minimize
    (label smoothing, RelaxLoss, HAMP); ``stop`` ends training early. The loop
    knows these hook points, not the defenses (DESIGN.md, "Defenses").
    """

    def batch(self, inputs: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs, labels

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    def stop(self, epoch: int, metrics: dict) -> bool:
        return False

    def epoch_rows(self, epoch: int) -> torch.Tensor | None:
        """Positions (into the training rows) to train on in ``epoch``; None = all (RSW's sliding window)."""
        return None

    def positions(self, positions: torch.Tensor) -> None:
        """The positions (into the training rows) of the batch about to run: for per-row losses (RMR)."""


@dataclass
class TrainResult:
    """What a training run reports; the model itself was trained in place.

    ``best_epoch`` (0-based) is the epoch whose weights the model holds: the
    best validation accuracy when ``select_best``, else the last epoch.
    ``history[e]`` holds the :data:`METRICS` of epoch ``e``.
    """

    best_epoch: int
    best_val_accuracy: float
    history: list[dict]
    wall_time: float


class EpochLog:
    """The end of every epoch, shared by the training loops: history, best-epoch weights, progress, callback.

    One per fit. Iterate :attr:`epochs` (a tqdm bar named ``desc`` when
    ``progress``), call :meth:`end` with each epoch's :data:`METRICS` (plus
    any extra keys), and :meth:`result` at the end: it restores the best
    validation epoch's weights (``config.select_best``; else the model keeps
    its last epoch), leaves the model in eval mode and reports the wall time
    since ``start`` (the fit's own start; default: now).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, desc: str, on_epoch: EpochCallback | None,
                 progress: bool, start: float | None = None):
        self.model, self.select_best, self.on_epoch = model, config.select_best, on_epoch
        self.history: list[dict] = []
        self.best_epoch, self.best_acc, self._best_state = -1, -math.inf, None
        self.start = time.perf_counter() if start is None else start  # the fit's start, for its wall time
        self.epochs, self._bar = range(config.epochs_run), None
        if progress:
            from tqdm.auto import tqdm  # only here: the core must import without tqdm

            self.epochs = self._bar = tqdm(self.epochs, desc=desc, unit="epoch", leave=False)

    def end(self, epoch: int, metrics: dict, **shown: float) -> None:
        """Record ``epoch``; ``shown`` are extra values for the progress bar."""
        self.history.append(metrics)
        val_acc = metrics["val_accuracy"]
        if self.select_best and val_acc > self.best_acc:
            self.best_epoch, self.best_acc = epoch, val_acc
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", val=f"{val_acc:.3f}",
                                  **{k: f"{v:.3f}" for k, v in shown.items()})
        if self.on_epoch is not None:
            self.on_epoch(epoch, dict(metrics))

    def result(self) -> TrainResult:
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        else:
            self.best_epoch, self.best_acc = len(self.history) - 1, self.history[-1]["val_accuracy"]
        self.model.eval()
        return TrainResult(self.best_epoch, self.best_acc, self.history, time.perf_counter() - self.start)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s trainable parameters (fused where it can be); call after moving the model."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.get(config.optimizer)(params, config, bool(params) and fused_on(params[0].device))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): call it before building a model."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _restores_cudnn_benchmark(fn):
    """``fn`` leaving cuDNN's benchmark mode as it found it: training turns it on for its fixed batch shapes,
    where what runs after (a boundary search, queries of varying batch sizes) would re-tune per new shape."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.backends.cudnn.benchmark
        try:
            return fn(*args, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = before
    return wrapper


@_restores_cudnn_benchmark
def train(model: nn.Module, data: Dataset, train_idx: Indices, val_idx: Indices | None,
          config: TrainConfig, on_epoch: EpochCallback | None = None,
          progress: bool = True,
          forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
          hooks: "TrainHooks | None" = None,
          optimizer: torch.optim.Optimizer | None = None) -> TrainResult:
    """Fit ``model`` in place on rows ``train_idx`` of ``data``, selecting on rows ``val_idx``.

    The model moves to ``config.device`` and keeps the weights of the best
    validation epoch (``config.select_best``, needs ``val_idx``) or of the last
    one; it is left in eval mode. ``on_epoch(epoch, metrics)`` is called after
    every epoch with the keys of :data:`METRICS` (``val_accuracy`` is NaN
    without a validation set); ``progress`` shows a tqdm bar over epochs.
    ``forward`` is an already compiled ``model`` (:func:`compile_for_cuda`,
    built after moving it to the device) to reuse across calls, so that
    training many models on one module compiles once; by default the model is
    compiled per call when ``config.compile`` is set on CUDA.
    """
    start = time.perf_counter()
    schedule = SCHEDULES.get(config.schedule)
    check_recipe(config)
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    x_train, y_train, x_val, y_val = resident_sets(data, train_idx, val_idx, config, device)
    n = len(y_train)

    image = data.kind == "image" and x_train.dim() == 4
    augment = config.augment and data.augment and image
    memory_format = torch.channels_last if cuda and image and config.channels_last else torch.contiguous_format
    amp = autocast_on(device, config)
    model.to(device=device, memory_format=memory_format)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    if forward is None:
        forward = compile_for_cuda(model) if cuda and config.compile else model
    if optimizer is None:
        optimizer = make_optimizer(model, config)
    else:
        optimizer.state.clear()
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = config.lr
    hooks = hooks or TrainHooks()
    steps = batches_per_epoch(n, config.batch_size)
    total_steps = steps * config.epochs
    if hooks.epoch_rows(0) is not None:  # a window: the schedule spans the steps it runs
        total_steps = sum(batches_per_epoch(len(hooks.epoch_rows(e)), config.batch_size) for e in range(config.epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s / total_steps))
    generator = torch.Generator(device=device).manual_seed(config.seed)

    def prepare(xb: torch.Tensor, train_mode: bool) -> torch.Tensor:
        if train_mode and augment:
            xb = crop_flip(xb, generator=generator)
        return data.inputs(xb).contiguous(memory_format=memory_format)

    log = EpochLog(model, config, "train", on_epoch, progress, start)
    for epoch in log.epochs:
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=generator, device=device)
        epoch_steps = steps
        if (window := hooks.epoch_rows(epoch)) is not None:
            window = torch.as_tensor(window, device=device)
            perm = window[torch.randperm(len(window), generator=generator, device=device)]
            epoch_steps = batches_per_epoch(len(window), config.batch_size)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, lr = 0, optimizer.param_groups[0]["lr"]
        for s in range(epoch_steps):
            rows = perm[s * config.batch_size:(s + 1) * config.batch_size]
            hooks.positions(rows)
            yb = y_train[rows]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                inputs, targets = hooks.batch(prepare(x_train[rows], True), yb, generator)
                logits = forward(inputs)
                loss = hooks.loss(logits, targets, yb, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(rows)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(rows)
        train_loss = loss_sum.item() / max(seen, 1)  # the one host sync of the epoch
        if not math.isfinite(train_loss):
            raise Diverged(f"training diverged (loss {train_loss} in epoch {epoch}); lower the learning rate "
                           f"(lr={config.lr})")
        model.eval()
        val_acc = resident_accuracy(forward, x_val, y_val, prepare, amp, config.batch_size)
        metrics = {"train_loss": train_loss, "train_accuracy": correct.item() / max(seen, 1),
                   "val_accuracy": val_acc, "lr": lr, "epoch_time": time.perf_counter() - t0}
        log.end(epoch, metrics, acc=metrics["train_accuracy"])
        if hooks.stop(epoch, metrics):
            break
    return log.result()


def check_recipe(config: TrainConfig) -> None:
    """A one-line :class:`MiaError` for a recipe no step can train with; :func:`mia.audit.check_config` calls it
    where a config is made, so a notebook hears of ``epochs=0`` or ``lr=nan`` before loading data (``nan``
    came back from deep inside ``torch.optim``), as the command line's option ranges do."""
    OPTIMIZERS.get(config.optimizer)
    SCHEDULES.get(config.schedule)
    for name in ("momentum", "weight_decay"):
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0:
            raise MiaError(f"{name} must be a finite number >= 0, got {value}")
    if not math.isfinite(config.lr) or config.lr <= 0:
        raise MiaError(f"lr must be a finite number > 0, got {config.lr}")
    if config.epochs < 1:
        raise MiaError(f"epochs must be >= 1, got {config.epochs}")
    if config.stop_epoch is not None and not 1 <= config.stop_epoch <= config.epochs:
        raise MiaError(f"stop_epoch must be in [1, epochs={config.epochs}], got {config.stop_epoch}")
    if config.batch_size < 1:
        raise MiaError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.nesterov and (config.optimizer != "sgd" or config.momentum <= 0):
        raise MiaError("nesterov needs optimizer='sgd' with momentum > 0")
    if config.cpu_bf16 and resolve_device(config.device).type == "cpu" and not cpu_has_bf16():
        raise MiaError("--cpu-bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is slower than "
                       "float32; drop --cpu-bf16")


def resident(data: Dataset, idx: Indices | None, device: torch.device,
             name: str = "indices") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of ``data`` (features as stored, labels) on ``device``, copied once.

    ``idx`` is checked first (``name`` says which argument it was): as long
    integers a boolean mask would become rows 0 and 1 and a negative index
    would wrap to the end, silently training on the wrong rows, and an index
    past the end fails deep inside torch; :func:`mia.train.many.train_many`
    refuses the same.
    """
    rows = torch.as_tensor([] if idx is None else idx)
    if rows.dtype == torch.bool:
        raise MiaError(f"{name} is a boolean mask; pass the row indices (np.flatnonzero(mask))")
    rows = rows.long()
    if rows.dim() != 1:
        raise MiaError(f"{name} must be one-dimensional (a list of row indices), got shape {tuple(rows.shape)}")
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(data)):
        raise MiaError(f"{name} holds indices outside 0..{len(data) - 1} of dataset {data.name!r}")
    rows = rows.to(data.x.device)
    return data.x[rows].to(device), data.y[rows].to(device)


def resident_sets(data: Dataset, train_idx: Indices, val_idx: Indices | None, config: TrainConfig,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training and validation rows on ``device``, checked: no training rows, or selection without
    validation rows, is a user error. Shared by every loop that trains on a member set."""
    x_train, y_train = resident(data, train_idx, device, "train_idx")
    x_val, y_val = resident(data, val_idx, device, "val_idx")
    if len(y_train) == 0:
        raise MiaError("no training rows: train_idx is empty; pass the indices of the members to train on")
    if config.select_best and len(y_val) == 0:
        raise MiaError("select_best needs validation rows: pass val_idx, or set select_best=False")
    return x_train, y_train, x_val, y_val


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch: all rows, except a lone final row (see the module docstring)."""
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


@torch.no_grad()
def resident_accuracy(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      prepare: Callable[[torch.Tensor, bool], torch.Tensor], amp: bool, batch_size: int) -> float:
    """Accuracy on resident validation rows, not augmented, in batches of at least 1024 rows (the caller
    sets eval mode), read back once; NaN without rows."""
    if not len(y):
        return math.nan
    batch_size = max(1024, batch_size)
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for s in range(0, len(y), batch_size):
        with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward(prepare(x[s:s + batch_size], False))
        correct += (logits.argmax(1) == y[s:s + batch_size]).sum()
    return correct.item() / len(y)
