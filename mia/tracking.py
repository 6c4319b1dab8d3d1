"""The only bridge to MLflow: runs, params, metrics, artifacts, lineage, loading back.

A training run holds what an attacker needs later: its config
(``config.json`` and flattened params), the split (``split.npz``), the
checkpoint (``model/checkpoint.pt``, a state dict loaded with
``weights_only=True``) and the target's signals on the query set
(``signals/target.npz``). An attack run is linked to it by the tag
``mia.target_run_id`` and carries the target's utility and tags, so one row of
the MLflow UI holds utility, leakage and what produced them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

try:
    import fcntl
except ImportError:  # Windows: no lock, MLflow's own behaviour
    fcntl = None

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Downloading a run's split and signals is quick; a progress bar per file is noise.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlflow.entities import Dataset as DatasetEntity, DatasetInput, InputTag, RunStatus  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mia import lease  # noqa: E402
from mia.audit import TargetConfig  # noqa: E402
from mia.data import Split  # noqa: E402
from mia.errors import MiaError, Terminated  # noqa: E402
from mia.fl.config import UNUSED_TRAIN  # noqa: E402
from mia.plugins import users_failure  # noqa: E402
from mia.pool import pool_lock, stored_label_only_kinds  # noqa: E402
from mia.signals import Signals  # noqa: E402

DEFAULT_EXPERIMENT = "mia"
CHECKPOINT = "model/checkpoint.pt"
SPLIT = "split.npz"
CONFIG = "config.json"
TARGET_SIGNALS = "signals/target.npz"
TARGET_POPULATION_SIGNALS = "signals/target_population.npz"
DENSE_CHECKPOINT = "model/dense_checkpoint.pt"
DENSE_SIGNALS = "signals/dense_target.npz"
DENSE_POPULATION_SIGNALS = "signals/dense_target_population.npz"
POOL_DIR = "pool"
LABEL_ONLY_TAG = "mia.pool_label_only"
"""Tag of a pool run: the label-only signal kinds its models store (comma-separated)."""
FL_DIR = "fl"


class ModelArtifacts(NamedTuple):
    """Where a training run keeps one model's checkpoint and its signals on the audited rows and the population."""

    checkpoint: str
    signals: str
    population: str


TARGET_ARTIFACTS = ModelArtifacts(CHECKPOINT, TARGET_SIGNALS, TARGET_POPULATION_SIGNALS)
DENSE_ARTIFACTS = ModelArtifacts(DENSE_CHECKPOINT, DENSE_SIGNALS, DENSE_POPULATION_SIGNALS)  # a pruning run's original
TAGS = ("scenario", "dataset", "model", "defense")


#: Query values that hold a secret: any key naming a password, secret, token or key (``sslpassword``, ``api_key``).
_SECRET_QUERY = re.compile(r"([?&](?:[^=&#]*(?:password|passwd|pwd|secret|token|api_?key)[^=&#]*|pass)=)[^&#]*",
                           re.IGNORECASE)


def redact(uri: str) -> str:
    """A URI with any password removed: ``postgresql://u:secret@h`` -> ``postgresql://u:***@h``, also
    with an empty user, an ``@`` in the password (the host follows the last ``@``), a ``/``, ``?`` or ``#``
    in it (SQLAlchemy reads the password up to the ``@``, so ``postgresql://u:pa/ss@h/db`` connects with
    ``pa/ss``), and ``?password=secret`` query values, which SQLAlchemy hands to the driver as the password."""
    match = re.match(r"^([A-Za-z][\w+.-]*://)(.*)$", uri, re.DOTALL)
    if match is None:
        return _SECRET_QUERY.sub(r"\1***", uri)
    scheme, after = match.groups()
    userinfo = re.match(r"^([^:/]*):[^@]*@(.*)$", after, re.DOTALL)  # user:password@, as SQLAlchemy reads it
    if userinfo is None:
        netloc, rest = re.match(r"^([^/?#]*)(.*)$", after, re.DOTALL).groups()
        return scheme + netloc + _SECRET_QUERY.sub(r"\1***", rest)
    user, after = userinfo.groups()
    host, rest = re.match(r"^([^/?#]*)(.*)$", after, re.DOTALL).groups()
    return f"{scheme}{user}:***@{host.rsplit('@', 1)[-1]}" + _SECRET_QUERY.sub(r"\1***", rest)


def tracking_uri() -> str:
    return redact(mlflow.get_tracking_uri())


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested config -> ``{"train.lr": 0.1, ...}``, the form MLflow params take."""
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + ".") if value else {name: "{}"})
        else:
            out[name] = value
    return out


#: Tracking URIs whose store this process has made sure exists (:func:`prepare_store`).
_prepared: set[str] = set()


def prepare_store() -> None:
    """Open the tracking store once per process and store: created under a lock, or a one-line error.

    MLflow creates and migrates a new SQLite store's tables on first use
    without a lock: two ``mia`` commands started at once on a new
    ``./mlflow.db`` both ran the migrations and one died in SQLAlchemy
    ("duplicate column name: step"); the lock is the folder's (``flock``), so
    nothing is left beside the store. A store that cannot be used (a server
    that is down, a ``file:`` store MLflow no longer writes) was a traceback,
    after minutes of silent retries for a server.
    """
    uri = mlflow.get_tracking_uri()
    lease.store_is_shared(uri)  # a bad $MIA_STORE_LEASE refused before any work, not at the first pool
    if uri in _prepared:
        return
    with _store_lock(uri), _one_try(uri):
        try:
            MlflowClient().search_experiments(max_results=1)  # builds the store: creates a new one's tables
        except MlflowException as exc:
            raise MiaError(f"tracking store {redact(uri)} cannot be used: {' '.join(str(exc).split())[:600]}; "
                           "fix it or point MLFLOW_TRACKING_URI at another store") from None
    _prepared.add(uri)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on the folder of a ``sqlite:///`` store (nothing for other stores), made first if need
    be, as MLflow would make it."""
    path = sqlite_file(uri)
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError as exc:
        raise MiaError(f"tracking store {redact(uri)}: its folder {path.parent} cannot be made or opened "
                       f"({exc.strerror}); point MLFLOW_TRACKING_URI at a folder you can write") from None
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


@contextlib.contextmanager
def _one_try(uri: str) -> Iterator[None]:
    """First contact with a tracking server without MLflow's retries, unless the user set them: a server that
    is down kept ``mia`` silent for minutes of backoff before its traceback. Later requests retry as usual."""
    if not uri.startswith(("http://", "https://")):
        yield
        return
    with _unless_set("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"):
        yield


@contextlib.contextmanager
def _unless_set(name: str, value: str) -> Iterator[None]:
    """Environment variable ``name`` set to ``value`` for the block, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for any other store, or an in-memory one)."""
    if not uri.startswith("sqlite:") or fcntl is None:
        return None
    from sqlalchemy.engine.url import make_url

    database = make_url(uri).database
    return None if database in (None, "", ":memory:") else Path(database).absolute()


#: The run id that ``mlflow run`` handed this process, once claimed by its first run.
_used_env_run: list[str] = []


@contextlib.contextmanager
def run(name: str, experiment: str | None = None, tags: dict | None = None,
        resume: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start a fresh top-level run (or reopen run ``resume``); on any error mark it FAILED with the reason.

    Inside ``mlflow run`` (``MLFLOW_RUN_ID`` set) the first run of the process
    is the project run itself; later runs (the attack run of ``mia audit``) are
    new runs in the same experiment, linked by tags. ``resume`` reopens an
    unfinished run (killed: RUNNING, crashed: FAILED) to continue it. From a
    notebook, a run the caller has open becomes the parent of the new run, and
    an experiment chosen with ``mlflow.set_experiment`` is the default
    (:func:`_notebook_experiment`): MLflow refuses to start a run elsewhere.
    """
    prepare_store()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    client = MlflowClient()
    parent = mlflow.active_run()
    if resume:
        stored = get_run(resume)
        if stored.info.status == "FINISHED":
            raise MiaError(f"run {resume} is FINISHED; there is nothing to resume")
        _check_notebook_experiment(stored.info.experiment_id)
        run_id = resume
        if "mia.failure_reason" in stored.data.tags:  # the reason it stopped; a new one if it fails again
            client.delete_tag(run_id, "mia.failure_reason")
    elif env_run and not _used_env_run:
        run_id = env_run
        _used_env_run.append(env_run)
        client.set_tag(run_id, "mlflow.runName", name)
    else:
        if env_run:
            exp_id = client.get_run(env_run).info.experiment_id
        else:
            exp_id = _notebook_experiment() if experiment is None else None
            exp_id = exp_id or experiment_id(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                             or DEFAULT_EXPERIMENT)
        _check_notebook_experiment(exp_id)
        nested = {"mlflow.parentRunId": parent.info.run_id} if parent else {}
        run_id = client.create_run(exp_id, run_name=name, tags=nested).info.run_id
    active = mlflow.start_run(run_id=run_id, nested=parent is not None)
    try:
        if tags:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})
        yield active
    except KeyboardInterrupt as exc:  # the user stopped it: KILLED, and say which run (a federated one resumes)
        status, reason = stop_reason(exc)
        mlflow.set_tag("mia.failure_reason", reason)
        mlflow.end_run(status)
        resumable = (tags or {}).get("mia.kind") == "train" and (tags or {}).get("mia.scenario") == "federated"
        print(f"interrupted: run {run_id} is marked KILLED"
              + (f"; go on from its last recorded round with `mia train --resume {run_id}`" if resumable else ""),
              file=sys.stderr)
        raise
    except BaseException as exc:
        status, reason = stop_reason(exc)
        mlflow.set_tag("mia.failure_reason", reason)
        mlflow.end_run(status)
        raise
    else:
        mlflow.end_run()


def stop_reason(exc: BaseException) -> tuple[str, str]:
    """The status and ``mia.failure_reason`` of a run that ``exc`` ended: KILLED for Ctrl-C or SIGTERM (the
    user stopped it; a pool run said FAILED "KeyboardInterrupt: " beside its KILLED attack run), else FAILED
    with the exception's first line (and the line of the user's own code that raised it, where it did)."""
    if isinstance(exc, KeyboardInterrupt):
        return RunStatus.to_string(RunStatus.KILLED), "terminated (SIGTERM)" if isinstance(exc, Terminated) \
            else "interrupted"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RunStatus.to_string(RunStatus.FAILED), (users_failure(exc) or f"{type(exc).__name__}: {reason}")[:5000]


def _notebook_experiment() -> str | None:
    """The id of the experiment ``mlflow.set_experiment`` made active in this process, if any.

    MLflow's fluent API refuses to start a run of another experiment while one
    is active ("active experiment ID does not match"), after mia has created
    the run, which then stayed RUNNING for ever; a notebook that picked its
    experiment gets mia's runs there instead.
    """
    from mlflow.tracking import fluent

    return getattr(fluent, "_active_experiment_id", None)


def _check_notebook_experiment(exp_id: str) -> None:
    """A one-line error, before any run is created, where MLflow would refuse to start a run in ``exp_id``."""
    active = _notebook_experiment()
    if active is not None and active != exp_id:
        client = MlflowClient()
        mine, theirs = client.get_experiment(active).name, client.get_experiment(exp_id).name
        raise MiaError(f"mlflow.set_experiment({mine!r}) is active in this process and this run belongs to "
                       f"experiment {theirs!r}; pass experiment={mine!r} or call "
                       f"mlflow.set_experiment({theirs!r}) first")


def claim_project_run() -> str | None:
    """The run ``mlflow run`` handed this process (``MLFLOW_RUN_ID``), reserved for the caller.

    :func:`run` gives that run to the first run a process opens; a caller that
    uses it otherwise (``mia tune``: the study's parent run) claims it, so
    later runs are new ones.
    """
    env = os.environ.get("MLFLOW_RUN_ID")
    if env and env not in _used_env_run:
        _used_env_run.append(env)
    return env


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created if it does not exist yet.

    Another process may create it between the look-up and the creation (two
    ``mia`` commands started at once on a new store: all but one failed with
    "Experiment(name=mia) already exists"); its experiment is then ours too.
    """
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":  # MLflow refused its runs with a traceback
        raise MiaError(f"experiment {name!r} is deleted in {tracking_uri()}; restore it (`mlflow experiments "
                       f"restore --experiment-id {exp.experiment_id}`) or pass --experiment with another name")
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name)
    except MlflowException:
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def run_tags(config: TargetConfig) -> dict[str, str]:
    return {f"mia.{k}": str(getattr(config, k)) for k in TAGS}


def log_config(config: TargetConfig, effective: dict[str, object] | None = None) -> None:
    """The config as params (``config.json`` holds it whole), as the run trains it.

    ``train.device`` is the device resolved on this machine (``auto`` says
    nothing), ``train.cpu_threads`` torch's thread count (a CPU run is
    bit-identical at the same count; another count rounds float32 sums
    differently, 5e-7 in a digits model's logits); a federated run leaves out the recipe fields its clients do not
    use (:data:`mia.fl.config.UNUSED_TRAIN`), which the ``fl.*`` params replace;
    ``effective`` holds what a defense trains with instead of a parameter's 0
    ("the recipe's"), logged as ``effective.<key>``. ``label_only`` is no param: it lists the label-only
    signals computed with the run, which ``mia audit`` takes from its attacks and ``mia train`` from
    ``--label-only`` alone, so one target would log two values (``config.json`` keeps it).
    """
    from mia.train import resolve_device

    d = config.to_dict()
    params = {k: v for k, v in flatten(d).items() if k != "label_only"}
    if config.scenario == "federated":
        for key in UNUSED_TRAIN:
            params.pop(f"train.{key}", None)
    params["train.device"] = str(resolve_device(config.train.device))
    params["train.cpu_threads"] = torch.get_num_threads()
    params.update({f"effective.{k}": v for k, v in (effective or {}).items()})
    log_params(params)
    mlflow.log_dict(d, CONFIG)


def log_params(params: dict[str, object]) -> None:
    """Log params; a key that ``mlflow run`` already logged from MLproject keeps its value.

    MLflow forbids changing a param. Under ``mlflow run`` the project's
    parameters (the user's input, e.g. ``model=''``) are logged first; where the
    resolved value differs it is logged as ``resolved.<key>``.
    """
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    out = {}
    for key, value in params.items():
        text = redact(str(value))[:6000]
        if key not in existing:
            out[key] = text
        elif existing[key] != text:
            out[f"resolved.{key}"] = text
    if out:
        mlflow.log_params(out)


def experiment_name(run) -> str:
    """The experiment a run belongs to (attack runs go beside their training run)."""
    return MlflowClient().get_experiment(run.info.experiment_id).name


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


DATA_TAG = "mia.data_fingerprint"
"""Tag of a run: :meth:`mia.data.Dataset.fingerprint` of the data it used."""


def log_data(config: TargetConfig, fingerprint: str, context: str) -> None:
    """The run's data: tag :data:`DATA_TAG`, and an MLflow dataset input, which the UI shows in its runs table
    and searches as ``dataset.name``/``dataset.digest`` (the fingerprint's first 8 characters, as MLflow's
    own digests); ``context`` is ``training`` for a target, ``evaluation`` for an attack on it."""
    mlflow.set_tags({DATA_TAG: fingerprint})
    source = json.dumps({"dataset": config.dataset, "params": config.dataset_params, "data_dir": config.data_dir},
                        sort_keys=True, default=str)
    dataset = DatasetEntity(config.dataset, fingerprint[:8], "mia", source)
    inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
    try:
        MlflowClient().log_inputs(mlflow.active_run().info.run_id, inputs)
    except MlflowException:
        # the store looks the dataset up, then inserts it: two runs of one experiment that log the same data at
        # once (`mia tune --jobs 2`) both insert, and the second breaks the table's uniqueness; once the first
        # has committed, a second try finds its row and only links the run to it
        MlflowClient().log_inputs(mlflow.active_run().info.run_id, inputs)


def last_step(run_id: str, key: str) -> int:
    """The highest step of metric ``key`` in run ``run_id`` (-1 where it has none)."""
    return max((m.step for m in MlflowClient().get_metric_history(run_id, key)), default=-1)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_written(artifact_path: str, write: Callable[[Path], object]) -> None:
    """Log what ``write(path)`` puts in a temporary file named like ``artifact_path``, under its folder: how the
    core's writers (``Signals.save``, plots, ...) become artifacts without a local copy to clean up."""
    folder = str(Path(artifact_path).parent)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_path).name
        write(path)
        mlflow.log_artifact(str(path), None if folder == "." else folder)


def log_split(split: Split) -> None:
    log_written(SPLIT, split.save)


def log_checkpoint(model: torch.nn.Module, artifact_path: str = CHECKPOINT) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    log_written(artifact_path, lambda path: torch.save(state, path))


def log_signals(signals: Signals, artifact_path: str) -> None:
    log_written(artifact_path, signals.save)


def log_arrays(arrays: dict[str, np.ndarray], artifact_path: str) -> None:
    """Named arrays as one compressed ``.npz`` artifact."""
    log_written(artifact_path, lambda path: np.savez_compressed(path, **arrays))


def log_file(path: Path, artifact_dir: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_dir)


def log_run_text(run_id: str, text: str, artifact_file: str) -> None:
    """``text`` as an artifact of run ``run_id``, finished or not (what a command adds once its runs are done)."""
    MlflowClient().log_text(run_id, text, artifact_file)


# ---------------------------------------------------------------- loading back


def check_store_exists(context: str) -> None:
    """Refuse a ``sqlite:///`` store whose file does not exist, before MLflow opens it: opening creates it, so
    a command run in the wrong folder left an empty ``mlflow.db`` there, and had nothing to read anyway."""
    uri = tracking_uri()
    path = sqlite_file(uri)
    if path is not None and not path.exists():
        raise MiaError(f"{context}: no tracking store at {uri} ({path} does not exist); run where `mia audit` "
                       "ran, or set MLFLOW_TRACKING_URI to your store")


def get_run(run_id: str):
    """The MLflow run with this id, or a one-line error."""
    check_store_exists(f"run {run_id!r} not found")
    prepare_store()
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise MiaError(f"run {run_id!r} not found in the tracking store {tracking_uri()}; "
                       "list runs with `mlflow ui` or set MLFLOW_TRACKING_URI") from None


def _download(run_id: str, artifact: str, dst: str) -> Path | None:
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=dst))
    except (MlflowException, OSError):
        return None


def log_fl_state(state) -> None:
    """A federated checkpoint (:class:`mia.fl.simulation.FLState`) as the run's ``fl/`` artifacts, replacing the last."""
    with tempfile.TemporaryDirectory() as tmp:
        state.save(tmp)
        mlflow.log_artifacts(tmp, FL_DIR)


class TargetRun:
    """What a training run stored, loaded back for an attack (or, ``finished=False``, to resume it)."""

    def __init__(self, run_id: str, finished: bool = True):
        self.run = get_run(run_id)
        self.run_id = run_id
        kind, tags = self.run.data.tags.get("mia.kind"), self.run.data.tags
        if kind == "attack":
            raise MiaError(f"run {run_id} is an attack run; pass its training run, "
                           f"{tags.get('mia.target_run_id', '(see its tag mia.target_run_id)')}")
        if kind == "pool":
            raise MiaError(f"run {run_id} holds a reference-model pool; pass a training run (printed by `mia train`)")
        if finished and self.run.info.status != "FINISHED":
            raise MiaError(f"run {run_id} is {self.run.info.status}, not FINISHED; pass a training run that "
                           "completed")
        self._tmp = tempfile.TemporaryDirectory()
        config_path = _download(run_id, CONFIG, self._tmp.name)
        if config_path is None:
            raise MiaError(f"run {run_id} has no {CONFIG}; is it a training run made by `mia train`?")
        try:
            self.config = TargetConfig.from_dict(json.loads(config_path.read_text()))
        except (ValueError, TypeError) as exc:
            raise MiaError(f"run {run_id}: {CONFIG} is unreadable ({exc}); retrain with `mia train`") from None
        split_path = _download(run_id, SPLIT, self._tmp.name)
        if split_path is None:
            raise MiaError(f"run {run_id} has no {SPLIT}; retrain with `mia train`")
        self.split = self._read(SPLIT, Split.load, split_path)
        self.metrics = dict(self.run.data.metrics)

    def _read(self, artifact: str, load, path: Path):
        """``load(path)``, or a one-line error naming the run and the artifact (not a temporary path)."""
        try:
            return load(path)
        except Exception as exc:  # a damaged file: not a zip, truncated, object arrays, ...
            raise MiaError(f"{artifact} of run {self.run_id} is corrupt ({type(exc).__name__}); "
                           "retrain with `mia train`") from None

    def signals(self, artifact: str = TARGET_SIGNALS) -> Signals | None:
        """Stored target signals (on the audited query set, or the population), if present."""
        path = _download(self.run_id, artifact, self._tmp.name)
        return None if path is None else self._read(artifact, Signals.load, path)

    def arrays(self, artifact: str) -> dict[str, np.ndarray]:
        """A stored ``.npz`` artifact as arrays (no pickles)."""
        path = _download(self.run_id, artifact, self._tmp.name)
        if path is None:
            raise MiaError(f"run {self.run_id} has no {artifact}; retrain with `mia train`")

        def load(p: Path) -> dict[str, np.ndarray]:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}

        return self._read(artifact, load, path)

    def fl_state(self):
        """The last federated checkpoint (:class:`mia.fl.simulation.FLState`) of this run."""
        from mia.fl.simulation import FLState

        folder = _download(self.run_id, FL_DIR, self._tmp.name)
        if folder is None:
            raise MiaError(f"run {self.run_id} has no federated checkpoint ({FL_DIR}/); it recorded no round yet: "
                           "start it again")
        return FLState.load(folder)

    def store_signals(self, signals: Signals, artifact: str) -> None:
        """Replace the stored ``artifact`` with ``signals`` (more of them, computed after the run finished).

        Best effort: a store that refuses the write (another user's run on a shared server) costs the next
        attack the same computation again, not this attack its result.
        """
        with tempfile.TemporaryDirectory() as tmp:
            path = signals.save(Path(tmp) / Path(artifact).name)
            try:
                MlflowClient().log_artifact(self.run_id, str(path), str(Path(artifact).parent))
            except (MlflowException, OSError) as exc:
                warnings.warn(f"could not store the new signals in run {self.run_id} ({type(exc).__name__}: "
                              f"{str(exc)[:120]}); the next attack computes them again", stacklevel=2)

    def state_dict(self, artifact: str = CHECKPOINT) -> dict[str, torch.Tensor]:
        path = _download(self.run_id, artifact, self._tmp.name)
        if path is None:
            raise MiaError(f"run {self.run_id} has no {artifact}; retrain with `mia train`")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise MiaError(f"checkpoint {artifact} of run {self.run_id} is corrupt "
                           f"({type(exc).__name__}); retrain with `mia train`") from None
        if not isinstance(state, dict):
            raise MiaError(f"checkpoint {artifact} of run {self.run_id} is not a state dict; "
                           "retrain with `mia train`")
        return state


def log_scores(artifact_path: str, names: list[str], scores: list[np.ndarray], indices: np.ndarray,
               labels: np.ndarray, is_member: np.ndarray) -> None:
    """Per-sample scores of every attack as a CSV artifact (one row per query sample)."""
    import pandas as pd

    frame = pd.DataFrame({"index": indices, "label": labels, "is_member": is_member.astype(int)})
    for name, s in zip(names, scores):
        frame[name] = s
    log_written(artifact_path, lambda path: frame.to_csv(path, index=False))


# ---------------------------------------------------------------- reports


EXPERIMENT_PAGE = 1000
"""Experiments one search returns at most (MLflow's default): the store's are read page after page."""


def experiments(client: MlflowClient) -> list:
    """Every active experiment of the store, page after page: a store with more than one page (a shared server)
    kept the pools and attack runs of the later pages out of sight."""
    found, token = [], None
    while True:
        page = client.search_experiments(max_results=EXPERIMENT_PAGE, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def experiment_names() -> set[str]:
    """The names of the experiments in the tracking store."""
    prepare_store()
    return {e.name for e in experiments(MlflowClient())}


def attack_rows(names: list[str] | None = None):
    """One row per finished attack run: tags, utility, every metric, and the target's defense hyperparameters.

    Columns: ``run_id``, ``target_run_id``, ``scenario``, ``dataset``,
    ``model``, ``defense``, every attack-run metric under its own name
    (``test_accuracy``, ``leakage.max_auc``, ``loss.auc``, ...) and the
    training run's ``defense_params.*`` params. ``names`` (of experiments)
    defaults to every experiment.
    """
    import pandas as pd

    prepare_store()
    client = MlflowClient()
    found = [client.get_experiment_by_name(e) for e in names] if names else experiments(client)
    ids = [e.experiment_id for e in found if e is not None]
    if not ids:
        return pd.DataFrame()
    runs = mlflow.search_runs(ids, filter_string="tags.`mia.kind` = 'attack' and attributes.status = 'FINISHED'",
                              output_format="pandas")
    if runs.empty:
        return runs
    trains = mlflow.search_runs(ids, filter_string="tags.`mia.kind` = 'train'", output_format="pandas")
    out = pd.DataFrame({"run_id": runs["run_id"].values,
                        "target_run_id": runs.get("tags.mia.target_run_id", pd.Series(dtype=str)).values})
    for tag in TAGS:
        out[tag] = runs.get(f"tags.mia.{tag}", pd.Series([None] * len(runs))).values
    metrics = runs[[c for c in runs.columns if c.startswith("metrics.")]]
    metrics.columns = [c[len("metrics."):] for c in metrics.columns]
    out = pd.concat([out, metrics.reset_index(drop=True)], axis=1)
    if not trains.empty:
        params = trains[["run_id", *[c for c in trains.columns if c.startswith("params.defense_params.")]]]
        params = params.rename(columns={"run_id": "target_run_id",
                                        **{c: c[len("params."):] for c in params.columns if c != "run_id"}})
        out = out.merge(params, on="target_run_id", how="left")
    return out


def attack_scores(run_id: str) -> list:
    """The per-sample scores of an attack run: ``scores.csv`` (black-box attacks on the audited query set)
    and ``fl_scores.csv`` (FL attacks on the target client's query set), those it has; or a one-line error."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        frames = [pd.read_csv(path) for name in ("scores.csv", "fl_scores.csv")
                  if (path := _download(run_id, name, tmp)) is not None]
    if not frames:
        raise MiaError(f"run {run_id} has no scores.csv or fl_scores.csv; is it an attack run made by `mia attack`?")
    return frames


# ---------------------------------------------------------------- reference-model pools


@contextlib.contextmanager
def pool_store(key: str, experiment: str, tags: dict[str, str], size: int | None = None,
               label_only: Sequence[str] = ()) -> Iterator["PoolStore"]:
    """The folder of pool ``key``, downloaded from its MLflow run (made on first use).

    Pools live as runs tagged ``mia.pool_key`` in any experiment, so a later
    attack on any target with the same recipe and data finds them. One process
    at a time grows a pool: of this machine (:func:`mia.pool.pool_lock`), and,
    on a tracking store that several machines share, of all of them
    (:func:`mia.lease.lease`); a second one asking for it waits, then finds the
    first one's models. A pool that holds ``size`` models already, with the
    ``label_only`` signal kinds asked for (the run's tag
    ``mia.pool_label_only``), is read without the lease: readers do not queue.
    """
    with pool_lock(store_name(), key), contextlib.ExitStack() as held:
        client = MlflowClient()
        if not lease.store_is_shared(mlflow.get_tracking_uri()):
            run, made = _pool_run(client, key, experiment, tags, shared=False)
            yield from _pool_store(client, run.info.run_id, made)
            return
        while True:
            run, made = _pool_run(client, key, experiment, tags, shared=True)
            run_id = run.info.run_id
            claim = functools.partial(_claim, held, client, run_id, f"reference pool {key[:8]}")
            stored_kinds = set(filter(None, run.data.tags.get(LABEL_ONLY_TAG, "").split(",")))
            if size is not None and run.data.metrics.get("pool.size", 0) >= size and set(label_only) <= stored_kinds:
                break
            try:
                claim()
            except BaseException:
                if made:  # interrupted while it waited: the run it made, still empty, must not look running
                    _end_pool_run(client, run_id, "KILLED")
                raise
            if _pool_runs(client, key)[0].info.run_id == run_id:
                break
            # Another run of the pool sorts first now (machines that made one each, the other's seen late):
            # use that one; this one, if still empty, is dropped.
            if "pool.size" not in client.get_run(run_id).data.metrics:
                _drop(client, run_id)
            held.close()
        yield from _pool_store(client, run_id, made, claim)


def _claim(held: contextlib.ExitStack, client: MlflowClient, run_id: str, what: str) -> None:
    """Hold the lease of pool run ``run_id`` until ``held`` closes (a no-op where this thread holds it)."""
    held.enter_context(lease.lease(client, run_id, what, refused=(MlflowException,)))


def store_name() -> str:
    """The tracking store, named the same from any folder: a SQLite store by its file's absolute path."""
    uri = mlflow.get_tracking_uri()
    path = sqlite_file(uri)
    return str(path.resolve()) if path is not None else uri


def _pool_run(client: MlflowClient, key: str, experiment: str, tags: dict[str, str], shared: bool):
    """``(run, made)``: the run that keeps pool ``key``, the largest stored (the first made of equals), else a
    new one (``made``).

    On a shared store two machines may both find none and both make one; each
    then waits for the other's to be visible and keeps the same one, the other
    dropped by its maker.
    """
    runs = _pool_runs(client, key)
    if runs:
        return runs[0], False
    made = client.create_run(experiment_id(experiment), run_name=f"pool-{key[:8]}",
                             tags={**tags, "mia.kind": "pool", "mia.pool_key": key})
    if not shared:
        return made, True
    time.sleep(lease.SETTLE)
    kept = _pool_runs(client, key)[0]
    if kept.info.run_id != made.info.run_id:
        _drop(client, made.info.run_id)
    return kept, kept.info.run_id == made.info.run_id


def _pool_runs(client: MlflowClient, key: str) -> list:
    """The runs of pool ``key``, the one to use first: most models, then first made.

    Attack runs carry the pool's key too (``mia.pool_key``): only runs of kind
    ``pool`` are pools.
    """
    runs = client.search_runs([e.experiment_id for e in experiments(client)],
                              filter_string=f"tags.`mia.pool_key` = '{key}' and tags.`mia.kind` = 'pool'")
    return sorted(runs, key=lambda r: (-r.data.metrics.get("pool.size", 0), r.info.start_time, r.info.run_id))


def _drop(client: MlflowClient, run_id: str) -> None:
    """Delete an empty pool run made twice, ended first (a deleted run otherwise shows as still running)."""
    _end_pool_run(client, run_id, "KILLED")
    client.delete_run(run_id)


def _pool_store(client: MlflowClient, run_id: str, made: bool,
                claim: Callable[[], None] | None = None) -> Iterator["PoolStore"]:
    """Run ``run_id``'s pool in a temporary folder; its status set at the end by a process that made or grew it
    (a reader's failure is not the pool's)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / POOL_DIR
        if client.list_artifacts(run_id, POOL_DIR):  # stored models that must come down, or nothing is reused
            try:
                folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=POOL_DIR,
                                                                  dst_path=tmp))
            except (MlflowException, OSError) as e:
                raise MiaError(f"pool run {run_id} could not be downloaded from the artifact store "
                               f"({type(e).__name__}: {str(e)[:200]}); check the store and retry") from None
        folder.mkdir(parents=True, exist_ok=True)
        store = PoolStore(run_id, folder, claim)
        try:
            yield store
        except BaseException as exc:
            if made or store.written:
                status, reason = stop_reason(exc)
                client.set_tag(run_id, "mia.failure_reason", reason)
                _end_pool_run(client, run_id, status)  # what it holds stays usable: the next attack grows it
            raise
        if not (made or store.written):
            return
        if "mia.failure_reason" in client.get_run(run_id).data.tags:  # an earlier failure, since mended
            client.delete_tag(run_id, "mia.failure_reason")
        client.set_tag(run_id, LABEL_ONLY_TAG, ",".join(sorted(stored_label_only_kinds(folder))))
        _end_pool_run(client, run_id, "FINISHED")


def _end_pool_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End a pool run without MLflow's "View run pool-... at: <url>" lines, which a tracking server's client
    prints on stdout: a pool is kept for the user's runs, not one of them (those keep their links)."""
    with _unless_set("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"):
        client.set_terminated(run_id, status)


class PoolStore:
    """A pool's local folder and the MLflow run that keeps it.

    ``claim`` is called before the first write: on a shared store, a reader of
    a complete pool takes the lease only then.
    """

    def __init__(self, run_id: str, folder: Path, claim: Callable[[], None] | None = None):
        self.run_id, self.folder, self.claim, self.written = run_id, folder, claim, False

    def save(self, path: Path, size: int) -> None:
        """Store one model file as soon as it is written (a run killed later keeps it), the pool's identity
        beside it, and the pool's size now (never less than stored: another machine may have grown it)."""
        client = MlflowClient()
        if not self.written:
            if self.claim is not None:
                self.claim()
            self.written = True
            client.update_run(self.run_id, status="RUNNING")  # being grown, until it ends
        client.log_artifact(self.run_id, str(path), POOL_DIR)
        identity = self.folder / "pool.json"
        if identity.is_file():
            client.log_artifact(self.run_id, str(identity), POOL_DIR)
        size = max(size, int(client.get_run(self.run_id).data.metrics.get("pool.size", 0)))
        client.log_metric(self.run_id, "pool.size", size)
