"""Time of the ``noise-flip`` label-only signals at the real tabular sizes (CPU or CUDA).

``noise-flip`` queries 100 copies of every audited row with 10 random bits
flipped; on a Purchase100 or Texas100 audit it is most of the label-only
time (RESULTS.md, "Real-size datasets on the CPU"). This times
``label_only_signals(kinds=("noise-flip",))`` of an ``fc`` net on random
binary rows with the real feature counts, and prints the mean signal, so
that a run of another commit (a git worktree first on ``PYTHONPATH``) gives
the same-run baseline:

    python benchmarks/noise_flip.py [--rows 2000] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, sync  # noqa: E402
from mia.data.base import Dataset  # noqa: E402
from mia.label_signals import label_only_signals  # noqa: E402
from mia.models import build_model  # noqa: E402

SHAPES = {"Purchase100": (600, 100), "Texas100": (6169, 100)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(device_name(device))
    for name, (features, classes) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        x = (torch.rand((args.rows, features), generator=g) < 0.1).to(torch.uint8)
        torch.manual_seed(0)
        net = build_model("fc", (features,), classes).to(device)
        with torch.no_grad():  # the net's own labels, so that the fractions are spread, not all 0
            y = net(x.float().to(device)).argmax(1).cpu()
        data = Dataset(name, x, y, classes, "tabular")
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            got = label_only_signals(net, data, np.arange(args.rows), kinds=("noise-flip",), device=device)
            sync(device)
            times.append(time.perf_counter() - start)
        fraction = got["noise-flip"]
        print(f"{name}: {args.rows} rows, best of {args.repeats}: {min(times):.2f} s "
              f"({args.rows / min(times):.0f} rows/s); mean signal {fraction.mean():.4f}, sd {fraction.std():.4f}")


if __name__ == "__main__":
    main()
