"""One FedAvg round: all clients at once (stacked, ``torch.vmap``) against a plain per-client loop, same process.

Both ways run the same federation (:func:`mia.fl.simulation.simulate` with
``stack=True`` / ``stack=False``: the same partition, seeds and local SGD;
their models agree to float32 rounding, see ``tests/test_fl.py``). The figure
is wall seconds per round, with the server's recorded view (FedMIA signals on
the query set, per-sample gradients included) in every round, and without
it (recorded only in the last round), over ``--rounds`` rounds after a
one-round warm-up.

Cases: (a) ``mlp`` on purchase-synth, 50 clients x 100 rows, batch 32, one
local epoch; (b) the digits ``mlp``, 20 clients (about 22 rows each). On
CUDA also (c) the issue's GPU case: ResNet-18 with GroupNorm, 100 clients x
500 CIFAR-shaped synthetic images, one local epoch, batch 64 (goal: at most 1 s
per round including recording, on an H100). Writes this device type's
section of ``benchmarks/RESULTS.md``.

    python benchmarks/fl_round.py [--device auto] [--cases purchase,digits[,resnet]] [--rounds 3] [--compile]
        [--loop-recorded-only] [--no-write]

``--loop-recorded-only`` times the per-client loop with recording alone (the
goal's row, 4 rounds instead of 16): what fits a short GPU lease.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, publish, sync  # noqa: E402

from mia.data import Dataset, SplitConfig, load_dataset, make_split  # noqa: E402
from mia.defenses import make_defense  # noqa: E402
from mia.fl.config import FLConfig  # noqa: E402
from mia.fl.simulation import simulate  # noqa: E402
from mia.train import TrainConfig, resolve_device  # noqa: E402

GOAL_SECONDS = 1.0  # the ResNet-18 round on an H100, recording included

CPU_READING = """\
Reading: 20 digits `mlp` clients (1.0M stacked parameters) train 1.5-2.4x faster stacked than
one after another; 50 purchase `mlp` clients (10M stacked) 0.7-1.05x over the runs of 2026-11-23:
at that size each client's step is matmul work either way, so stacking saves little, and the
per-client loop got faster too (one fused SGD kernel, memory kept by `mia.allocator`; on
2026-11-22, before them, the loop took 0.25 s a round and the stack 0.44 s). So on the CPU a
round stacks only below 2M stacked parameters (`mia.fl.clients.CPU_STACK_PARAMS`); on CUDA every
stackable federation stacks. Recording the server's view (per-sample gradients of the query
set) costs about half a round's training here. The H100 goal (100 ResNet-18 GroupNorm clients x
500 images in at most 1 s per round, recording included) is
`python benchmarks/fl_round.py --device cuda --cases resnet`: 5.7 s on an H100 on 2026-11-23, see the CUDA section.
"""


@dataclass
class Case:
    label: str
    model: str
    norm: str
    data: Dataset
    clients: int
    batch_size: int
    augment: bool = False


def purchase_case() -> Case:
    return Case("(a) mlp, purchase-synth, 50 clients x 100 rows", "mlp", "bn", load_dataset("purchase-synth", n=20_000),
                50, 32)


def digits_case() -> Case:
    return Case("(b) mlp, digits, 20 clients", "mlp", "bn", load_dataset("digits"), 20, 32)


def resnet_case() -> Case:
    g = torch.Generator().manual_seed(0)
    n = 100 * 500 * 4  # members are a quarter of the rows: 500 per client
    data = Dataset("synthetic-cifar", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g), 10, "image", (0.5,) * 3, (0.25,) * 3, augment=True)
    return Case("(c) resnet18 (GroupNorm), 100 clients x 500 CIFAR-shaped images", "resnet18", "gn", data, 100, 64,
                augment=True)


CASES = {"purchase": purchase_case, "digits": digits_case, "resnet": resnet_case}


def seconds_per_round(case: Case, device: torch.device, stack: bool, rounds: int, record: bool,
                      compile: bool = False) -> float:
    data = case.data.to(device)
    split = make_split(len(data), 0, SplitConfig(member_fraction=0.25, nonmember_fraction=0.25))
    train = TrainConfig(augment=case.augment, weight_decay=5e-4, device=str(device), compile=compile)

    def run(n_rounds: int) -> float:
        fl = FLConfig(clients=case.clients, rounds=n_rounds, lr=0.05, batch_size=case.batch_size, max_query=200,
                      record_every=1 if record else n_rounds)
        sync(device)
        start = time.perf_counter()
        simulate(case.model, case.norm, data, split, fl, train, make_defense("none"), 0, progress=False, stack=stack)
        sync(device)
        return time.perf_counter() - start

    run(1)  # warm-up: kernels, allocator, imports
    return (run(rounds + 1) - run(1)) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="the per-client loop under torch.compile with CUDA graphs (CUDA only)")
    parser.add_argument("--loop-recorded-only", action="store_true",
                        help="only the per-client loop with the server's view recorded every round")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    names = args.cases.split(",") if args.cases else [n for n in CASES if cuda or n != "resnet"]
    load = os.getloadavg()[0]
    rows = ["| case | recording | per-client loop (s/round) | all clients at once (s/round) | speed-up |",
            "| --- | --- | ---: | ---: | ---: |"]
    print("\n".join(rows), flush=True)
    best: dict[str, float] = {}  # per case, the faster way's seconds per round with recording
    for name in names:
        case = CASES[name]()
        for record in (True,) if args.loop_recorded_only else (False, True):
            loop = seconds_per_round(case, device, False, args.rounds, record, args.compile)
            stacked = math.nan if args.loop_recorded_only else seconds_per_round(case, device, True, args.rounds,
                                                                                 record)
            if record:
                best[name] = loop if math.isnan(stacked) else min(loop, stacked)
            at_once, ratio = ("not run", "") if math.isnan(stacked) else (f"{stacked:.3f}", f"{loop / stacked:.2f}x")
            rows.append(f"| {case.label} | {'every round' if record else 'last round only'} | {loop:.3f} | "
                        f"{at_once} | {ratio} |")
            print(rows[-1], flush=True)
    goal = ""
    if "resnet" in best:
        goal = (f"\nGoal: one round of the ResNet-18 case, recording included, in at most {GOAL_SECONDS} s on an "
                f"H100; best here {best['resnet']:.2f} s ({'met' if best['resnet'] <= GOAL_SECONDS else 'not met'}).\n")
    text = (f"- date: {dt.date.today().isoformat()}\n- device: {device_name(device)}\n"
            f"- torch {torch.__version__}; 1-minute load average at start: {load:.1f}\n"
            f"- command: `python benchmarks/fl_round.py{' --device cuda' if cuda else ''} --rounds {args.rounds}"
            f"{' --compile' if args.compile else ''}{' --loop-recorded-only' if args.loop_recorded_only else ''}`\n"
            "- seconds per FedAvg round (local training of every client, aggregation, global test accuracy, and "
            "the server's FedMIA view where recorded), mean over the timed rounds after a warm-up\n\n"
            + "\n".join(rows) + "\n" + (goal if cuda else "\n" + CPU_READING))
    publish(f"## Federated rounds, all clients at once ({'CUDA' if cuda else 'CPU'})", text, not args.no_write)


if __name__ == "__main__":
    main()
