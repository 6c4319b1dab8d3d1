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
        store.save([store.folder / "model_00000.npz"], 1)
    run = MlflowClient().get_run(first)
    assert store.run_id == first and run.info.status == "FINISHED" and "mia.failure_reason" not in run.data.tags


def test_a_stored_pool_that_cannot_be_downloaded_is_an_error_not_a_retraining(mlflow_store, monkeypatch):
    with tracking.pool_store("p" * 32, "mia", {}) as store:
        (store.folder / "model_00000.npz").write_bytes(b"x")
        store.save([store.folder / "model_00000.npz"], 1)

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
    """``mlflow.set_experiment`` state, undone after the test (it is process-wide)."""
    from mlflow.tracking import fluent

    monkeypatch.setattr(fluent, "_active_experiment_id", None)


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
