"""One process at a time for work that several ``mia`` processes on a machine would otherwise repeat.

A reference-model pool, or a set of mem-score models, is trained once and
reused. Two processes that ask for the same one at the same moment (the
first trials of ``mia tune --jobs N``, two ``mia attack`` runs on one target)
both found nothing stored and both trained it: N-1 wasted pools, each
possibly hours of GPU time. :func:`exclusive` makes the second wait for the
first and then find its models.

The lock is an ``flock`` on an empty file per name in a folder of this
user's (``$TMPDIR/mia-<uid>-locks``): the kernel releases it when its holder
exits or is killed, so no crash leaves a stale lock behind. It coordinates
the processes of one machine; :mod:`mia.lease` coordinates machines that
share a tracking store. Without ``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no lock, each process trains what it finds missing
    fcntl = None

__all__ = ["exclusive", "lock_folder"]

_held = threading.local()  # .names: what this thread holds; asked again inside, no wait (flock would wait on itself)


def lock_folder() -> Path:
    """Where the lock files live: this user's, in the system's temporary folder."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"mia-{uid}-locks"


@contextlib.contextmanager
def exclusive(name: str, what: str) -> Iterator[None]:
    """Hold the machine-wide lock ``name`` for the block; while another process holds it, say so and wait.

    ``what`` names the work for the one line printed while waiting (on
    stderr, e.g. "reference pool 1a2b3c4d").
    """
    if not hasattr(_held, "names"):
        _held.names = set()
    held = _held.names
    if fcntl is None or name in held:
        yield
        return
    folder = lock_folder()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(folder / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".lock"),
                     os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # no writable temporary folder: go on unlocked, as before locks existed
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another mia process that is making {what} (it will be reused here)",
                  file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(name)
        try:
            yield
        finally:
            held.discard(name)
    finally:
        os.close(fd)  # releases the lock
