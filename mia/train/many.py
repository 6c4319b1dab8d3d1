"""Many models of one architecture at once: the reference/shadow pools of LiRA and RMIA.

LiRA and RMIA need M models (1 to 256) trained with the target's recipe on
random halves of the attacker's data. Trained one after another, a small
model's step is mostly fixed cost (Python, autograd, a kernel launch per op
and per parameter; on a GPU almost all of it), paid M times over;
:func:`train_many` pays it once per step for many models, in one of two ways
(DESIGN.md, "Speed"):

* **Stacked** (models without BatchNorm or other buffers: ``mlp``, ``fc``,
  ``cnn-small``, ``alexnet``, any model built with ``norm="gn"``; on the
  CPU only up to :data:`CPU_STACK_MAX_PARAMS` parameters, where it gains):
  the M models' parameters are stacked along a leading model dimension
  (``torch.func.stack_module_state``) and one ``torch.vmap`` over
  ``torch.func.functional_call`` runs all of them in each step, in the style
  of the torch.func model-ensembling recipe. Each model draws its own batch
  from its own permutation; the losses are summed, so each model's gradient
  is that of its own mean loss. One optimizer over the stacked tensors equals
  M optimizers, because SGD (momentum, Nesterov, weight decay) and Adam are
  elementwise, and the learning-rate schedule is the same for every model.
  Validation runs all models on the shared validation rows each epoch, and
  each model keeps the stacked slice of its own best epoch (``torch.where``
  on a per-model mask, on the device). The host reads the losses and
  validation counts once per epoch, never per step. On CUDA the step runs
  under bf16 autocast like :func:`mia.train.train`, but eagerly and in the
  default memory format (``config.compile`` and ``channels_last`` apply to
  the fallback path).
* **Fallback** (BatchNorm CNNs: ``resnet18``, ``wrn*``, ``vgg16``,
  ``densenet121``; and large models on the CPU): by default the one loop
  :func:`mia.train.train` trains the models in turn,
  on ONE module object that is reloaded with each model's initialization.
  With ``config.compile`` on CUDA the compiled graph is built once and
  reused for all M models, which is where the large-CNN path saves its time.
  ``stack=True`` stacks BatchNorm models too (their running statistics
  stacked like the weights, each model's slice updated by its own batches,
  as when trained alone); not the default until measured on a GPU
  against the compiled fallback (``benchmarks/wrn_pool.py``).

Reproducibility: model m's randomness comes from ``seeds[m]`` alone, never
from M or from how the models are chunked. Its initialization is
``build_model`` after ``torch.manual_seed(seeds[m])`` (what
``seed_everything(seed)`` then ``build_model`` gives, without touching the
caller's global RNG), and its permutations and augmentation draw from its own
``torch.Generator`` seeded with ``seeds[m]``. So model m of an M=3 run is the
same model as when trained alone, to float32 rounding, and ``max_stack``
changes speed, not results. On the CPU, fully connected models agree to
float32 rounding (vmap runs every slice through the same batched matmul
whatever M is, and the optimizers are elementwise, but their fused kernels
take the vector or the scalar path for an element depending on where it
falls in the stacked tensor, and the two paths round differently: 4e-8 apart
after 3 epochs); convolutions under vmap become one grouped convolution with
M groups whose kernel depends on M, so conv models
agree to float32 rounding; CUDA kernels are fast rather than bit-exact.

Relation to :func:`mia.train.train`: the fallback path calls it with
``config.seed = seeds[m]``, so it gives exactly what that loop gives; the
stacked path draws the same permutations as that loop (without augmentation
it follows the same recipe step for step, with vmapped kernels whose rounding
differs), and with augmentation it draws each model's crop offsets and flips
once per epoch instead of once per batch: the same distribution, a different
stream.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from mia.data.augment import PADDING, crop_flip_at
from mia.data.base import Dataset
from mia.errors import Diverged, MiaError
from mia.models import build_model, model_spec
from mia.train.config import TrainConfig
from mia.train.loop import (OPTIMIZERS, SCHEDULES, autocast_on, batches_per_epoch, check_recipe, compile_for_cuda,
                            fused_on, resident, train)
from mia.train.predict import resolve_device

__all__ = ["CPU_STACK_BYTES", "CPU_STACK_MAX_PARAMS", "CUDA_STACK_FRACTION", "default_max_stack", "module_stackable",
           "stack_pays", "stackable", "train_many", "vmap_runs"]

CPU_STACK_BYTES = 2 << 30
"""Memory budget of one stack of models on the CPU (2 GiB): plenty for the small models that stack."""

CPU_STACK_MAX_PARAMS = 500_000
"""On the CPU, models with more parameters than this train one by one, not stacked.

A CPU step is mostly arithmetic already, so stacking saves only the fixed
cost per step, and a large model's step is large matmuls either way; its
stacked state costs memory (parameters x M x 4 bytes, five times over).
Measured on 2 cores (``benchmarks/pool_throughput.py``, RESULTS.md), stacked
against one after another: the digits ``mlp`` (50k parameters) about 2.3x,
the Purchase ``mlp`` and ``cnn-small`` (about 200k) 1.05-1.3x, the Purchase
``fc`` net (1.3M) 0.8-1.0x. On CUDA, where a small model's step is
kernel-launch latency, stackable models always stack."""

CUDA_STACK_FRACTION = 0.5
"""Share of the GPU memory free at the start that one stack of models may use."""

_NORMS_WITH_STATS = (nn.modules.batchnorm._NormBase,)
"""Normalization layers with running statistics: they stack only when asked (``stack=True``), see below."""

_DROPOUT = (nn.modules.dropout._DropoutNd,)
"""Randomness vmap would share across models or refuse: never stacked."""

_PROBE_SHAPES = {"image": (3, 32, 32), "tabular": (600,)}
"""Input shapes used to build a model only to look at its modules (on the meta device: no memory)."""

Params = dict[str, torch.Tensor]
Trained = Callable[[int, nn.Module], None]  # (index of the model in the call, the trained model)


def train_many(model_name: str, input_shape: Sequence[int], num_classes: int, norm: str, data: Dataset,
               train_sets: np.ndarray, val_idx: np.ndarray | None, config: TrainConfig,
               seeds: Sequence[int], progress: bool = True, max_stack: int | None = None,
               stack: bool | None = None, on_trained: Trained | None = None, keep: bool = True) -> list[nn.Module]:
    """Train one ``model_name`` per row of ``train_sets``; model ``m`` is seeded with ``seeds[m]``.

    ``train_sets`` is ``M x n``: row ``m`` holds the dataset indices model
    ``m`` trains on (every model the same number of rows). ``val_idx`` is the
    shared validation set; with ``config.select_best`` each model keeps the
    weights of its own best validation epoch. ``config.seed`` is ignored in
    favour of ``seeds``. With ``stack=None`` models train stacked where they
    can (:func:`stackable`) and it pays on the device (:func:`stack_pays`),
    at most ``max_stack`` at a time (default: :func:`default_max_stack`), and
    one after another on one reused module otherwise (see the module
    docstring); ``stack=True`` (BatchNorm models included) or ``False``
    picks the path. Returns M
    ordinary modules in eval mode on ``config.device``.

    ``on_trained(m, model)`` is called as each model is done, in order (a
    stack's models when the stack is), so that a caller keeps what is trained
    before the rest train: a reference pool killed at model 50 of 64 keeps 50.
    With ``keep=False`` the models are only handed to ``on_trained`` and an
    empty list is returned, so that memory holds one model (or one stack) at a
    time however many train: a pool of 256 ResNet-18s would otherwise hold
    11 GB of weights until the last is done.
    """
    sets, seeds = _check_sets(data, train_sets, seeds)
    check_recipe(config)
    if max_stack is not None and max_stack < 1:
        raise MiaError(f"max_stack must be >= 1, got {max_stack}")
    if config.select_best and (val_idx is None or len(val_idx) == 0):
        raise MiaError("select_best needs validation rows: pass val_idx, or set select_best=False")
    shape = tuple(int(s) for s in input_shape)
    first = _init_model(model_name, shape, num_classes, norm, seeds[0])
    device = resolve_device(config.device)
    if not _use_stack(first, model_name, norm, device, stack, shape):
        return _train_one_by_one(first, model_name, shape, num_classes, norm, data, sets, val_idx, config,
                                 seeds, progress, on_trained, keep)
    chunk = max_stack or default_max_stack(first, shape, config.batch_size, device)
    pool = _Pool.of(data, sets, val_idx, device)
    models = []
    for start in range(0, len(seeds), chunk):
        stop = min(start + chunk, len(seeds))
        built = [first if m == 0 else _init_model(model_name, shape, num_classes, norm, seeds[m])
                 for m in range(start, stop)]
        label = f"train {start}-{stop - 1} of {len(seeds)}" if len(seeds) > 1 else "train"
        first = None  # held past its stack only through ``models``
        trained = _train_stack(built, pool, data, range(start, stop), config, seeds[start:stop], progress, label)
        for m, model in zip(range(start, stop), trained):
            if on_trained is not None:
                on_trained(m, model)
        if keep:
            models += trained
        del built, trained, model  # before the next stack trains
    return models


@lru_cache(maxsize=None)
def stackable(model_name: str, norm: str) -> bool:
    """Whether ``model_name`` with ``norm`` trains stacked: no buffers, no BatchNorm, no dropout.

    Decided by building the model on the meta device (no memory, no
    initialization cost) and looking at its modules, so a new architecture
    needs no flag: with ``norm="gn"`` and vmap-safe layers it stacks. The
    probe has a standard input shape (3x32x32 images, 600 features); where
    the model is built already, ask :func:`module_stackable` (a user's own
    model may need another shape).
    """
    shape = _PROBE_SHAPES[model_spec(model_name).kinds[0]]
    with torch.device("meta"):
        return module_stackable(build_model(model_name, shape, 10, norm))


def stack_pays(model: nn.Module, device: torch.device) -> bool:
    """Whether stacking speeds ``model`` up on ``device``.

    Always on CUDA; on the CPU up to :data:`CPU_STACK_MAX_PARAMS` parameters.
    """
    return device.type != "cpu" or sum(p.numel() for p in model.parameters()) <= CPU_STACK_MAX_PARAMS


def default_max_stack(model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                      device: torch.device) -> int:
    """How many copies of ``model`` one stack holds: a memory budget over the cost of one model.

    One model costs its parameters five times (weights, gradients, two Adam
    moments, the best-epoch copy) plus three times the activations of a batch
    (forward outputs, saved tensors, their gradients), in float32. The budget
    is :data:`CPU_STACK_BYTES` on the CPU and :data:`CUDA_STACK_FRACTION` of
    the free GPU memory on CUDA, counting as free what torch's caching
    allocator holds unused (an earlier stack's blocks, which it reuses; the
    driver sees them as taken, so later stacks of a process shrank). At least
    one model, at most 256.
    """
    params = sum(p.numel() for p in model.parameters())
    per_model = 4 * (5 * params + 3 * batch_size * _activations_per_sample(model, input_shape))
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = CUDA_STACK_FRACTION * (torch.cuda.mem_get_info(device)[0] + cached)
    else:
        budget = CPU_STACK_BYTES
    return int(min(256, max(1, budget // per_model)))


# ---------------------------------------------------------------- checks and models


def _check_sets(data: Dataset, train_sets: np.ndarray, seeds: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """``train_sets`` as an int64 ``M x n`` array of valid rows, one seed per row."""
    sets = np.asarray(train_sets)
    seeds = [int(s) for s in seeds]
    if sets.ndim != 2 or not np.issubdtype(sets.dtype, np.integer):
        raise MiaError(f"train_sets must be an integer array of shape M x n (one row of dataset indices per "
                       f"model), got shape {sets.shape} of {sets.dtype}")
    if len(seeds) == 0 or len(seeds) != len(sets):
        raise MiaError(f"need one seed per model: {len(sets)} train sets but {len(seeds)} seeds")
    if sets.shape[1] == 0:
        raise MiaError("no training rows: train_sets has 0 columns; pass the indices each model trains on")
    if sets.min() < 0 or sets.max() >= len(data):
        raise MiaError(f"train_sets holds indices outside 0..{len(data) - 1} of dataset {data.name!r}")
    return sets.astype(np.int64), seeds


def _init_model(model_name: str, shape: tuple[int, ...], num_classes: int, norm: str, seed: int) -> nn.Module:
    """``build_model`` on the CPU after seeding torch with ``seed``, leaving the caller's RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_name, shape, num_classes, norm)


def module_stackable(model: nn.Module, batchnorm: bool = False) -> bool:
    """No dropout, and no buffers, except BatchNorm's running statistics where ``batchnorm`` allows them.

    Stacked BatchNorm (each model's running statistics a slice of a stacked
    buffer, updated in place under vmap) gives each model what it gets alone;
    it is not the default because on a GPU it has not been measured against
    the compiled one-by-one path yet (``benchmarks/wrn_pool.py``).
    """
    modules = list(model.modules())
    if any(isinstance(m, _DROPOUT) for m in modules):
        return False
    norms = [m for m in modules if isinstance(m, _NORMS_WITH_STATS)]
    if norms and not batchnorm:
        return False
    allowed = {id(b) for m in norms for b in m.buffers(recurse=False)}
    return all(id(b) in allowed for b in model.buffers())


def vmap_runs(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether ``model``'s forward runs under ``torch.vmap`` over stacked copies of it, as a stacked step runs it.

    The module tree cannot tell: a user's own model may branch on its activations (``if h.mean() > t``) or
    call ``.item()``, which vmap refuses, and such a model crashed the stacked pool with a traceback; it
    trains one by one instead. One forward of two copies on two zero inputs, on a copy of the model,
    without gradients and under a forked RNG (the caller's draws and BatchNorm statistics untouched).
    """
    probe = copy.deepcopy(model)
    params, buffers = stack_module_state([probe, probe])
    device = next(probe.parameters(), torch.zeros(0)).device

    def one(p: Params, b: Params, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(probe, (p, b), (xb,))

    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.vmap(one, randomness="different")(params, buffers, torch.zeros((2, 2, *shape), device=device))
    except Exception:
        return False
    return True


def _use_stack(model: nn.Module, model_name: str, norm: str, device: torch.device, stack: bool | None,
               shape: tuple[int, ...]) -> bool:
    """The path :func:`train_many` takes: the caller's ``stack``, or where it can and it pays."""
    if stack is None:
        return module_stackable(model) and stack_pays(model, device) and vmap_runs(model, shape)
    if stack and not module_stackable(model, batchnorm=True):
        raise MiaError(f"model {model_name!r} with norm {norm!r} cannot train stacked (it has dropout or "
                       f"buffers other than BatchNorm's); pass stack=None to train it one by one")
    if stack and not vmap_runs(model, shape):
        raise MiaError(f"model {model_name!r} cannot train stacked: its forward fails under torch.vmap "
                       "(data-dependent control flow, .item()); pass stack=None to train it one by one")
    return stack


def _activations_per_sample(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Elements output by the leaf modules of ``model`` for one zero input, on the model's own device.

    Counted by hooks on a real one-sample forward: cheap for the models that
    stack, and unlike a meta-device forward it needs no decompositions
    imported (seconds, once per process). The input goes where the model's
    weights are: :func:`train_many` asks with a model still on the CPU, but a
    federation's :class:`mia.fl.clients.StackedClients` with its global model
    already on CUDA, where a CPU input failed the forward.
    """
    total = 0
    device = next(model.parameters(), next(model.buffers(), torch.zeros(0))).device

    def count(module: nn.Module, args, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if next(m.children(), None) is None]
    training = model.training
    model.eval()  # a training-mode forward would move BatchNorm's running statistics of this model
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return max(total, 1)


# ---------------------------------------------------------------- fallback: one module, reloaded


def _train_one_by_one(model: nn.Module, model_name: str, shape: tuple[int, ...], num_classes: int, norm: str,
                      data: Dataset, sets: np.ndarray, val_idx: np.ndarray | None, config: TrainConfig,
                      seeds: list[int], progress: bool, on_trained: Trained | None = None,
                      keep: bool = True) -> list[nn.Module]:
    """:func:`mia.train.train` per model on ``model``, reloaded with each model's initialization.

    The reused module keeps one compiled graph (``config.compile`` on CUDA)
    for all models; each result is copied into the freshly initialized module
    that supplied its starting weights.
    """
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    image = data.kind == "image" and data.x.dim() == 4
    memory_format = torch.channels_last if cuda and image and config.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    forward = compile_for_cuda(model) if cuda and config.compile else None
    models = []
    for m in _bar(range(len(seeds)), progress, "train one by one", "model"):
        fresh = _init_model(model_name, shape, num_classes, norm, seeds[m])
        model.load_state_dict(fresh.state_dict())
        train(model, data, sets[m], val_idx, replace(config, seed=seeds[m]), progress=False, forward=forward)
        fresh.to(device=device, memory_format=memory_format).load_state_dict(model.state_dict())
        fresh.eval()
        if on_trained is not None:
            on_trained(m, fresh)
        if keep:
            models.append(fresh)
        del fresh
    return models


# ---------------------------------------------------------------- stacked: vmap over the model dimension


@dataclass
class _Pool:
    """The rows any model trains on and the validation rows, on the device once for all chunks.

    ``sets`` holds each model's rows as positions in ``x``/``y``, so a batch of
    all models is one gather from one resident tensor.
    """

    x: torch.Tensor
    y: torch.Tensor
    sets: torch.Tensor  # M x n positions in x/y
    x_val: torch.Tensor
    y_val: torch.Tensor

    @staticmethod
    def of(data: Dataset, sets: np.ndarray, val_idx: np.ndarray | None, device: torch.device) -> "_Pool":
        rows, local = np.unique(sets, return_inverse=True)
        x, y = resident(data, rows, device)
        x_val, y_val = resident(data, val_idx, device)
        return _Pool(x, y, torch.as_tensor(local.reshape(sets.shape), device=device), x_val, y_val)


def _train_stack(models: list[nn.Module], pool: _Pool, data: Dataset, which: range, config: TrainConfig,
                 seeds: list[int], progress: bool, label: str) -> list[nn.Module]:
    """Train ``models`` (models ``which`` of the run) stacked; returns them trained, in eval mode."""
    device = pool.x.device
    sets = pool.sets[which.start:which.stop]
    stack = _Stack(models, config, sets.shape[1], device)
    augment = config.augment and data.augment and data.kind == "image" and pool.x.dim() == 4
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    epochs = _bar(range(config.epochs_run), progress, label, "epoch")
    for epoch in epochs:
        train_loss = _train_epoch(stack, pool, data, sets, generators, augment, config.batch_size)
        _check_finite(train_loss, which, epoch, config)
        postfix = {"loss": f"{train_loss.mean():.3f}"}
        if config.select_best:
            correct = stack.val_correct(pool, data, 2 * config.batch_size)
            stack.keep_best(correct)
            acc = correct.cpu().double() / len(pool.y_val)  # one more read per epoch, never per step
            postfix["val"] = f"{acc.min():.3f}-{acc.max():.3f}"
        if progress:
            epochs.set_postfix(postfix)
    return [stack.unstack(model, i) for i, model in enumerate(models)]


def _train_epoch(stack: "_Stack", pool: _Pool, data: Dataset, sets: torch.Tensor,
                 generators: list[torch.Generator], augment: bool, batch_size: int) -> torch.Tensor:
    """One epoch of every model in ``stack``; its mean training loss per model, read back once."""
    k, n = sets.shape
    positions, views = _epoch_draws(generators, n, augment, sets.device)
    order = sets.gather(1, positions)  # M x n positions in the pool, in this epoch's order
    loss_sum, seen = torch.zeros(k, device=sets.device), 0
    for s in range(batches_per_epoch(n, batch_size)):
        cols = slice(s * batch_size, (s + 1) * batch_size)
        rows = order[:, cols]
        xb = pool.x[rows.reshape(-1)]
        if augment:
            xb = crop_flip_at(xb, *(v[:, cols].reshape(-1) for v in views))
        loss_sum += stack.step(data.inputs(xb).view(*rows.shape, *xb.shape[1:]), pool.y[rows]) * rows.shape[1]
        seen += rows.shape[1]
    return loss_sum.cpu() / seen  # the host sync of the epoch


class _Stack:
    """M models of one architecture as stacked parameters, one optimizer and one vmapped forward.

    ``params[name]`` is ``M x *shape`` (and ``buffers[name]``, BatchNorm's
    running statistics where ``stack=True`` stacks them); ``functional_call``
    runs the module (kept on the meta device: structure only) with slice m of
    every tensor under ``torch.vmap``. The optimizer is the registry's, fused as in
    :func:`mia.train.train` (one kernel over the stacked state: on 2 CPU cores a
    step of 32 digits ``mlp`` models costs 8.9 ms against 12.0 ms unfused).
    """

    def __init__(self, models: list[nn.Module], config: TrainConfig, n: int, device: torch.device):
        self.amp = autocast_on(device, config)
        params, buffers = stack_module_state(models)
        # frozen parameters (requires_grad=False: a fixed or pretrained part) stay frozen, as the one loop
        # trains only the others: stacked reference models trained them, and no longer imitated the target
        trainable = {name for name, p in models[0].named_parameters() if p.requires_grad}
        self.params: Params = {name: p.detach().to(device).requires_grad_(name in trainable)
                               for name, p in params.items()}
        # BatchNorm's running statistics (stack=True only): updated in place, slice m by model m's batches
        self.buffers: Params = {name: b.to(device) for name, b in buffers.items()}
        self.base = base = copy.deepcopy(models[0]).to("meta")

        def one(p: Params, b: Params, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(base, (p, b), (xb,))

        self.forward = torch.vmap(one)  # each model its own batch
        self.forward_shared = torch.vmap(one, in_dims=(0, 0, None))  # every model on the same rows
        self.optimizer = OPTIMIZERS.get(config.optimizer)([p for p in self.params.values() if p.requires_grad],
                                                          config, fused_on(device))
        schedule = SCHEDULES.get(config.schedule)
        total = batches_per_epoch(n, config.batch_size) * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: schedule(s / total))
        self.best: Params = {}
        self.best_correct = torch.full((len(models),), -1, dtype=torch.long, device=device)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step of every model on its batch (``xb``: ``M x B x ...``); the M losses, detached."""
        k, b = yb.shape
        self.base.train()
        with torch.autocast(yb.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.forward(self.params, self.buffers, xb)
            losses = F.cross_entropy(logits.flatten(0, 1), yb.reshape(-1), reduction="none").view(k, b).mean(1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # model m's gradient is that of its own mean loss: the others do not touch it
        self.optimizer.step()
        self.scheduler.step()
        return losses.detach()

    @torch.no_grad()
    def val_correct(self, pool: _Pool, data: Dataset, batch_size: int) -> torch.Tensor:
        """Correct validation predictions per model (``M`` longs, left on the device).

        ``batch_size`` rows at a time for all M models: twice the training
        batch, without the backward pass, stays inside the memory that
        :func:`default_max_stack` budgets for training.
        """
        correct = torch.zeros_like(self.best_correct)
        self.base.eval()  # BatchNorm on its running statistics, which stay as they are
        for s in range(0, len(pool.y_val), batch_size):
            xb = data.inputs(pool.x_val[s:s + batch_size])
            with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.forward_shared(self.params, self.buffers, xb)
            correct += (logits.argmax(-1) == pool.y_val[s:s + batch_size]).sum(1)
        return correct

    @torch.no_grad()
    def keep_best(self, correct: torch.Tensor) -> None:
        """Copy the current slice of each model that beats its best validation count so far.

        A strict improvement, as in :func:`mia.train.train`: ties keep the earlier epoch.
        """
        better = correct > self.best_correct
        self.best_correct = torch.where(better, correct, self.best_correct)
        for name, p in {**self.params, **self.buffers}.items():
            mask = better.view(-1, *[1] * (p.dim() - 1))
            self.best[name] = torch.where(mask, p, self.best[name]) if name in self.best else p.clone()

    def unstack(self, model: nn.Module, i: int) -> nn.Module:
        """``model`` on the stack's device holding model ``i``'s kept weights, in eval mode.

        The kept weights are the best epoch's when :meth:`keep_best` ran, else the last.
        """
        source = self.best or {**self.params, **self.buffers}
        model.to(next(iter(source.values())).device)
        model.load_state_dict({name: t[i].detach() for name, t in source.items()})
        return model.eval()


def _epoch_draws(generators: list[torch.Generator], n: int, augment: bool,
                 device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Each model's permutation of its n rows (``M x n``) and, with augmentation, its crop/flip draws.

    Every draw comes from that model's generator, in a fixed order per epoch,
    so no model's stream depends on how many models share the stack.
    """
    perms, dys, dxs, flips = [], [], [], []
    for g in generators:
        perms.append(torch.randperm(n, generator=g, device=device))
        if augment:
            dys.append(torch.randint(0, 2 * PADDING + 1, (n,), generator=g, device=device))
            dxs.append(torch.randint(0, 2 * PADDING + 1, (n,), generator=g, device=device))
            flips.append(torch.randint(0, 2, (n,), generator=g, device=device).bool())
    views = (torch.stack(dys), torch.stack(dxs), torch.stack(flips)) if augment else ()
    return torch.stack(perms), views


def _check_finite(train_loss: torch.Tensor, which: range, epoch: int, config: TrainConfig) -> None:
    bad = [which.start + i for i, v in enumerate(train_loss.tolist()) if not math.isfinite(v)]
    if bad:
        raise Diverged(f"training diverged (non-finite loss for model(s) {bad} in epoch {epoch}); lower the "
                       f"learning rate (lr={config.lr})")


def _bar(items: range, progress: bool, desc: str, unit: str):
    """A tqdm bar over ``items`` when ``progress``, else ``items`` themselves."""
    if not progress:
        return items
    from tqdm.auto import tqdm  # only here: the core must import without tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False)
