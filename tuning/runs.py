"""The MLflow side of a study: one parent run per study, one child run per trial.

The parent (tag ``mia.kind=study``) holds the study's settings as params (the
storage URI with its password stripped), the target recipe (``config.json``)
and, at the end, the Pareto front (``pareto.csv``, ``pareto.png``). Each
trial's run (``mia.kind=trial``) is its child (tag ``mlflow.parentRunId``)
and holds the trial's parameters, both objective values and every attack
metric; the audit's own training and attack runs are made children of the
trial's run once they finish, so the MLflow UI shows study > trial > audit.
The runs are written with :class:`~mlflow.tracking.MlflowClient`, never the
fluent active-run stack, which the audit itself uses.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mia import tracking

PARENT = "mlflow.parentRunId"
STUDY_KEY = "mia.study_key"


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: what a failed run or trial records as its reason."""
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:5000] if text else type(exc).__name__


def _exists(run_id: str | None) -> bool:
    """Whether ``run_id`` is a live run of this tracking store: one deleted (in the MLflow UI) counts as gone,
    as MLflow refuses to reopen it."""
    if not run_id:
        return False
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage == "active"


def open_parent(name: str, experiment: str | None, params: dict[str, object], tags: dict[str, str],
                resume: str | None = None, study_key: str = "") -> str:
    """The study's parent run: ``resume`` reopened when it is in this tracking store, else a new run.

    Params are immutable in MLflow, so a resumed study keeps the first
    values and records a changed one (say, another sampler) as the tag
    ``mia.latest.<key>``.

    ``study_key`` names the study across processes (see
    :func:`tuning.study.study_key`). Workers on several machines started at
    the same instant each find no parent recorded in the study and create
    one; each then takes the earliest parent run with that key and deletes
    its own if it is not that one, so that all of them agree on one parent.
    """
    tracking.prepare_store()
    client = MlflowClient()
    project = tracking.claim_project_run()
    run_id = project or (resume if _exists(resume) else None)
    if run_id is None:
        exp = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or tracking.DEFAULT_EXPERIMENT
        experiment_id = tracking.experiment_id(exp)
        key_tags = {STUDY_KEY: study_key, "mia.kind": "study"} if study_key else {}
        run_id = client.create_run(experiment_id, run_name=name, tags=key_tags).info.run_id
        first = _first_parent(experiment_id, study_key) if study_key else run_id
        if first != run_id:  # another worker created the study's parent first
            client.delete_run(run_id)
            run_id = first
            _reopen(run_id)
    else:
        _reopen(run_id)
    existing = client.get_run(run_id).data.params
    texts = {k: tracking.redact(str(v))[:6000] for k, v in params.items()}
    new = [Param(k, v) for k, v in texts.items() if k not in existing]
    changed = {f"mia.latest.{k}": v for k, v in texts.items() if k in existing and existing[k] != v}
    client.log_batch(run_id, params=new)
    for key, value in {**tags, **changed, "mlflow.runName": name, "mia.kind": "study"}.items():
        client.set_tag(run_id, key, str(value))
    return run_id


def _reopen(run_id: str) -> None:
    """RUNNING again, without the reason it stopped: a study resumed after Ctrl-C finished with the tag
    ``mia.failure_reason`` "interrupted" still on it (:func:`mia.tracking.run` drops it the same way)."""
    client = MlflowClient()
    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    if "mia.failure_reason" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "mia.failure_reason")


def _first_parent(experiment_id: str, study_key: str) -> str:
    """The earliest live parent run tagged with ``study_key`` (ties: the smaller run id)."""
    found = MlflowClient().search_runs([experiment_id], filter_string=f"tags.`{STUDY_KEY}` = '{study_key}'",
                                       max_results=100)
    return min(found, key=lambda run: (run.info.start_time, run.info.run_id)).info.run_id


def start_trial(parent: str, number: int, params: dict[str, object], tags: dict[str, str]) -> str:
    """A child run of ``parent`` for trial ``number``, holding the trial's parameters."""
    client = MlflowClient()
    experiment = client.get_run(parent).info.experiment_id
    run = client.create_run(experiment, run_name=f"trial-{number}",
                            tags={**tags, PARENT: parent, "mia.kind": "trial", "mia.trial": str(number)})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def adopt(parent: str, children: list[str]) -> None:
    """Make finished runs (the audit's training and attack runs) children of ``parent``."""
    client = MlflowClient()
    for child in children:
        client.set_tag(child, PARENT, parent)


def log(run_id: str, metrics: dict[str, float] | None = None, artifacts: list[Path] = ()) -> None:
    """Log ``metrics`` (step 0) and files (at the artifact root) on a run that is not the active one."""
    client = MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path))


def finish(run_id: str) -> None:
    MlflowClient().set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def fail(run_id: str, reason: str) -> None:
    """Mark the run FAILED with ``mia.failure_reason`` (a crashed trial or study, a killed worker)."""
    client = MlflowClient()
    client.set_tag(run_id, "mia.failure_reason", reason[:5000])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def stop(run_id: str, exc: BaseException) -> str:
    """Mark the run as ``exc`` ended it, as :func:`mia.tracking.run` does: KILLED "interrupted" for Ctrl-C or
    SIGTERM (a study and its trial said FAILED "KeyboardInterrupt" beside the KILLED audit run), else FAILED
    with the exception's first line; returns the reason."""
    status, reason = tracking.stop_reason(exc)
    client = MlflowClient()
    client.set_tag(run_id, "mia.failure_reason", reason)
    client.set_terminated(run_id, status)
    return reason


def log_dict(run_id: str, data: dict, name: str) -> None:
    MlflowClient().log_dict(run_id, data, name)

