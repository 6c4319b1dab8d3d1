"""``mia tune`` on a real PostgreSQL server that the test starts: two workers share one study.

The server binaries are on the machine (``initdb``, ``pg_ctl``); as root they
run as the ``postgres`` user, which PostgreSQL requires. The server listens on
a free local port with trust authentication, so the password in the URI is
only there to check that it is never logged.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import tuning.study
from entrypoints.cli import main
from tuning.study import storage_from_uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    # Not under pytest's own temporary root: the postgres user must reach the data folder, and every pytest
    # session on the machine sets that root back to 0700 (another session's start stopped this server's).
    base = Path(tempfile.mkdtemp(prefix="mia-postgres-"))
    os.chmod(base, 0o777)
    for parent in base.parents:  # a TMPDIR below a private folder: the postgres user must pass through it
        if not os.stat(parent).st_mode & 0o001:
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
    data, port = base / "data", _free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    run = lambda *args: subprocess.run([*as_postgres, *args], check=True, capture_output=True, text=True)  # noqa: E731
    run(shutil.which("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    run(shutil.which("pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
        "-o", f"-p {port} -h 127.0.0.1 -k {base}", "start")
    try:
        for _ in range(50):
            if subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                               "create database optuna"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        yield f"postgresql://postgres:pg-s3cret@127.0.0.1:{port}/optuna"
    finally:
        run(shutil.which("pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_a_postgres_study_and_run_each_trial_once(mlflow_store, postgres):
    args = ["tune", "--defense", "label-smoothing", "--epochs", "2", "--reference-models", "1", "--label-only", "",
            "--quiet", "--trials", "4", "--jobs", "2", "--storage", postgres, "--study-name", "pg"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pg", storage=storage_from_uri(postgres))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2
    assert "pg-s3cret" not in result.output
    client = MlflowClient()
    parent = [r for r in client.search_runs([client.get_experiment_by_name("mia").experiment_id])
              if r.data.tags.get("mia.kind") == "study"][0]
    assert "pg-s3cret" not in str(parent.data.params) + str(parent.data.tags)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4


def test_a_killed_workers_trial_is_found_by_its_heartbeat_and_retried(mlflow_store, postgres, monkeypatch):
    """A worker killed mid-trial on PostgreSQL: its heartbeat stops, the next run fails and retries the trial."""
    args = ["tune", "--defense", "label-smoothing", "--epochs", "2", "--reference-models", "1", "--label-only", "",
            "--quiet", "--trials", "1", "--storage", postgres, "--study-name", "hb"]
    # the worker's training hangs, so it is surely killed mid-trial; heartbeats every second, stale after 2
    hang = ("import sys, time, mia.audit._fit, tuning.study as s; s.HEARTBEAT_S, s.GRACE_S = 1, 2; "
            "mia.audit._fit.fit = lambda *a, **k: time.sleep(600); from entrypoints.cli import main; ")
    worker = subprocess.Popen([sys.executable, "-c", hang + "main(sys.argv[1:])", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plain = optuna.storages.RDBStorage(postgres)
    deadline = time.monotonic() + 180
    try:
        while not any(t.state == TrialState.RUNNING for t in _trials(plain, "hb")):
            assert worker.poll() is None, "the worker ended before its trial started"
            assert time.monotonic() < deadline, "the worker never started a trial"
            time.sleep(0.2)
        time.sleep(1.5)  # a heartbeat or two recorded
        assert worker.poll() is None, "the trial ended before the worker could be killed"
    finally:
        worker.kill()
        worker.wait()
    monkeypatch.setattr(tuning.study, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning.study, "GRACE_S", 2)
    time.sleep(2.5)  # past the grace period: the killed trial's heartbeat is stale
    result = CliRunner().invoke(main, args, catch_exceptions=False)  # the same command, run again
    assert result.exit_code == 0, result.output
    killed, retry = _trials(plain, "hb")
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == killed.params and retry.system_attrs["failed_trial"] == killed.number
    run = MlflowClient().get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "stopped during the trial" in run.data.tags["mia.failure_reason"]
    assert MlflowClient().get_run(retry.user_attrs["mlflow_run_id"]).info.status == "FINISHED"


def _trials(storage, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:  # the worker has not created the study yet
        return []
