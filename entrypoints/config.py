"""Command-line options -> :class:`mia.audit.TargetConfig`."""

from __future__ import annotations

from pathlib import Path

import click

from mia.audit import TargetConfig, resolve_config
from mia.data import SplitConfig
from mia.data.datasets import DATASETS
from mia.defenses import check_scenario, make_defense
from mia.errors import MiaError, unknown
from mia.registry import coerce
from mia.train.predict import check_device
from entrypoints.options import key_values

#: Scenarios this version trains; each later one registers here.
SCENARIOS = ("centralized", "federated", "pruning")

_TRAIN_KEYS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "augment", "device",
               "cpu_bf16", "compile")


def label_only_kinds(text: str) -> list[str]:
    from mia.signals import LABEL_ONLY_KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for kind in kinds:
        if kind not in LABEL_ONLY_KINDS:
            raise unknown("label-only signal", kind, LABEL_ONLY_KINDS)
    return kinds


_SCENARIO_OPTIONS = {
    "federated": ("clients", "rounds", "local_epochs", "client_fraction", "partition", "alpha", "server_lr",
                  "local_lr", "local_momentum", "local_batch_size", "target_client", "record_every"),
    "pruning": ("pruner", "sparsity", "prune_iterations", "finetune_epochs"),
}


def _note_ignored(opts: dict) -> None:
    """Say which options the user typed that this scenario does not read (they are not an error)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for scenario, names in _SCENARIO_OPTIONS.items():
        typed = [f"--{n.replace('_', '-')}" for n in names if n in opts and opts["scenario"] != scenario
                 and ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if typed:
            verb = "applies" if len(typed) == 1 else "apply"
            click.echo(f"note: {', '.join(typed)} {verb} to --scenario {scenario}; ignored here", err=True)


def target_config(opts: dict) -> TargetConfig:
    if opts["scenario"] not in SCENARIOS:
        raise unknown("scenario", opts["scenario"], SCENARIOS)
    check_device(opts["device"])
    _note_ignored(opts)
    check_scenario(opts["defense"], opts["scenario"])
    # typed and checked here, so unknown names and bad values fail before any run starts
    defense_params = make_defense(opts["defense"], key_values(opts["defense_param"], "--defense-param")).params
    if defense_params.get("mem_scores_csv") and not Path(defense_params["mem_scores_csv"]).is_file():
        # read after the dense model trained: a wrong path would cost that training first
        raise MiaError(f"--defense-param mem_scores_csv={defense_params['mem_scores_csv']}: no such file; "
                       "pass the path of an existing CSV")
    spec = DATASETS.get(opts["dataset"])
    dataset_params = coerce(spec.params, key_values(opts["dataset_param"], "--dataset-param"),
                            f"dataset {spec.name}")
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
    if opts["compile"] and check_device(opts["device"]).type != "cuda":
        click.echo("note: --compile acts on CUDA only; here training runs as without it", err=True)
    split = SplitConfig(member_fraction=opts["member_fraction"], nonmember_fraction=opts["nonmember_fraction"],
                        validation_fraction=opts["validation_fraction"])
    return resolve_config(
        dataset=spec.name, model=opts["model"] or None, seed=opts["seed"],
        train_overrides={k: opts[k] for k in _TRAIN_KEYS},
        data_dir=opts["data_dir"], download=opts["download"], dataset_params=dataset_params,
        norm=opts["norm"], scenario=opts["scenario"], defense=opts["defense"], defense_params=defense_params,
        split=split, label_only=label_only_kinds(opts["label_only"]), fl=fl, prune=prune)
