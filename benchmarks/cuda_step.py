"""One CUDA training step of the CIFAR models by batch size and execution mode: where the time goes.

A bare step (bf16 autocast, channels-last, fused SGD, synthetic tensors
already on the device, no data pipeline) timed three ways: eager,
``torch.compile`` in its default mode, and with CUDA graphs
(``mode="reduce-overhead"``, what :func:`mia.train.loop.compile_for_cuda` uses).
Besides the wall time per step it reports the host's time to enqueue the
steps: when the two are equal the step is bound by the host launching
kernels, not by the GPU, and only fewer launches (CUDA graphs) make it
faster. This is why ``TrainConfig.compile`` means CUDA graphs. Needs only
torch besides ``mia``; CUDA only.

    python benchmarks/cuda_step.py [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import device_name, publish  # noqa: E402

from mia.models import build_model  # noqa: E402

CASES = [  # model, batch, mode, channels-last, bf16
    ("resnet18", 128, "eager", False, False),
    ("resnet18", 128, "eager", False, True),
    ("resnet18", 128, "eager", True, True),
    ("resnet18", 512, "eager", True, True),
    ("resnet18", 512, "default", True, True),
    ("resnet18", 128, "reduce-overhead", True, True),
    ("resnet18", 512, "reduce-overhead", True, True),
    ("wrn28-2", 512, "eager", True, True),
    ("wrn28-2", 512, "default", True, True),
    ("wrn28-2", 512, "reduce-overhead", True, True),
]


def step_rate(model_name: str, batch: int, mode: str, channels_last: bool, bf16: bool, steps: int = 40
              ) -> tuple[float, float, float]:
    """(images/s, ms per step, host ms per step to enqueue) after five warm-up steps."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_name, (3, 32, 32), 10).to("cuda", memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True)
    forward = model if mode == "eager" else torch.compile(model, mode=None if mode == "default" else mode)
    x = torch.randn(batch, 3, 32, 32, device="cuda").contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device="cuda")

    def step() -> None:
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return batch * steps / wall, wall / steps * 1e3, host / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_step.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    rows = ["| model | batch | mode | channels-last | bf16 | images/s | ms per step | host ms per step |",
            "| --- | ---: | --- | --- | --- | ---: | ---: | ---: |"]
    print("\n".join(rows), flush=True)
    for model, batch, mode, cl, bf16 in CASES:
        rate, ms, host = step_rate(model, batch, mode, cl, bf16)
        rows.append(f"| {model} | {batch} | {mode} | {'yes' if cl else 'no'} | {'yes' if bf16 else 'no'} | "
                    f"{rate:,.0f} | {ms:.2f} | {host:.2f} |")
        print(rows[-1], flush=True)
    text = (f"- date: {dt.date.today().isoformat()}\n- device: {device_name(torch.device('cuda'))}\n"
            f"- torch {torch.__version__}\n- command: `python benchmarks/cuda_step.py`\n"
            "- a bare step (fused SGD, synthetic inputs on the device), 40 timed steps after 5 warm-up ones; "
            "host ms: the time to enqueue them (equal to the wall time: bound by kernel launches)\n\n"
            + "\n".join(rows) + "\n")
    publish("## One CUDA training step by mode (CUDA)", text, not args.no_write)


if __name__ == "__main__":
    main()
