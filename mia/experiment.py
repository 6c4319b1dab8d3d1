"""Tracked workflows: the audit of :mod:`mia.audit`, each step recorded in MLflow.

The CLI and the Optuna objective call these; they talk to MLflow only through
:mod:`mia.tracking`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mia import audit, tracking
from mia.attacks import selection
from mia.audit import AttackResult, TargetConfig
from mia.data import Dataset
from mia.data.splits import Split
from mia.errors import MiaError
from mia.label_signals import applicable_kinds, label_only_signals
from mia.metrics import near_chance_note
from mia.models import NORMS, build_model
from mia.defenses import Defense, make_defense
from mia.pool import PoolGrowth, pool_size
from mia.train.predict import accuracy, check_device
from mia.signals import Signals


class Timer:
    """Collects the wall time of each stage as ``time.<stage>`` metrics."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[f"time.{name}"] = time.perf_counter() - start


@dataclass
class TrainOutcome:
    run_id: str
    test_accuracy: float
    train_accuracy: float
    data: Dataset
    privacy: dict[str, float] = field(default_factory=dict)  # the defense's accounting (privacy_metrics)


def privacy_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A run's privacy accounting among its metrics: DP-SGD's and client-level DP's ``dp.*`` (a pruning run's
    ``finetune.dp.*``), what a user reads first of a DP run and finds nowhere else on the console."""
    return {k: v for k, v in metrics.items() if k.startswith(("dp.", "finetune.dp."))}


def check_dense_source(from_run: str | None, scenario: str, imported: bool) -> None:
    """Refuse ``from_run`` (``--from-run``) where it cannot apply: it names the dense run a pruning run starts
    from, so it needs the pruning scenario and a model mia trains (not an imported ``--checkpoint``)."""
    if from_run and imported:
        raise MiaError("--from-run prunes a dense run mia trained; a --checkpoint is audited as it was "
                       "trained: drop --from-run")
    if from_run and scenario != "pruning":
        raise MiaError("--from-run starts a pruning run from a dense one; use it with --scenario pruning")


def train_run(config: TargetConfig, experiment: str | None = None, progress: bool = True,
              from_run: str | None = None, checkpoint: str | None = None,
              members: str | None = None) -> TrainOutcome:
    """Train a target model in one MLflow run: config, per-epoch metrics, split, checkpoint, signals.

    A pruning run also stores its dense original (``model/dense_checkpoint.pt``,
    ``signals/dense_target*.npz``, ``dense.test_accuracy``), trained in the
    run or taken from ``from_run`` (an undefended centralized run, whose data,
    model, split, seed and recipe it takes over: :func:`with_dense_recipe`),
    and logs the measured ``sparsity``. A
    mem-score driven defense reads its scores from the online reference pool
    of the dense recipe (tags ``mia.mem_pool_key``/``mia.mem_pool_run_id``),
    the pool that attacking the dense original then reuses.

    With ``checkpoint`` and ``members`` nothing trains: the run records a model
    trained elsewhere (:mod:`mia.imported`), its members the rows the
    ``members`` file lists, and is attacked like any target.
    """
    check_dense_source(from_run, config.scenario, imported=checkpoint is not None)
    audit.check_import(config, checkpoint, members, ("--checkpoint", "--members"))  # a mistyped name opens no run
    selection.check_label_only_kinds(config)
    if config.scenario == "federated":
        return federated_run(config, experiment, progress)
    source = None
    if from_run:
        source = tracking.TargetRun(from_run)
        config = with_dense_recipe(config, source.config, from_run)
    timer = Timer()
    with tracking.run(f"{'import' if checkpoint else 'train'}-{config.scenario}-{config.dataset}-{config.model}",
                      experiment, tags={**tracking.run_tags(config), "mia.kind": "train",
                                        **({"mia.dense_run_id": from_run} if from_run else {}),
                                        **({"mia.imported": Path(checkpoint).name} if checkpoint else {})}) as active:
        tracking.log_config(config, _effective_recipe(config))
        if csv := config.defense_params.get("mem_scores_csv"):
            tracking.log_file(Path(csv), "defense")  # the run is reproducible from its artifacts alone
        with timer.stage("load_data"):
            data = audit.load_data(config)
        tracking.log_data(config, data.fingerprint(), "training")
        dense = None
        if source is not None:
            split, dense = _dense_from_run(source, config, data)
        else:
            split = audit.target_split(config, data, members)
        tracking.log_split(split)
        steps = [-1]

        def log_epoch(epoch: int, metrics: dict) -> None:
            steps.append(epoch)
            tracking.log_metrics(metrics, step=epoch)

        def mem_scores(recipe: TargetConfig, models: int) -> np.ndarray:
            """The members' mem-scores from the online pool of the dense ``recipe``, kept in MLflow, which the
            attack on the dense original then reuses (``mia.dense_pool_key``)."""
            pool, _, _ = _reference_pool(recipe, data, split, "online", models, tracking.experiment_name(active),
                                         progress, prefix="mem_")
            return pool.mem_scores_of(split.members)

        trained = audit.fit_target(config, data, split, checkpoint=checkpoint, dense=dense, mem_scores=mem_scores,
                                   on_epoch=log_epoch, progress=progress, stage=timer.stage)
        tracking.log_checkpoint(trained.network)
        with timer.stage("signals"):
            audited, population = audit.target_signals(trained.model, data, split, config, progress=progress)
            if trained.dense is not None:
                tracking.log_checkpoint(trained.dense.network, tracking.DENSE_CHECKPOINT)
                dense_audited, dense_population = audit.target_signals(trained.dense.model, data, split,
                                                                       audit.dense_config(config), progress=progress)
                tracking.log_signals(dense_audited, tracking.DENSE_SIGNALS)
                tracking.log_signals(dense_population, tracking.DENSE_POPULATION_SIGNALS)
        tracking.log_signals(audited, tracking.TARGET_SIGNALS)
        tracking.log_signals(population, tracking.TARGET_POPULATION_SIGNALS)
        dense_metrics = {} if trained.dense is None else {
            "dense.test_accuracy": trained.dense.test_accuracy, "dense.train_accuracy": trained.dense.train_accuracy}
        if trained.finetune_epochs:  # what reference models of this pruned target copy (attacker_config)
            tracking.log_params({"finetune_best_epochs": ",".join(map(str, trained.finetune_epochs))})
        # after the last epoch's step: MLflow shows a metric's value at its highest step, and the
        # per-epoch train_accuracy (of augmented batches, as they ran) is not the released model's
        tracking.log_metrics({"test_accuracy": trained.test_accuracy,
                              "train_accuracy": trained.train_accuracy, **dense_metrics,
                              "best_epoch": trained.best_epoch, **trained.defense_metrics, **timer.seconds},
                             step=max(steps) + 1)
        return TrainOutcome(active.info.run_id, trained.test_accuracy, trained.train_accuracy, data,
                            privacy_metrics(trained.defense_metrics))


def _effective_recipe(config: TargetConfig) -> dict[str, object]:
    """``train.<key>`` values a centralized defense trains with in place of the recipe's (DP-SGD's 4x batch
    and rate, SELENA's distillation epochs), for the run's params: its own parameters say 0 for them."""
    if config.scenario != "centralized":
        return {}
    effective = make_defense(config.defense, config.defense_params, seed=config.seed).schedule(config.train)
    return {f"train.{key}": getattr(effective, key) for key in ("epochs", "batch_size", "lr")
            if getattr(effective, key) != getattr(config.train, key)}


#: What made a dense model, which a pruning run started from it takes over (its fine-tuning reuses the
#: recipe too, with ``finetune_epochs``). How to run is the pruning run's own: device, compile.
DENSE_SETTINGS = ("dataset", "dataset_params", "model", "norm", "seed", "split", "train")


def with_dense_recipe(config: TargetConfig, dense: TargetConfig, run_id: str) -> TargetConfig:
    """The pruning ``config`` with the dense run's :data:`DENSE_SETTINGS` (an undefended centralized run's).

    So that the run logs the recipe its dense original really had, and the
    shadow models of the ``dense.`` attacks copy that recipe rather than
    this command's defaults. The command line refuses options that contradict
    the dense run (:func:`entrypoints.config.check_from_run`).
    """
    if dense.scenario != "centralized" or dense.defense != "none":
        raise MiaError(f"--from-run {run_id} is a {dense.scenario} run with defense {dense.defense}; "
                       "prune an undefended centralized run (the defense acts in fine-tuning)")
    train = replace(dense.train, device=config.train.device, compile=config.train.compile)
    adopted = replace(config, **{k: getattr(dense, k) for k in DENSE_SETTINGS if k != "train"}, train=train,
                      data_dir=config.data_dir or dense.data_dir)
    return audit.check_config(adopted)


def _dense_from_run(source: tracking.TargetRun, config: TargetConfig, data: Dataset):
    """The split and dense model of a finished centralized run (``config`` took its recipe)."""
    source.split.check(len(data))
    network = _stored_network(source, data)
    split = source.split
    device = config.train.device
    dense = audit.TrainedModel(network, network, int(source.metrics.get("best_epoch", -1)), [],
                               train_accuracy=accuracy(network, data, split.members, device),
                               test_accuracy=accuracy(network, data, split.nonmembers, device),
                               wall_time=0.0)
    return split, dense


def federated_run(config: TargetConfig | None, experiment: str | None = None, progress: bool = True,
                  resume: str | None = None) -> TrainOutcome:
    """FedAvg in one MLflow run (:mod:`mia.fl.simulation`); ``resume`` continues an unfinished one.

    Per round: ``test_accuracy`` (global model on the evaluation non-members)
    and ``train_accuracy`` (mean over the round's clients) at step = round;
    then, at step rounds + 1, the final global model's ``train_accuracy`` on
    the members.
    Every recorded round writes the checkpoint (``fl/state-0.pt`` and
    ``fl/state-1.pt`` in turn: :class:`mia.fl.simulation.FLState`) and
    replaces the server's view ``fl/signals.npz``; the end logs the final global model,
    the federation (``fl/federation.npz``: query set, target membership,
    client rows) and the global model's black-box signals, like a
    centralized target. A killed or crashed run goes on from its last
    recorded round with ``resume`` (the run's own config; the same final
    model as an uninterrupted run).
    """
    from mia.fl.simulation import simulate

    state = None
    if resume:
        stored = tracking.TargetRun(resume, finished=False)
        config, split = stored.config, stored.split
        if config.scenario != "federated":
            raise MiaError(f"run {resume} is a {config.scenario} run; only federated runs resume")
        state = stored.fl_state()
    timer = Timer()
    name = f"train-federated-{config.dataset}-{config.model}"
    with tracking.run(name, experiment, tags={**tracking.run_tags(config), "mia.kind": "train"},
                      resume=resume) as active:
        with timer.stage("load_data"):
            data = audit.load_data(config)
        fingerprint = data.fingerprint()
        _check_same_data(stored.run if resume else None, data.name, fingerprint)
        if not resume or tracking.DATA_TAG not in stored.run.data.tags:  # a run killed before it logged them
            tracking.log_data(config, fingerprint, "training")
        if not resume:
            tracking.log_config(config)
            split = audit.target_split(config, data)
            tracking.log_split(split)
        split.check(len(data))
        defense = make_defense(config.defense, config.defense_params, seed=config.seed)
        # rounds after the last recorded one ran before the kill and run again: logged once (same values)
        logged = tracking.last_step(resume, "test_accuracy") if resume else -1

        def log_round(r: int, metrics: dict) -> None:
            if r > logged:
                tracking.log_metrics(metrics, step=r)

        with timer.stage("train"):
            model, state, fed = simulate(config.model, config.norm, data, split, config.fl, config.train, defense,
                                         config.seed, state=state, progress=progress, on_round=log_round,
                                         on_record=tracking.log_fl_state)
        tracking.log_checkpoint(model)
        tracking.log_arrays({"query": fed.query, "is_member": fed.is_member,
                             "client_sizes": np.asarray([len(c) for c in fed.clients]),
                             "client_rows": np.concatenate(fed.clients)}, f"{tracking.FL_DIR}/federation.npz")
        with timer.stage("signals"):
            audited, population = audit.target_signals(model, data, split, config, progress=progress)
        tracking.log_signals(audited, tracking.TARGET_SIGNALS)
        tracking.log_signals(population, tracking.TARGET_POPULATION_SIGNALS)
        test_accuracy = state.history[-1]["test_accuracy"]  # logged per round; the last round's is the final
        # the per-round train_accuracy is the clients' as they trained; the released global model's on the
        # members goes after the last round (MLflow shows the highest step), as in a centralized run
        train_accuracy = accuracy(model, data, split.members, config.train.device)
        tracking.log_metrics({"train_accuracy": train_accuracy}, step=config.fl.rounds + 1)
        tracking.log_metrics({**defense.metrics(), **timer.seconds})
        return TrainOutcome(active.info.run_id, test_accuracy, train_accuracy, data, privacy_metrics(defense.metrics()))


@dataclass
class AttackOutcome:
    run_id: str
    target_run_id: str
    test_accuracy: float
    results: list[AttackResult]
    dense: list[AttackResult] = field(default_factory=list)  # pruning: the same attacks on the dense original
    dense_test_accuracy: float = float("nan")
    sparsity: float | None = None  # pruning: the pruned target's measured sparsity
    notes: list[str] = field(default_factory=list)  # for the reader: e.g. a TPR at low FPR that reads FPR 0
    reference_models: int = 0  # the pool size the black-box attacks used (0: none ran)
    reference_models_trained: int = 0  # of them (and of a pruning run's dense pool), trained by this call
    reference_models_relabelled: int = 0  # stored ones trained again for label-only signals they lacked
    privacy: dict[str, float] = field(default_factory=dict)  # the target's privacy accounting (privacy_metrics)


def attack_run(target_run_id: str, attacks: str | list[str] = "all", reference_models: int = 4,
               attack_params: dict[str, dict] | None = None, seed: int | None = None,
               experiment: str | None = None, progress: bool = True,
               data: Dataset | None = None, pool_mode: str = "online", adaptive: bool = False,
               device: str | None = None) -> AttackOutcome:
    """Attack a training run: a reference pool on its attacker data, every attack on stored signals.

    The pool (:mod:`mia.pool`) is found in the tracking store when an earlier
    attack trained it, and grown when more models are asked for. ``data``
    skips reloading the dataset when the caller (``mia audit``) has it.
    ``device`` overrides the training run's (a run trained on a GPU, attacked
    on a laptop).
    ``adaptive`` trains the reference models with the target's defense.
    ``seed`` (default: the training run's, so that train + attack is audit)
    seeds the attacks: learned attack models, the reference models' turns as
    pseudo-targets that choose RMIA's and LiRA's settings, bootstrap
    intervals. The reference models are the pool's, seeded by its key so that
    every attack of one recipe and split reuses them.
    """
    attacks = selection.as_asked(attacks)
    selection.resolve_attacks(attacks, "federated")  # a name no scenario knows fails before the store is read
    target = tracking.TargetRun(target_run_id)
    config = selection.label_only_for(target.config, attacks, attack_params)  # what its label-only attacks read
    seed = config.seed if seed is None else seed
    if device is not None:  # where the references train and the target is queried: not where it trained
        config = replace(config, train=replace(config.train, device=device))
    check_device(config.train.device)
    fl_names, names = selection.check_attacks(attacks, config, attack_params, pool_mode)
    experiment = experiment or tracking.experiment_name(target.run)
    timer = Timer()
    tags = {**tracking.run_tags(config), "mia.kind": "attack", "mia.target_run_id": target_run_id}
    with tracking.run(f"attack-{config.dataset}-{config.model}", experiment, tags=tags) as active:
        pool_params = {"reference_models": reference_models, "pool": pool_mode, "adaptive": adaptive} if names else {}
        tracking.log_params({"attacks": attacks if isinstance(attacks, str) else ",".join(names + fl_names),
                             **pool_params, "seed": seed,
                             "target_run_id": target_run_id,
                             **{f"{a}.{k}": v for a, p in (attack_params or {}).items() for k, v in p.items()}})
        with timer.stage("load_data"):
            data = data if data is not None else audit.load_data(config)
        selection.check_label_only_data(attacks, names, data, attack_params)
        target.split.check(len(data))
        fingerprint = data.fingerprint()
        _check_same_data(target.run, data.name, fingerprint)
        tracking.log_data(config, fingerprint, "evaluation")
        _, is_member = target.split.query()
        notes = []
        if names and (note := _log_evaluation_set(is_member)):
            notes.append(note)
        with timer.stage("signals"):
            signals, population = _target_signals(target, data, config, progress)
        if attacks == "all":
            names = selection.applicable(names, signals, config.defense, attack_params)
        fl_results = []
        if fl_names:  # first: they read stored rounds in seconds, and fail before any reference model trains
            with timer.stage("fl_attacks"):
                fl_results, note = _fl_attacks(target, fl_names, attack_params, seed, config, data,
                                               skip_unscorable=attacks == "all")
            notes += [f"FL attacks: {note}"] if note else []
        released_epoch = int(target.metrics.get("best_epoch", -1))  # a pruning run's: its dense original's
        finetune_epochs = [int(e) for e in target.run.data.params.get("finetune_best_epochs", "").split(",") if e]
        settings = _PoolSettings(reference_models, pool_mode, adaptive, experiment, progress)
        results, growths, plan = [], [], None
        if names:
            attacked = _Attacked(config, target.split, signals, population, released_epoch, finetune_epochs)
            results, growth, plan = _black_box(names, attacked, data, settings, attack_params, seed, timer,
                                               skip_unscorable=attacks == "all")
            growths.append(growth)
        dense_results = []
        if names and config.scenario == "pruning":
            with timer.stage("signals"):
                dense_signals, dense_population = _target_signals(target, data, audit.dense_config(config), progress,
                                                                  dense=True)
            dense_names = [n for n in names if n != "selena-adaptive"]
            dense = _Attacked(audit.dense_config(config), target.split, dense_signals, dense_population,
                              released_epoch, prefix="dense_")
            with timer.stage("dense"):  # its references are the dense recipe's, never defended
                dense_results, dense_growth, _ = _black_box(dense_names, dense, data,
                                                            replace(settings, adaptive=False), attack_params,
                                                            seed, Timer(), skip_unscorable=attacks == "all")
            growths.append(dense_growth)
        new, relabelled = sum(len(g.new) for g in growths), sum(len(g.relabelled) for g in growths)
        metrics = _attack_metrics(target, results + fl_results, dense_results, new, timer)
        if note := near_chance_note(metrics["test_accuracy"], data.num_classes, config.scenario):
            notes.append(note)
            tracking.set_tags({"mia.near_chance_note": note})  # beside mia.low_fpr_note, for the MLflow UI
        tracking.log_metrics(metrics, step=config.fl.rounds if config.fl else None)
        chosen = {f"{prefix}{r.name}.chosen.{k}": v for prefix, rs in (("", results), ("dense.", dense_results))
                  for r in rs for k, v in r.output.chosen.items()}  # what attacks picked on reference models
        if chosen:
            tracking.log_params(chosen)
        if results:
            _log_attack_artifacts(results, plan.audited, signals.labels, is_member, config)
        if dense_results:  # beside plots/roc.png: what pruning changed
            _log_roc("plots/roc_dense.png", dense_results, is_member, audit.dense_title(config))
        return AttackOutcome(active.info.run_id, target_run_id, metrics["test_accuracy"], fl_results + results,
                             dense_results, target.metrics.get("dense.test_accuracy", float("nan")),
                             target.metrics.get("sparsity"), notes,
                             reference_models if audit.needs_pool(names) else 0,
                             new, relabelled, privacy_metrics(target.metrics))


def _attack_metrics(target: tracking.TargetRun, results: list[AttackResult], dense_results: list[AttackResult],
                    trained: int, timer: Timer) -> dict[str, float]:
    """The attack run's metrics: the target's test accuracy beside each attack's metrics and seconds and the
    worst case over them (a pruning target's dense original's under ``dense.``), so one row holds them all."""
    nan = float("nan")
    metrics = {"test_accuracy": target.metrics.get("test_accuracy", nan), "reference_models.trained": trained,
               **audit.leakage_summary(results), **timer.seconds}
    for r in results:
        metrics.update({f"{r.name}.{k}": v for k, v in r.metrics.items()})
        metrics[f"time.attack.{r.name}"] = r.seconds
    if dense_results:  # the dense original's leakage beside the pruned model's: what pruning changed
        metrics.update({f"dense.{r.name}.{k}": v for r in dense_results for k, v in r.metrics.items()})
        metrics.update({f"dense.{k}": v for k, v in audit.leakage_summary(dense_results).items()})
        metrics["dense.test_accuracy"] = target.metrics.get("dense.test_accuracy", nan)
    return metrics


@dataclass(frozen=True)
class _PoolSettings:
    """How an attack run gets its reference models: the same for every target it attacks (a pruned
    model and its dense original)."""

    size: int
    mode: str  # online / offline
    adaptive: bool  # trained with the target's defense
    experiment: str
    progress: bool


@dataclass
class _Attacked:
    """One target of an attack run: its recipe, split and stored signals, and where its training stopped
    (what the reference models copy: :func:`mia.audit.attacker_config`). ``prefix`` names its pool's tags
    ``mia.<prefix>pool_key`` / ``mia.<prefix>pool_run_id``."""

    config: TargetConfig
    split: Split
    signals: Signals
    population: Signals
    released_epoch: int
    finetune_epochs: list[int] | None = None
    prefix: str = ""


def _black_box(names: list[str], target: _Attacked, data: Dataset, pool: _PoolSettings,
               attack_params: dict | None, seed: int, timer: Timer, skip_unscorable: bool = False):
    """The black-box attacks on one target's signals, with the reference pool of its recipe.

    Returns ``(results, growth, plan)``: the attacks' results, what their
    pool gained (:class:`mia.pool.PoolGrowth`), and the pool's plan (its query rows).
    """
    with timer.stage("reference_models"):
        recipe = audit.attacker_config(target.config, pool.adaptive, target.released_epoch, target.finetune_epochs)
        if audit.needs_pool(names):
            references, growth, plan = _reference_pool(recipe, data, target.split, pool.mode, pool.size,
                                                        pool.experiment, pool.progress, target.prefix)
        else:  # selena-adaptive alone: it trains its own shadow Split-AI
            references, growth = None, PoolGrowth([], [])
            plan = audit.plan_reference_pool(recipe, data, target.split, pool.mode)
    if recipe.train.stop_epoch is not None:  # what the references copied of the target's training
        tracking.log_params({f"{target.prefix}reference_stop_epoch": recipe.train.stop_epoch})
    if recipe.prune is not None and recipe.prune.finetune_stops:
        tracking.log_params({f"{target.prefix}reference_finetune_stops":
                             ",".join(map(str, recipe.prune.finetune_stops))})
    results = audit.attack_target(names, target.config, data, target.split, target.signals, target.population,
                                  references, attack_params, seed, pool.progress, stage=timer.stage,
                                  skip_unscorable=skip_unscorable)
    return results, growth, plan


def _reference_pool(config: TargetConfig, data: Dataset, split, mode: str, size: int, experiment: str,
                    progress: bool, prefix: str = ""):
    """The pool of ``config``'s recipe on ``split``, found in the tracking store or grown there to ``size``.

    Tags the active run with ``mia.<prefix>pool_key`` / ``mia.<prefix>pool_run_id``.
    Returns ``(pool, growth, plan)`` (:class:`mia.pool.PoolGrowth`).
    """
    plan = audit.plan_reference_pool(config, data, split, mode)
    label_only = applicable_kinds(config.label_only, data, plan.population)
    with tracking.pool_store(plan.key, experiment, tracking.run_tags(config), size, label_only) as store:
        pool, growth = audit.reference_pool(plan, config, data, size, store.folder, progress=progress,
                                             on_saved=lambda path: store.save(path, pool_size(store.folder)))
    tracking.set_tags({f"mia.{prefix}pool_key": plan.key, f"mia.{prefix}pool_run_id": store.run_id})
    return pool, growth, plan


def _fl_attacks(target: tracking.TargetRun, names: list[str], attack_params: dict | None, seed: int,
                config: TargetConfig, data: Dataset,
                skip_unscorable: bool = False) -> tuple[list[AttackResult], str | None]:
    """The FL attacks on a federated run's recorded server view, with their curves over rounds.

    Each attack's ``auc`` and ``tpr_at_fpr_0.001`` are also logged at every
    recorded round where the target client was sampled (step = round: the
    single-round attacks on that round, the multi-round ones on the rounds up
    to it), and plotted in ``plots/fl_rounds.png``; per-sample scores go to
    ``fl_scores.csv``.
    """
    from mia.fl.attacks import round_curves
    from mia.report.figure import describe
    from mia.report.rounds import plot_round_curves

    signals = target.fl_state().signals
    federation = target.arrays(f"{tracking.FL_DIR}/federation.npz")
    is_member, query = federation["is_member"].astype(bool), federation["query"]
    client = config.fl.target_client
    note = _log_evaluation_set(is_member, "fl_")
    results = audit.run_fl_attacks(names, signals, client, is_member, attack_params, seed, skip_unscorable)
    names = [r.name for r in results]
    curves = round_curves(names, signals, client, is_member)
    for name, points in curves.items():
        for point in points[:-1]:  # the last point is the attack's final metrics, logged with the rest
            tracking.log_metrics({f"{name}.{k}": point[k] for k in ("auc", "tpr_at_fpr_0.001")}, step=point["round"])
    tracking.log_written("plots/fl_rounds.png", lambda path: plot_round_curves(
        curves, path, title=f"client {client} of {describe(config)}", n_nonmembers=int((~is_member).sum())))
    tracking.log_scores("fl_scores.csv", names, [r.output.scores for r in results], query,
                        data.y[query].cpu().numpy(), is_member)
    return results, note


def _check_same_data(run, name: str, fingerprint: str) -> None:
    """A stored run is attacked (or resumed) on the data it trained on: a loader that now returns other
    rows under the same name (a user's own, an edited folder) would pair the stored target with
    reference models of other data, silently. Runs from before the tag are taken as they are."""
    stored = run.data.tags.get(tracking.DATA_TAG) if run is not None else None
    if stored is not None and stored != fingerprint:
        raise MiaError(f"dataset {name} is not the data run {run.info.run_id} trained on (its contents "
                       "changed since); restore those files or that loader, or train a new run")


def _log_evaluation_set(is_member: np.ndarray, prefix: str = "") -> str | None:
    """The size of an evaluation set (params ``<prefix>eval.members``/``<prefix>eval.nonmembers``), and the
    tag ``mia.<prefix>low_fpr_note`` where a TPR at low FPR allows no false positive among its non-members
    (the note, returned for the console too)."""
    from mia.metrics import low_fpr_note

    nonmembers = int((~is_member).sum())
    tracking.log_params({f"{prefix}eval.members": int(is_member.sum()), f"{prefix}eval.nonmembers": nonmembers})
    if note := low_fpr_note(nonmembers):
        tracking.set_tags({f"mia.{prefix}low_fpr_note": note})
    return note


def _target_signals(target: tracking.TargetRun, data: Dataset, config: TargetConfig, progress: bool = False,
                    dense: bool = False) -> tuple[Signals, Signals]:
    """The target's stored signals (a pruning run's dense original's: ``dense``), with the label-only kinds
    of ``config`` that training did not compute.

    Those are computed from the checkpoint (each release's labels are its network's, so they are what the
    run would have stored) and stored back in the training run, where the next attack finds them. A run
    that stored no signals has them all rebuilt from its checkpoint.
    """
    names = tracking.DENSE_ARTIFACTS if dense else tracking.TARGET_ARTIFACTS
    audited, population = target.signals(names.signals), target.signals(names.population)
    if audited is None or population is None or audited.phi is None:
        if not dense and type(make_defense(config.defense, config.defense_params)).release is not Defense.release:
            raise MiaError(f"run {target.run_id} stored no signals, and its checkpoint is the network before "
                           f"{config.defense} transformed its outputs (the released model is not stored); "
                           "train it again")
        network = _stored_network(target, data, names.checkpoint)
        return audit.target_signals(network, data, target.split, config, progress)
    query, _ = target.split.query()
    missing = [k for k in applicable_kinds(config.label_only, data, query) if k not in (audited.label_only or {})]
    if missing:
        network = _stored_network(target, data, names.checkpoint)
        added = label_only_signals(network, data, query, kinds=missing, seed=config.seed, device=config.train.device,
                                   progress=progress)
        audited.label_only = {**(audited.label_only or {}), **added}
        target.store_signals(audited, names.signals)
    return audited, population


def _stored_network(run: tracking.TargetRun, data: Dataset, artifact: str = tracking.CHECKPOINT) -> torch.nn.Module:
    """The network a training run checkpointed, on the data's device, in eval mode.

    Built with the run's ``norm``, or else the other one: DP-SGD turns BatchNorm into GroupNorm in training
    (Opacus), and the run's config keeps the norm it was asked for.
    """
    config = run.config
    state = run.state_dict(artifact)
    for norm in dict.fromkeys((config.norm, *NORMS)):
        network = build_model(config.model, data.input_shape, data.num_classes, norm=norm)
        try:
            network.load_state_dict(state)
        except RuntimeError:
            continue
        return network.to(data.x.device).eval()
    raise MiaError(f"checkpoint {artifact} of run {run.run_id} does not fit model {config.model!r}; "
                   "retrain with `mia train`")


def _log_attack_artifacts(results: list[AttackResult], query: np.ndarray, labels: np.ndarray,
                          is_member: np.ndarray, config: TargetConfig) -> None:
    """The log-log ROC of every attack (``plots/roc.png``) and the per-sample scores (``scores.csv``; empty
    where an attack is not scored: the rows it knew)."""
    from mia.report.figure import describe  # matplotlib: where a plot is drawn, not for `mia train`

    _log_roc("plots/roc.png", results, is_member, describe(config))
    tracking.log_scores("scores.csv", [r.name for r in results], [_scored(r.output) for r in results], query,
                        labels, is_member)


def _log_roc(artifact: str, results: list[AttackResult], is_member: np.ndarray, title: str) -> None:
    """The log-log ROC of every attack of ``results`` as ``artifact``."""
    from mia.metrics import roc
    from mia.report import plot_roc

    curves = {}
    for r in results:
        scores, _, member = r.output.restricted(is_member)
        curves[r.name] = roc(scores, member)[:2]
    tracking.log_written(artifact, lambda path: plot_roc(curves, path, title=title))


def _scored(output) -> np.ndarray:
    return output.scores if output.evaluated is None else np.where(output.evaluated, output.scores, np.nan)


def audit_run(config: TargetConfig, attacks: str | list[str] = "all", reference_models: int = 4,
              attack_params: dict[str, dict] | None = None, experiment: str | None = None,
              progress: bool = True, pool_mode: str = "online", adaptive: bool = False,
              checkpoint: str | None = None, members: str | None = None) -> AttackOutcome:
    """``mia audit``: a training run (or a model trained elsewhere: ``checkpoint``/``members``, see
    :func:`train_run`), then an attack run linked to it."""
    attacks = selection.as_asked(attacks)
    config = selection.label_only_for(config, attacks, attack_params)
    selection.check_attacks(attacks, config, attack_params, pool_mode)  # fail before training
    trained = train_run(config, experiment, progress=progress, checkpoint=checkpoint, members=members)
    return attack_run(trained.run_id, attacks, reference_models, attack_params, seed=config.seed,
                      experiment=experiment, progress=progress, data=trained.data, pool_mode=pool_mode,
                      adaptive=adaptive)
