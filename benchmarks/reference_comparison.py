"""Every attack at M = 1, 2, 4, 16, 64 reference models: AUC and TPR at 0.1% FPR with intervals.

One target per dataset, one reference pool grown to the largest M (the first M
models serve each smaller M, as a cached pool would), every attack of the
tool on the same stored signals. Intervals are 95% stratified bootstrap
intervals over the audited samples. Needs only the mia core (no MLflow).

    python benchmarks/reference_comparison.py [--datasets digits,purchase-synth] [--models 1,2,4,16,64]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, write_section  # noqa: E402

from mia import audit  # noqa: E402
from mia.attacks import selection  # noqa: E402
from mia.attacks import ATTACKS  # noqa: E402
from mia.data import make_split  # noqa: E402

SECTION = "## Attacks by number of reference models"
SETTINGS = {
    "digits": dict(dataset_params={}, epochs=30),
    "purchase-synth": dict(dataset_params={"n": 4000}, epochs=30),
}


def run(dataset: str, sizes: list[int], device: str, seed: int = 0) -> list[dict]:
    setting = SETTINGS[dataset]
    config = audit.resolve_config(dataset, seed=seed, train_overrides={"epochs": setting["epochs"], "device": device},
                                  dataset_params=setting["dataset_params"])
    config = selection.label_only_for(config, "all")  # the label-only signals `--attacks all` reads
    data = audit.load_data(config)
    split = make_split(len(data), seed, config.split)
    target = audit.fit(config, data, split.members, split.validation, split.nonmembers, seed=seed, progress=False)
    audited, population = audit.target_signals(target.model, data, split, config)
    _, is_member = split.query()
    recipe = audit.attacker_config(config, released_epoch=target.best_epoch)  # as `mia attack` does
    plan = audit.plan_reference_pool(recipe, data, split, "online")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        audit.reference_pool(plan, recipe, data, max(sizes), root, progress=False)
        pool_seconds = time.perf_counter() - start
        for m in sizes:
            pool, _ = audit.reference_pool(plan, recipe, data, m, root, progress=False)
            results = audit.run_attacks(selection.applicable(ATTACKS.names(), audited), audited, is_member,
                                        pool.shadows(), progress=False,
                                        reference=pool.reference(audited, population, split.population))
            for r in results:
                ci = r.metrics
                rows.append({"dataset": dataset, "M": m, "attack": r.name, "auc": r.metrics["auc"],
                             "auc_ci": (ci["auc_ci_low"], ci["auc_ci_high"]),
                             "tpr": r.metrics["tpr_at_fpr_0.001"],
                             "tpr_ci": (ci["tpr_at_fpr_0.001_ci_low"], ci["tpr_at_fpr_0.001_ci_high"])})
    print(f"{dataset}: test accuracy {target.test_accuracy:.3f}, train accuracy {target.train_accuracy:.3f}, "
          f"{max(sizes)} reference models in {pool_seconds:.1f} s, {len(is_member)} audited samples")
    rows.append({"dataset": dataset, "meta": (target.test_accuracy, target.train_accuracy, pool_seconds,
                                              len(is_member))})
    return rows


def table(rows: list[dict], sizes: list[int]) -> str:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        meta = next(r["meta"] for r in rows if r["dataset"] == dataset and "meta" in r)
        lines += [f"### {dataset}", "",
                  f"Target test accuracy {meta[0]:.3f} (train {meta[1]:.3f}); {meta[3]} audited samples; "
                  f"{max(sizes)} reference models trained in {meta[2]:.1f} s.", "",
                  "AUC [95% CI] / TPR at 0.1% FPR [95% CI]", "",
                  "| attack | " + " | ".join(f"M={m}" for m in sizes) + " |",
                  "| --- | " + " | ".join("---" for _ in sizes) + " |"]
        attacks = list(dict.fromkeys(r["attack"] for r in rows if r["dataset"] == dataset and "attack" in r))
        for name in attacks:
            cells = []
            for m in sizes:
                r = next(r for r in rows if r.get("attack") == name and r["M"] == m and r["dataset"] == dataset)
                cells.append(f"{r['auc']:.3f} [{r['auc_ci'][0]:.3f}, {r['auc_ci'][1]:.3f}] / "
                             f"{r['tpr']:.3f} [{r['tpr_ci'][0]:.3f}, {r['tpr_ci'][1]:.3f}]")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,purchase-synth")
    parser.add_argument("--models", default="1,2,4,16,64")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sizes = [int(m) for m in args.models.split(",")]
    rows = [row for d in args.datasets.split(",") for row in run(d, sizes, args.device)]
    body = table(rows, sizes)
    print(body)
    if not args.no_write:
        device = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        write_section(SECTION, f"- date: {dt.date.today()}\n- device: {device}\n- torch {torch.__version__}\n"
                      f"- command: `python benchmarks/reference_comparison.py --datasets {args.datasets} "
                      f"--models {args.models}`\n- online pool (each model trains on as many samples as the target, so "
                      "an audited sample is IN for about 30 % of the models); threshold and learned attacks fit on "
                      "the same pool's models as shadows; RMIA chooses its mode, temperature, a and gamma on the "
                      "reference models; the reference models run the target's schedule and stop after its released (best "
                      "validation) epoch\n\n"
                      + body)


if __name__ == "__main__":
    main()
