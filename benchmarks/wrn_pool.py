"""WRN-28-2 reference pools at full size on CUDA: the issue's 64-model goal, extrapolated from a timed slice.

The goal (issue 3): 64 WRN-28-2 CIFAR-10 reference models for 100 epochs on
25k samples each in at most 15 minutes on an H100. Training all of that is
over an hour at today's speed, more than one lent-GPU call allows, so this
times ``train_many`` (the pool's trainer: BatchNorm WRNs train one by one on
one reused, compiled module) with 1 and with 3 models (stacked: 9) of 2
epochs on 25k CIFAR-shaped rows each, and extrapolates the marginal rate,
the extra models' work over the difference of the two wall times: each ``train_many`` call compiles
its own module once, a cost a 64-model pool pays once, so the difference
leaves it out. Rows: compiled (CUDA graphs) at batch 256 and 512, eager at
256, and stacked (``stack=True``: all models in one vmapped step, BatchNorm
statistics stacked) at 256, eager, which the default path does not take
until this row shows it pays. Needs only torch and numpy besides ``mia``;
CUDA only.

    python benchmarks/wrn_pool.py [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, publish, sync  # noqa: E402

from mia.data.base import Dataset  # noqa: E402
from mia.train import TrainConfig  # noqa: E402
from mia.train.many import train_many  # noqa: E402

MODELS, EPOCHS, ROWS = 64, 100, 25_000
GOAL_MINUTES = 15


def samples_per_s(data: Dataset, val: np.ndarray, batch: int, compile: bool, stack: bool | None = None) -> float:
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                         batch_size=batch, epochs=1, augment=True, device="cuda", compile=compile)
    rng = np.random.default_rng(0)
    big = 9 if stack else 3  # a stack's cost per model falls with its size: time a larger one
    sets = np.stack([rng.choice(len(data) - len(val), ROWS, replace=False) for _ in range(big)])
    shape = data.input_shape
    train_many("wrn28-2", shape, 10, "bn", data, sets[:2], val, config, seeds=[0, 1], progress=False,
               stack=stack)  # warm-up

    def seconds(models: int) -> float:
        sync(torch.device("cuda"))
        start = time.perf_counter()
        train_many("wrn28-2", shape, 10, "bn", data, sets[:models], val, replace(config, epochs=2),
                   seeds=range(models), progress=False, stack=stack)
        sync(torch.device("cuda"))
        return time.perf_counter() - start

    return (big - 1) * ROWS * 2 / (seconds(big) - seconds(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("wrn_pool.py needs a CUDA device")
    g = torch.Generator().manual_seed(0)
    n = 51_000
    data = Dataset("synthetic-cifar", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g), 10, "image", (0.5,) * 3, (0.25,) * 3, augment=True)
    val = np.arange(50_000, n)
    rows = [f"| way | samples/s | {MODELS} models x {EPOCHS} epochs x {ROWS // 1000}k rows (min) |",
            "| --- | ---: | ---: |"]
    best = 0.0
    for batch, compile, stack in ((256, True, None), (512, True, None), (256, False, None), (256, False, True)):
        way = (f"train_many, batch {batch}, " + ("compiled (CUDA graphs)" if compile else "eager")
               + (", stacked (vmap, BatchNorm stacked)" if stack else ", one by one"))
        try:
            rate = samples_per_s(data, val, batch, compile, stack)
        except Exception as error:  # noqa: BLE001  (the stacked row's first CUDA run: keep the other rows)
            reason = (str(error).splitlines() or [""])[0][:200].replace("|", "/")
            rows.append(f"| {way} | failed: {type(error).__name__}: {reason} | |")
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
            continue
        best = max(best, rate)
        rows.append(f"| {way} | {rate:,.0f} | {MODELS * EPOCHS * ROWS / rate / 60:.0f} |")
        print(rows[-1], flush=True)
    minutes = MODELS * EPOCHS * ROWS / best / 60 if best else float("inf")
    text = (f"- date: {dt.date.today().isoformat()}\n- device: {device_name(torch.device('cuda'))}\n"
            f"- torch {torch.__version__}\n- command: `python benchmarks/wrn_pool.py`\n"
            "- the marginal rate: the extra models' 2 epochs x 25k rows over the wall time of a 3-model "
            "(stacked: 9-model) call less that of a 1-model call (validation on 1000 rows per epoch included); the last column extrapolates "
            "linearly\n\n" + "\n".join(rows) + "\n\n"
            f"Goal: the {MODELS}-model pool in at most {GOAL_MINUTES} minutes; extrapolated here {minutes:.0f} "
            f"minutes ({'met' if minutes <= GOAL_MINUTES else 'not met'}).\n")
    publish("## WRN-28-2 reference pool at full size (CUDA)", text, not args.no_write)


if __name__ == "__main__":
    main()
