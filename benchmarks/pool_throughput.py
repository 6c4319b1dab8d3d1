"""Reference-model pools: many models at a time (``mia.train.many``) against one after another, same process.

LiRA/RMIA train M reference models with the target's recipe on random halves
of the attacker's data. Both ways below train the same M models (same seeds,
same train sets, same recipe, best-epoch selection on a shared validation
set); the figures are models per second and training samples per second
(``M x rows x epochs / wall time``, validation excluded from the count but not
from the time), and the mean validation accuracy of the M models as a check
that both trained equally well.

* one after another: ``seed_everything(seed)``, ``build_model``, ``mia.train.train``
  per model (the loop everything else uses);
* many at a time: ``train_many`` with ``stack=True`` (stacked parameters under
  ``torch.vmap``) for models without BatchNorm, and its one-module path for
  BatchNorm CNNs (one compiled graph for all models on CUDA). The table also
  says which path ``train_many`` takes by default on the device
  (``stack_pays``: on the CPU only models up to ``CPU_STACK_MAX_PARAMS``
  parameters stack, the others train one by one at the first row's speed).

Cases: (a) ``fc`` on purchase-synth (600 binary features, 100 classes), M=16,
5000-row train sets drawn from a 10000-row pool, 10 epochs, batch 128, Adam
1e-3; (b) ``mlp`` on scikit-learn digits, M=32, 650-row train sets from a
1300-row pool, 10 epochs, its recipe (Adam 1e-3, batch 64); (c) ``mlp`` on
purchase-synth, M=16, 2500 rows, batch 128 and (d) ``cnn-small`` on digits,
M=8, batch 64, both 10 epochs of Adam: models between (b) and (a) in size,
where the CPU rule draws its line. On CUDA also (e) WRN-28-2 (BatchNorm) on
CIFAR-shaped synthetic data through the fallback path with
``torch.compile``: the large-CNN path, where reuse of one compiled module is
the gain (each new module object would otherwise compile again).
A one-epoch warm-up of both ways runs first, so one-time imports and kernel
selection are not timed. Needs only torch and numpy (and scikit-learn for
digits) besides ``mia``. The result replaces this device type's section of
``benchmarks/RESULTS.md`` and leaves the other sections alone.

    python benchmarks/pool_throughput.py [--device auto] [--cases fc,mlp[,wrn]] [--no-write]
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

from mia.data import Dataset, load_dataset  # noqa: E402
from mia.models import build_model  # noqa: E402
from mia.train import TrainConfig, predict_logits, resolve_device, seed_everything, train  # noqa: E402
from mia.train.many import stack_pays, stackable, train_many  # noqa: E402

GOAL = 5.0  # many-at-a-time speed-up wanted for the MLPs


@dataclass
class Case:
    """One benchmark: M models of ``model`` on ``data``, each on ``rows`` rows of ``pool``."""

    label: str
    model: str
    data: Dataset
    pool: np.ndarray
    val: np.ndarray
    models: int
    rows: int
    config: TrainConfig
    norm: str = "bn"

    def train_sets(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        return np.stack([rng.choice(self.pool, self.rows, replace=False) for _ in range(self.models)])


@dataclass
class Timing:
    seconds: float
    val_accuracy: float


def fc_case(device: torch.device, models: int | None) -> Case:
    data = load_dataset("purchase-synth", n=11_000)
    config = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=128,
                         epochs=10, augment=False, device=str(device))
    return Case("(a) fc, purchase-synth", "fc", data, np.arange(10_000), np.arange(10_000, 11_000),
                models or 16, 5000, config)


def mlp_case(device: torch.device, models: int | None) -> Case:
    data = load_dataset("digits")
    perm = np.random.default_rng(0).permutation(len(data))
    config = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=64,
                         epochs=10, augment=False, device=str(device))
    return Case("(b) mlp, digits", "mlp", data, perm[:1300], perm[1300:], models or 32, 650, config)


def mlp_purchase_case(device: torch.device, models: int | None) -> Case:
    data = load_dataset("purchase-synth", n=11_000)
    config = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=128,
                         epochs=10, augment=False, device=str(device))
    return Case("(c) mlp, purchase-synth", "mlp", data, np.arange(10_000), np.arange(10_000, 11_000),
                models or 16, 2500, config)


def cnn_digits_case(device: torch.device, models: int | None) -> Case:
    data = load_dataset("digits")
    perm = np.random.default_rng(0).permutation(len(data))
    config = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=64,
                         epochs=10, augment=False, device=str(device))
    return Case("(d) cnn-small, digits", "cnn-small", data, perm[:1300], perm[1300:], models or 8, 650, config)


def wrn_case(device: torch.device, models: int | None) -> Case:
    """CIFAR-shaped uint8 noise: the timing, not the accuracy, is the point of this case."""
    g = torch.Generator().manual_seed(0)
    data = Dataset("synthetic-cifar", torch.randint(0, 256, (11_000, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (11_000,), generator=g), 10, "image", (0.5,) * 3, (0.25,) * 3, augment=True)
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                         batch_size=256, epochs=3, augment=True, device=str(device), compile=True)
    return Case("(e) wrn28-2 (BatchNorm, compiled)", "wrn28-2", data, np.arange(10_000),
                np.arange(10_000, 11_000), models or 4, 5000, config)


def one_after_another(case: Case, sets: np.ndarray, config: TrainConfig) -> Timing:
    """``mia.train.train`` per model, each with its own freshly built module."""
    device = resolve_device(config.device)
    sync(device)
    t0 = time.perf_counter()
    models = []
    for m, rows in enumerate(sets):
        seed_everything(m)
        model = build_model(case.model, case.data.input_shape, case.data.num_classes, case.norm)
        train(model, case.data, rows, case.val, replace(config, seed=m), progress=False)
        models.append(model)
    sync(device)
    return Timing(time.perf_counter() - t0, mean_accuracy(models, case))


def many_at_a_time(case: Case, sets: np.ndarray, config: TrainConfig) -> Timing:
    device = resolve_device(config.device)
    sync(device)
    t0 = time.perf_counter()
    models = train_many(case.model, case.data.input_shape, case.data.num_classes, case.norm, case.data, sets,
                        case.val, config, seeds=range(len(sets)), progress=False,
                        stack=stackable(case.model, case.norm))
    sync(device)
    return Timing(time.perf_counter() - t0, mean_accuracy(models, case))


def mean_accuracy(models: list[torch.nn.Module], case: Case) -> float:
    y = case.data.y[torch.as_tensor(case.val)]
    accs = [float((predict_logits(m, case.data, case.val, device=case.config.device).argmax(1) == y)
                  .float().mean()) for m in models]
    return float(np.mean(accs))


def run_case(case: Case) -> tuple[list[str], float]:
    """Warm up both ways, then time them: one table row per way, and the speed-up."""
    sets = case.train_sets()
    warm = replace(case.config, epochs=1)
    one_after_another(case, sets[:1], warm)
    many_at_a_time(case, sets[:2], warm)
    seq = one_after_another(case, sets, case.config)
    many = many_at_a_time(case, sets, case.config)
    samples = case.models * case.rows * case.config.epochs
    model = build_model(case.model, case.data.input_shape, case.data.num_classes, case.norm)
    params = sum(p.numel() for p in model.parameters())
    can = stackable(case.model, case.norm)
    path = "stacked (vmap)" if can else "one module reused"
    default = "stacked" if can and stack_pays(model, resolve_device(case.config.device)) else "one by one"
    rows = []
    for way, t in (("one after another (`train`)", seq), (f"many at a time (`train_many`, {path})", many)):
        rows.append(f"| {case.label}, M={case.models} | {params / 1e3:,.0f}k | {default} | {way} | {t.seconds:.1f} | "
                    f"{case.models / t.seconds:.2f} | {samples / t.seconds:,.0f} | {seq.seconds / t.seconds:.2f}x | "
                    f"{t.val_accuracy:.3f} |")
    print("\n".join(rows), flush=True)
    return rows, seq.seconds / many.seconds


CASES = {"fc": fc_case, "mlp": mlp_case, "mlp-purchase": mlp_purchase_case, "cnn-digits": cnn_digits_case,
         "wrn": wrn_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default=None, help=f"comma-separated, of {', '.join(CASES)} "
                                                     "(default: all but wrn on the CPU, all on CUDA)")
    parser.add_argument("--models", type=int, default=None, help="M for every case (default: see above)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    names = args.cases.split(",") if args.cases else [n for n in CASES if cuda or n != "wrn"]
    load = os.getloadavg()[0]  # other jobs on the machine skew CPU figures: say so in the result
    header = ["| case | parameters per model | `train_many` default here | way | seconds | models/s | "
              "samples/s | speed-up | mean val acc |",
              "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    print("\n".join(header), flush=True)
    results = {name: run_case(CASES[name](device, args.models)) for name in names}
    table = "\n".join(header + [row for rows, _ in results.values() for row in rows])
    text_goal = ""
    if "mlp" in results or "fc" in results:
        ratios = ", ".join(f"{label} {results[name][1]:.2f}x" for name, label in (("fc", "(a)"), ("mlp", "(b)"))
                           if name in results)
        met = all(results[name][1] >= GOAL for name in ("fc", "mlp") if name in results)
        text_goal = f"\nGoal: at least {GOAL:.0f}x for the MLPs; here {ratios}: {'met' if met else 'not met'}.\n"
    note = (text_goal + "\nOn a CPU a model's step is mostly arithmetic already, so stacking removes only the "
            "fixed cost per step (Python, autograd, one optimizer kernel per parameter and op) and adds what "
            "batched matmuls gain in efficiency: the smaller the model, the larger the gain, and the "
            "1.3M-parameter fc net gains nothing, its step being large matmuls either way. So on the CPU `train_many` stacks only models up to "
            "`CPU_STACK_MAX_PARAMS` parameters and trains larger ones one by one, at the baseline's speed "
            "(the default column). The goal is the GPU's case, where a small model's step is kernel-launch "
            "latency: `python benchmarks/pool_throughput.py --device cuda`.\n\n"
            "How far stacking can go on this CPU: `python benchmarks/stack_ceiling.py` (section \"The stacked "
            "step's ceiling on this CPU\"): the batched matmuls of 32 digits `mlp` steps alone are about 5x the 32 "
            "steps one after another, and a step written by hand without autograd about 3.4x, so no float32 "
            "stacking scheme reaches 5x here.\n"
            if not cuda else
            text_goal + "\n(e) is the large-CNN path: BatchNorm models do not stack, so the gain is one compiled "
            "graph reused across models instead of a compilation per new module object.\n")
    text = (f"- date: {dt.date.today().isoformat()}\n- device: {device_name(device)}\n"
            f"- torch {torch.__version__}, numpy {np.__version__}\n"
            f"- 1-minute load average at start: {load:.1f} (other processes share the machine)\n"
            f"- command: `python benchmarks/pool_throughput.py{' --device cuda' if cuda else ''}`\n"
            f"- speed-up: wall time one after another / wall time of this way, same process, same seeds and "
            f"train sets; samples/s counts training rows x epochs\n\n{table}\n{note}")
    publish(f"## Many models at once, reference-model pools ({'CUDA' if cuda else 'CPU'})", text, not args.no_write)


if __name__ == "__main__":
    main()
