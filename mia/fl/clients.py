"""Local training of a round's clients: all at once (stacked weights) or one reused module in turn.

FedAvg's clients all start a round from the same global weights and run
``local_epochs`` epochs of SGD on their own rows (fresh optimizer state each
round, as in McMahan et al. 2017). Two ways, one result:

* :class:`StackedClients` (models without buffers, no defense batch/loss
  hook, and on the CPU only small federations: :data:`CPU_STACK_PARAMS`): the K clients' weights are stacked and
  one ``torch.vmap`` over ``torch.func.functional_call`` runs every client's
  step at once. Clients hold different numbers of rows, so each step gives
  every client a batch of ``batch_size`` slots with a validity mask: a
  client's last partial batch is a masked full one, and a client that has
  finished its epoch idles (its weights and momentum untouched) while larger
  clients finish theirs. Each client's gradient is that of its own mean loss.
  SGD with momentum and weight decay is written out (elementwise, masked), so
  it equals ``torch.optim.SGD`` on each client. Large rounds run in chunks of
  clients (:data:`STACK_CHUNK_PARAMS`), so memory stays bounded.
* :class:`LoopClients` (BatchNorm models, defenses with batch or loss hooks
  such as mixup and InstaHide, large models on the CPU): the one loop
  :func:`mia.train.train` on ONE module object and ONE optimizer object,
  built once for the federation; each client reloads the global weights into
  the module and starts the optimizer from cleared state (no rebuild per
  client step).

Both draw client ``k``'s permutations from a generator seeded with
``seeds[k]`` (a function of the run seed, the round and the client), so a
round's result does not depend on which clients share it or on a restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mia.data.augment import crop_flip
from mia.data.base import Dataset
from mia.errors import Diverged
from mia.train import TrainConfig, TrainHooks, make_optimizer, resolve_device, train
from mia.train.loop import autocast_on, compile_for_cuda
from mia.train.many import default_max_stack

Params = dict[str, torch.Tensor]

CPU_STACK_PARAMS = 2_000_000
"""On the CPU, a round's clients train stacked only if their parameters together stay below this.

Measured on 2 cores (``benchmarks/fl_round.py``, RESULTS.md): 20 digits
``mlp`` clients (1.0M stacked parameters) 1.5-2.4x faster stacked than in
turn; 50 purchase ``mlp`` clients (10M) 0.7-1.05x, each client's step being
matmul work either way. On CUDA every stackable federation stacks."""

STACK_CHUNK_PARAMS = 250_000_000
"""At most this many parameters train stacked at once: larger rounds run in chunks of clients.

Memory grows with the clients of a chunk (their weights, gradients, momentum
and activations): 100 stacked ResNet-18 clients at batch 64 ran an 80 GB H100
out of memory, while chunks of 22 take a fraction of it. Activations bound a
chunk too (:func:`mia.train.many.default_max_stack`: a memory budget over
weights and a batch's activations, which dominate for small conv nets such as
WRN-28-2, 170 clients by parameters alone). A chunk's clients are
independent of the other chunks' (own data, own generators, augmentation
drawn for each client's real rows only), so the
result does not depend on the chunking."""


@dataclass
class LocalResult:
    """The round's local models, as ``w_local - w_global`` flattened per client, and their train accuracy."""

    updates: torch.Tensor  # K x P
    train_accuracy: np.ndarray  # K
    buffers: list[Params] | None = None  # per-client buffers (BatchNorm statistics) of the loop path


def flatten(params: Params) -> tuple[torch.Tensor, list[slice]]:
    """One vector of all parameters (in ``params`` order) and the slice of each tensor in it."""
    layers, start = [], 0
    for p in params.values():
        layers.append(slice(start, start + p.numel()))
        start += p.numel()
    return torch.cat([p.reshape(-1) for p in params.values()]), layers


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    """Inverse of :func:`flatten`, for vectors with optional leading batch dims (``... x P``)."""
    out, start = {}, 0
    lead = vector.shape[:-1]
    for name, p in like.items():
        out[name] = vector[..., start:start + p.numel()].reshape(*lead, *p.shape)
        start += p.numel()
    return out


def _batches(sizes: list[int], batch_size: int, generators: list[torch.Generator], device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per client, one epoch of positions padded to a common number of full batches: ``(pos, valid, steps)``.

    A lone final row is left out, as :func:`mia.train.train` does (a batch of one).
    """
    used = valid_rows(sizes, batch_size)
    steps = max(math.ceil(n / batch_size) for n in used)
    pos = torch.zeros(len(sizes), steps * batch_size, dtype=torch.long, device=device)
    valid = torch.zeros(len(sizes), steps * batch_size, dtype=torch.bool, device=device)
    for k, (n, m, g) in enumerate(zip(sizes, used, generators)):
        pos[k, :m] = torch.randperm(n, generator=g, device=g.device)[:m].to(device)
        valid[k, :m] = True
    return pos, valid, steps


def valid_rows(sizes: list[int], batch_size: int) -> list[int]:
    return [n - 1 if n > batch_size and n % batch_size == 1 else n for n in sizes]


class StackedClients:
    """All of a round's clients in one vmapped step; see the module docstring."""

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig):
        self.model, self.data, self.config = model, data, config
        self.device = next(model.parameters()).device
        self.augment = config.augment and data.augment and data.kind == "image" and data.x.dim() == 4
        self.amp = autocast_on(self.device, config)  # bf16 on CUDA, as the loop path trains
        # activations bound a chunk too, not only parameters (a small conv net's dominate)
        self.max_stack = default_max_stack(model, data.input_shape, config.batch_size, self.device)

        def one(params: Params, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, params, (x,))

        self.forward = torch.vmap(one)

    def run(self, global_params: Params, client_rows: list[np.ndarray], seeds: list[int], epochs: int,
            max_params: int = STACK_CHUNK_PARAMS) -> LocalResult:
        """Every client's local training, in chunks of at most ``max_params`` stacked parameters."""
        per_client = sum(p.numel() for p in global_params.values())
        size = max(1, min(max_params // per_client, self.max_stack))
        parts = [self._run_chunk(global_params, client_rows[i:i + size], seeds[i:i + size], epochs)
                 for i in range(0, len(client_rows), size)]
        return LocalResult(torch.cat([r.updates for r in parts]), np.concatenate([r.train_accuracy for r in parts]))

    def _run_chunk(self, global_params: Params, client_rows: list[np.ndarray], seeds: list[int], epochs: int
                   ) -> LocalResult:
        k, b, cfg = len(client_rows), self.config.batch_size, self.config
        frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}  # as the loop path keeps them
        params = {n: p.detach().unsqueeze(0).repeat(k, *([1] * p.dim())).requires_grad_(n not in frozen)
                  for n, p in global_params.items()}
        trained = {n: p for n, p in params.items() if p.requires_grad}
        momentum = {n: torch.zeros_like(p) for n, p in params.items()}
        generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        sizes = [len(r) for r in client_rows]
        rows = torch.zeros(k, max(sizes), dtype=torch.long, device=self.data.x.device)
        for i, r in enumerate(client_rows):
            rows[i, :len(r)] = torch.as_tensor(r, device=rows.device)
        correct = torch.zeros(k, device=self.device)
        used = valid_rows(sizes, b)
        self.model.train()
        for _ in range(epochs):
            pos, valid, steps = _batches(sizes, b, generators, self.device)
            correct.zero_()
            loss_sum = torch.zeros((), device=self.device)
            for s in range(steps):
                cols = slice(s * b, (s + 1) * b)
                idx = torch.gather(rows.to(self.device), 1, pos[:, cols]).to(self.data.x.device)
                raw = self.data.x[idx.reshape(-1)]
                if self.augment:  # each client's crops from its own generator, for its real rows only:
                    # the draws (and the next epoch's permutation) are then those of the loop path
                    counts = [min(max(m - s * b, 0), b) for m in used]
                    raw = torch.cat([torch.cat([crop_flip(chunk[:v], generator=g), chunk[v:]]) if v else chunk
                                     for chunk, g, v in zip(raw.split(b), generators, counts)])
                x = self.data.inputs(raw.to(self.device)).reshape(k, b, *raw.shape[1:])
                y = self.data.y[idx.reshape(-1)].to(self.device).reshape(k, b)
                mask = valid[:, cols].float()
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    logits = self.forward(params, x)
                ce = F.cross_entropy(logits.reshape(k * b, -1).float(), y.reshape(-1), reduction="none").reshape(k, b)
                loss = ((ce * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()
                grads = torch.autograd.grad(loss, list(trained.values()))
                loss_sum += loss.detach()
                active = (mask.sum(1) > 0).float()
                correct += ((logits.argmax(-1) == y).float() * mask).sum(1).detach()
                with torch.no_grad():
                    for (name, p), g in zip(trained.items(), grads):
                        on = active.view(-1, *([1] * (p.dim() - 1)))
                        g = g + cfg.weight_decay * p
                        buf = momentum[name]
                        buf.copy_(torch.where(on > 0, cfg.momentum * buf + g, buf))
                        step = buf if cfg.momentum else g
                        p.sub_(cfg.lr * on * step)
            if not math.isfinite(loss_sum.item()):  # one host sync per epoch, as the loop path checks
                raise Diverged(f"federated local training diverged (loss {loss_sum.item()}); lower --local-lr "
                               f"(lr={cfg.lr})")
        self.model.eval()
        local = {n: p.detach() for n, p in params.items()}
        glob, _ = flatten(global_params)
        stacked = torch.cat([p.reshape(k, -1) for p in local.values()], 1)
        seen = valid_rows(sizes, b)
        accuracy = (correct / torch.as_tensor(seen, device=self.device, dtype=torch.float32)).cpu().numpy()
        return LocalResult(stacked - glob, accuracy)


class LoopClients:
    """Clients in turn on one module object and :func:`mia.train.train`; see the module docstring."""

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig, hooks: TrainHooks | None = None):
        self.model, self.data, self.hooks = model, data, hooks
        self.recipe = replace(config, optimizer="sgd", schedule="constant", select_best=False, nesterov=False)
        device = resolve_device(config.device)
        self.model.to(device)
        self.optimizer = make_optimizer(self.model, self.recipe)  # reused by every client of every round
        # one compiled module for the federation (weights are reloaded in place), not one per client
        self.forward = compile_for_cuda(self.model) if device.type == "cuda" and config.compile else None

    def run(self, global_params: Params, client_rows: list[np.ndarray], seeds: list[int], epochs: int,
            global_buffers: Params | None = None, hooks: list[TrainHooks | None] | None = None) -> LocalResult:
        """``hooks[k]`` (if given) replaces the constructor's hooks for client ``k`` (defenses acting on some clients)."""
        glob, _ = flatten(global_params)
        updates, accuracy, buffers = [], [], []
        recipe = replace(self.recipe, epochs=epochs)
        for k, (rows, seed) in enumerate(zip(client_rows, seeds)):
            client_hooks = self.hooks if hooks is None else hooks[k]
            with torch.no_grad():
                self.model.load_state_dict({**global_params, **(global_buffers or {})}, strict=False)
            result = train(self.model, self.data, rows, None, replace(recipe, seed=int(seed)), progress=False,
                           forward=self.forward, hooks=client_hooks, optimizer=self.optimizer)
            named = dict(self.model.named_parameters())
            local, _ = flatten({n: named[n].detach() for n in global_params})
            updates.append(local - glob)
            accuracy.append(result.history[-1]["train_accuracy"])
            buffers.append({n: b.detach().clone() for n, b in self.model.named_buffers()})
        return LocalResult(torch.stack(updates), np.asarray(accuracy, dtype=np.float64), buffers)
