"""How fast can stacking make a small MLP's step on this CPU? The ceiling behind the pool's 5x goal.

``benchmarks/pool_throughput.py`` measures whole pools; this script takes one
training step of the digits ``mlp`` (64-256-128-10, ReLU, Adam, batch 64)
for M=32 models apart, so that the stacked step's cost can be split into its
floor and the rest. Per step of all M models, in the same process:

* one after another: M steps of one ``mlp`` module with mia's fused Adam
  (the per-step work of ``mia.train.train``, without its epoch bookkeeping);
* stacked (mia): ``mia.train.many._Stack.step``, the vmapped step that
  ``train_many`` runs;
* stacked by hand: the same step written without autograd, with one
  ``baddbmm``/``bmm`` per layer and direction, preallocated outputs and one
  fused Adam over a single flat parameter buffer: about the least work a
  stacked fp32 step can do with torch's kernels;
* the matmuls alone: the eight batched matmuls of that step (forward and
  backward), the floor no stacking scheme goes below in float32.

The ratio column is "one after another" over each row. If even the
hand-written step cannot reach 5x, no stacking scheme of ours will on this
CPU in float32: the remaining lever is bf16 (``--cpu-bf16``) or a GPU, where
a small model's step is launch latency (``pool_throughput.py --device cuda``).

    python benchmarks/stack_ceiling.py [--models 32] [--steps 100] [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, publish  # noqa: E402

from mia.models import build_model  # noqa: E402
from mia.train import TrainConfig  # noqa: E402
from mia.train.loop import make_optimizer  # noqa: E402
from mia.train.many import _Stack  # noqa: E402

SHAPE, CLASSES, BATCH, ROWS = (1, 8, 8), 10, 64, 650
CONFIG = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=BATCH, device="cpu")


def one_after_another(x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """M steps of one module each (mia's per-step work: gather, forward, loss, backward, fused Adam)."""
    nets = [build_model("mlp", SHAPE, CLASSES, "bn") for _ in range(len(x))]
    optimizers = [make_optimizer(net, CONFIG) for net in nets]

    def step() -> None:
        for net, optimizer, xm, ym in zip(nets, optimizers, x, y):
            idx = torch.randint(0, ROWS, (BATCH,))
            loss = F.cross_entropy(net(xm[idx]), ym[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return step


def stacked_mia(x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """``train_many``'s step: stacked parameters, ``torch.vmap`` over ``functional_call``."""
    stack = _Stack([build_model("mlp", SHAPE, CLASSES, "bn") for _ in range(len(x))], CONFIG, ROWS,
                   torch.device("cpu"))

    def step() -> None:
        idx = torch.randint(0, ROWS, (BATCH,))
        stack.step(x[:, idx], y[:, idx])
    return step


class ByHand:
    """The stacked step without autograd: the least work torch's kernels allow in float32."""

    def __init__(self, m: int):
        dims = [SHAPE[0] * SHAPE[1] * SHAPE[2], 256, 128, CLASSES]
        shapes = [s for i, o in zip(dims, dims[1:]) for s in ((i, o), (o,))]  # W stored in x out: x @ W
        sizes = [m * torch.Size(s).numel() for s in shapes]
        self.flat = torch.randn(sum(sizes)) * 0.05
        self.flat.grad = torch.zeros_like(self.flat)
        self.params = [t.view(m, *s) for t, s in zip(self.flat.split(sizes), shapes)]
        self.grads = [t.view(m, *s) for t, s in zip(self.flat.grad.split(sizes), shapes)]
        self.optimizer = torch.optim.Adam([self.flat], lr=CONFIG.lr, fused=True)
        self.h = [torch.empty(m, BATCH, d) for d in dims[1:]]  # activations, logits last
        self.g = [torch.empty(m, BATCH, d) for d in dims[1:-1]]  # gradients of the hidden activations
        self.minus_one = torch.full((m, BATCH, 1), -1.0)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, matmuls_only: bool = False) -> None:
        (w1, b1, w2, b2, w3, b3), (gw1, gb1, gw2, gb2, gw3, gb3) = self.params, self.grads
        (h1, h2, logits), (g1, g2) = self.h, self.g
        torch.baddbmm(b1.unsqueeze(1), xb, w1, out=h1)
        torch.baddbmm(b2.unsqueeze(1), h1 if matmuls_only else h1.relu_(), w2, out=h2)
        torch.baddbmm(b3.unsqueeze(1), h2 if matmuls_only else h2.relu_(), w3, out=logits)
        if matmuls_only:
            p = logits
        else:  # d(mean cross-entropy)/d(logits) = (softmax - one-hot) / B
            p = torch.softmax(logits, -1).scatter_add_(-1, yb.unsqueeze(-1), self.minus_one).mul_(1.0 / BATCH)
        torch.bmm(h2.transpose(1, 2), p, out=gw3)
        torch.bmm(p, w3.transpose(1, 2), out=g2)
        torch.bmm(h1.transpose(1, 2), g2 if matmuls_only else g2.mul_(h2 > 0), out=gw2)
        torch.bmm(g2, w2.transpose(1, 2), out=g1)
        torch.bmm(xb.transpose(1, 2), g1 if matmuls_only else g1.mul_(h1 > 0), out=gw1)
        if not matmuls_only:
            for g, gb in ((p, gb3), (g2, gb2), (g1, gb1)):
                torch.sum(g, 1, out=gb)
            self.optimizer.step()


def by_hand(x: torch.Tensor, y: torch.Tensor, matmuls_only: bool = False) -> Callable[[], None]:
    net = ByHand(len(x))
    flat_x = x.flatten(2)

    def step() -> None:
        idx = torch.randint(0, ROWS, (BATCH,))
        net.step(flat_x[:, idx], y[:, idx], matmuls_only)
    return step


WAYS: dict[str, Callable[[torch.Tensor, torch.Tensor], Callable[[], None]]] = {
    "one after another (mia.train's step, M times)": one_after_another,
    "stacked (mia: vmap, autograd)": stacked_mia,
    "stacked by hand (no autograd, one flat Adam)": by_hand,
    "the batched matmuls alone (the float32 floor)": lambda x, y: by_hand(x, y, matmuls_only=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=32, help="M, the models stacked")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best kept")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.rand(args.models, ROWS, *SHAPE)
    y = torch.randint(0, CLASSES, (args.models, ROWS))
    steps = {name: make(x, y) for name, make in WAYS.items()}
    load = os.getloadavg()[0]
    best = {name: float("inf") for name in WAYS}
    for _ in range(args.rounds):  # interleaved, so that a burst of load hits every way alike
        for name, step in steps.items():
            step()  # warm-up: kernel selection, first allocations
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps * 1e3)
            print(f"{name}: {best[name]:.2f} ms/step", flush=True)
    base, floor = best[next(iter(WAYS))], best[list(WAYS)[-1]]
    # multiply-adds of the 8 matmuls: 3 weight-sized products per layer, less layer 1's input gradient
    flops = 2 * args.models * BATCH * (3 * (64 * 256 + 256 * 128 + 128 * 10) - 64 * 256)
    rows = ["| way | ms per step of all M models | speed-up over one after another |", "| --- | ---: | ---: |"]
    rows += [f"| {name} | {ms:.2f} | {base / ms:.2f}x |" for name, ms in best.items()]
    text = (f"- date: {dt.date.today().isoformat()}\n- device: {device_name()}\n- torch {torch.__version__}\n"
            f"- 1-minute load average at start: {load:.1f}\n- command: `python benchmarks/stack_ceiling.py`\n"
            f"- digits `mlp` (64-256-128-10), M={args.models}, batch {BATCH}, Adam; the best of {args.rounds} "
            f"interleaved rounds of {args.steps} steps\n\n" + "\n".join(rows) + "\n\n"
            f"Reading: the batched matmuls alone, with nothing else of a step around them, are "
            f"{base / floor:.1f}x one after another: the ceiling of any float32 stacking scheme on this CPU. They "
            f"run at {flops / floor / 1e6:.0f} GFLOP/s, against a float32 peak of about "
            f"{torch.get_num_threads() * 96} GFLOP/s ({torch.get_num_threads()} cores, 32 flops a cycle each at "
            "about 3 GHz): no kernel makes them much faster. Writing the step by hand (no autograd, one Adam "
            "kernel over one buffer) closes part of the gap between mia's step and that floor; the rest is the "
            "elementwise work (ReLU and its mask, softmax, Adam over M times the parameters), which stacking "
            "does not shrink. The 5x goal is a GPU's regime, where a small model's step is launch latency "
            "(`pool_throughput.py --device cuda`: met).\n")
    publish("## The stacked step's ceiling on this CPU", text, not args.no_write)


if __name__ == "__main__":
    main()
