"""Defenses compared on equal terms: same data, split, attacker's recipe and attacks.

For each dataset: the undefended target and each defense, with the target's
test accuracy beside the worst case over every attack (max AUC and max TPR at
0.1% FPR). The reference pool is the attacker's and defense-free
(non-adaptive), its models stopped where the row's target stopped, as `mia
attack` trains it; rows whose targets stopped at the same epoch share it.
Needs only the mia core (no MLflow); run again to reproduce.

    python benchmarks/defense_comparison.py [--datasets purchase-synth,digits] [--reference-models 8]
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
from mia.attacks import selection  # noqa: E402
from mia.attacks import ATTACKS  # noqa: E402
from mia.data import make_split  # noqa: E402

SECTION = "## Defenses compared (centralized)"
SETTINGS = {
    "purchase-synth": dict(dataset_params={"n": 20000}, epochs=30),
    "digits": dict(dataset_params={}, epochs=30),
}
DEFENSES = [
    ("none", {}),
    ("dp-sgd", {"epsilon": 8.0}),
    ("dp-sgd", {"epsilon": 1.0}),
    ("advreg", {}),
    ("memguard", {}),
    ("selena", {}),
    ("relaxloss", {}),
]


def run(dataset: str, models: int, device: str, only: list[str] | None = None) -> list[str]:
    setting = SETTINGS[dataset]
    config = audit.resolve_config(dataset, seed=0, train_overrides={"epochs": setting["epochs"], "device": device},
                                  dataset_params=setting["dataset_params"])
    config = selection.label_only_for(config, "all")  # the label-only signals `--attacks all` reads
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    _, is_member = split.query()
    names = [n for n in ATTACKS.names()]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for defense, params in DEFENSES:
            if only and defense not in only:
                continue
            start = time.perf_counter()
            defended = replace(config, defense=defense, defense_params=params)
            target = audit.fit(defended, data, split.members, split.validation, split.nonmembers, seed=0,
                               progress=False)
            # the non-adaptive pool, stopped where this target stopped (as `mia attack`); shared across
            # rows whose targets stopped at the same epoch (same recipe, same pool key)
            recipe = audit.attacker_config(defended, released_epoch=target.best_epoch)
            plan = audit.plan_reference_pool(recipe, data, split, "online")
            pool, _ = audit.reference_pool(plan, recipe, data, models, Path(root) / plan.key, progress=False)
            shadows = pool.shadows()
            audited, population = audit.target_signals(target.model, data, split, defended)
            usable = selection.applicable(names, audited, defense)
            split_ai = (audit.split_ai_reference(defended, data, split, audited, population, progress=False)
                        if "selena-adaptive" in usable else None)
            results = audit.run_attacks(usable, audited, is_member, shadows, progress=False, split_ai=split_ai,
                                        reference=pool.reference(audited, population, split.population))
            best = max(results, key=lambda r: r.metrics["auc"])
            label = defense + "".join(f" {k}={v}" for k, v in params.items())
            eps = target.defense_metrics.get("dp.epsilon")
            rows.append(f"| {label} | {target.test_accuracy:.3f} | {best.metrics['auc']:.3f} ({best.name}) | "
                        f"{max(r.metrics['tpr_at_fpr_0.001'] for r in results):.3f} | "
                        f"{'' if eps is None else f'{eps:.2f}'} | {time.perf_counter() - start:.0f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="purchase-synth,digits")
    parser.add_argument("--reference-models", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--defenses", default="", help="comma-separated subset of the rows (default: all)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    only = [d for d in args.defenses.split(",") if d] or None
    body = []
    for dataset in args.datasets.split(","):
        body += [f"### {dataset}", "",
                 "| defense | test acc | max AUC (attack) | max TPR@0.1% FPR | epsilon | seconds |",
                 "| --- | ---: | --- | ---: | ---: | ---: |", *run(dataset, args.reference_models, args.device, only), ""]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        device = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        write_section(SECTION, f"- date: {dt.date.today()}\n- device: {device}\n- command: "
                      f"`python benchmarks/defense_comparison.py --datasets {args.datasets} "
                      f"--reference-models {args.reference_models}`\n- every attack of the tool against each "
                      "target (for selena also selena-adaptive); reference pool non-adaptive (the attacker does not know "
                      "the defense), its models stopped where the row's target stopped (rows whose targets stopped at "
                      "the same epoch share it; seconds include training it); DP-SGD with its default DP recipe (4x "
                      "batch and learning rate); purchase-synth n=20000 (5000 members, 100 classes), `fc`; digits "
                      "`mlp`\n\n" + text)


if __name__ == "__main__":
    main()
