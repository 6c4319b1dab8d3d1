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
