"""Command-line options -> :class:`mia.audit.TargetConfig`."""

from __future__ import annotations

import click

from mia.audit import SCENARIOS, TargetConfig, resolve_config
from mia.data import SplitConfig
from mia.data.datasets import DATASETS
from mia.errors import MiaError, unknown
from mia.train.predict import check_device
from entrypoints.options import flag, key_values, typed


_TRAIN_KEYS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "augment", "select_best",
               "device", "cpu_bf16", "compile")


_SCENARIO_OPTIONS = {
    "federated": ("clients", "rounds", "local_epochs", "client_fraction", "partition", "alpha", "server_lr",
                  "local_lr", "local_momentum", "local_batch_size", "target_client", "record_every"),
    "pruning": ("pruner", "sparsity", "prune_iterations", "finetune_epochs"),
}


def _note_ignored(opts: dict) -> None:
    """Say which options the user typed that this scenario does not read (they are not an error)."""
    for scenario, names in _SCENARIO_OPTIONS.items():
        ignored = [flag(n) for n in names if opts["scenario"] != scenario and typed(n)]
        if ignored:
            verb = "applies" if len(ignored) == 1 else "apply"
            click.echo(f"note: {', '.join(ignored)} {verb} to --scenario {scenario}; ignored here", err=True)
    if opts.get("members") and typed("member_fraction"):
        click.echo("note: --member-fraction is ignored: the members are the rows --members lists", err=True)


def target_config(opts: dict) -> TargetConfig:
    """The options as a checked config (:func:`mia.audit.check_config`): bad values fail before any run."""
    if opts["scenario"] not in SCENARIOS:
        raise unknown("scenario", opts["scenario"], SCENARIOS)
    _note_ignored(opts)
    spec = DATASETS.get(opts["dataset"])
    fl = None
    if opts["scenario"] == "federated":
        from mia.fl.config import FLConfig

        fl = FLConfig(clients=opts["clients"], rounds=opts["rounds"], local_epochs=opts["local_epochs"],
                      fraction=opts["client_fraction"], partition=opts["partition"], alpha=opts["alpha"],
                      server_lr=opts["server_lr"], lr=opts["local_lr"], momentum=opts["local_momentum"],
                      batch_size=opts["local_batch_size"], target_client=opts["target_client"],
                      record_every=opts["record_every"])
    prune = None
    if opts["scenario"] == "pruning":
        from mia.prune import PruneConfig

        prune = PruneConfig(pruner=opts["pruner"], sparsity=opts["sparsity"], iterations=opts["prune_iterations"],
                            finetune_epochs=opts["finetune_epochs"])
    split = SplitConfig(member_fraction=opts["member_fraction"], nonmember_fraction=opts["nonmember_fraction"],
                        validation_fraction=opts["validation_fraction"])
    config = resolve_config(
        dataset=spec.name, model=opts["model"] or None, seed=opts["seed"],
        train_overrides={k: opts[k] for k in _TRAIN_KEYS},
        data_dir=opts["data_dir"], download=opts["download"],
        dataset_params=key_values(opts["dataset_param"], "--dataset-param"),
        norm=opts["norm"], scenario=opts["scenario"], defense=opts["defense"],
        defense_params=key_values(opts["defense_param"], "--defense-param"),
        split=split, label_only=opts["label_only"], fl=fl, prune=prune)
    if opts["compile"] and check_device(opts["device"]).type != "cuda":
        click.echo("note: --compile acts on CUDA only; here training runs as without it", err=True)
    return config


#: Options that set what made a dense model (:data:`mia.experiment.DENSE_SETTINGS`), and where the config keeps them.
_DENSE_OPTIONS = {
    "dataset": lambda c: c.dataset, "dataset_param": lambda c: c.dataset_params, "model": lambda c: c.model,
    "norm": lambda c: c.norm, "seed": lambda c: c.seed,
    **{k: (lambda c, k=k: getattr(c.split, k)) for k in ("member_fraction", "nonmember_fraction",
                                                          "validation_fraction")},
    **{k: (lambda c, k=k: getattr(c.train, k)) for k in _TRAIN_KEYS if k not in ("device", "compile")},
}


def check_from_run(opts: dict, config: TargetConfig) -> None:
    """Refuse typed options that contradict the dense run a pruning run starts from.

    That run's data, model, split, seed and recipe are taken over
    (:func:`mia.experiment.with_dense_recipe`); a different value typed here
    would otherwise be dropped without a word.
    """
    from mia import tracking

    dense = tracking.TargetRun(opts["from_run"]).config
    for name, get in _DENSE_OPTIONS.items():
        if typed(name) and get(config) != get(dense):
            raise MiaError(f"--from-run {opts['from_run']} trained with {flag(name)} {get(dense)!r}, not "
                           f"{get(config)!r}; drop {flag(name)}: a pruning run keeps its dense run's data, model, "
                           "split, seed and recipe")
