"""`mlflow run . -e main --env-manager local` on tiny settings, as the README shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def test_mlflow_run_main_entry_point_passes_declared_and_undeclared_options(mlflow_store):
    """The audit and the report through ``mlflow run``; declared options (``defense_params``, several
    pairs in one string) and undeclared, dashed ones (``batch-size``) reach the command."""
    client = MlflowClient()
    # Artifacts go under the test's folder, not the project's ./mlruns.
    client.create_experiment("mlproject", artifact_location=(mlflow_store / "mlruns").as_uri())
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_store / 'mlflow.db'}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")

    def mlflow_run(entry: str, *params: str) -> subprocess.CompletedProcess:
        args = [a for p in params for a in ("-P", p)]
        return subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry, "--env-manager", "local",
                               "--experiment-name", "mlproject", *args], env=env, capture_output=True, text=True,
                              timeout=300)

    result = mlflow_run("main", "epochs=2", "reference_models=1", "attacks=loss,nn", "defense=relaxloss",
                        "defense_params=alpha=0.7,upper=0.9", "batch-size=64")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attack run:" in result.stdout

    runs = client.search_runs([client.get_experiment_by_name("mlproject").experiment_id])
    by_kind = {r.data.tags.get("mia.kind"): r for r in runs}
    assert set(by_kind) == {"train", "attack", "pool"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by_kind["attack"].data.tags["mia.target_run_id"] == by_kind["train"].info.run_id
    params = by_kind["train"].data.params
    assert (params["train.epochs"], params["train.batch_size"], params["defense"]) == ("2", "64", "relaxloss")
    assert params["defense_params.alpha"] == "0.7" and params["defense_params.upper"] == "0.9"
    assert "loss.auc" in by_kind["attack"].data.metrics

    report = mlflow_run("report", f"out={mlflow_store / 'report'}", "leakage=leakage.max_auc")
    assert report.returncode == 0, report.stderr[-3000:]
    assert (mlflow_store / "report" / "report.html").is_file()


def test_every_entry_point_is_a_command_that_takes_its_declared_parameters():
    """Each entry point's command, as ``mlflow run`` renders it from the parameters' defaults (a stand-in
    for a required one), is a ``mia`` command whose options accept every value: the entry points not run above
    (``train``, ``attack``, the catalogs) cannot drift from the CLI unnoticed."""
    import shlex

    from mlflow.projects._project_spec import load_project

    from entrypoints.cli import main

    entry_points = load_project(str(ROOT))._entry_points
    assert {"main", "train", "attack", "tune", "report", "info", "datasets", "models", "attacks",
            "defenses"} <= set(entry_points)
    for name, entry in entry_points.items():
        required = {key: "x" for key, p in entry.parameters.items() if p.default is None}
        args = shlex.split(entry.compute_command(required, storage_dir=None))
        assert args[:3] == ["python", "-m", "entrypoints.cli"], name
        command = main.get_command(None, args[3])
        assert command is not None, f"{name}: no command {args[3]}"
        parsed = command.make_context(args[3], args[4:]).params  # a bad option or value raises here
        for key, value in required.items():
            assert value in (parsed[key], (value,)), f"{name}: {key} does not reach the command"


def test_mlflow_run_tune_entry_point_nests_the_trials_under_the_project_run(mlflow_store):
    client = MlflowClient()
    client.create_experiment("tuneproject", artifact_location=(mlflow_store / "mlruns").as_uri())
    # the storage travels in the environment: MLflow would log a -P storage=... password as given
    storage = f"sqlite:///{mlflow_store / 'optuna.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_store / 'mlflow.db'}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT), "MIA_TUNE_STORAGE": storage}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "tune", "--env-manager", "local",
         "--experiment-name", "tuneproject", "-P", "defense=label-smoothing", "-P", "epochs=2", "-P", "trials=2"],
        env=env, capture_output=True, text=True, timeout=300, cwd=mlflow_store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (mlflow_store / "optuna.db").is_file()
    runs = client.search_runs([client.get_experiment_by_name("tuneproject").experiment_id])
    study = [r for r in runs if r.data.tags.get("mia.kind") == "study"]
    assert len(study) == 1 and study[0].data.tags.get("mlflow.project.entryPoint") == "tune"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study[0].info.run_id]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in runs)
