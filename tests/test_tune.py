"""``mia tune``: Optuna studies of a defense's privacy–utility frontier, tracked as nested MLflow runs.

Real studies run tiny digits audits (2 epochs, 1 reference model, the fast
attacks); the tests about bookkeeping alone (constraints, secrets) replace
the audit with a fake that returns known numbers.
"""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import tuning.objective
import tuning.space
import tuning.study
from entrypoints.cli import main
from mia.audit import resolve_config
from mia.errors import MiaError
from tuning.objective import Objective, process_started
from tuning.space import defense_space, load_space
from tuning.study import (StudySettings, fail_dead_workers, open_study, storage_from_uri, storage_kind,
                          worker_devices)

TINY = ["--defense", "label-smoothing", "--epochs", "2", "--reference-models", "1", "--label-only", "", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(main, ["tune", *args], catch_exceptions=False)


def study_run_of(output: str) -> str:
    match = re.search(r"study run: ([0-9a-f]{32})", output)
    assert match, output
    return match.group(1)


def assert_user_error(result, *fragments: str) -> None:
    message = result.output.strip()
    assert result.exit_code != 0 and "Traceback" not in message
    assert message.startswith("Error:") and len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message


def children(run_id: str) -> list:
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")


def trial_runs(parent: str) -> dict[int, object]:
    """The parent's child runs by trial number; fails on a duplicate."""
    runs = children(parent)
    assert all(r.data.tags["mia.kind"] == "trial" for r in runs)
    numbers = [int(r.data.tags["mia.trial"]) for r in runs]
    assert len(numbers) == len(set(numbers)), numbers
    return dict(zip(numbers, runs))


def non_dominated(trials) -> set[int]:
    """By hand: trials no other trial beats on both (accuracy up, leakage down)."""
    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return {t.number for t in done if not any(dominates(o.values, t.values) for o in done if o is not t)}


def assert_trials_match_runs(study, parent: str) -> None:
    """Nested runs = trials: same numbers, params, objective values; each holds every attack metric."""
    by_number = trial_runs(parent)
    assert set(by_number) == {t.number for t in study.trials}
    for trial in study.trials:
        run = by_number[trial.number]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        if trial.state != TrialState.COMPLETE:
            continue
        m = run.data.metrics
        assert run.info.status == "FINISHED"
        assert (m["objective.test_accuracy"], m["objective.leakage"]) == tuple(trial.values)
        assert m["test_accuracy"] == trial.values[0]
        assert m["objective.leakage"] == max(m[f"{a}.tpr_at_fpr_0.01"] for a in ("loss", "mentr", "nn"))
        assert {f"{a}.auc" for a in ("loss", "mentr", "nn")} | {"leakage.max_auc"} <= set(m)


def test_study_nests_a_run_per_trial_logs_the_front_and_resumes(mlflow_store):
    result = invoke(*TINY, "--trials", "3", "--storage", "sqlite:///optuna.db", "--study-name", "ls")
    assert result.exit_code == 0, result.output
    parent = study_run_of(result.output)
    study = optuna.load_study(study_name="ls", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert_trials_match_runs(study, parent)

    client = MlflowClient()
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["mia.kind"] == "study"
    assert run.data.params["defense"] == "label-smoothing" and run.data.params["sampler"] == "tpe"
    assert run.data.params["storage"] == "sqlite:///optuna.db" and run.data.params["study_name"] == "ls"
    assert run.data.metrics["trials.complete"] == 3
    for trial_run in trial_runs(parent).values():  # the audit's runs nest under their trial
        kinds = sorted(r.data.tags["mia.kind"] for r in children(trial_run.info.run_id))
        assert kinds == ["attack", "train"]

    front = {t.number for t in study.best_trials}
    assert front == non_dominated(study.trials) and front
    path = Path(mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="pareto.csv", dst_path="out"))
    rows = list(csv.DictReader(path.open()))
    assert {int(r["trial"]) for r in rows} == front
    for r in rows:
        trial = study.trials[int(r["trial"])]
        assert (float(r["test_accuracy"]), float(r["leakage"])) == tuple(trial.values)
        assert float(r["smoothing"]) == trial.params["smoothing"]
    assert {"pareto.png", "pareto.csv", "trials.csv"} <= {a.path for a in client.list_artifacts(parent)}
    for number in front:
        assert re.search(rf"^\s+{number}\s+0\.\d{{4}}\s+0\.\d{{4}}", result.output, re.MULTILINE), result.output

    resumed = invoke(*TINY, "--trials", "2", "--storage", "sqlite:///optuna.db", "--study-name", "ls")
    assert resumed.exit_code == 0, resumed.output
    assert study_run_of(resumed.output) == parent  # one parent run per study
    study = optuna.load_study(study_name="ls", storage="sqlite:///optuna.db")
    assert len(study.trials) == 5 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.params["smoothing"] for t in study.trials}) == 5  # the resumed sampler does not replay points
    assert_trials_match_runs(study, parent)
    assert {t.number for t in study.best_trials} == non_dominated(study.trials)

    # a resume that would measure something else, and SQLite shared by workers, are one-line errors
    assert_user_error(invoke(*TINY[:2], "--epochs", "3", *TINY[4:], "--storage", "sqlite:///optuna.db",
                             "--study-name", "ls"), "study ls was made with", "train.epochs=2", "--study-name")
    assert_user_error(invoke(*TINY, "--jobs", "2", "--storage", "sqlite:///optuna.db"),
                      "sqlite storage serves one process", "journal file", "PostgreSQL")
    assert len(optuna.load_study(study_name="ls", storage="sqlite:///optuna.db").trials) == 5


def test_a_failing_trial_is_recorded_and_the_study_goes_on(mlflow_store, monkeypatch):
    real, calls = tuning.objective.audit_run, []

    def flaky(config, *args, **kwargs):
        calls.append(config)
        if len(calls) == 2:
            raise RuntimeError("disk full (simulated)")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(tuning.objective, "audit_run", flaky)
    result = invoke(*TINY, "--trials", "3", "--storage", "memory")
    assert result.exit_code == 0, result.output
    parent = study_run_of(result.output)
    by_number = trial_runs(parent)
    assert len(by_number) == 3
    assert [by_number[i].info.status for i in range(3)] == ["FINISHED", "FAILED", "FINISHED"]
    # raised by this file, which stands for code of the user's: the reason names its line
    assert re.fullmatch(r"RuntimeError: disk full \(simulated\) \(test_tune.py:\d+, in flaky\)",
                        by_number[1].data.tags["mia.failure_reason"])
    assert MlflowClient().get_run(parent).data.metrics["trials.fail"] == 1
    assert "study mia-digits-label-smoothing (memory): 3 trials, 2 complete, 3 new" in result.output
    with open(MlflowClient().download_artifacts(parent, "trials.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["state"], r["feasible"], r["leakage"]) for r in rows][1] == ("FAIL", "", "")  # not "feasible"
    assert [r["feasible"] for r in rows[::2]] == ["True", "True"]


def test_ctrl_c_in_a_trial_kills_its_runs_and_says_one_line(mlflow_store, monkeypatch, caplog):
    """The study and trial runs said FAILED "KeyboardInterrupt" beside the audit's KILLED run, and Optuna's
    warning carried a page of traceback through torch; a user error in a trial is one line too."""
    calls = []

    def interrupted(config, *args, **kwargs):
        calls.append(config)
        if len(calls) == 1:
            raise MiaError("epsilon=0.1 is out of reach (simulated)")
        raise KeyboardInterrupt

    monkeypatch.setattr(tuning.objective, "audit_run", interrupted)
    result = invoke(*TINY, "--trials", "3", "--storage", "memory")
    assert result.exit_code == 130, result.output
    parent = MlflowClient().search_runs(["0", *[e.experiment_id for e in MlflowClient().search_experiments()]],
                                        filter_string="tags.`mia.kind` = 'study'")[0]
    assert (parent.info.status, parent.data.tags["mia.failure_reason"]) == ("KILLED", "interrupted")
    by_number = trial_runs(parent.info.run_id)
    assert [(r.info.status, r.data.tags["mia.failure_reason"]) for _, r in sorted(by_number.items())] == [
        ("FAILED", "MiaError: epsilon=0.1 is out of reach (simulated)"), ("KILLED", "interrupted")]
    failed = [r for r in caplog.records if "failed with parameters" in r.getMessage()]
    assert len(failed) == 2 and all(r.exc_info is None for r in failed)


def test_a_study_resumed_after_ctrl_c_finishes_without_the_reason_it_stopped(mlflow_store, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    storage = f"sqlite:///{mlflow_store / 'optuna.db'}"
    monkeypatch.setattr(tuning.objective, "audit_run", interrupted)
    assert invoke(*TINY, "--trials", "1", "--storage", storage).exit_code == 130
    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    result = invoke(*TINY, "--trials", "1", "--storage", storage)
    assert result.exit_code == 0, result.output
    parent = MlflowClient().get_run(study_run_of(result.output))
    assert parent.info.status == "FINISHED" and "mia.failure_reason" not in parent.data.tags


def fake_audit(config, attacks, *args, **kwargs):
    """Two finished runs and known numbers: more smoothing s, less accuracy (1 - s) and less leakage."""
    client = MlflowClient()
    ids = [client.create_run("0").info.run_id for _ in range(2)]
    for run_id in ids:
        client.set_terminated(run_id)
    s = config.defense_params["smoothing"]
    results = [SimpleNamespace(name=a, metrics={"auc": 0.9 - s / 2 - i / 100, "tpr_at_fpr_0.01": 0.5 - s,
                                                "tpr_at_fpr_0.001": 0.1})
               for i, a in enumerate(attacks)]
    return SimpleNamespace(run_id=ids[1], target_run_id=ids[0], test_accuracy=1 - s, results=results)


def test_min_accuracy_is_a_constraint_and_max_auc_a_leakage(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    space = tmp_path / "space.yaml"
    space.write_text("smoothing: {low: 0.0, high: 0.4}\n")
    result = invoke(*TINY, "--trials", "6", "--storage", "memory", "--space", str(space), "--min-accuracy", "0.8",
                    "--leakage", "max-auc", "--sampler", "nsga2")
    assert result.exit_code == 0, result.output
    by_number = trial_runs(study_run_of(result.output))
    assert len(by_number) == 6
    feasible = set()
    for number, run in by_number.items():
        s = float(run.data.params["smoothing"])
        assert 0.0 <= s <= 0.4
        assert run.data.metrics["objective.leakage"] == pytest.approx(0.9 - s / 2)  # max over attacks
        if 1 - s >= 0.8:
            feasible.add(number)
    assert 0 < len(feasible) < 6
    # accuracy and leakage fall together: every feasible trial is on the front, no infeasible one is
    table = result.output.split("down):")[1].split("study run")[0]
    assert {int(line.split()[0]) for line in table.strip().splitlines()[1:]} == feasible


def test_the_front_is_most_accurate_first_and_a_trial_exactly_at_min_accuracy_is_feasible():
    from tuning import frontier

    points = [(0.7, 0.5), (0.8, 0.6), (0.9, 0.8), (0.85, 0.9)]  # min accuracy 0.8: the first falls short

    def objective(trial):
        accuracy, leakage = points[trial.number]
        trial.set_constraint("min_accuracy", 0.8 - accuracy)
        return accuracy, leakage

    study = optuna.create_study(directions=list(tuning.objective.DIRECTIONS), sampler=optuna.samplers.RandomSampler(0))
    study.optimize(objective, n_trials=len(points))
    assert [frontier.feasible(t) for t in study.trials] == [False, True, True, True]
    assert [t.number for t in frontier.pareto_front(study)] == [2, 1]  # 3 is dominated by 2


def test_an_empty_front_says_why(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    space = tmp_path / "space.yaml"
    space.write_text("smoothing: {low: 0.2, high: 0.4}\n")  # test accuracy 1 - smoothing: at most 0.8
    result = invoke(*TINY, "--trials", "2", "--storage", "memory", "--space", str(space), "--min-accuracy", "0.9")
    assert result.exit_code == 0, result.output
    assert "(empty: none of the 2 complete trials reaches --min-accuracy 0.9)" in result.output


@pytest.mark.parametrize("password", ["s3cret", "s3/cr?et"])  # SQLAlchemy takes the second as it is
def test_a_storage_password_is_never_logged(mlflow_store, monkeypatch, password):
    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    seen = []
    monkeypatch.setattr(tuning.study, "storage_from_uri",
                        lambda uri: seen.append(uri) or optuna.storages.InMemoryStorage())
    uri = f"postgresql://mia:{password}@db.example:5432/optuna"
    result = invoke(*TINY, "--trials", "1", "--storage", uri)
    assert result.exit_code == 0, result.output
    assert seen == [uri]  # the real URI reaches the storage ...
    parent = MlflowClient().get_run(study_run_of(result.output))
    assert parent.data.params["storage"] == "postgresql://mia:***@db.example:5432/optuna"
    logged = [*parent.data.params.values(), *parent.data.tags.values()]
    for run in children(parent.info.run_id):
        logged += [*run.data.params.values(), *run.data.tags.values()]
    assert not any("s3" in str(v) for v in logged)  # ... and never the MLflow store nor the output
    assert "s3" not in result.output and "mia:***@" in result.output


def test_a_storage_that_cannot_be_opened_is_named_without_its_password(mlflow_store):
    result = invoke(*TINY, "--trials", "1", "--storage", "postgresql://mia:pa/ss@127.0.0.1:1/optuna")
    assert_user_error(result, "postgresql://mia:***@127.0.0.1:1/optuna")
    assert "pa/ss" not in result.output


def test_a_refused_resume_names_each_difference_by_its_full_key():
    """What differs between the stored and the new identity, nested keys joined with dots (a mutant dropping the
    outer key from the name survived: the CLI test's fragment matched either way)."""
    from tuning.study import _differences

    old = {"target": {"train.epochs": 2, "seed": 0}, "attacks": ["loss"]}
    new = {"target": {"train.epochs": 3, "seed": 0}, "attacks": ["loss", "rmia"]}
    assert _differences(old, new) == ["attacks=['loss'] (now ['loss', 'rmia'])", "target.train.epochs=2 (now 3)"]


def test_workers_and_resumes_get_samplers_of_their_own():
    """No two samplers of a study replay the same points: each worker and each resume draws its own seed."""
    from tuning.study import sampler_seed

    seeds = {sampler_seed(0, existing, worker) for existing in (0, 4) for worker in (0, 1, 2)}
    assert len(seeds) == 6 and sampler_seed(0, 4, 1) == sampler_seed(0, 4, 1) != sampler_seed(1, 4, 1)


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
    ("postgresql://:secret@h/db", "postgresql://:***@h/db"),  # no user name
    ("postgresql://u:p@secret@h:5432/db", "postgresql://u:***@h:5432/db"),  # the host follows the last @
    ("postgresql://h/db?user=u&password=secret", "postgresql://h/db?user=u&password=***"),  # SQLAlchemy reads it
    ("postgresql://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
    # SQLAlchemy reads the password up to the @: a /, ? or # in it is the password's, not the path's
    ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"), ("mysql://u:p?w#d@h:3306/db", "mysql://u:***@h:3306/db"),
    ("postgresql://us@er:secret@h/db", "postgresql://us@er:***@h/db"),  # and its user name up to the :
    ("postgresql://h/db?token=abc&sslmode=require", "postgresql://h/db?token=***&sslmode=require"),
    # libpq's sslpassword, and any key naming a password, secret, token or key
    ("postgresql://u@h/db?sslpassword=k&x=1", "postgresql://u@h/db?sslpassword=***&x=1"),
    ("postgresql://u@h/db?my_api_key=k", "postgresql://u@h/db?my_api_key=***"),
    ("sqlite:///optuna.db", "sqlite:///optuna.db"), ("study.journal", "study.journal")])
def test_redaction_covers_every_place_a_password_goes(uri, shown):
    from mia.tracking import redact

    assert redact(uri) == shown


def test_the_storage_can_come_from_the_environment(mlflow_store, monkeypatch):
    """How `mlflow run` passes a password: project parameters are logged as given, the environment is not."""
    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    seen = []
    monkeypatch.setattr(tuning.study, "storage_from_uri",
                        lambda uri: seen.append(uri) or optuna.storages.InMemoryStorage())
    monkeypatch.setenv("MIA_TUNE_STORAGE", "postgresql://mia:s3cret@db.example/optuna")
    result = invoke(*TINY, "--trials", "1")
    assert result.exit_code == 0, result.output
    assert seen == ["postgresql://mia:s3cret@db.example/optuna"] and "s3cret" not in result.output


def test_the_study_run_stays_open_while_another_machine_runs_a_trial(mlflow_store, monkeypatch):
    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    args = [*TINY, "--trials", "1", "--storage", "sqlite:///shared.db", "--study-name", "shared"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    parent = study_run_of(first.output)
    assert MlflowClient().get_run(parent).info.status == "FINISHED"
    study = optuna.load_study(study_name="shared", storage="sqlite:///shared.db")
    elsewhere = study.ask()  # a trial another machine is running
    second = invoke(*args)
    assert second.exit_code == 0 and study_run_of(second.output) == parent
    assert MlflowClient().get_run(parent).info.status == "RUNNING"  # not finished under the other machine
    study.tell(elsewhere, state=TrialState.FAIL)
    assert invoke(*args).exit_code == 0
    assert MlflowClient().get_run(parent).info.status == "FINISHED"  # the last one to end finishes it


def test_workers_started_at_once_agree_on_one_study_run(mlflow_store, monkeypatch):
    """Each worker of a study started at the same instant finds no parent recorded and makes one:
    they must still end up on one (the earliest), the others' deleted."""
    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    args = [*TINY, "--trials", "1", "--storage", "raced.log", "--study-name", "raced"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    study = optuna.load_study(study_name="raced", storage=storage_from_uri("raced.log"))
    study.set_user_attr(tuning.study.PARENT_ATTR, "")  # the second worker read the study before the first wrote
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    parent = study_run_of(first.output)
    assert study_run_of(second.output) == parent
    studies = MlflowClient().search_runs([MlflowClient().get_run(parent).info.experiment_id],
                                         filter_string="tags.`mia.kind` = 'study'")
    assert [run.info.run_id for run in studies] == [parent]  # the second worker's own parent was deleted
    assert len(children(parent)) == 2
    other = invoke(*TINY, "--trials", "1", "--storage", "other.log", "--study-name", "raced")
    assert other.exit_code == 0 and study_run_of(other.output) != parent  # same name, another study


def test_workers_share_a_journal_and_run_each_trial_once(mlflow_store):
    result = invoke(*TINY, "--trials", "4", "--jobs", "2", "--storage", "study.log", "--study-name", "par")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="par", storage=storage_from_uri("study.log"))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, two trials each
    assert_trials_match_runs(study, study_run_of(result.output))


def test_a_killed_workers_trial_is_failed_and_retried(mlflow_store):
    storage = storage_from_uri("killed.journal")
    study = open_study(storage, "k", {"target": {}})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = MlflowClient().create_run("0").info.run_id
    trials = []
    # a worker of another machine sharing the journal: its process id says nothing here
    for host, pid in ((socket.gethostname(), dead.pid), (socket.gethostname(), os.getpid()), ("elsewhere", dead.pid)):
        trial = study.ask()
        trial.suggest_float("smoothing", 0.0, 0.5)
        trial.set_user_attr("worker", {"host": host, "pid": pid})
        trial.set_user_attr("mlflow_run_id", run_id)
        trials.append(trial)

    assert fail_dead_workers(study, storage) == [0]
    killed, alive, elsewhere, retry = study.get_trials()
    assert killed.state == TrialState.FAIL and "stopped during the trial" in killed.user_attrs["failure_reason"]
    assert alive.state == TrialState.RUNNING and elsewhere.state == TrialState.RUNNING
    assert retry.state == TrialState.WAITING and retry.params == killed.params
    assert retry.system_attrs["failed_trial"] == 0 and retry.user_attrs == {}
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and "stopped during the trial" in run.data.tags["mia.failure_reason"]
    # the run says which worker died, as the trial does (a mutant giving the run a generic reason survived)
    assert run.data.tags["mia.failure_reason"] == killed.user_attrs["failure_reason"]
    assert f"worker {dead.pid} on {socket.gethostname()}" in killed.user_attrs["failure_reason"]
    assert fail_dead_workers(study, storage) == []  # once only


def test_a_trial_whose_worker_id_another_process_reuses_is_failed(mlflow_store):
    """The kernel hands process ids out again: a dead worker's id held by a live process kept its trial RUNNING."""
    storage = storage_from_uri("reused.journal")
    study = open_study(storage, "r", {"target": {}})
    started = process_started(os.getpid())
    assert isinstance(started, int) and process_started(2 ** 22 + 1) is None  # no such process
    for worker_started in (started - 1, started, None):  # another process under this id; this one; not recorded
        trial = study.ask()
        trial.suggest_float("smoothing", 0.0, 0.5)
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "started": worker_started})
    assert fail_dead_workers(study, storage) == [0]
    assert [t.state for t in study.get_trials()][:3] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]


def test_workers_get_one_gpu_each_round_robin(monkeypatch):
    assert worker_devices(3, "auto", 2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(2, "cuda", 4) == ["cuda:0", "cuda:1"]
    assert worker_devices(2, "auto", 0) == ["auto", "auto"]  # no GPU: the CPU, as auto resolves
    assert worker_devices(2, "cuda:1", 4) == ["cuda:1", "cuda:1"]  # a named device is kept
    assert worker_devices(2, "cpu", 4) == ["cpu", "cpu"]
    # the spawned jobs carry those devices, and nothing else of the study changes
    captured = []
    monkeypatch.setattr(tuning.study, "_gpu_count", lambda: 2)
    monkeypatch.setattr(tuning.study, "_spawn", lambda jobs: captured.extend(jobs) or [])
    objective = Objective(resolve_config("digits"), defense_space("relaxloss"))
    settings = StudySettings("gpus", storage="study.log", trials=5, jobs=3)
    assert tuning.study._run(objective, settings, None, 0) == []
    assert [j.objective.config.train.device for j in captured] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [j.trials for j in captured] == [2, 2, 1]
    assert all(replace(j.objective.config, train=objective.config.train) == objective.config for j in captured)


def test_a_space_file_refuses_an_empty_range_and_lists_each_choice_once(tmp_path):
    """low == high is no range (a mutant accepting it survived); a choice repeated in the file is one choice,
    not a doubled weight for the sampler (a mutant keeping duplicates survived)."""
    from tuning.space import load_space

    path = tmp_path / "s.yaml"
    path.write_text("smoothing: {low: 0.1, high: 0.1}\n")
    with pytest.raises(MiaError, match=r"low \(0.1\) must be below high \(0.1\)"):
        load_space(path, "label-smoothing")
    path.write_text("modify_output: {choices: [true, false, true]}\n")
    assert load_space(path, "hamp").dimensions[0].choices == (True, False)


def test_search_spaces_are_read_from_the_defense_and_checked(tmp_path):
    space = defense_space("dp-sgd", fixed={"max_grad_norm"})
    dims = {d.name: d for d in space.dimensions}
    # epsilon over its search range (its valid range starts at 0 = "use sigma"); sigma, the recipe's
    # knobs, delta and the accountant are validated but not searched (sigma is dead once epsilon > 0)
    assert set(dims) == {"epsilon"}
    assert (dims["epsilon"].low, dims["epsilon"].high, dims["epsilon"].log) == (0.5, 50.0, True)
    assert set(defense_space("client-dp").describe()) == {"epsilon", "max_update_norm"}  # the same for client DP
    # the scenario, a search's convergence and a recipe knob are not points on the trade-off
    assert "trusted_clients" not in defense_space("cofedmid").describe()
    assert "max_iter" not in defense_space("memguard").describe()
    assert "distill_epochs" not in defense_space("selena").describe()
    assert defense_space("hamp").describe()["modify_output"] == "bool {False, True}"
    # estimator settings (search=False) are validated but not searched
    assert set(defense_space("rsw").describe()) == {"step", "window"}
    with pytest.raises(MiaError, match="no hyperparameter to search"):
        defense_space("none")
    with pytest.raises(MiaError, match="fixes every hyperparameter a search explores \\(smoothing\\); leave one"):
        defense_space("label-smoothing", fixed={"smoothing"})

    path = tmp_path / "s.yaml"
    path.write_text("alpha: {low: 1e-4, high: 0.05, log: true}\nmodify_output: {choices: [true]}\n")
    loaded = {d.name: d for d in load_space(path, "hamp").dimensions}
    assert (loaded["alpha"].low, loaded["alpha"].high, loaded["alpha"].log) == (1e-4, 0.05, True)
    assert loaded["modify_output"].choices == (True,)
    for text, message in (("nope: {low: 0, high: 1}", "has no parameter 'nope'"),
                          ("alpha: {low: -0.5, high: 0.9}", "leaves the valid range [0, inf)"),
                          ("alpha: {low: 0.01}", "needs both low and high"),
                          ("alpha: {low: 0.0, high: 0.01, log: true}", "log scale needs low > 0"),
                          ("alpha: [1, 2", "not valid YAML"),
                          ("alpha: 0.1", "must be {low: .., high: .., log: ..} or {choices: [..]}, got 0.1"),
                          ("alpha: {low: 0.1, high: 0.2, step: 0.01}", "unknown key(s) step; use low, high"),
                          ("alpha: {low: 0.1, high: 0.2, choices: [0.1]}", "give either choices"),
                          ("alpha: {low: 0.2, high: 0.1}", "low (0.2) must be below high (0.1)"),
                          ("alpha: {low: 0.1, high: 0.2, log: 'yes'}", "log must be true or false, got 'yes'"),
                          ("alpha: {low: 0.1, high: many}", "high must be a number, got 'many'"),
                          ("alpha: {low: 0.1, high: .inf}", "high must be a finite number, got inf"),  # valid, unsampled
                          ("modify_output: {low: 0, high: 1}", "is a bool; give choices: [..]"),
                          ("modify_output: {choices: [3]}", "choice 3 is not a bool"),
                          ("alpha: {choices: [0.1, -1]}", "alpha=-1.0 must be in [0, inf)"),
                          ("[1, 2]", "must map parameter names to ranges")):
        path.write_text(text)
        with pytest.raises(MiaError, match=re.escape(message)):
            load_space(path, "hamp")
    path.write_text("k: {low: 1, high: 2.5}")
    with pytest.raises(MiaError, match=re.escape("high must be an integer, got 2.5")):
        load_space(path, "advreg")
    path.write_text("k: {low: 1, high: 3}")
    with pytest.raises(MiaError, match="k is both fixed with --defense-param and searched in"):
        load_space(path, "advreg", fixed={"k"})
    with pytest.raises(MiaError, match="cannot read search space"):
        load_space(tmp_path / "missing.yaml", "advreg")
    path.write_bytes(b"\x00\xff\xfe")
    with pytest.raises(MiaError, match="is not a text file"):
        load_space(path, "advreg")
    path.write_text("smoothing: {low: 0.0, high: 1.2}\n")
    assert_user_error(invoke(*TINY, "--space", str(path), "--storage", "memory"), "valid range [0, 1]")
    assert_user_error(invoke(*TINY, "--storage", "redis://x"), "unknown Optuna storage")
    # the defense to search is required: the shared --defense default (none) has nothing to search
    missing = invoke("--dataset", "digits", "--storage", "memory")
    assert missing.exit_code == 2 and "Missing option '--defense'" in missing.output


def test_cli_choices_match_the_tuning_package():
    from entrypoints.tune import LEAKAGE_NAMES, SAMPLER_NAMES

    assert SAMPLER_NAMES == tuple(tuning.study.SAMPLERS)
    assert set(LEAKAGE_NAMES) == set(tuning.objective.LEAKAGE)
    assert storage_kind("postgresql+psycopg2://u:p@h/db") == "rdb" and storage_kind("x.journal") == "journal"


def fake_hamp_audit(config, attacks, *args, **kwargs):
    client = MlflowClient()
    ids = [client.create_run("0").info.run_id for _ in range(2)]
    for run_id in ids:
        client.set_terminated(run_id)
    results = [SimpleNamespace(name=a, metrics={"auc": 0.6, "tpr_at_fpr_0.01": 0.1, "tpr_at_fpr_0.001": 0.0})
               for a in attacks]
    return SimpleNamespace(run_id=ids[1], target_run_id=ids[0], test_accuracy=0.9, results=results)


def test_a_resume_whose_choices_optuna_cannot_sample_is_refused(mlflow_store, monkeypatch, tmp_path):
    """Optuna fails every trial whose categorical choices differ from the study's: each new trial failed with a
    traceback, no MLflow run and no reason ("trial 3: ?")."""
    monkeypatch.setattr(tuning.objective, "audit_run", fake_hamp_audit)
    args = ["--defense", "hamp", *TINY[2:], "--storage", "sqlite:///optuna.db", "--study-name", "h"]
    assert invoke(*args, "--trials", "1").exit_code == 0
    space = tmp_path / "space.yaml"
    ranges = "alpha: {low: 0.001, high: 0.01, log: true}\nentropy_percentile: {low: 0.5, high: 0.99}\n"
    space.write_text(ranges + "modify_output: {choices: [true]}\n")
    assert_user_error(invoke(*args, "--trials", "1", "--space", str(space)),
                      "searched modify_output over choices [False, True]", "bool {True}", "--study-name")
    space.write_text(ranges + "modify_output: {choices: [false, true]}\n")  # the same choices: ranges may narrow
    result = invoke(*args, "--trials", "1", "--space", str(space))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="h", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_a_trial_that_cannot_sample_its_space_records_why(mlflow_store, monkeypatch, recwarn):
    """The reason was "?", and the empty plot of a study without a completed trial warned of an empty legend."""
    def cannot(self, trial):
        raise ValueError("no room to sample (simulated)")

    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    monkeypatch.setattr(tuning.space.SearchSpace, "suggest", cannot)
    result = invoke(*TINY, "--trials", "1", "--storage", "memory")
    assert_user_error(result, "no trial of study mia-digits-label-smoothing completed; "
                              "trial 0: ValueError: no room to sample (simulated)")
    assert not [w for w in recwarn if "legend" in str(w.message)]


def test_a_study_whose_run_was_deleted_resumes_on_a_new_one(mlflow_store, monkeypatch):
    """A study run deleted in the MLflow UI: resuming the study failed, every time, with "your code failed:
    MlflowException: The run ... must be in the 'active' state"."""
    monkeypatch.setattr(tuning.objective, "audit_run", fake_audit)
    args = [*TINY, "--trials", "1", "--storage", "sqlite:///optuna.db", "--study-name", "gone"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    MlflowClient().delete_run(study_run_of(first.output))
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    parent = MlflowClient().get_run(study_run_of(again.output))
    assert parent.info.run_id != study_run_of(first.output)
    assert (parent.info.lifecycle_stage, parent.info.status) == ("active", "FINISHED")
    assert parent.data.metrics["trials.total"] == 2  # its front covers the whole study


def test_attacks_all_stays_all_so_the_audit_leaves_out_what_the_data_cannot_have(mlflow_store, monkeypatch):
    """`--attacks all` was expanded to every name, so every trial named noise-flip on images (aug on tabular
    rows) and failed: no study with it ever completed a trial. Named, the audit refuses them; under `all` it
    leaves them out, as `mia audit --attacks all` does."""
    from mia.attacks.selection import as_asked

    asked = []

    def audit(config, attacks, *args, **kwargs):
        asked.append(attacks)
        return fake_audit(config, ["loss", "aug"], *args, **kwargs)

    monkeypatch.setattr(tuning.objective, "audit_run", audit)
    for spelt in ("all", "ALL"):  # the second was "unknown attack 'ALL'"
        result = invoke(*TINY, "--trials", "1", "--storage", "memory", "--attacks", spelt)
        assert result.exit_code == 0, result.output
        assert as_asked(asked[-1]) == "all"
        assert MlflowClient().get_run(study_run_of(result.output)).data.params["attacks"] == "all"
    assert_user_error(invoke(*TINY, "--storage", "memory", "--attacks", "loss,nope"), "unknown attack 'nope'")


def test_workers_share_the_cores_without_raising_the_users_thread_limit(monkeypatch):
    import torch

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 sets it: each worker had 8 threads
        assert tuning.study.worker_threads(2) == 1
        torch.set_num_threads(16)
        assert tuning.study.worker_threads(2) == 8 and tuning.study.worker_threads(32) == 1
    finally:
        torch.set_num_threads(before)


def test_a_dimension_suggests_from_the_distribution_it_declares():
    """``check_resumes`` compares a study's stored distributions with ``Dimension.distribution()``: both are what
    ``suggest`` samples, log scale included (mutants dropping ``log`` from the integer suggestion or distribution
    survived; RSW's ``step`` searches 1..1000 on a log scale)."""
    from tuning.space import Dimension

    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    dims = [Dimension("step", int, 1, 1000, True), Dimension("alpha", float, 1e-4, 0.1, True),
            Dimension("mode", str, choices=("a", "b"))]
    for dim in dims:
        dim.suggest(trial)
    assert trial.distributions == {dim.name: dim.distribution() for dim in dims}
    assert trial.distributions["step"].log and trial.distributions["alpha"].log
