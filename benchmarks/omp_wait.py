"""OpenMP's wait policy on a CPU shared with another job: torch's default (spinning), ``PASSIVE``, one thread.

torch's CPU kernels run on an OpenMP thread pool, one thread per core. Between
two parallel regions GNU OpenMP's idle threads spin for a while before they
sleep, which costs nothing on a machine of one's own and a great deal where
another process wants the same cores: the spinning threads take the cores
from the threads with work to do. A small model's step is many short parallel
regions, so it is hit hardest. ``OMP_WAIT_POLICY=PASSIVE`` makes idle threads
sleep at once, at the price of waking them for every region; ``GOMP_SPINCOUNT``
shortens the spin (GNU OpenMP's default is 300,000 iterations) without giving it up; ``OMP_NUM_THREADS=1``
(what README's "Speed" advises on a shared CPU) leaves the other cores alone.

Each workload runs in a fresh process (the policy is read when the OpenMP
runtime starts), under each setting, on a quiet machine and beside a competing
job (another process multiplying matrices on torch's default threads, as a
colleague's training would), timed in the same run.

    python benchmarks/omp_wait.py [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import device_name, publish  # noqa: E402

SECTION = "## OpenMP's wait policy on a shared CPU"

WORKLOADS = {
    "digits `mlp` pool, 16 models stacked, 30 epochs": """
from mia import audit
from mia.data import make_split
config = audit.resolve_config("digits", seed=0, train_overrides={"epochs": 30})
data = audit.load_data(config)
split = make_split(len(data), 0, config.split)
plan = audit.plan_reference_pool(config, data, split)
with tempfile.TemporaryDirectory() as d:
    start = time.perf_counter()
    audit.reference_pool(plan, config, data, 16, pathlib.Path(d), progress=False)
""",
    "purchase-synth `fc` target, n=4000, 10 epochs": """
from mia import audit
from mia.data import make_split
config = audit.resolve_config("purchase-synth", seed=0, train_overrides={"epochs": 10}, dataset_params={"n": 4000})
data = audit.load_data(config)
split = make_split(len(data), 0, config.split)
start = time.perf_counter()
audit.fit(config, data, split.members, split.validation, split.nonmembers, seed=0, progress=False)
""",
    "digits `cnn-small` target, 10 epochs": """
from mia import audit
from mia.data import make_split
config = audit.resolve_config("digits", model="cnn-small", seed=0, train_overrides={"epochs": 10})
data = audit.load_data(config)
split = make_split(len(data), 0, config.split)
start = time.perf_counter()
audit.fit(config, data, split.members, split.validation, split.nonmembers, seed=0, progress=False)
""",
}

PRELUDE = "import pathlib, tempfile, time\nfrom mia.allocator import keep_freed_memory\nkeep_freed_memory()\n"
REPORT = "\nprint(time.perf_counter() - start)\n"

COMPETITOR = """
import torch
a = torch.randn(512, 512)
while True:
    for _ in range(20):
        a = torch.tanh(a @ a.T / 512)
"""


def timed(code: str, setting: dict[str, str]) -> float:
    """Seconds the workload's timed part takes in a fresh process with the environment ``setting``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(ROOT), **setting)
    done = subprocess.run([sys.executable, "-c", PRELUDE + code + REPORT], env=env, capture_output=True,
                          text=True, check=True)
    return float(done.stdout.split()[-1])


SETTINGS = {"default (spinning)": {}, "`OMP_WAIT_POLICY=PASSIVE`": {"OMP_WAIT_POLICY": "PASSIVE"},
            "`GOMP_SPINCOUNT=10000`": {"GOMP_SPINCOUNT": "10000"}, "`OMP_NUM_THREADS=1`": {"OMP_NUM_THREADS": "1"}}


def best_of(code: str, setting: dict[str, str], repeats: int) -> float:
    return min(timed(code, setting) for _ in range(repeats))


def measure(repeats: int, competing: bool) -> list[tuple[str, list[float]]]:
    competitor = None
    if competing:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
        time.sleep(3)  # let it start its threads
    try:
        return [(name, [best_of(code, setting, repeats) for setting in SETTINGS.values()])
                for name, code in WORKLOADS.items()]
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per cell")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for competing in (False, True):
        for name, seconds in measure(args.repeats, competing):
            cells = " | ".join(f"{s:.2f} ({seconds[0] / s:.2f}x)" for s in seconds)
            rows.append(f"| {name} | {'beside a competing job' if competing else 'quiet'} | {cells} |")
            print(rows[-1], flush=True)
    text = (f"- date: {dt.date.today()}\n- device: {device_name()}, {os.cpu_count()} cores\n"
            f"- 1-minute load average at start: {load:.1f}\n"
            f"- command: `python benchmarks/omp_wait.py --repeats {args.repeats}`: each cell the best of "
            f"{args.repeats} fresh processes, timed part only; the competing job multiplies 512x512 matrices "
            "on torch's default threads\n\n"
            "seconds (speed-up over the default in the same run)\n\n"
            f"| workload | machine | {' | '.join(SETTINGS)} |\n| --- | --- |{' ---: |' * len(SETTINGS)}\n"
            + "\n".join(rows) + "\n")
    publish(SECTION, text, write=not args.no_write)


if __name__ == "__main__":
    main()
