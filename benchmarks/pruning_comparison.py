"""Pruning and leakage: dense vs pruned for each pruner and sparsity, then each defense at sparsity 0.6.

Same data, split, dense model and attacks for every row. The attacks are
the threshold attacks, the nn attacks and SAMIA (the sources' set), fitted on
shadow models trained (dense, then pruned the same way as the target) on the
attacker's population. Each row: test accuracy, and per attack family the
best balanced attack accuracy and AUC. Needs only the mia core; run again to
reproduce.

    python benchmarks/pruning_comparison.py [--datasets digits,purchase-synth] [--shadows 2] [--no-write]
        [--model wrn10-1 --norm bn --pruners slimming --no-defenses]   # a BatchNorm net for slimming
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, write_section  # noqa: E402

from mia import audit  # noqa: E402
from mia.data import make_split  # noqa: E402
from mia.prune import PruneConfig  # noqa: E402

ATTACKS = ["loss", "confidence", "entropy", "mentr", "hconf", "nn", "nn-top3", "nn-cls", "nn-nasr", "samia"]
SETTINGS = {"digits": dict(dataset_params={}, epochs=30), "purchase-synth": dict(dataset_params={"n": 10000},
                                                                                  epochs=30)}
PRUNERS = ["l1-unstructured", "l1-global", "l1-filter", "l2-filter"]
SPARSITIES = [0.5, 0.6, 0.7]
DEFENSES = [("ppb", {}), ("rsw", {}), ("rsw-reverse", {}), ("rmr", {}), ("swmr", {}), ("relaxloss", {}),
            ("advreg", {})]


def leakage(config, data, split, target, shadows_root: str, shadows: int) -> dict[str, float]:
    """Best AUC and balanced accuracy over the attacks, with SAMIA's own beside them."""
    _, is_member = split.query()
    signals, population = audit.target_signals(target.model, data, split, config)
    # the shadows stop where the target stopped (dense epoch, fine-tuning epochs), as `mia attack` trains them
    recipe = audit.attacker_config(config, released_epoch=target.best_epoch, finetune_epochs=target.finetune_epochs)
    plan = audit.plan_reference_pool(recipe, data, split, "offline")
    pool, _ = audit.reference_pool(plan, recipe, data, shadows, shadows_root, progress=False)
    results = audit.run_attacks(ATTACKS, signals, is_member, pool.shadows(), progress=False)
    best = max(results, key=lambda r: r.metrics["auc"])
    samia = next(r for r in results if r.name == "samia")
    return {"auc": best.metrics["auc"], "best": best.name,
            "bal": max(r.metrics["balanced_accuracy"] for r in results), "samia": samia.metrics["auc"]}


def run(dataset: str, shadows: int, device: str, model: str | None = None, norm: str | None = None,
        pruners: list[str] = PRUNERS, defenses: bool = True) -> list[str]:
    setting = SETTINGS[dataset]
    base = audit.resolve_config(dataset, model=model, seed=0,
                                train_overrides={"epochs": setting["epochs"], "device": device},
                                dataset_params=setting["dataset_params"], **({"norm": norm} if norm else {}))
    data = audit.load_data(base)
    split = make_split(len(data), 0, base.split)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        dense = audit.fit(base, data, split.members, split.validation, split.nonmembers, seed=0, progress=False)
        d = leakage(base, data, split, dense, f"{root}/dense", shadows)
        rows.append(f"| dense | | {dense.test_accuracy:.3f} | {d['bal']:.3f} | {d['auc']:.3f} ({d['best']}) | "
                    f"{d['samia']:.3f} | |")
        print(rows[-1], flush=True)
        cases = [(p, s, "none", {}) for p in pruners for s in SPARSITIES]
        cases += [("l1-unstructured", 0.6, name, params) for name, params in DEFENSES] if defenses else []
        for pruner, sparsity, defense, params in cases:
            start = time.perf_counter()
            config = replace(base, scenario="pruning", defense=defense, defense_params=params,
                             prune=PruneConfig(pruner=pruner, sparsity=sparsity, finetune_epochs=10))
            pruned = audit.fit_pruned(config, data, split.members, split.validation, split.nonmembers, seed=0,
                                      dense=dense, progress=False)
            key = f"{pruner}-{sparsity}-{defense}"
            m = leakage(config, data, split, pruned, f"{root}/{key}", shadows)
            label = f"{pruner} {sparsity}" + ("" if defense == "none" else f" + {defense}")
            rows.append(f"| {label} | {pruned.defense_metrics['sparsity']:.2f} | {pruned.test_accuracy:.3f} | "
                        f"{m['bal']:.3f} | {m['auc']:.3f} ({m['best']}) | {m['samia']:.3f} | "
                        f"{time.perf_counter() - start:.0f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,purchase-synth")
    parser.add_argument("--shadows", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None, help="the dataset's default model when not given")
    parser.add_argument("--norm", default=None, choices=["bn", "gn"])
    parser.add_argument("--pruners", default=",".join(PRUNERS))
    parser.add_argument("--no-defenses", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    body = []
    for dataset in args.datasets.split(","):
        header = [f"### {dataset}" + (f", {args.model}" if args.model else ""), "", "| model | weight sparsity | test acc | best bal. attack acc | max AUC (attack) "
                  "| SAMIA AUC | seconds |", "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
        print("\n".join(header), flush=True)
        body += header + run(dataset, args.shadows, args.device, args.model, args.norm, args.pruners.split(","),
                             not args.no_defenses) + [""]
    if not args.no_write:
        device = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        write_section("## Pruning and leakage", (
            f"- date: {dt.date.today()}\n- device: {device}\n- command: `python benchmarks/pruning_comparison.py "
            f"--datasets {args.datasets} --shadows {args.shadows}`\n- one-shot pruning, 10 fine-tuning epochs; "
            f"attacks: {', '.join(ATTACKS)}, fitted on {args.shadows} shadow models pruned like the target "
            "(offline pool), stopped where the target stopped; defenses act in fine-tuning at sparsity 0.6 (l1-unstructured)\n\n" + "\n".join(body)))


if __name__ == "__main__":
    main()
