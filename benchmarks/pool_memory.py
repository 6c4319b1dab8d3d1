"""Memory of a growing reference pool: every trained model kept until the last (``keep=True``) or none (``keep=False``).

A pool stores each model's signals as soon as it is trained (``grow_pool``'s
``on_trained``), so it needs none of them afterwards; ``keep=False`` lets each
go before the next trains. Each setting runs in a fresh process (peak RSS is
per process): M Purchase ``fc`` models (1.3 M parameters, 5.3 MB of float32
weights each; above the CPU stacking limit, so they train one after another),
one epoch each on 500 purchase-synth rows, through :func:`mia.train.many.train_many`.
The figure is the peak RSS above the process's RSS just before training.

    python benchmarks/pool_memory.py [--models 32] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import device_name, peak_mb, publish  # noqa: E402

SECTION = "## Reference pools: memory while they grow (CPU)"

RUN = """
import resource, sys
import numpy as np
from mia.allocator import keep_freed_memory
from mia.data import load_dataset
from mia.train import TrainConfig
from mia.train.many import train_many

keep_freed_memory()
models, keep = int(sys.argv[1]), sys.argv[2] == "keep"
data = load_dataset("purchase-synth", n=2000)
rng = np.random.default_rng(0)
sets = np.stack([rng.choice(1500, 500, replace=False) for _ in range(models)])
config = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=128, epochs=1,
                     augment=False, device="cpu", select_best=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seen = []
train_many("fc", data.input_shape, data.num_classes, "bn", data, sets, None, config, seeds=list(range(models)),
           progress=False, on_trained=lambda m, model: seen.append(m), keep=keep)
assert seen == list(range(models))
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=32, help="models in the larger pool (the smaller: a quarter)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from mia.models import build_model

    params = sum(p.numel() for p in build_model("fc", (600,), 100).parameters())
    rows = []
    for models in (max(1, args.models // 4), args.models):
        kept, dropped = peak_mb(RUN, str(models), "keep"), peak_mb(RUN, str(models), "drop")
        rows.append(f"| {models} | {kept:.0f} MB | {dropped:.0f} MB | {models * params * 4 / 2**20:.0f} MB |")
        print(rows[-1], flush=True)
    text = (f"- date: {dt.date.today()}\n- device: {device_name()}\n"
            f"- command: `python benchmarks/pool_memory.py --models {args.models}`: `fc` models trained one "
            "after another through `train_many`, each setting in a fresh process\n\n"
            "| models | all kept until the last (`keep=True`) | none kept (`keep=False`, what a growing pool "
            "does) | their float32 weights |\n| ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n\n"
            "Peak RSS above the RSS before training. Kept, the models cost their weights; not kept, the peak is "
            "one model's training (and what the allocator keeps mapped), whatever the pool's size.\n")
    publish(SECTION, text, write=not args.no_write)


if __name__ == "__main__":
    main()
