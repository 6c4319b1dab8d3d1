"""Memory of the attack stage: a pool's shadows as float16 views (what ``mia`` does) or float32 copies (before).

The attack stage holds the loaded pool (float16: logits and sensitivity on the
population) for as long as the attacks run. Until 2026-12-07
:meth:`mia.pool.PoolSignals.shadows` handed every attack float32 copies of
each model's population logits and sensitivity, made all at once and held
beside the pool; it now hands float16 views, and the attacks convert what
they keep (:func:`mia.attacks.base.pool`). Each setting runs in a fresh
process: M reference models of Purchase100's shapes (71037 population rows,
100 classes; random float16 signals, as the point is memory), then the
``loss`` and ``nn`` attacks on a target of 2000 rows. The figure is the
peak RSS above the RSS with the pool loaded.

    python benchmarks/attack_memory.py [--models 16] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import device_name, peak_mb, publish  # noqa: E402

SECTION = "## The attack stage's memory: shadows as float16 views (CPU)"

RUN = """
import resource, sys
import numpy as np
from mia.allocator import keep_freed_memory
from mia.attacks import ShadowSignals
from mia.audit import run_attacks
from mia.pool import PoolPlan, PoolSignals
from mia.signals import Signals

keep_freed_memory()  # as the ``mia`` command does
models, copies = int(sys.argv[1]), sys.argv[2] == "float32"
z, n, c = 71037, 2000, 100
rng = np.random.default_rng(0)
plan = PoolPlan("0" * 32, "online", np.arange(n), np.arange(n, n + z), np.arange(0), n // 2, ((0, 0, False),), {})
labels = rng.integers(0, c, n + z)
logits, sensitivity = np.empty((models, z, c), np.float16), np.empty((models, z, c), np.float16)
for m in range(models):  # model by model: a float32 draw of all of them would set the peak before the attacks
    logits[m], sensitivity[m] = rng.standard_normal((z, c), np.float32), rng.random((z, c), np.float32)
pool = PoolSignals(plan, labels, inclusion=rng.random((models, n + z)) < 0.5,
                   correct=np.ones((models, n + z), bool), population_logits=logits,
                   phi=rng.standard_normal((models, n + z, 1), np.float32).astype(np.float16),
                   sensitivity=sensitivity, label_only=[{} for _ in range(models)])
target = Signals(rng.standard_normal((n, c), np.float32), labels[:n])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shadows = pool.shadows()
if copies:  # what shadows() returned before: float32 copies of every model's population signals
    shadows = [ShadowSignals(Signals(s.signals.logits.astype(np.float32), s.signals.labels,
                                     s.signals.sensitivity.astype(np.float32), s.signals.phi.astype(np.float32)),
                             s.is_member) for s in shadows]
run_attacks(["loss", "nn"], target, np.arange(n) < n // 2, shadows, progress=False)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16, help="models in the larger pool (the smaller: a quarter)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    for models in (max(1, args.models // 4), args.models):
        copies, views = peak_mb(RUN, str(models), "float32"), peak_mb(RUN, str(models), "float16")
        pool = models * 71037 * 100 * 2 * 2 / 2**20
        rows.append(f"| {models} | {pool:.0f} MB | {copies:.0f} MB | {views:.0f} MB | {copies / views:.1f}x |")
        print(rows[-1], flush=True)
    text = (f"- date: {dt.date.today()}\n- device: {device_name()}\n"
            f"- command: `python benchmarks/attack_memory.py --models {args.models}`: `loss` and `nn` on a pool of "
            "Purchase100's shapes (random float16 signals), each setting in a fresh process\n\n"
            "| models | the pool's float16 logits and sensitivity | peak above it, float32 copies (before) | "
            "float16 views (what `mia` does) | ratio |\n| ---: | ---: | ---: | ---: | ---: |\n"
            + "\n".join(rows) + "\n\n"
            "Same scores either way (the derived signals compute in float64 from either; checked on every threshold "
            "and learned attack, SAMIA and noise-flip on purchase-synth). What the views still take grows with the "
            "models through the threshold fit (a float64 score and its sort keys for each of the M x 71037 shadow "
            "rows); the `nn` attack's float32 set is its 50000-row subsample.\n")
    if not args.no_write:
        publish(SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
