"""The ``mia`` command keeps freed CPU memory mapped, so training steps stop page-faulting (mia/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
from mia.allocator import keep_freed_memory

applied = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(512, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096))
opt = torch.optim.Adam(net.parameters(), fused=True)
x = torch.randn(32, 512)  # few rows: the 64 MB weight gradient is what faults, not the arithmetic

def step():  # a 64 MB weight: its gradient and Adam's temporaries are freed and taken again every step
    opt.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
    opt.step()

for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str, **env: str) -> tuple[str, int]:
    """Run four steps in a fresh process (malloc settings are per process); whether applied, and the faults."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={**base, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_stops_the_page_faults_of_a_training_step():
    applied, kept = page_faults("keep")
    _, default = page_faults("default")
    assert applied == "True"
    assert default > 10_000  # each step maps its large blocks afresh and faults every page in
    assert kept < default / 4  # a block now and then may still land on fresh heap, not one per step


def test_a_user_who_tunes_malloc_is_left_alone():
    applied, _ = page_faults("keep", MALLOC_ARENA_MAX="2")
    assert applied == "False"
