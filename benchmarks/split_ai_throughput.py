"""SELENA's Split-AI: K sub-models many at a time (``mia.train.many``) against one after another, same process.

Split-AI (``mia.defenses.selena``) trains K = 25 sub-models, each on the
training rows not assigned to it (L = 10 of 25 sub-models per row, so each
trains on 60% of the rows). The ways below train the same K sub-models
(same seeds, same training sets from :func:`mia.defenses.selena.training_sets`,
same recipe, best-epoch selection on a shared validation set):

* one after another: ``seed_everything``, ``build_model``, ``mia.train.train``
  per sub-model, each a fresh module (what a defense without the shared
  machinery does);
* ``train_many`` as SELENA calls it (its default path on this device:
  stacked under ``torch.vmap`` where that pays, else one reused module);
* ``train_many`` forced stacked (``stack=True``).

Cases: (a) the tabular ``fc`` net on purchase-synth, 5000 training rows
(3000 per sub-model), 10 epochs of Adam, batch 128; (b) the digits ``mlp``,
the digits target's 449 training rows, 10 epochs, batch 64. A one-epoch
warm-up of each way runs first. Only torch, numpy and scikit-learn (digits)
besides ``mia``. Writes this device type's section of ``benchmarks/RESULTS.md``.

    python benchmarks/split_ai_throughput.py [--device auto] [--cases fc,mlp] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, publish, sync  # noqa: E402

from mia.data import Dataset, load_dataset, make_split  # noqa: E402
from mia.defenses.selena import assign_nonmembers, training_sets  # noqa: E402
from mia.models import build_model  # noqa: E402
from mia.train import TrainConfig, predict_logits, resolve_device, seed_everything, train  # noqa: E402
from mia.train.many import train_many  # noqa: E402

K, L = 25, 10
GOAL = 5.0  # wanted speed-up of many at a time for the fc net
CPU_READING = """
Reading: a CPU step of the 1.3M-parameter `fc` net is large matmuls whichever way the sub-models
are trained, so many at a time (one reused module by default here, or stacked) saves only the
fixed cost per step: about 1.1x. Both ways got faster with the fused optimizers and the kept
memory of `mia.allocator` (`benchmarks/cpu_step.py`): on 2026-11-22, before them, one after
another took 127 s and the default way 65 s (1.9x, with a background job sharing the CPU).
The small digits `mlp` gains from stacking (2.4x). The ceiling, measured step by step in
`benchmarks/stack_ceiling.py` (section "The stacked step's ceiling on this CPU"): 25 `fc` steps
stacked, with nothing but their batched matmuls, are 1.5-1.8x the 25 one after another. 5x is the
GPU's regime, where a small model's step is kernel-launch latency:
`python benchmarks/split_ai_throughput.py --device cuda`.
"""


@dataclass
class Case:
    label: str
    model: str
    data: Dataset
    members: np.ndarray
    val: np.ndarray
    config: TrainConfig

    def sets(self) -> np.ndarray:
        """``K x m`` dataset indices: the rows each sub-model trains on, as SELENA draws them."""
        return self.members[training_sets(assign_nonmembers(len(self.members), K, L, seed=0), seed=0)]


def fc_case(device: str) -> Case:
    data = load_dataset("purchase-synth", n=20_000)
    split = make_split(len(data), 0)
    config = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=128,
                         epochs=10, augment=False, device=device)
    return Case("(a) fc, purchase-synth", "fc", data, split.members, split.validation, config)


def mlp_case(device: str) -> Case:
    data = load_dataset("digits")
    split = make_split(len(data), 0)
    config = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=64,
                         epochs=10, augment=False, device=device)
    return Case("(b) mlp, digits", "mlp", data, split.members, split.validation, config)


def one_after_another(case: Case, sets: np.ndarray, config: TrainConfig) -> list[torch.nn.Module]:
    models = []
    for m, rows in enumerate(sets):
        seed_everything(m)
        model = build_model(case.model, case.data.input_shape, case.data.num_classes)
        train(model, case.data, rows, case.val, replace(config, seed=m), progress=False)
        models.append(model)
    return models


def many(stack: bool | None):
    def way(case: Case, sets: np.ndarray, config: TrainConfig) -> list[torch.nn.Module]:
        return train_many(case.model, case.data.input_shape, case.data.num_classes, "bn", case.data, sets,
                          case.val, config, seeds=range(len(sets)), progress=False, stack=stack)
    return way


WAYS = {"one after another (`train`)": one_after_another,
        "many at a time (`train_many`, SELENA's default here)": many(None),
        "many at a time (`train_many`, stacked)": many(True)}


def timed(way, case: Case, sets: np.ndarray, config: TrainConfig) -> tuple[float, float]:
    device = resolve_device(config.device)
    sync(device)
    start = time.perf_counter()
    models = way(case, sets, config)
    sync(device)
    seconds = time.perf_counter() - start
    y = case.data.y[torch.as_tensor(case.val)]
    acc = np.mean([float((predict_logits(m, case.data, case.val, device=config.device).argmax(1) == y.to(
        "cpu")).float().mean()) for m in models])
    return seconds, float(acc)


def run_case(case: Case) -> tuple[list[str], float]:
    sets = case.sets()
    for way in WAYS.values():  # warm-up: imports, kernel selection, allocator
        way(case, sets[:2], replace(case.config, epochs=1))
    times = {name: timed(way, case, sets, case.config) for name, way in WAYS.items()}
    base = times["one after another (`train`)"][0]
    samples = sets.size * case.config.epochs
    rows = [f"| {case.label}, K={K}, L={L} | {name} | {s:.1f} | {samples / s:,.0f} | {base / s:.2f}x | {acc:.3f} |"
            for name, (s, acc) in times.items()]
    print("\n".join(rows), flush=True)
    best = max(base / s for name, (s, _) in times.items() if name.startswith("many"))
    return rows, best


CASES = {"fc": fc_case, "mlp": mlp_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default="fc,mlp")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    load = os.getloadavg()[0]
    header = ["| case | way | seconds | samples/s | speed-up | mean val acc |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    print("\n".join(header), flush=True)
    results = {name: run_case(CASES[name](str(device))) for name in args.cases.split(",")}
    table = "\n".join(header + [row for rows, _ in results.values() for row in rows])
    goal = ""
    if "fc" in results:
        ratio = results["fc"][1]
        goal = f"\nGoal: at least {GOAL:.0f}x for `fc`; best many-at-a-time way here {ratio:.2f}x: " \
               f"{'met' if ratio >= GOAL else 'not met'}.\n"
    text = (f"- date: {dt.date.today().isoformat()}\n- device: {device_name(device)}\n"
            f"- torch {torch.__version__}; 1-minute load average at start: {load:.1f}\n"
            f"- command: `python benchmarks/split_ai_throughput.py{' --device cuda' if device.type == 'cuda' else ''}`\n"
            f"- speed-up: wall time one after another / wall time of the way; samples/s counts training rows x "
            f"epochs over all K sub-models\n\n{table}\n{goal}{'' if device.type == 'cuda' else CPU_READING}")
    publish(f"## SELENA Split-AI sub-models, many at once ({'CUDA' if device.type == 'cuda' else 'CPU'})",
            text, not args.no_write)


if __name__ == "__main__":
    main()
