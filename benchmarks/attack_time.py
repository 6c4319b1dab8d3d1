"""SAMIA's and nn-nasr's fit + score time on the CPU: this tree against an earlier revision, same stored signals.

For each dataset, a target and 4 reference models (an online pool, seed 0, the
recipe ``mia audit`` uses) are trained once and their signals stored; then each
attack is fitted on the 4 models as shadows and scores the target's audited
samples, once with the ``mia`` package of ``--baseline`` (a git revision,
extracted to a temporary folder) and once with this tree's, each in a fresh
process, in turn. Two machine states: ``idle`` (as idle as the machine is:
the load average is recorded) and ``busy`` (a Python loop runs beside the
attack: one core taken, as by a busy program on a laptop). The AUC of each
run on the same seed shows whether the results stayed equivalent, next to the
95 % bootstrap interval of this tree's.

    python benchmarks/attack_time.py [--baseline REV] [--datasets digits,purchase-synth]
        [--attacks samia,nn-nasr] [--states idle,busy] [--cache DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## SAMIA and nn-nasr on the CPU: fit + score time"
SHADOWS = 4
BESIDE = {"idle": None, "busy": "while True: pass"}
"""What runs beside the attack in each machine state."""
READING = (
    "Reading: SAMIA now stops on its held-out shadow rows (purchase-synth: after 2 of its 5 epochs, keeping "
    "the first; on digits their loss falls to the 5th) and spends less per step (its own attention layer, "
    "scoring in batches of 256); nn-nasr trains as before, with the fused Adam step. The AUCs on the same "
    "seed stay within 0.001 of the baseline's but for nn-nasr on digits, 0.5379 -> 0.5448 from the fused "
    "step's rounding alone (over seeds 0-4 it spans 0.51-0.54 either way), all far inside their intervals. "
    "nn-nasr's 1.3x idle is partly the machine's noise (single runs within the hour: baseline 15.6 s, this "
    "tree 15.0 s). Both use every torch thread, as the rest of mia does, and pay for it when anything else "
    "runs (busy): with a thread on every core, each op waits for the thread the other process has "
    "descheduled. The same day, this tree on one thread took 40 s (SAMIA) and 20 s (nn-nasr) on "
    "purchase-synth whether the busy loop ran or not.\n")


# ---------------------------------------------------------------- stored signals


def stored_signals(dataset: str, cache: Path) -> Path:
    """The target's and 4 reference models' signals on ``dataset`` as ``mia audit`` computes them, in ``cache``.

    A fresh ``cache`` trains the target and the models (a few minutes for purchase-synth on 2 cores).
    """
    path = cache / f"{dataset}.npz"
    if path.exists():
        return path
    from mia import audit
    from mia.data import make_split

    config = audit.resolve_config(dataset)
    data = audit.load_data(config)
    split = make_split(len(data), config.seed, config.split)
    target = audit.fit(config, data, split.members, split.validation, split.nonmembers, seed=config.seed,
                       progress=False)
    signals, _ = audit.target_signals(target.model, data, split, config)
    recipe = audit.attacker_config(config, released_epoch=target.best_epoch)
    plan = audit.plan_reference_pool(recipe, data, split, "online")
    pool, _ = audit.reference_pool(plan, recipe, data, SHADOWS, cache / "pools" / plan.key, progress=False)
    arrays = {"logits": signals.logits, "labels": signals.labels, "sensitivity": signals.sensitivity,
              "is_member": split.query()[1]}
    for m, shadow in enumerate(pool.shadows()):
        arrays.update({f"shadow{m}_logits": shadow.signals.logits, f"shadow{m}_labels": shadow.signals.labels,
                       f"shadow{m}_sensitivity": shadow.signals.sensitivity,
                       f"shadow{m}_is_member": shadow.is_member})
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def worker(code: str, signals_path: str, attack: str) -> None:
    """One timed ``run_attack`` with the ``mia`` package found in ``code``; prints its figures as JSON."""
    sys.path.insert(0, code)
    from mia.allocator import keep_freed_memory

    keep_freed_memory()  # as the ``mia`` command does
    from mia.attacks import ShadowSignals, run_attack
    from mia.metrics import attack_metrics, interval_metrics
    from mia.signals import Signals

    z = np.load(signals_path)
    target = Signals(z["logits"], z["labels"], z["sensitivity"])
    shadows = [ShadowSignals(Signals(z[f"shadow{m}_logits"], z[f"shadow{m}_labels"], z[f"shadow{m}_sensitivity"]),
                             z[f"shadow{m}_is_member"]) for m in range(SHADOWS)]
    start = time.perf_counter()
    out = run_attack(attack, target, shadows, seed=0)
    seconds = time.perf_counter() - start
    metrics = {**attack_metrics(out.scores, z["is_member"]), **interval_metrics(out.scores, z["is_member"])}
    print(json.dumps({"seconds": seconds, "auc": metrics["auc"],
                      "auc_ci": [metrics["auc_ci_low"], metrics["auc_ci_high"]]}))


# ---------------------------------------------------------------- driver


def extract(rev: str, into: Path) -> Path:
    """The ``mia`` package of git revision ``rev``, written under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "mia"], check=True,
                             capture_output=True).stdout
    tar_path = into / "mia.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into


def timed(code: Path, signals_path: Path, attack: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", str(code), str(signals_path), attack],
                         check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="dfc3bc0", help="git revision timed against this tree")
    parser.add_argument("--datasets", default="purchase-synth,digits")
    parser.add_argument("--attacks", default="samia,nn-nasr")
    parser.add_argument("--states", default="idle,busy", help=f"of {', '.join(BESIDE)}")
    parser.add_argument("--cache", type=Path, default=ROOT / ".mia-cache" / "attack_time")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--worker", nargs=3, metavar=("CODE", "SIGNALS", "ATTACK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    sys.path.insert(0, str(ROOT))
    from common import device_name, publish  # noqa: E402

    paths = {d: stored_signals(d, args.cache) for d in args.datasets.split(",")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"baseline": extract(args.baseline, Path(tmp)), "this tree": ROOT}
        for state in args.states.split(","):
            beside = BESIDE[state] and subprocess.Popen([sys.executable, "-c", BESIDE[state]])
            try:
                for dataset, path in paths.items():
                    for attack in args.attacks.split(","):
                        load = os.getloadavg()[0]
                        runs = {name: timed(code, path, attack) for name, code in codes.items()}
                        rows.append((dataset, attack, state, load, runs))
                        print(dataset, attack, state, {k: round(v["seconds"], 1) for k, v in runs.items()},
                              {k: round(v["auc"], 4) for k, v in runs.items()}, flush=True)
            finally:
                if beside:
                    beside.kill()
                    beside.wait()

    table = "\n".join(
        f"| {dataset} | {attack} | {state} | {load:.1f} | {runs['baseline']['seconds']:.1f} | "
        f"{runs['this tree']['seconds']:.1f} | {runs['baseline']['seconds'] / runs['this tree']['seconds']:.1f}x | "
        f"{runs['baseline']['auc']:.4f} | {runs['this tree']['auc']:.4f} "
        f"[{runs['this tree']['auc_ci'][0]:.3f}, {runs['this tree']['auc_ci'][1]:.3f}] |"
        for dataset, attack, state, load, runs in rows)
    import torch

    publish(HEADING, (
        f"- date: {dt.date.today().isoformat()}\n- device: {device_name()}\n- torch {torch.__version__}\n"
        f"- command: `python benchmarks/attack_time.py --baseline {args.baseline}`\n"
        f"- each attack fitted on 4 reference models' signals (online pool, seed 0, `mia audit`'s recipe) and "
        f"scoring the target's audited samples, one fresh process per run: `{args.baseline}`'s `mia` (baseline) "
        f"and this tree's, in turn; busy: a Python busy loop running beside it; load: the 1-minute load "
        f"average before the pair (other processes share the machine)\n\n"
        "| data | attack | machine | load | baseline s | this tree s | speed-up | AUC baseline | "
        "AUC this tree [95% CI] |\n| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        + table + "\n\n" + READING), write=not args.no_write)


if __name__ == "__main__":
    main()
