"""The lease that keeps machines sharing one tracking store from training one reference pool each."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mia import lease, tracking
from mia.errors import MiaError


REFUSED = (MlflowException,)
"""What :mod:`mia.tracking` passes: a write an SQL store refused while another one wrote the tag."""


@pytest.fixture
def fast(monkeypatch):
    """The lease's timings cut to fractions of a second."""
    for name, value in (("SETTLE", 0.3), ("POLL", 0.05), ("HEARTBEAT", 0.1), ("STALE", 0.8)):
        monkeypatch.setattr(lease, name, value)


def a_run(experiment: str = "leases") -> str:
    client = MlflowClient()
    return client.create_run(client.create_experiment(experiment)).info.run_id


@pytest.mark.parametrize("uri, setting, shared", [
    ("http://tracking:5000", None, True), ("https://tracking", None, True),
    ("postgresql://u:p@db/mlflow", None, True), ("databricks", None, True), ("databricks://profile", None, True),
    ("sqlite:///mlflow.db", None, False), ("file:///tmp/mlruns", None, False), ("./mlruns", None, False),
    ("sqlite:////nfs/mlflow.db", "on", True), ("http://tracking:5000", "off", False),
    ("http://tracking:5000", " Auto ", True),
])
def test_a_store_is_shared_when_it_is_a_server_or_the_user_says_so(monkeypatch, uri, setting, shared):
    if setting is None:
        monkeypatch.delenv(lease.ENV, raising=False)
    else:
        monkeypatch.setenv(lease.ENV, setting)
    assert lease.store_is_shared(uri) is shared


def test_a_bad_lease_setting_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(lease.ENV, "yes")
    with pytest.raises(MiaError, match=r"^\$MIA_STORE_LEASE must be on, off or auto, got 'yes'$"):
        lease.store_is_shared("http://tracking")


def test_a_bad_lease_setting_stops_a_command_before_it_trains(mlflow_store, monkeypatch):
    from click.testing import CliRunner

    from entrypoints.cli import main

    monkeypatch.setenv(lease.ENV, "yes")
    result = CliRunner().invoke(main, ["audit", "--epochs", "1", "--attacks", "loss", "--quiet"])
    assert result.exit_code != 0 and "\n" not in result.output.strip()
    assert "$MIA_STORE_LEASE must be on, off or auto, got 'yes'" in result.output
    assert not MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])


class RefusingClient:
    """An MLflow client whose first ``fails`` tag writes raise ``error``."""

    def __init__(self, error: Exception, fails: int):
        self.client, self.error, self.fails, self.writes = MlflowClient(), error, fails, 0

    def set_tag(self, *args):
        self.writes += 1
        if self.writes <= self.fails:
            raise self.error
        self.client.set_tag(*args)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_refused_claim_is_retried_and_any_other_error_propagates_at_once(mlflow_store, fast):
    """A store's refusal of a racing write is read again; a permission error or a bug is not a race, and waited
    on it would only delay the one-line error."""
    run_id = a_run()
    racing = RefusingClient(MlflowException("UNIQUE constraint failed: tags.key, tags.run_uuid"), fails=2)
    with lease.lease(racing, run_id, "reference pool test", REFUSED):
        assert racing.client.get_run(run_id).data.tags[lease.HOLDER].startswith(socket.gethostname())
    denied = RefusingClient(PermissionError("permission denied"), fails=1)
    began = time.monotonic()
    with pytest.raises(PermissionError), lease.lease(denied, run_id, "reference pool test", REFUSED):
        pass
    assert denied.writes == 1 and time.monotonic() - began < 0.3
    forever = RefusingClient(MlflowException("read-only store"), fails=99)
    with pytest.raises(MlflowException), lease.lease(forever, run_id, "reference pool test", REFUSED):
        pass
    assert forever.writes == 4  # three retries, then the store's own error


def test_claimers_at_once_hold_the_lease_one_at_a_time(mlflow_store, fast, capsys):
    """Three processes (threads here, each its own holder) that find the lease free at the same instant: the
    last write wins, the others wait, and the block runs once at a time, every one of them in the end."""
    run_id, client = a_run(), MlflowClient()
    start, inside, entered, overlaps = threading.Barrier(3), [], [], []

    def work(i: int) -> None:
        start.wait()
        with lease.lease(client, run_id, "reference pool test", REFUSED):
            inside.append(i)
            overlaps.append(len(inside) > 1)
            time.sleep(0.4)
            entered.append(i)
            inside.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(entered) == [0, 1, 2] and not any(overlaps)
    assert f"on {socket.gethostname()}) that is making reference pool test" in capsys.readouterr().err
    assert lease.HOLDER not in client.get_run(run_id).data.tags  # released by the last holder


def test_a_live_holder_is_waited_for_and_a_silent_one_taken_over(mlflow_store, fast, capsys):
    """A holder on another machine whose heartbeat goes on is waited for past ``STALE``; once its heartbeat stops
    (killed, cut off) the lease is taken ``STALE`` seconds later."""
    run_id, client = a_run(), MlflowClient()
    client.set_tag(run_id, lease.HOLDER, "gpu-7:4242:abcd")
    beating = threading.Event()
    beating.set()

    def heartbeat() -> None:
        for count in range(15):  # 1.5 s of heartbeats, about twice STALE
            client.set_tag(run_id, lease.HEARTBEAT_TAG, str(count))
            time.sleep(0.1)
        beating.clear()

    began = time.monotonic()
    threading.Thread(target=heartbeat, daemon=True).start()
    with lease.lease(client, run_id, "reference pool test", REFUSED):
        took = time.monotonic() - began
        assert not beating.is_set()
        assert client.get_run(run_id).data.tags[lease.HOLDER].startswith(f"{socket.gethostname()}:{os.getpid()}:")
    assert 1.5 + 0.8 - 0.2 < took < 1.5 + 0.8 + 5
    err = capsys.readouterr().err
    assert "waiting for another mia process (pid 4242 on gpu-7)" in err
    assert "the mia process 4242 on gpu-7 that was making reference pool test has not been heard from" in err


def test_a_holder_that_works_longer_than_stale_keeps_its_lease_by_its_heartbeat(mlflow_store, fast):
    """A pool that takes hours to train outlasts ``STALE`` many times over: the holder's heartbeat keeps a
    waiter from taking it over until the holder is done."""
    run_id, client = a_run(), MlflowClient()
    held, done = threading.Event(), []

    def hold() -> None:
        with lease.lease(client, run_id, "reference pool test", REFUSED):
            held.set()
            time.sleep(3 * 0.8)
            done.append(time.monotonic())

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    with lease.lease(client, run_id, "reference pool test", REFUSED):
        entered = time.monotonic()
    holder.join(30)
    assert done and entered >= done[0]


def test_a_holder_that_exited_on_this_machine_frees_the_lease_at_once(mlflow_store, monkeypatch):
    """A crashed run's lease, left by a process of this machine that no longer exists, is not waited on."""
    monkeypatch.setattr(lease, "SETTLE", 0.1)
    run_id, client = a_run(), MlflowClient()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    client.set_tag(run_id, lease.HOLDER, f"{socket.gethostname()}:{gone}:{lease._machine()}:abcd")
    began = time.monotonic()
    with lease.lease(client, run_id, "reference pool test", REFUSED):
        assert time.monotonic() - began < 10  # STALE is 180 s
    assert lease._machine() and lease._dead_here(gone, lease._machine())
    assert not lease._dead_here(str(os.getppid()), lease._machine())  # here, alive: a holder to wait for
    # A container with the host's name (host network) or a cloned VM: the pid is not this machine's to check.
    assert not lease._dead_here(gone, "0123456789ab")


def test_a_signal_during_the_claim_leaves_no_claim_behind(mlflow_store, monkeypatch):
    """Ctrl-C or SIGTERM while a claim settles: the claim is removed, or the others would wait ``STALE``."""
    monkeypatch.setattr(lease, "SETTLE", 0.1)
    run_id, client = a_run(), MlflowClient()
    reads, real = [], lease._tags

    def interrupted_read_back(client, run_id):
        reads.append(1)
        if len(reads) == 2:  # the read after the claim settled
            raise KeyboardInterrupt
        return real(client, run_id)

    monkeypatch.setattr(lease, "_tags", interrupted_read_back)
    with pytest.raises(KeyboardInterrupt):
        with lease.lease(client, run_id, "reference pool test", REFUSED):
            pass
    assert lease.HOLDER not in client.get_run(run_id).data.tags


def test_a_holder_taken_over_stops_its_heartbeat(mlflow_store, fast):
    """A holder cut off for ``STALE`` seconds and taken over must not keep the new holder's lease looking alive
    should the new one die."""
    run_id, client = a_run(), MlflowClient()
    with lease.lease(client, run_id, "reference pool test", REFUSED):
        client.set_tag(run_id, lease.HOLDER, "gpu-7:4242:0123456789ab:abcd")
        client.set_tag(run_id, lease.HEARTBEAT_TAG, "new")
        time.sleep(5 * 0.1)  # five heartbeats
        assert client.get_run(run_id).data.tags[lease.HEARTBEAT_TAG] == "new"
    assert client.get_run(run_id).data.tags[lease.HOLDER] == "gpu-7:4242:0123456789ab:abcd"  # not released: not its


def test_machines_that_both_make_a_pool_run_keep_the_same_one(mlflow_store, fast):
    """Two machines that find no run of a pool both make one; each waits to see the other's and keeps the
    same one, the other's deleted by its maker."""
    MlflowClient().create_experiment("mia")
    start, got = threading.Barrier(2), []

    def make() -> None:
        start.wait()
        got.append(tracking._pool_run(MlflowClient(), "k" * 64, "mia", {}, shared=True)[0].info.run_id)

    threads = [threading.Thread(target=make) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 2 and got[0] == got[1]
    assert [r.info.run_id for r in tracking._pool_runs(MlflowClient(), "k" * 64)] == got[:1]


@pytest.fixture
def shared(mlflow_store, fast, monkeypatch):
    """The test's SQLite store treated as one that several machines share."""
    monkeypatch.setenv(lease.ENV, "on")
    MlflowClient().create_experiment("mia")
    return "k" * 64


def test_a_complete_pool_is_read_without_waiting_for_the_lease(shared, monkeypatch):
    """Attacks that only read a pool holding enough models do not queue behind each other, or behind a
    process growing it further; one that writes to it after all (label-only signals the pool lacked) takes
    the lease before its first write, and a reader leaves the run's status and size as the grower set them."""
    client = MlflowClient()
    run_id = tracking._pool_run(client, shared, "mia", {}, shared=True)[0].info.run_id
    client.log_metric(run_id, "pool.size", 4)
    client.set_tag(run_id, lease.HOLDER, "gpu-7:4242:0123456789ab:abcd")  # a live holder growing it
    client.set_tag(run_id, lease.HEARTBEAT_TAG, "0")
    monkeypatch.setattr(lease, "STALE", 60)
    began = time.monotonic()
    with pytest.raises(RuntimeError):  # a reader's failure is not the pool's
        with tracking.pool_store(shared, "mia", {}, size=4) as store:
            assert store.run_id == run_id and time.monotonic() - began < 10
            raise RuntimeError("the attack failed")
    after = client.get_run(run_id)
    assert after.info.status == "RUNNING" and "mia.failure_reason" not in after.data.tags
    stages, saved = [], threading.Event()

    def write_label_only() -> None:
        with tracking.pool_store(shared, "mia", {}, size=4) as store:
            stages.append("read")
            (store.folder / "model_00000.npz").write_bytes(b"x")
            store.save(store.folder / "model_00000.npz", 2)  # two models downloaded, one of them re-written
            saved.set()

    writer = threading.Thread(target=write_label_only)
    writer.start()
    assert not saved.wait(1.5) and stages == ["read"]  # read at once, waits to write
    client.delete_tag(run_id, lease.HOLDER)  # the holder is done
    writer.join(30)
    assert saved.is_set()
    assert client.get_run(run_id).data.metrics["pool.size"] == 4  # not the reader's 2


def test_a_pool_run_made_then_interrupted_while_claiming_is_not_left_running(shared, monkeypatch):
    reads, real = [], lease._tags

    def interrupted_read_back(client, run_id):
        reads.append(1)
        if len(reads) == 2:
            raise KeyboardInterrupt
        return real(client, run_id)

    monkeypatch.setattr(lease, "_tags", interrupted_read_back)
    with pytest.raises(KeyboardInterrupt):
        with tracking.pool_store(shared, "mia", {}, size=4):
            pass
    (run,) = tracking._pool_runs(MlflowClient(), shared)
    assert run.info.status == "KILLED"


def test_attack_runs_that_carry_a_pools_key_are_not_taken_for_the_pool(shared):
    """Attack runs are tagged with their pool's key: only runs of kind ``pool`` are pools, however many attack
    runs there are (MLflow returns at most 1000 runs a search), and with the pool run deleted."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mia").experiment_id
    attack = client.create_run(experiment, tags={"mia.kind": "attack", "mia.pool_key": shared}).info.run_id
    pool = tracking._pool_run(client, shared, "mia", {}, shared=False)[0].info.run_id
    assert pool != attack and [r.info.run_id for r in tracking._pool_runs(client, shared)] == [pool]
    client.delete_run(pool)
    assert tracking._pool_run(client, shared, "mia", {}, shared=False)[0].info.run_id not in (pool, attack)


def test_a_pool_run_another_machine_made_first_and_was_seen_late_is_switched_to(shared, monkeypatch):
    """Two machines' runs of one pool, the first made seen only once the lease is held (its creation
    committed late): the later, empty one is dropped and the first one used."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mia").experiment_id
    first = client.create_run(experiment, tags={"mia.kind": "pool", "mia.pool_key": shared}).info.run_id
    time.sleep(0.01)
    late = client.create_run(experiment, tags={"mia.kind": "pool", "mia.pool_key": shared}).info.run_id
    real, calls = tracking._pool_runs, []

    def first_unseen_at_first(client, key):
        calls.append(1)
        runs = real(client, key)
        return [r for r in runs if r.info.run_id != first] if len(calls) == 1 else runs

    monkeypatch.setattr(tracking, "_pool_runs", first_unseen_at_first)
    with tracking.pool_store(shared, "mia", {}, size=2) as store:
        assert store.run_id == first
    assert client.get_run(late).info.lifecycle_stage == "deleted"
    assert client.get_run(late).info.status == "KILLED"


def test_ending_a_pool_run_prints_no_mlflow_link(shared, monkeypatch, capsys):
    """A tracking server's client prints "View run <name> at: <url>" when a run ends: for the pool run kept
    behind an attack that is noise on stdout, where the attack run's own link stays."""
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    monkeypatch.setattr(TrackingServiceClient, "_log_url",  # as for a server's RestStore
                        lambda self, run_id: None if MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get()
                        else print(f"View run {run_id}"))
    with tracking.pool_store(shared, "mia", {}, size=1) as store:
        pass
    with tracking.run("attack") as run:
        pass
    out = capsys.readouterr().out
    assert f"View run {store.run_id}" not in out and f"View run {run.info.run_id}" in out
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ


def test_a_pool_run_records_the_label_only_kinds_its_first_models_all_store(mlflow_store):
    """What lets a reader skip the lease: the kinds every model meant to hold label-only signals stores."""
    import numpy as np

    from mia.pool import LABEL_ONLY_MODELS, model_file

    assert LABEL_ONLY_MODELS == 2
    with tracking.pool_store("k" * 64, "mia", {}) as store:
        for m, kinds in enumerate((["aug", "boundary"], ["aug"], [])):  # the third holds none, as it should
            np.savez(model_file(store.folder, m), x=np.zeros(1), **{f"label_only.{k}": np.zeros(1) for k in kinds})
            store.save(model_file(store.folder, m), m + 1)
    (run,) = tracking._pool_runs(MlflowClient(), "k" * 64)
    assert run.data.tags[tracking.LABEL_ONLY_TAG] == "aug"


def test_a_reader_asking_for_label_only_signals_the_pool_lacks_takes_the_lease_first(shared, monkeypatch):
    """Two machines adding the same label-only kinds to a stored pool both trained the models that hold them;
    the second now waits for the first, then finds them."""
    client = MlflowClient()
    run_id = tracking._pool_run(client, shared, "mia", {}, shared=True)[0].info.run_id
    client.log_metric(run_id, "pool.size", 4)
    client.set_tag(run_id, tracking.LABEL_ONLY_TAG, "aug")
    client.set_tag(run_id, lease.HOLDER, "gpu-7:4242:0123456789ab:abcd")  # a live holder adding kinds
    client.set_tag(run_id, lease.HEARTBEAT_TAG, "0")
    monkeypatch.setattr(lease, "STALE", 60)
    began = time.monotonic()
    with tracking.pool_store(shared, "mia", {}, size=4, label_only=["aug"]):
        assert time.monotonic() - began < 10  # stored: read at once
    entered = threading.Event()

    def read() -> None:
        with tracking.pool_store(shared, "mia", {}, size=4, label_only=["aug", "boundary"]):
            entered.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert not entered.wait(1.5)  # boundary is not stored: wait for the holder
    client.delete_tag(run_id, lease.HOLDER)
    reader.join(30)
    assert entered.is_set()


def test_pools_and_experiments_past_the_first_page_of_experiments_are_found(mlflow_store, monkeypatch):
    """A search returns one page of experiments (1000 in MLflow); a shared server with more kept the pools of
    the later ones out of sight, and they were trained again."""
    monkeypatch.setattr(tracking, "EXPERIMENT_PAGE", 2)
    client = MlflowClient()
    for i in range(5):
        client.create_experiment(f"e{i}")
    pool, made = tracking._pool_run(client, "k" * 64, "e4", {}, shared=False)
    assert made and len(client.search_experiments(max_results=2)) == 2
    found, made = tracking._pool_run(client, "k" * 64, "e0", {}, shared=False)
    assert found.info.run_id == pool.info.run_id and not made
    assert {f"e{i}" for i in range(5)} <= tracking.experiment_names()
