"""What every benchmark script shares: the device's name, syncing, and its section of RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from mia.allocator import keep_freed_memory

keep_freed_memory()  # as the ``mia`` command does, so the figures are what users get

RESULTS = Path(__file__).with_name("RESULTS.md")
ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name, or the CPU model and torch's thread count."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {model}, {torch.get_num_threads()} threads"


def publish(heading: str, text: str, write: bool = True) -> None:
    """Print a benchmark's section and, unless ``write`` is False (``--no-write``), record it in RESULTS.md."""
    print(text)
    if write:
        write_section(heading, text)
        print(f"written to {RESULTS}")


def write_section(heading: str, text: str) -> None:
    """Replace (or append) the ``## heading`` section of RESULTS.md, keeping every other section."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{heading}\n\n{text.strip()}\n\n"
    new = pattern.sub(lambda _: section, old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    RESULTS.write_text(new.rstrip() + "\n")


def peak_mb(code: str, *args: str) -> float:
    """MB of peak RSS that ``code``, run in a fresh process with ``args``, adds above a point it chooses.

    ``code`` prints two numbers last: ``ru_maxrss`` at that point and at its end (peak RSS is per process,
    so each setting needs a process of its own).
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    before, after = int(out[-2]), int(out[-1])
    return (after - before) / 1024  # ru_maxrss is in KB on Linux
