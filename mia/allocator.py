"""Keep freed CPU memory in the process: glibc malloc's settings for tensor-sized blocks.

Why: by default glibc hands every block above a dynamic threshold (at most
32 MB) back to the OS when it is freed, and a CPU training step frees and
allocates the same large blocks (activations, gradients, optimizer
temporaries) every step, so each step page-faults them in again. Measured on
2 cores (``benchmarks/pool_throughput.py``): 16 Purchase ``fc`` models one
after another 48.5 s -> 41.8 s, stacked 64.5 s -> 48.9 s, the process's system
time 26 s -> 2.4 s. This is what PyTorch's CPU tuning guide gets by preloading
jemalloc or tcmalloc, done with the C library that is already there.

The cost: the process keeps about its peak footprint instead of giving
memory back between trainings. Measured: twelve rounds of stacked and single
``fc`` trainings in one process plateau at 1339 MB from the second round on
(default malloc: a 1246 MB peak, about 850 MB between trainings); the
footprint does not grow past that plateau.

Called once by the ``mia`` command and the benchmark scripts, never on import:
it is a setting of the whole process, for applications to choose, not for a
library to impose on its host. A user who tunes malloc already (any
``MALLOC_*`` variable, or a preloaded allocator) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30
"""Blocks below this come from the heap, and up to this much free memory stays mapped (1 GiB)."""


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`KEEP_BYTES`; whether the settings were applied.

    Does nothing (and returns False) off glibc, or where the user's
    environment already chooses the allocator or its settings.
    """
    if os.environ.get("LD_PRELOAD") or any(key.startswith("MALLOC_") for key in os.environ):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
