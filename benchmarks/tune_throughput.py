"""Optuna trials per hour on digits with 1 and 2 workers (``mia tune --jobs``), same machine, same settings.

Each trial is a full tracked audit (a target with the trial's defense
parameters, reference models, the fast attacks, nested MLflow runs); the
workers share one study through a journal file. Both runs start from an
empty study and tracking store in a temporary folder. Writes its section of
``benchmarks/RESULTS.md``.

    python benchmarks/tune_throughput.py [--trials 8] [--defense relaxloss] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, publish  # noqa: E402

MIA = [sys.executable, "-c", "from entrypoints.cli import main; main()"]


def trials_per_hour(jobs: int, trials: int, defense: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        command = [*MIA, "tune", "--defense", defense, "--dataset", "digits", "--epochs", "15",
                   "--reference-models", "2", "--attacks", "loss,mentr,nn", "--trials", str(trials),
                   "--jobs", str(jobs), "--storage", f"{tmp}/study.journal", "--quiet"]
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, cwd=tmp, capture_output=True)
        return trials / (time.perf_counter() - start) * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--defense", default="relaxloss")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    one = trials_per_hour(1, args.trials, args.defense)
    two = trials_per_hour(2, args.trials, args.defense)
    text = (f"- date: {dt.date.today()}\n- device: {device_name()}, {os.cpu_count()} cores\n"
            f"- 1-minute load average at start: {load:.1f}\n"
            f"- command: `python benchmarks/tune_throughput.py --trials {args.trials} --defense {args.defense}` "
            "(digits, 15 epochs, 2 reference models, attacks loss/mentr/nn, journal storage, every trial a full "
            "tracked audit, including process start-up)\n\n"
            "| workers | trials per hour | ratio |\n| ---: | ---: | ---: |\n"
            f"| 1 | {one:.0f} | 1.00x |\n| 2 | {two:.0f} | {two / one:.2f}x |\n"
            "\nReading: where each trial already uses every core (torch threads), more workers on one machine "
            "only add contention and process start-up; workers pay off with more cores than a trial uses, "
            "with one GPU per worker, and across machines on PostgreSQL storage "
            "(`tests/test_tune_postgres.py`).\n")
    publish("## Optuna trials per hour (CPU)", text, not args.no_write)


if __name__ == "__main__":
    main()
