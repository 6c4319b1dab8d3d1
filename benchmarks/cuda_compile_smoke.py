"""``--compile`` on CUDA through every defense that trains with the one loop: same accuracy, no errors.

``TrainConfig.compile`` runs the model under CUDA graphs
(:func:`mia.train.loop.compile_for_cuda`), which constrains what a training
step may do with the model's outputs. Each defense below trains the digits
``cnn-small`` target eagerly and compiled, with the same seed and recipe;
the script prints both test accuracies and fails (exit 1) if a compiled run
raises or lands more than 5 points below the eager one. DP-SGD is not here:
it runs its own loop (Opacus), never compiled. A check, not a timing: the
compiled runs pay their compilation. CUDA only; needs only torch, numpy and
scikit-learn besides ``mia``.

    python benchmarks/cuda_compile_smoke.py
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402,F401  (keeps freed memory, as the CLI does)

from mia.train.predict import accuracy  # noqa: E402
from mia.data import load_dataset, make_split  # noqa: E402
from mia.defenses import make_defense  # noqa: E402
from mia.models import build_model  # noqa: E402
from mia.train import seed_everything  # noqa: E402
from mia.train.recipes import default_config  # noqa: E402

DEFENSES = ("none", "advreg", "early-stopping", "hamp", "label-smoothing", "mixup", "relaxloss", "ppb",
            "selena", "memguard", "confidence-masking")
TOLERANCE = 0.05


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("cuda_compile_smoke.py needs a CUDA device")
    data = load_dataset("digits").to(torch.device("cuda"))
    split = make_split(len(data), 0)
    recipe = default_config("digits", "cnn-small", device="cuda", epochs=8)
    failed = []
    print("| defense | eager test acc | compiled test acc | compiled s |", "| --- | ---: | ---: | ---: |", sep="\n")
    for name in DEFENSES:
        accs, seconds = [], 0.0
        for compile in (False, True):
            seed_everything(0)
            defense = make_defense(name, {}, seed=0)
            start = time.perf_counter()
            try:
                network, _ = defense.fit(lambda: build_model("cnn-small", data.input_shape, data.num_classes),
                                         data, split.members, split.validation, replace(recipe, compile=compile),
                                         progress=False)
            except Exception as error:  # noqa: BLE001  (report every defense, then fail)
                print(f"| {name} | {'compiled' if compile else 'eager'} run raised: {error!r} |")
                failed.append(name)
                break
            seconds = time.perf_counter() - start
            accs.append(accuracy(defense.release(network), data, split.nonmembers, "cuda"))
        if len(accs) == 2:
            print(f"| {name} | {accs[0]:.3f} | {accs[1]:.3f} | {seconds:.0f} |", flush=True)
            if accs[1] < accs[0] - TOLERANCE:
                failed.append(name)
    if failed:
        sys.exit(f"--compile failed for: {', '.join(failed)}")
    print("--compile: every defense trained, within the tolerance")


if __name__ == "__main__":
    main()
