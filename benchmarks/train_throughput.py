"""Training throughput: ``mia.train`` against a torchvision-style DataLoader loop, same process.

Model: CIFAR-style ResNet-18 (``mia.models``) on CIFAR-shaped synthetic data
(uint8 3x32x32, 10 classes), SGD 0.1 / momentum 0.9 / wd 5e-4, batch 128,
crop(32, padding 4) + horizontal flip.

* baseline: float images in host memory, a ``DataLoader`` over them applying
  ``torchvision.transforms`` RandomCrop + RandomHorizontalFlip + Normalize per
  sample, fp32, NCHW, ``loss.item()`` every step (the classic loop);
* ``mia.train``: uint8 data resident on the device, batch crop+flip on the
  device, no per-step host sync; on CUDA bf16 autocast and channels-last, and
  rows with ``torch.compile`` (CUDA graphs: :func:`mia.train.loop.compile_for_cuda`) at the
  recipe's batch and at ``--large-batch``.

Images/s exclude warm-up (the first epoch of ``mia.train``, the first batches
of the baseline). On CUDA the default is the full 50k images; on CPU a small
slice (see ``--images``), which is stated in the results. Needs only torch,
torchvision and numpy besides ``mia`` (GPU images may lack MLflow). The result
replaces this device type's section of ``benchmarks/RESULTS.md``.

    python benchmarks/train_throughput.py [--device auto] [--images N] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, publish, sync  # noqa: E402

from mia.data.base import Dataset  # noqa: E402
from mia.models import build_model  # noqa: E402
from mia.train import TrainConfig, resolve_device, seed_everything, train  # noqa: E402
from mia.train.loop import cpu_has_bf16  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
EPOCH_IMAGES = 50_000
GOAL_SECONDS = 0.6  # one 50k-image epoch on an H100 in bf16


class TransformedTensors(torch.utils.data.Dataset):
    """A TensorDataset whose images go through a per-sample torchvision transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def baseline_images_per_s(x_u8: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int,
                          warmup_batches: int, workers: int) -> float:
    """One timed pass of the classic DataLoader loop after ``warmup_batches`` untimed steps."""
    seed_everything(0)
    model = build_model("resnet18", (3, 32, 32), 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    data = TransformedTensors(x_u8.cpu().float().div(255), y.cpu(), tf)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                         drop_last=True)

    def run(max_batches: int | None) -> int:
        model.train()
        seen, running = 0, 0.0
        for b, (xb, yb) in enumerate(loader):
            if max_batches is not None and b == max_batches:
                break
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
            seen += len(yb)
        return seen

    run(warmup_batches)
    sync(device)
    t0 = time.perf_counter()
    seen = run(None)
    sync(device)
    return seen / (time.perf_counter() - t0)


def mia_images_per_s(x_u8: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int,
                     epochs: int, compile: bool, cpu_bf16: bool = False) -> float:
    """``mia.train`` for ``epochs`` epochs; the rate over all epochs after the first."""
    data = Dataset("synthetic-cifar", x_u8, y, 10, "image", CIFAR_MEAN, CIFAR_STD, augment=True)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=0.1, momentum=0.9,
                         weight_decay=5e-4, schedule="cosine", augment=True, device=str(device),
                         select_best=False, compile=compile, cpu_bf16=cpu_bf16)
    seed_everything(0)
    model = build_model("resnet18", (3, 32, 32), 10)
    result = train(model, data, torch.arange(len(y)), None, config, progress=False)
    timed = result.history[1:]
    return len(y) * len(timed) / sum(h["epoch_time"] for h in timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=None, help="training images (default: 50000 on CUDA, 1024 on CPU)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=None, help="mia.train epochs, the first is warm-up (default: 3 on CUDA, 2 on CPU)")
    parser.add_argument("--workers", type=int, default=None, help="baseline DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows on CUDA")
    parser.add_argument("--large-batch", type=int, default=512, help="batch of the last compiled row on CUDA")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    device = resolve_device(args.device)
    load = os.getloadavg()[0]  # other jobs on the machine skew CPU figures: say so in the result
    cuda = device.type == "cuda"
    n = args.images or (EPOCH_IMAGES if cuda else 1024)
    epochs = args.epochs or (3 if cuda else 2)
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)

    rows = [(f"baseline: DataLoader ({workers} workers), per-sample transforms, fp32",
             baseline_images_per_s(x, y, device, args.batch_size, warmup_batches=2 if not cuda else 20,
                                    workers=workers))]
    label = "mia.train: resident uint8, batch crop+flip on device" + (", bf16, channels-last" if cuda else ", fp32")
    rows.append((label, mia_images_per_s(x, y, device, args.batch_size, epochs, compile=False)))
    if cuda and not args.no_compile:
        rows.append((label + ", torch.compile", mia_images_per_s(x, y, device, args.batch_size, epochs, True)))
        rows.append((label + f", torch.compile, batch {args.large_batch}",
                     mia_images_per_s(x, y, device, args.large_batch, epochs, True)))
    if not cuda and cpu_has_bf16():
        rows.append(("mia.train --cpu-bf16: the same under bf16 autocast",
                     mia_images_per_s(x, y, device, args.batch_size, epochs, False, cpu_bf16=True)))

    base = rows[0][1]
    lines = ["| trainer | images/s | ratio to baseline | s per 50k-image epoch |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {EPOCH_IMAGES / rate:.2f} |" for name, rate in rows]
    table = "\n".join(lines)
    best = max(rate for _, rate in rows[1:])
    scope = (f"{n} images per epoch, batch {args.batch_size}, {epochs} mia.train epochs (first one warm-up)"
             + ("" if cuda else "; CPU run on a small slice, so s per 50k-image epoch is extrapolated"))
    goal = (f"\nGoal: one 50k-image epoch in at most {GOAL_SECONDS} s on an H100 in bf16; best here "
            f"{EPOCH_IMAGES / best:.2f} s ({'met' if EPOCH_IMAGES / best <= GOAL_SECONDS else 'not met'}).\n"
            if cuda else "\nOn a CPU both loops are mostly bound by the convolutions, and on a shared machine the "
            "figures move with other jobs' load; what mia.train removes (host-side per-sample transforms, "
            "per-step host syncs, fp32 NCHW) is what limits a GPU: see the CUDA section. On a CPU with native "
            "bf16, `--cpu-bf16` halves the convolutions' cost (off by default: CPU runs stay float32).\n")
    text = (f"- date: {dt.date.today().isoformat()}\n- device: {device_name(device)}\n"
            f"- torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}\n"
            f"- {scope}\n- 1-minute load average at start: {load:.1f} (other processes share the machine)\n"
            f"- command: `python benchmarks/train_throughput.py`\n\n{table}\n{goal}")
    publish(f"## Training throughput, ResNet-18 on CIFAR-shaped data ({'CUDA' if cuda else 'CPU'})", text,
            not args.no_write)


if __name__ == "__main__":
    main()
