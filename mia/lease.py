"""One machine at a time for work that ``mia`` processes on several machines sharing a tracking store would repeat.

:mod:`mia.lock` makes the processes of one machine take turns at a
reference pool; workers on several machines (``mia tune`` started on each
with one ``--storage`` and one tracking server) each found the pool missing
and each trained it, an extra pool of GPU time per machine. A lease makes the
later ones wait for the first and then find its models.

MLflow offers no compare-and-swap, so the lease is written in tags of the
pool's own run, where the MLflow UI shows who holds it:

* ``mia.lease_holder``: ``host:pid:machine:nonce`` of the holder (machine:
  this boot and pid namespace, so a holder here that has exited is known at
  once). A process claims a free lease by writing its own name, waits
  :data:`SETTLE` seconds, and holds it if its name is still there (of two
  claimers the last write wins, and both read the same winner once both
  writes are visible);
* ``mia.lease_heartbeat``: a counter the holder advances every
  :data:`HEARTBEAT` seconds. A holder whose heartbeat a waiter has not seen
  change for :data:`STALE` seconds (on the waiter's own clock, so skewed
  clocks do not matter) is taken for dead (killed, or cut off) and its lease
  claimed.

The lease saves compute; it does not guard correctness. A pool's models are
fixed by their index and seed, so if the timing assumptions fail (a claimer
stalled for longer than :data:`SETTLE`, a holder's heartbeats lost for
:data:`STALE` seconds) two machines train the same models, as they did before
the lease, and the pool is the same.

Whether a store is shared: ``$MIA_STORE_LEASE`` ``on``, ``off`` or ``auto``
(the default: on for a tracking server or a database server, off for a
SQLite file or a ``./mlruns`` folder, which one machine uses; set ``on`` for
such a file on a network file system that several machines open).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import socket
import sys
import threading
import time
import uuid
from typing import Iterator

from mia.errors import MiaError

__all__ = ["HOLDER", "HEARTBEAT_TAG", "lease", "store_is_shared"]

HOLDER = "mia.lease_holder"
HEARTBEAT_TAG = "mia.lease_heartbeat"
SETTLE = 1.0
"""Seconds between writing a claim and reading it back: longer than any tracking request takes."""
HEARTBEAT = 20.0
"""Seconds between a holder's heartbeats."""
STALE = 180.0
"""Seconds without a new heartbeat after which a waiter takes the holder for dead."""
POLL = 5.0
"""Seconds between a waiter's looks at the lease."""
ENV = "MIA_STORE_LEASE"

_held = threading.local()  # .runs: the leases this thread holds; asked again inside, no wait on itself


def store_is_shared(uri: str) -> bool:
    """Whether machines other than this one may use the tracking store ``uri`` (``$MIA_STORE_LEASE``)."""
    setting = os.environ.get(ENV, "auto").strip().lower()
    if setting not in ("on", "off", "auto"):
        raise MiaError(f"${ENV} must be on, off or auto, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    lowered = uri.strip().lower()
    if lowered.startswith(("sqlite:", "file:")):
        return False
    return "://" in lowered or lowered.startswith("databricks")  # a server; a bare path is a ./mlruns store


@contextlib.contextmanager
def lease(client, run_id: str, what: str, refused: tuple[type[Exception], ...]) -> Iterator[None]:
    """Hold the lease of run ``run_id`` (an :class:`mlflow.tracking.MlflowClient`'s) for the block.

    While a live process elsewhere holds it, say so once on stderr and wait;
    ``what`` names the work (e.g. "reference pool 1a2b3c4d"). ``refused`` are
    the client's errors for a write that lost a race (``MlflowException``,
    passed in by :mod:`mia.tracking` so that MLflow stays behind it): retried
    a few times; any other error propagates at once.
    """
    if not hasattr(_held, "runs"):
        _held.runs = set()
    if run_id in _held.runs:
        yield
        return
    me = f"{socket.gethostname()}:{os.getpid()}:{_machine()}:{uuid.uuid4().hex[:8]}"
    stop, beat = threading.Event(), None
    try:
        _acquire(client, run_id, me, what, refused)
        _held.runs.add(run_id)
        beat = threading.Thread(target=_beat, args=(client, run_id, me, stop), daemon=True, name="mia-lease")
        beat.start()
        yield
    finally:  # also after a signal during the claim: a claim left behind would stall the others STALE seconds
        stop.set()
        if beat is not None:
            beat.join()
        _held.runs.discard(run_id)
        with contextlib.suppress(Exception):  # the store unreachable: the lease goes stale for the next one
            if _tags(client, run_id).get(HOLDER) == me:
                client.delete_tag(run_id, HOLDER)
                client.delete_tag(run_id, HEARTBEAT_TAG)


def _tags(client, run_id: str) -> dict[str, str]:
    return client.get_run(run_id).data.tags


def _acquire(client, run_id: str, me: str, what: str, refused: tuple[type[Exception], ...]) -> None:
    seen, since, said, refusals = None, time.monotonic(), False, 0
    while True:
        tags = _tags(client, run_id)
        holder = tags.get(HOLDER)
        if holder is not None and holder != me:
            now = (holder, tags.get(HEARTBEAT_TAG))
            if now != seen:  # a new holder, or a live one's heartbeat: wait on
                seen, since = now, time.monotonic()
            host, pid, machine = (holder.split(":") + ["", "", ""])[:3]
            if time.monotonic() - since < STALE and not _dead_here(pid, machine):
                if not said:
                    print(f"waiting for another mia process (pid {pid} on {host}) that is making {what} "
                          "(it will be reused here)", file=sys.stderr, flush=True)
                    said = True
                time.sleep(POLL)
                continue
            gone = "has exited" if _dead_here(pid, machine) else f"has not been heard from for {STALE:.0f} s"
            print(f"the mia process {pid} on {host} that was making {what} {gone}; going on here",
                  file=sys.stderr, flush=True)
        try:  # free, or its holder silent for STALE seconds: claim it
            client.set_tag(run_id, HOLDER, me)
            client.set_tag(run_id, HEARTBEAT_TAG, "0")
        except refused:  # a SQL store refuses one of two writes of one new tag at once: read again
            refusals += 1
            if refusals > 3:  # not a race: a store that refuses tags
                raise
            seen = None
            time.sleep(random.uniform(0, SETTLE))
            continue
        time.sleep(SETTLE)
        if _tags(client, run_id).get(HOLDER) == me:
            return
        seen = None  # another claimer's write came last: it holds the lease now


def _machine() -> str:
    """This kernel boot and pid namespace: where a holder's pid names the same process (Linux; else "").

    Containers sharing the host's network share its host name, not its pids;
    cloned VMs share a host name, not a boot.
    """
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:12]


def _dead_here(pid: str, machine: str) -> bool:
    """Whether the holder ran here (this boot, this pid namespace) and has exited: a crashed run's lease is
    free at once, not after STALE seconds."""
    if not machine or machine != _machine() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _beat(client, run_id: str, me: str, stop: threading.Event) -> None:
    for count in itertools.count(1):
        if stop.wait(HEARTBEAT):
            return
        try:
            if _tags(client, run_id).get(HOLDER) != me:  # taken over while cut off: keep no one else's alive
                return
            client.set_tag(run_id, HEARTBEAT_TAG, str(count))
        except Exception:  # noqa: BLE001  (a lost heartbeat or two is not a dead holder)
            pass
