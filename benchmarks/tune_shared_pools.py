"""Reference models trained by a 2-worker ``mia tune`` whose trials share one pool: this tree against a baseline.

Two workers start their first trials together; where the trials' attacks
need the same pool (a centralized study with ``--no-select-best``, whose
targets all stop at the last epoch; a pruning study, whose dense original's
attack pool is the same for every trial), each found it missing and trained
it. Since the pool lock (``mia/lock.py``) the second waits and reuses it.
With ``--machines`` the two workers are two ``mia tune`` processes as on two
machines sharing the tracking store (each its own lock folder,
``$MIA_STORE_LEASE=on`` on the SQLite store they share): since the lease
(``mia/lease.py``) they too take turns.
Counts ``reference_models.trained`` over the study's attack runs; the pool
holds 4 models. Wall times are printed too, but on 2 cores they move with
the machine's load more than with the lock (a waiting worker idles as long
as the duplicate training took, so the gain is the compute, not the time,
unless the workers share cores).

    python benchmarks/tune_shared_pools.py --baseline a0a629d [--repeats 2] [--no-write]
    python benchmarks/tune_shared_pools.py --machines --baseline 28032ca [--repeats 2] [--no-write]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import device_name, publish  # noqa: E402

CASES = {"centralized": ["--defense", "relaxloss", "--no-select-best"],
         "pruning": ["--scenario", "pruning", "--defense", "rmr"]}
COUNT = """
from mlflow.tracking import MlflowClient
c = MlflowClient()
runs = c.search_runs([e.experiment_id for e in c.search_experiments()], filter_string="tags.`mia.kind` = 'attack'")
print(int(sum(r.data.metrics.get("reference_models.trained", 0) for r in runs)))
"""


def study(code: Path, case: str, machines: bool, pool: int) -> tuple[int, float]:
    """(reference models trained, seconds) of one 2-worker, 2-trial study run by the ``mia`` in ``code``."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true",
               "PYTHONPATH": str(code)}
        command = [sys.executable, "-c", "from entrypoints.cli import main; main()", "tune", "--dataset", "digits",
                   "--epochs", "10", *CASES[case], "--reference-models", str(pool), "--attacks", "loss",
                   "--storage", f"{tmp}/study.journal", "--quiet"]
        start = time.perf_counter()
        if machines:  # two processes of one worker each, each with its own lock folder, as two machines
            workers = []
            for i in range(2):
                Path(tmp, f"machine{i}").mkdir()
                workers.append(subprocess.Popen(command + ["--trials", "1"], cwd=tmp,
                                                env={**env, "TMPDIR": f"{tmp}/machine{i}", "MIA_STORE_LEASE": "on"},
                                                stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/machine{i}.err", "w")))
            for i, worker in enumerate(workers):
                if worker.wait() != 0:
                    raise SystemExit(Path(tmp, f"machine{i}.err").read_text()[-2000:])
        else:
            subprocess.run(command + ["--trials", "2", "--jobs", "2"], check=True, env=env, cwd=tmp,
                           capture_output=True)
        seconds = time.perf_counter() - start
        counted = subprocess.run([sys.executable, "-c", COUNT], env=env, cwd=tmp, capture_output=True, text=True,
                                 check=True)
        return int(counted.stdout), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision without the pool lock (e.g. a0a629d), "
                        "or with --machines without the lease (e.g. 28032ca)")
    parser.add_argument("--machines", action="store_true", help="two workers as on two machines sharing the store")
    parser.add_argument("--pool", type=int, default=None, help="reference models (default 4; 16 with --machines, "
                        "whose processes start seconds apart, longer than a pool of 4 takes)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.pool = args.pool or (16 if args.machines else 4)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(baseline), args.baseline],
                       check=True, capture_output=True)
        try:
            for case in CASES:
                for repeat in range(args.repeats):
                    for label, code in (("baseline", baseline), ("this tree", ROOT)):
                        trained, seconds = study(code, case, args.machines, args.pool)
                        rows.append(f"| {case} | {repeat + 1} | {label} | {trained} | {seconds:.0f} |")
                        print(rows[-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)
    workers = ("two `mia tune` processes of one worker each, as on two machines (own lock folders, "
               "`MIA_STORE_LEASE=on`); baseline: the tree before the lease" if args.machines else
               "`mia tune --jobs 2`; baseline: the tree before the pool lock")
    text = (f"- date: {dt.date.today()}\n- device: {device_name()}, {os.cpu_count()} cores\n"
            f"- command: `python benchmarks/tune_shared_pools.py{' --machines' if args.machines else ''} "
            f"--baseline {args.baseline} --repeats {args.repeats} --pool {args.pool}` (digits, 10 epochs, 2 trials "
            f"on a journal, attack `loss` on a pool of {args.pool}; {workers}, run in turn with this one)\n\n"
            "| study | repeat | code | reference models trained | seconds |\n| --- | ---: | --- | ---: | ---: |\n"
            + "\n".join(rows) + f"\n\nReading: the pool holds {args.pool} models; a count of {2 * args.pool} is the "
            "pool trained twice, once by each worker. Wall times on 2 shared cores follow the load more than the lock.\n")
    title = "on two machines " if args.machines else ""
    publish(f"## Two tune workers {title}asking for one pool (CPU)", text, not args.no_write)


if __name__ == "__main__":
    main()
