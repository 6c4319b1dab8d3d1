"""Shared fixtures: a private MLflow store per test, copied from one migrated template."""

from __future__ import annotations

import os
import shutil

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2`: one process per core does more than two threads per process on the tiny models here,
    # and the commands tests start inherit the one thread
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory):
    """An empty MLflow SQLite store, migrated once (a fresh migration costs ~2 s)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, migrated_db):
    """Run the test in ``tmp_path`` with its own ``mlflow.db`` and ``./mlruns``."""
    import mlflow

    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    if mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module, restored afterwards: tiny models on two shared cores.

    Small ops spread over two threads wait at a barrier at every step; on a
    busy machine one descheduled thread stalls them all (seconds become minutes).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_images():
    """sklearn digits as 1x8x8 uint8 images (unnormalized ``Dataset`` defaults), for the trainer's tests."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from mia.data import Dataset

    raw = load_digits()
    x = torch.tensor(np.round(raw.images * 255 / 16), dtype=torch.uint8).unsqueeze(1)
    return Dataset("digits", x, torch.tensor(raw.target), 10, "image")
