"""Studies: storages, samplers, worker processes, and :func:`tune`, which ties them to MLflow.

Storage (``--storage``) decides who may share a study:

* ``memory``: this process only, gone when it ends;
* ``sqlite:///optuna.db`` (the default): one process, resumable by name;
* a file ending ``.log`` or ``.journal``: Optuna's journal file, for many
  worker processes on one machine;
* ``postgresql://user:password@host/db`` (or ``mysql://``): many machines.

A study resumes by name (``load_if_exists``); it remembers what it measures
(target recipe, attacks, leakage, constraint) and refuses a resume that would
mix incomparable trials. A killed worker's trial is failed and retried once
with the same parameters: RDB storages find it by its stopped heartbeat, a
journal file (which has no heartbeat) by its worker's process id, checked
before and after the workers run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import optuna
from mlflow.exceptions import MlflowException
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from mia import tracking
from mia.allocator import keep_freed_memory
from mia.errors import MiaError
from mia.plugins import load_plugins
from tuning import frontier, runs
from tuning.objective import DIRECTIONS, LEAKAGE, Objective, process_started

_log = logging.getLogger(__name__)


class _OneLineTrialFailures(logging.Filter):
    """Optuna's warning for a failed trial, without the traceback when it is a user error or Ctrl-C.

    Optuna logs every failed trial with its traceback: a :class:`MiaError` or
    a Ctrl-C came as a page of frames through the audit and torch, where
    ``mia`` says one line everywhere else (the trial's run keeps the reason);
    a bug keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (MiaError, KeyboardInterrupt)):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_OneLineTrialFailures())

#: Sampler name -> its seeded multi-objective class: TPE (MOTPE), NSGA-II, Gaussian process.
SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler, "gp": optuna.samplers.GPSampler}
#: Seconds between RDB heartbeats, and the silence after which a running trial counts as dead.
HEARTBEAT_S, GRACE_S = 60, 180
#: How many times a killed worker's trial is retried.
RETRIES = 1
#: Study user attributes: what the study measures (checked on resume) and its MLflow parent run.
IDENTITY_ATTR, PARENT_ATTR = "mia", "mlflow_parent_run_id"
#: Python module SQLAlchemy asks for -> the package that provides it.
_DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
#: Target options that may change between resumes without changing what a trial measures.
_FREE_KEYS = ("data_dir", "download", "train.device", "label_only")


# ---------------------------------------------------------------- storages and samplers


def storage_kind(uri: str) -> str:
    """``memory``, ``journal``, ``sqlite`` or ``rdb`` (PostgreSQL, MySQL); a one-line error for anything else."""
    if uri == "memory":
        return "memory"
    if "://" not in uri and uri.endswith((".log", ".journal")):
        return "journal"
    if uri.startswith("sqlite://"):
        return "sqlite"
    if uri.startswith(("postgresql://", "postgresql+", "mysql://", "mysql+")):
        return "rdb"
    raise MiaError(f"unknown Optuna storage {tracking.redact(uri)!r}; use memory, sqlite:///optuna.db, "
                   "a journal file (study.log) or postgresql://user:password@host/db")


def storage_from_uri(uri: str) -> optuna.storages.BaseStorage:
    """The Optuna storage ``uri`` names (see :func:`storage_kind`); RDB storages keep heartbeats.

    A PostgreSQL or MySQL URI passes through to :class:`optuna.storages.RDBStorage`
    as is; errors name the URI with its password stripped.
    """
    kind = storage_kind(uri)
    if kind == "memory":
        return optuna.storages.InMemoryStorage()
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(uri))
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; they are what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(uri, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                              heartbeat_stale_trial_callback=retry_stale_trial)
    except ImportError as exc:
        driver = getattr(exc.__cause__, "name", None) or exc.name or "driver"
        raise MiaError(f"Optuna storage {tracking.redact(uri)} needs the database driver {driver}; install it: "
                       f"pip install {_DRIVERS.get(driver, driver)}") from None
    except (SQLAlchemyError, ValueError, OSError) as exc:  # a bad URL, an unreachable server, a bad password
        raise MiaError(f"cannot open Optuna storage {tracking.redact(uri)}: "
                       f"{tracking.redact(runs.one_line(exc))}") from None


def check_sampler(name: str) -> str:
    """``name``, or a one-line error listing the known samplers."""
    if name not in SAMPLERS:
        raise MiaError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return name


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded multi-objective sampler (:data:`SAMPLERS`)."""
    return SAMPLERS[check_sampler(name)](seed=seed)


def sampler_seed(seed: int, existing: int, worker: int) -> int:
    """A distinct seed per worker and per resume, so that no two samplers replay the same points."""
    return int(np.random.SeedSequence([seed % 2**32, existing, worker]).generate_state(1)[0])


# ---------------------------------------------------------------- killed workers


def retry_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker died: its MLflow run FAILED, and one retry with the same parameters queued."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        reason = trial.user_attrs.get("failure_reason") or "its worker stopped during the trial (killed?)"
        try:
            runs.fail(run_id, reason)
        except MlflowException as exc:  # the tracking store may be what failed; the retry matters more
            _log.warning("could not mark MLflow run %s FAILED: %s", run_id, runs.one_line(exc))
    clean = copy.copy(trial)
    clean.user_attrs = {}  # the dead attempt's worker and run ids are not the retry's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)
    retry(study, clean)


def _alive(worker: dict) -> bool:
    pid, started = worker.get("pid"), worker.get("started")
    if not isinstance(pid, int):
        return True  # unknown: leave the trial alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = process_started(pid)
    return started is None or now is None or now == started  # another start time: the id was reused


def fail_dead_workers(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Fail (and retry) the running trials whose worker process on this machine is gone; their numbers.

    A journal file has no heartbeat: each trial records its worker's host,
    process id and start time (:func:`process_started`), and a trial still
    RUNNING whose process no longer exists (or is another process under the
    same id) was killed.
    """
    host, failed = socket.gethostname(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or _alive(worker):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        reason = f"worker {worker.get('pid')} on {host} stopped during the trial (killed?)"
        try:
            storage.set_trial_user_attr(trial_id, "failure_reason", reason)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except RuntimeError:  # another process finished it first
            continue
        retry_stale_trial(study, storage.get_trial(trial_id))
        failed.append(trial.number)
    return failed


# ---------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Job:
    """What one worker process needs (picklable: spawned workers get it through a pipe)."""

    objective: Objective
    storage: str
    study_name: str
    sampler: str
    seed: int
    trials: int
    tracking_uri: str
    verbosity: int
    threads: int | None = None


def _work(job: _Job, storage: optuna.storages.BaseStorage | None = None) -> None:
    """Run ``job.trials`` trials of the study; a trial that raises is recorded FAILED and the next one runs."""
    keep_freed_memory()  # as the ``mia`` command does: a spawned worker is a fresh process
    load_plugins()  # the user's own names, from the MIA_PLUGINS it inherited
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    mlflow.set_tracking_uri(job.tracking_uri)
    tracking.claim_project_run()
    optuna.logging.set_verbosity(job.verbosity)
    study = optuna.load_study(study_name=job.study_name, storage=storage or storage_from_uri(job.storage),
                              sampler=make_sampler(job.sampler, job.seed))
    study.optimize(job.objective, n_trials=job.trials, catch=(Exception,))


def _spawn(jobs: list[_Job]) -> list[str]:
    """Each job in its own process (spawned: forking after torch and MLflow started threads is unsafe).

    Returns a line per worker that did not exit cleanly.
    """
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_work, args=(job,), name=f"mia-tune-{i}") for i, job in enumerate(jobs)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join()
    return [f"worker {i} exited with code {w.exitcode}" for i, w in enumerate(workers) if w.exitcode != 0]


# ---------------------------------------------------------------- the workflow


@dataclass(frozen=True)
class StudySettings:
    """Where the study lives and how it samples: ``trials`` new trials over ``jobs`` worker processes."""

    study_name: str
    storage: str = "sqlite:///optuna.db"
    sampler: str = "tpe"
    seed: int = 0
    trials: int = 20
    jobs: int = 1


@dataclass
class TuneResult:
    study: optuna.Study
    run_id: str  # the study's MLflow parent run
    front: list[FrozenTrial]
    new: list[FrozenTrial] = field(default_factory=list)  # the trials this call ran


def identity(objective: Objective) -> dict:
    """What a study measures; a resume must measure the same, or its trials would not compare."""
    searched = {f"defense_params.{d.name}" for d in objective.space.dimensions}
    target = {k: v for k, v in tracking.flatten(objective.config.to_dict()).items()
              if k not in _FREE_KEYS and k not in searched}
    return json.loads(json.dumps({
        "target": target, "attacks": list(objective.attacks), "leakage": objective.leakage,
        "min_accuracy": objective.min_accuracy, "reference_models": objective.reference_models,
        "attack_params": objective.attack_params or {}, "pool": objective.pool_mode,
        "adaptive": objective.adaptive}, default=str))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}={a!r} (now {b!r})")
    return out


def open_study(storage: optuna.storages.BaseStorage, name: str, measures: dict) -> optuna.Study:
    """Create study ``name`` or load it, checking that it measures what this command would."""
    study = optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS), load_if_exists=True)
    if [d.name.lower() for d in study.directions] != list(DIRECTIONS):
        raise MiaError(f"study {name} optimizes {', '.join(d.name.lower() for d in study.directions)}, not "
                       f"(test accuracy, leakage); use a new --study-name")
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        study.set_user_attr(IDENTITY_ATTR, measures)
    elif stored != measures:
        diff = _differences(stored, measures)
        shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise MiaError(f"study {name} was made with {shown}; pass the same options to resume it, or a new "
                       "--study-name")
    return study


def study_key(storage_uri: str, storage: optuna.storages.BaseStorage, name: str) -> str:
    """A hash of the storage (without its password), the study's name and its id there.

    What workers of one study share, and a later study of the same name
    (deleted and made again: a new id) does not. Machines that spell the
    storage differently (a host name and its address) get different keys and
    so may each make a parent run, as before this key existed.
    """
    text = f"{tracking.redact(storage_uri)}|{name}|{storage.get_study_id_from_name(name)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def tune(objective: Objective, settings: StudySettings) -> TuneResult:
    """Run ``settings.trials`` new trials of the study and log its Pareto front on the study's MLflow run."""
    kind = storage_kind(settings.storage)
    if settings.jobs > 1 and kind in ("memory", "sqlite"):
        raise MiaError(f"{kind} storage serves one process; for --jobs {settings.jobs} use a journal file "
                       "(--storage optuna.log) or PostgreSQL (--storage postgresql://user@host/db)")
    check_sampler(settings.sampler)
    storage = storage_from_uri(settings.storage)
    study = open_study(storage, settings.study_name, identity(objective))
    objective.space.check_resumes(study.get_trials(deepcopy=False))
    existing = {t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING}  # queued: new
    config = objective.config
    params = {"study_name": settings.study_name, "storage": tracking.redact(settings.storage),
              "sampler": settings.sampler, "seed": settings.seed, "trials": settings.trials, "jobs": settings.jobs,
              "defense": config.defense, "scenario": config.scenario, "dataset": config.dataset,
              "model": config.model, "attacks": ",".join(objective.attacks), "leakage": objective.leakage,
              "min_accuracy": objective.min_accuracy, "reference_models": objective.reference_models,
              **{f"space.{k}": v for k, v in objective.space.describe().items()}}
    parent = runs.open_parent(f"study-{settings.study_name}", objective.experiment, params,
                              {**tracking.run_tags(config), "mia.study": settings.study_name},
                              resume=study.user_attrs.get(PARENT_ATTR),
                              study_key="" if kind == "memory" else study_key(settings.storage, storage, settings.study_name))
    try:
        study.set_user_attr(PARENT_ATTR, parent)
        runs.log_dict(parent, config.to_dict(), tracking.CONFIG)
        objective = replace(objective, parent_run_id=parent, study_name=settings.study_name)
        if kind == "journal":
            fail_dead_workers(study, storage)
        problems = _run(objective, settings, storage, len(existing))
        if kind == "journal":
            fail_dead_workers(study, storage)
        result = TuneResult(study, parent, frontier.pareto_front(study),
                            [t for t in study.get_trials() if t.number not in existing])
        _log_front(result, objective)
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            failed = [t for t in result.new if t.state == TrialState.FAIL]
            first = f"; trial {failed[0].number}: {failed[0].user_attrs.get('failure_reason', '?')}" if failed else ""
            raise MiaError(f"no trial of study {settings.study_name} completed{first}")
        # other machines may still run trials of a shared study: the last one to end finishes the parent
        # (each logs the front as it stands, the last the whole one)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            runs.finish(parent)
    except BaseException as exc:
        runs.stop(parent, exc)
        raise
    if problems:
        raise MiaError(f"{'; '.join(problems)}; a killed worker's trial is failed and retried by the next "
                       f"`mia tune --study-name {settings.study_name}`")
    return result


def _run(objective: Objective, settings: StudySettings, storage, existing: int) -> list[str]:
    """The trials, in this process (``jobs=1``) or split over ``jobs`` spawned workers."""
    jobs = min(settings.jobs, settings.trials)
    common = {"objective": objective, "storage": settings.storage, "study_name": settings.study_name,
              "sampler": settings.sampler, "tracking_uri": mlflow.get_tracking_uri(),
              "verbosity": optuna.logging.get_verbosity()}
    if jobs == 1:
        _work(_Job(seed=sampler_seed(settings.seed, existing, 0), trials=settings.trials, **common), storage)
        return []
    quiet = replace(objective, progress=False)  # one progress bar per worker would interleave
    threads = worker_threads(jobs)
    devices = worker_devices(jobs, objective.config.train.device, _gpu_count())
    return _spawn([_Job(**{**common, "objective": _on_device(quiet, device)},
                        seed=sampler_seed(settings.seed, existing, i), threads=threads,
                        trials=settings.trials // jobs + (i < settings.trials % jobs))
                   for i, device in enumerate(devices)])


def worker_threads(jobs: int) -> int:
    """Torch threads per worker: the cores shared out, but never more than this process has (a user's
    ``OMP_NUM_THREADS=1``, which the README advises on a shared CPU, was raised to the cores' share)."""
    import torch

    return max(1, min((os.cpu_count() or 1) // jobs, torch.get_num_threads()))


def worker_devices(jobs: int, device: str, gpus: int) -> list[str]:
    """The training device of each of ``jobs`` workers: one GPU each (round-robin) where there are GPUs.

    ``device`` is the study's (``auto``, ``cuda``, ``cuda:1``, ``cpu``): ``auto``
    and ``cuda`` spread the workers over the ``gpus`` GPUs; a named device
    (``cuda:1``, ``cpu``) is kept for every worker, as asked.
    """
    if device in ("auto", "cuda") and gpus > 0:
        return [f"cuda:{i % gpus}" for i in range(jobs)]
    return [device] * jobs


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _on_device(objective: Objective, device: str) -> Objective:
    config = objective.config
    return replace(objective, config=replace(config, train=replace(config.train, device=device)))


def _log_front(result: TuneResult, objective: Objective) -> None:
    """``pareto.csv``, ``pareto.png`` and ``trials.csv`` on the parent run, with trial counts as metrics."""
    study, trials = result.study, result.study.get_trials(deepcopy=False)
    counts = {f"trials.{s.name.lower()}": sum(t.state == s for t in trials)
              for s in (TrialState.COMPLETE, TrialState.FAIL)}
    with tempfile.TemporaryDirectory(prefix="mia-tune-") as tmp:
        folder = Path(tmp)
        files = [frontier.write_csv(result.front, folder / "pareto.csv"),
                 frontier.plot(study, result.front, folder / "pareto.png", LEAKAGE[objective.leakage][1],
                               objective.min_accuracy, objective.config),
                 frontier.write_csv(trials, folder / "trials.csv", with_state=True)]
        runs.log(result.run_id, {**counts, "trials.total": len(trials), "pareto.size": len(result.front)}, files)
