"""Training a target or a reference model in each scenario: through its defense, pruned, federated, or loaded
from a checkpoint trained elsewhere."""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from tqdm.auto import tqdm

from mia.audit._config import TargetConfig, check_config, dense_config
from mia.audit._reference import attacker_config
from mia.data import Dataset, Split, load_dataset, make_split
from mia.defenses import make_defense
from mia.defenses.memorization import MemScored
from mia.errors import MiaError
from mia.fl.simulation import simulate
from mia.imported import CHECKPOINT_FIX, MEMBERS_FIX, check_file, load_network, member_rows, split_around
from mia.models import batchnorm_fix, build_model
from mia.prune import prune_and_finetune
from mia.prune.layers import FixedMasks
from mia.prune.memscores import read_mem_scores_csv
from mia.prune.pruners import PRUNERS
from mia.train import TrainConfig, resolve_device, seed_everything
from mia.train.many import Trained, train_many
from mia.train.predict import accuracy


EpochCallback = Callable[[int, dict], None]
#: ``(recipe, models) -> scores``: the members' mem-scores from the online pool of ``recipe`` grown to
#: ``models`` reference models (:func:`fit_target`: where that pool is kept is the caller's)
MemScores = Callable[[TargetConfig, int], np.ndarray]


@dataclass
class TrainedModel:
    """A fitted model with the facts a run records about it.

    ``model`` is what users query (the released outputs of an output defense);
    ``network`` the trained network itself, which the checkpoint stores.
    """

    model: torch.nn.Module
    network: torch.nn.Module
    best_epoch: int
    history: list[dict]
    train_accuracy: float
    test_accuracy: float
    wall_time: float
    defense_metrics: dict = field(default_factory=dict)
    dense: "TrainedModel | None" = None  # pruning: the dense original the model was pruned from
    finetune_epochs: list[int] = field(default_factory=list)  # pruning: each step's released fine-tuning epoch


def load_data(config: TargetConfig) -> Dataset:
    """Load the dataset of a config onto the training device, once."""
    data = load_dataset(config.dataset, config.data_dir, config.download, **config.dataset_params)
    return data.to(resolve_device(config.train.device))


def fit(config: TargetConfig, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
        test_idx: np.ndarray, seed: int, on_epoch: EpochCallback | None = None,
        progress: bool = True) -> TrainedModel:
    """Build and train one model with the config's recipe and defense, seeded by ``seed``.

    Under ``scenario="pruning"`` the model is trained dense, then pruned and
    fine-tuned with the defense (:func:`fit_pruned`).
    """
    if config.scenario == "pruning":
        return fit_pruned(config, data, train_idx, val_idx, test_idx, seed, on_epoch=on_epoch, progress=progress)
    seed_everything(seed)
    defense = make_defense(config.defense, config.defense_params, seed=seed)
    defense.bind(data.num_classes)  # also for a fit of its own that does not call the default's
    recipe = replace(config.train, seed=seed)
    network, result = defense.fit(
        lambda: build_model(config.model, data.input_shape, data.num_classes, norm=config.norm),
        data, train_idx, val_idx, recipe, on_epoch=on_epoch, progress=progress)
    model = defense.release(network)
    return TrainedModel(model, network, result.best_epoch, result.history,
                        train_accuracy=accuracy(model, data, train_idx, recipe.device),
                        test_accuracy=accuracy(model, data, test_idx, recipe.device),
                        wall_time=result.wall_time, defense_metrics=defense.metrics())


def check_importable(config: TargetConfig) -> None:
    """A model trained elsewhere is attacked as it is released: centralized, without a defense of mia's."""
    if config.scenario != "centralized" or config.defense != "none":
        raise MiaError("a checkpoint trained elsewhere is audited as it is released: scenario centralized, "
                       "defense none (drop --scenario / --defense)")


def check_import(config: TargetConfig, checkpoint, members, names: tuple[str, str] = ("checkpoint=", "members=")
                 ) -> None:
    """A model trained elsewhere, checked before anything loads or a run opens: both its weights and its rows,
    a config it can be audited under (:func:`check_importable`), files that exist. ``names`` are how the
    caller spells the two (``--checkpoint``/``--members`` on the command line)."""
    if (checkpoint is None) != (members is None):
        raise MiaError(f"a model trained elsewhere needs both {names[0]} (its weights) and {names[1]} (the rows it "
                       "trained on)")
    if checkpoint is None:
        return
    check_importable(config)
    check_file(checkpoint, "checkpoint", CHECKPOINT_FIX)
    if isinstance(members, (str, Path)):
        check_file(members, "members file", MEMBERS_FIX)


def fit_imported(config: TargetConfig, data: Dataset, split: Split, checkpoint: str | Path) -> TrainedModel:
    """A target trained elsewhere (:mod:`mia.imported`): ``checkpoint``'s weights in ``config.model``, with
    ``split.members`` the rows it trained on; its accuracies measured as :func:`fit`'s are. Its best epoch is
    unknown (-1), so reference models select their own (:func:`attacker_config`)."""
    check_importable(config)
    network = load_network(checkpoint, config.model, config.norm, data)
    return TrainedModel(network, network, -1, [], accuracy(network, data, split.members, config.train.device),
                        accuracy(network, data, split.nonmembers, config.train.device), wall_time=0.0)


def check_prunable(config: TargetConfig, data: Dataset, train_idx: np.ndarray) -> None:
    """What :func:`fit_pruned` would otherwise find wrong only after the dense model trained: the pruner on
    this model (tried on a fresh one: slimming needs BatchNorm), a defense that would replace the pruned
    model (DP-SGD turns BatchNorm into GroupNorm), the defense's settings against the data
    (:meth:`mia.defenses.Defense.bind`), and a mem-score CSV's rows for ``train_idx``."""
    make_defense(config.defense, config.defense_params).bind(data.num_classes)
    model = build_model(config.model, data.input_shape, data.num_classes, norm=config.norm)
    PRUNERS.get(config.prune.pruner)(model, config.prune.sparsity)
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if config.defense == "dp-sgd" and has_batchnorm:
        raise MiaError(f"dp-sgd would replace the pruned model's BatchNorm by GroupNorm (Opacus), and the masks "
                       f"with it; prune a model without BatchNorm: {batchnorm_fix(config.model, config.norm)}")
    if csv := config.defense_params.get("mem_scores_csv"):
        with warnings.catch_warnings():  # its warnings come when the defense reads it
            warnings.simplefilter("ignore")
            read_mem_scores_csv(csv, train_idx)


def fit_pruned(config: TargetConfig, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
               test_idx: np.ndarray, seed: int, dense: TrainedModel | None = None,
               on_epoch: EpochCallback | None = None, progress: bool = True,
               mem_scores: np.ndarray | None = None) -> TrainedModel:
    """The dense model (trained here, or ``dense``), pruned along ``config.prune`` and fine-tuned with the defense.

    The defense fine-tunes through its own ``fit`` on the pruned model (loss
    and batch hooks, AdvReg's game, ...); the pruning masks hold throughout.
    A defense that builds new models instead (SELENA's sub-models) cannot.
    ``mem_scores`` (one per row of ``train_idx``) are handed to a mem-score
    driven defense (:mod:`mia.defenses.memorization`); see
    :func:`pool_mem_score_models`. ``on_epoch`` sees the dense epochs trained
    here, then every fine-tuning epoch, numbered on after them.
    """
    if config.prune is None:
        raise MiaError("scenario pruning needs a prune config (PruneConfig; --pruner, --sparsity)")
    if dense is None:
        check_prunable(config, data, train_idx)
        dense = fit(dense_config(config), data, train_idx, val_idx, test_idx, seed, on_epoch, progress)
    seed_everything(seed)
    defense = make_defense(config.defense, config.defense_params, seed=seed)
    defense.bind(data.num_classes)
    if mem_scores is not None:
        defense.set_mem_scores(train_idx, mem_scores)
    recipe = replace(config.train, seed=seed)
    if isinstance(defense, MemScored):  # scores it estimates itself model the dense recipe, not the fine-tuning
        defense.prepare(lambda: build_model(config.model, data.input_shape, data.num_classes, norm=config.norm),
                        data, train_idx, recipe, progress=progress)
    model = copy.deepcopy(dense.network)
    epochs = itertools.count(len(dense.history))  # fine-tuning epochs are reported after the dense ones, numbered on

    def finetune_epoch(_: int, metrics: dict) -> None:
        on_epoch(next(epochs), metrics)

    def finetune(network: torch.nn.Module, cfg: TrainConfig):
        network.train()  # as a fresh model would be (Opacus checks the mode)
        with FixedMasks(network):  # plain tensors for any procedure; the pruned entries stay zero
            out, result = defense.fit(lambda: network, data, train_idx, val_idx, cfg, progress=progress,
                                      on_epoch=finetune_epoch if on_epoch is not None else None)
        if out is not network:
            raise MiaError(f"defense {config.defense} replaced the pruned model (e.g. BatchNorm by GroupNorm); "
                           f"prune a model without BatchNorm: {batchnorm_fix(config.model, config.norm)}")
        return result

    pruned = prune_and_finetune(model, data, train_idx, val_idx, recipe, config.prune, progress=progress,
                                finetune=finetune)
    released = defense.release(model)
    finetuned = [step.finetune for step in pruned.history if step.finetune is not None]
    metrics = {**finetune_metrics(config.defense, defense.metrics()), "sparsity": pruned.sparsity}
    if pruned.structured_sparsity is not None:
        metrics["structured_sparsity"] = pruned.structured_sparsity
    return TrainedModel(released, model, dense.best_epoch, [f.history[-1] for f in finetuned],
                        train_accuracy=accuracy(released, data, train_idx, recipe.device),
                        test_accuracy=accuracy(released, data, test_idx, recipe.device),
                        wall_time=dense.wall_time + pruned.wall_time, defense_metrics=metrics, dense=dense,
                        finetune_epochs=[f.best_epoch for f in finetuned])


def finetune_metrics(defense: str, metrics: dict[str, float]) -> dict[str, float]:
    """A fine-tuning defense's metrics, its privacy accounting (``dp.*``) renamed ``finetune.dp.*``.

    The accountant covers the fine-tuning steps only: the dense model they
    start from (and whose weights chose the pruning masks) trained without DP
    on the same members, so the released model has no DP guarantee, and a
    ``dp.epsilon`` beside it would read as one.
    """
    renamed = {(f"finetune.{k}" if k.startswith("dp.") else k): v for k, v in metrics.items()}
    if renamed != metrics:
        warnings.warn(f"{defense} acted in fine-tuning only: finetune.dp.epsilon bounds those steps, not the "
                      "released model, whose dense original trained without DP on the same members")
    return renamed


def pool_mem_score_models(config: TargetConfig) -> int:
    """How many models of its dense reference pool a pruning run reads its defense's mem-scores from (0: none).

    Non-zero for a mem-score driven defense (RSW, RMR, SWMR) with
    ``mem_source=pool`` and no CSV: the run grows the online pool of
    :func:`dense_config` on its split to that size, and the attack on the
    dense original reuses it.
    """
    if config.scenario != "pruning":
        return 0
    defense = make_defense(config.defense, config.defense_params)
    return defense.mem_models if getattr(defense, "wants_pool_scores", False) else 0


def check_mem_pool(config: TargetConfig, split: Split) -> None:
    """The online pool holds every member among its samples only where non-members are at least as many."""
    if len(split.members) > len(split.nonmembers):
        raise MiaError(f"{config.defense} reads mem-scores from the reference pool, whose samples hold "
                       f"every member only when there are at least as many non-members "
                       f"({len(split.nonmembers)}) as members ({len(split.members)}); raise "
                       "--nonmember-fraction, or pass --defense-param mem_source=halves")


def target_split(config: TargetConfig, data: Dataset, members=None) -> Split:
    """The target's split of ``data``'s rows: seeded from the config, or around the ``members`` of a model
    trained elsewhere (an array of rows, or a file :func:`mia.imported.read_members` reads)."""
    if not isinstance(data, Dataset):
        raise MiaError(f"target_split(config, data, members=None) takes the Dataset (audit.load_data(config)), got "
                       f"{type(data).__name__}")
    if members is None:
        return make_split(len(data), config.seed, config.split)
    return split_around(len(data), member_rows(members, len(data)), config.seed, config.split)


def fit_target(config: TargetConfig, data: Dataset, split: Split, *, checkpoint: str | Path | None = None,
               dense: TrainedModel | None = None, mem_scores: MemScores | None = None,
               on_epoch: EpochCallback | None = None, progress: bool = True,
               stage: Callable = contextlib.nullcontext) -> TrainedModel:
    """The audited model of a centralized or pruning ``config`` on ``split``: how :func:`mia.audit.run_audit`
    and the tracked ``mia train`` both fit it, so that one seed gives one model either way.

    A ``checkpoint`` trained elsewhere is loaded (:func:`fit_imported`), ``split``
    then the one around the rows it trained on (``target_split(config, data, members)``:
    nothing here can tell a wrong one); a pruning
    target (first checked: :func:`check_prunable`) prunes ``dense`` (its dense original, trained here
    when not given), its defense fed the members' scores
    ``mem_scores(recipe, models)`` where it reads them from a reference pool, ``recipe``
    the dense one stopped where ``dense`` did, so that the dense original's attack
    reuses that pool (:func:`pool_mem_score_models`; checked before anything trains:
    :func:`check_mem_pool`); without ``mem_scores`` such a defense estimates
    its own (``halves``, :mod:`mia.defenses.memorization`). ``config`` is
    checked first (:func:`check_config`). ``stage(name)`` wraps each costly part
    (``train_dense``, ``mem_scores``, ``train`` or ``import``), for the tracked
    run's timings.
    """
    config = check_config(config)
    if not isinstance(split, Split):
        raise MiaError(f"fit_target's split takes a mia.data.Split (audit.target_split(config, data, members)), got "
                       f"{type(split).__name__}")
    if config.scenario == "federated":
        raise MiaError("a federated target is the global model of a FedAvg run: fit it with fit_federated")
    if checkpoint is not None:
        with stage("import"):
            return fit_imported(config, data, split, checkpoint)
    if config.scenario != "pruning":
        with stage("train"):
            return fit(config, data, split.members, split.validation, split.nonmembers, config.seed,
                       on_epoch=on_epoch, progress=progress)
    models = pool_mem_score_models(config) if mem_scores is not None else 0
    if models:
        check_mem_pool(config, split)
    check_prunable(config, data, split.members)
    if dense is None:
        with stage("train_dense"):
            dense = fit(dense_config(config), data, split.members, split.validation, split.nonmembers, config.seed,
                        on_epoch=on_epoch, progress=progress)
    scores = None
    if models:
        with stage("mem_scores"):
            scores = mem_scores(attacker_config(dense_config(config), released_epoch=dense.best_epoch), models)
    with stage("train"):
        return fit_pruned(config, data, split.members, split.validation, split.nonmembers, config.seed,
                          dense=dense, on_epoch=on_epoch, progress=progress, mem_scores=scores)


def fit_many(config: TargetConfig, data: Dataset, train_sets: np.ndarray, val_idx: np.ndarray,
             seeds: list[int], progress: bool = True, *, on_trained: Trained) -> None:
    """Reference models: many at a time without a defense, else one by one through the defense.

    Pruned reference models train dense many at a time, each then pruned
    and fine-tuned like the target as its dense stack is done. Federated ones
    are each a federation like the target's (:func:`fit_federations`).
    ``on_trained(m, model)`` is called as each model is done, in order, and
    none is kept: one model (or stack) is held at a time (see
    :func:`mia.train.many.train_many`'s ``keep=False``).
    """
    if config.defense == "none" and config.scenario == "centralized":
        train_many(config.model, data.input_shape, data.num_classes, config.norm, data, train_sets,
                   val_idx, config.train, seeds=seeds, progress=progress, on_trained=on_trained, keep=False)
        return
    if config.scenario == "pruning":
        def prune(m: int, net: torch.nn.Module) -> None:
            on_trained(m, fit_pruned(config, data, train_sets[m], val_idx, val_idx, seeds[m], progress=False,
                                     dense=TrainedModel(net, net, -1, [], 0.0, 0.0, 0.0)).model)

        fit_many(dense_config(config), data, train_sets, val_idx, seeds, progress, on_trained=prune)
        return
    if config.scenario == "federated":
        trained = fit_federations(config, data, train_sets, val_idx, seeds, progress)
    else:
        trained = (fit(config, data, rows, val_idx, val_idx, seed, progress=False).model
                   for rows, seed in zip(train_sets, seeds))
    # model m is not held while model m + 1 trains: neither by the loop variable nor by
    # enumerate, whose result tuple (m, model) lives on in it until the next item is drawn
    m = 0
    for model in trained:
        on_trained(m, model)
        del model
        m += 1


def fit_federations(config: TargetConfig, data: Dataset, train_sets: np.ndarray, val_idx: np.ndarray,
                    seeds: list[int], progress: bool = True) -> Iterator[torch.nn.Module]:
    """Reference models of a federated target, one after another: each the global model of a FedAvg run
    like the target's.

    Its rows are partitioned among as many clients, the same way (IID or
    Dirichlet), for as many rounds, local epochs and sampled clients, with
    the defense where the attack is adaptive; no server view is recorded.
    A model trained centrally on the same rows is far more confident than
    FedAvg's global model (measured on digits, 10 clients, 20 rounds: the
    target's members sat 3.4 IN standard deviations below the IN means of
    centrally trained references, its non-members 2.8 below the OUT means;
    against federations, 0.3 and 0.2), and every shadow-fitted threshold
    and Gaussian inherits that offset.
    """
    for rows, seed in tqdm(list(zip(train_sets, seeds)), desc="reference federations", disable=not progress,
                           leave=False):
        split = Split(np.sort(rows), val_idx, val_idx, np.zeros(0, dtype=np.int64), seed)
        defense = make_defense(config.defense, config.defense_params, seed=seed)
        model, _, _ = simulate(config.model, config.norm, data, split, config.fl, config.train, defense, seed,
                               progress=False, record=False)
        yield model
        del model  # nor by this frame while the next federation trains (fit_many holds one at a time)


def fit_federated(config: TargetConfig, data: Dataset, split: Split, progress: bool):
    """FedAvg as ``mia train --scenario federated`` runs it: the global model, the server's view, the federation."""
    defense = make_defense(config.defense, config.defense_params, seed=config.seed)
    start = time.perf_counter()
    model, state, federation = simulate(config.model, config.norm, data, split, config.fl, config.train, defense,
                                        config.seed, progress=progress)
    target = TrainedModel(model, model, -1, state.history,
                          train_accuracy=accuracy(model, data, split.members, config.train.device),
                          test_accuracy=state.history[-1]["test_accuracy"],
                          wall_time=time.perf_counter() - start, defense_metrics=defense.metrics())
    return target, state.signals, federation

