"""The tracking store's handling of reference-model pools: failures recorded, nothing silently retrained."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest
from mlflow.tracking import MlflowClient

from mia import tracking
from mia.errors import MiaError


def test_a_pool_run_that_fails_is_marked_failed_and_mended_by_the_next_use(mlflow_store):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.pool_store("k" * 32, "mia", {}) as store:
            first = store.run_id
            raise RuntimeError("boom")
    run = MlflowClient().get_run(first)
    assert run.info.status == "FAILED" and "boom" in run.data.tags["mia.failure_reason"]
    with tracking.pool_store("k" * 32, "mia", {}) as store:
        (store.folder / "model_00000.npz").write_bytes(b"x")
        store.save(store.folder / "model_00000.npz", 1)
    run = MlflowClient().get_run(first)
    assert store.run_id == first and run.info.status == "FINISHED" and "mia.failure_reason" not in run.data.tags


def test_a_stored_pool_that_cannot_be_downloaded_is_an_error_not_a_retraining(mlflow_store, monkeypatch):
    with tracking.pool_store("p" * 32, "mia", {}) as store:
        (store.folder / "model_00000.npz").write_bytes(b"x")
        store.save(store.folder / "model_00000.npz", 1)

    def unreachable(**_):
        raise OSError("connection reset")

    monkeypatch.setattr(tracking.mlflow.artifacts, "download_artifacts", unreachable)
    with pytest.raises(MiaError, match="could not be downloaded"):
        with tracking.pool_store("p" * 32, "mia", {}):
            pass


def test_a_resumed_run_that_finishes_keeps_no_failure_reason(mlflow_store):
    with pytest.raises(KeyboardInterrupt):
        with tracking.run("train-federated-digits-mlp", "mia", tags={"mia.kind": "train"}) as active:
            run_id = active.info.run_id
            raise KeyboardInterrupt
    assert MlflowClient().get_run(run_id).data.tags["mia.failure_reason"] == "interrupted"
    with tracking.run("train-federated-digits-mlp", "mia", resume=run_id):
        pass
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and "mia.failure_reason" not in run.data.tags


def test_a_pool_run_stopped_with_ctrl_c_is_killed_not_failed(mlflow_store):
    """Ctrl-C while reference models train: the attack run said KILLED "interrupted", its pool run FAILED
    "KeyboardInterrupt: " (an empty reason)."""
    with pytest.raises(KeyboardInterrupt):
        with tracking.pool_store("c" * 32, "mia", {}) as store:
            raise KeyboardInterrupt
    run = MlflowClient().get_run(store.run_id)
    assert run.info.status == "KILLED" and run.data.tags["mia.failure_reason"] == "interrupted"


@pytest.fixture
def no_notebook_experiment(monkeypatch):
    """``mlflow.set_experiment`` state, undone after the test (it is process-wide): the active experiment, and
    the ``MLFLOW_EXPERIMENT_ID`` it exports for subprocesses (left behind, it made a later test's
    ``mlflow run --experiment-name`` fail with "Specify only one of 'experiment-name' or 'experiment-id'")."""
    from mlflow.tracking import fluent

    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_a_run_opened_inside_a_notebooks_own_run_is_its_child(mlflow_store, no_notebook_experiment):
    """MLflow refused to start mia's run under the caller's open one, after mia had created it: an exception
    from MLflow, and a run left RUNNING in the store for ever."""
    import mlflow

    with mlflow.start_run(run_name="mine") as mine:
        with tracking.run("train-centralized-digits-mlp", tags={"mia.kind": "train"}) as active:
            child = active.info.run_id
        assert mlflow.active_run().info.run_id == mine.info.run_id  # the caller's run stays open
    run = MlflowClient().get_run(child)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == mine.info.run_id
    assert mlflow.active_run() is None


def test_a_notebooks_set_experiment_is_where_runs_go(mlflow_store, no_notebook_experiment):
    """After ``mlflow.set_experiment("study")`` every mia run failed to start (MLflow's "active experiment ID
    does not match") and stayed RUNNING in experiment ``mia``."""
    import mlflow

    study = mlflow.set_experiment("study").experiment_id
    with tracking.run("train-centralized-digits-mlp") as active:
        run_id = active.info.run_id
    assert MlflowClient().get_run(run_id).info.experiment_id == study
    with pytest.raises(MiaError, match=r"set_experiment\('study'\) is active.*pass experiment='study'") as err:
        with tracking.run("attack-digits-mlp", "mia"):
            pass
    assert "\n" not in str(err.value)
    assert [r.info.run_id for r in MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()])] == [run_id]  # nothing left RUNNING


_OPEN_A_RUN = """
import os, sys, time
from pathlib import Path
from mia import tracking
go = Path(sys.argv[1])
Path(sys.argv[2]).touch()  # imported: ready
while not go.exists():
    time.sleep(0.01)
with tracking.run("train-centralized-digits-mlp"):
    pass
"""


def test_commands_started_at_once_on_a_new_store_all_open_their_runs(tmp_path):
    """MLflow migrates a new SQLite store on first use without a lock: of two ``mia`` commands started
    together on a new ``./mlflow.db``, one died in SQLAlchemy ("duplicate column name: step")."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_RUN_ID", None)
    script = tmp_path / "open_a_run.py"
    script.write_text(_OPEN_A_RUN)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(go), str(tmp_path / f"ready{i}")], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(3)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(3)) and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outputs)[-3000:]


@pytest.fixture
def tracking_uri(monkeypatch):
    """Point MLflow at a store for one test, and back afterwards."""
    import mlflow

    before = mlflow.get_tracking_uri()

    def point(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)

    yield point
    mlflow.set_tracking_uri(before)


def test_a_tracking_server_that_is_down_is_one_line_at_once(tracking_uri, monkeypatch):
    """MLflow retried for minutes without a word, then ``mia attack`` said the run was not in the store."""
    import time

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    tracking_uri("http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(MiaError, match=r"tracking store http://127.0.0.1:9 cannot be used: .*refused") as err:
        tracking.get_run("0" * 32)
    assert time.perf_counter() - start < 30 and "\n" not in str(err.value)
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # later requests retry as MLflow's default says


def test_a_store_mlflow_no_longer_writes_is_one_line(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    tracking_uri(f"file://{tmp_path / 'a store'}")
    with pytest.raises(MiaError, match="cannot be used: The filesystem tracking backend .* maintenance mode"):
        with tracking.run("train-centralized-digits-mlp"):
            pass


def test_an_experiment_another_command_creates_at_the_same_moment_is_used(mlflow_store, monkeypatch):
    """Two commands at once on a new store both found no experiment ``mia`` and both created it: the second
    failed with "Experiment(name=mia) already exists"."""
    import mlflow

    made = mlflow.create_experiment("mia")  # by the other command, just after our look-up
    real, calls = mlflow.get_experiment_by_name, []

    def too_early(name):
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", too_early)
    assert tracking.experiment_id("mia") == made


def test_a_deleted_experiment_is_one_line_saying_how_to_restore_it(mlflow_store):
    import mlflow

    mlflow.delete_experiment(mlflow.create_experiment("mia"))
    with pytest.raises(MiaError, match=r"experiment 'mia' is deleted in .*mlflow experiments restore --experim"):
        with tracking.run("train-centralized-digits-mlp"):
            pass


def test_a_training_run_shows_the_progress_of_its_signals(mlflow_store, monkeypatch):
    """The target's signals (minutes with the boundary searches) show a bar where the run shows its own."""
    from mia import audit
    from mia.experiment import train_run

    shown = []
    query = audit.query_signals

    def spy(*args, **kwargs):
        shown.append(args[7] if len(args) > 7 else kwargs.get("progress", False))
        return query(*args, **kwargs)

    monkeypatch.setattr(audit._attack, "query_signals", spy)
    config = audit.resolve_config("digits", train_overrides={"epochs": 1})
    train_run(config, progress=True)
    assert shown[0] is True  # the audited query set, where the label-only signals are computed
    shown.clear()
    train_run(config, progress=False)
    assert not any(shown)


def test_the_report_reads_every_finished_attack_run_even_one_whose_training_run_it_cannot_see(mlflow_store):
    """``attack_rows``: one row per FINISHED attack run, with the defense parameters of its training run where the
    store read holds that run; an attack run whose training run is elsewhere (deleted, another experiment) keeps its
    row (a mutant joining the two inner, which dropped it, survived), and an unfinished attack run has none."""
    import pandas as pd

    client = MlflowClient()
    experiment = tracking.experiment_id("rows")
    train = client.create_run(experiment, tags={"mia.kind": "train"}).info.run_id
    client.log_param(train, "defense_params.smoothing", "0.2")
    client.set_terminated(train)
    finished = []
    for target in (train, "0" * 32):
        run_id = client.create_run(experiment, tags={"mia.kind": "attack", "mia.target_run_id": target,
                                                     "mia.defense": "label-smoothing"}).info.run_id
        client.log_metric(run_id, "loss.auc", 0.6)
        client.set_terminated(run_id)
        finished.append(run_id)
    client.create_run(experiment, tags={"mia.kind": "attack", "mia.target_run_id": train})  # still RUNNING
    rows = tracking.attack_rows(["rows"]).set_index("run_id")
    assert sorted(rows.index) == sorted(finished) and (rows["loss.auc"] == 0.6).all()
    assert rows.loc[finished[0], "defense_params.smoothing"] == "0.2"
    assert pd.isna(rows.loc[finished[1], "defense_params.smoothing"])
    assert rows.loc[finished[1], "target_run_id"] == "0" * 32 and rows.loc[finished[0], "defense"] == "label-smoothing"


def test_two_runs_logging_the_same_data_at_once_both_record_it(mlflow_store, monkeypatch):
    """The store looks a dataset up, then inserts it: two trials of ``mia tune --jobs 2`` both inserted digits,
    and the second failed on the datasets table's uniqueness (a FAILED trial, seen in CI against PostgreSQL)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from mia.audit import resolve_config

    config = resolve_config("digits")
    with tracking.run("train-centralized-digits-mlp") as other:
        pass
    real, calls = MlflowClient.log_inputs, []

    def raced(self, run_id, datasets=None, *args, **kwargs):
        calls.append(run_id)
        if len(calls) == 1:  # the other run inserts the row between our look-up and our insert
            real(self, other.info.run_id, datasets, *args, **kwargs)
            raise MlflowException("UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest")
        return real(self, run_id, datasets, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_inputs", raced)
    with tracking.run("train-centralized-digits-mlp") as ours:
        tracking.log_data(config, "bc95e060" * 8, "training")
    for run_id in (other.info.run_id, ours.info.run_id):
        (used,) = MlflowClient().get_run(run_id).inputs.dataset_inputs
        assert (used.dataset.name, used.dataset.digest) == ("digits", "bc95e060")
    assert mlflow.get_run(ours.info.run_id).info.status == "FINISHED"
