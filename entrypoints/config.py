"""Command-line options -> :class:`mia.audit.TargetConfig`."""

from __future__ import annotations

from mia.audit import TargetConfig, resolve_config
from mia.data import SplitConfig
from mia.data.datasets import DATASETS
from mia.errors import MiaError, unknown
from mia.registry import coerce
from entrypoints.options import key_values

#: Scenarios and defenses this version trains; each later one registers here.
SCENARIOS = ("centralized",)
DEFENSES = ("none",)

_TRAIN_KEYS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "augment", "device")


def target_config(opts: dict) -> TargetConfig:
    if opts["scenario"] not in SCENARIOS:
        raise unknown("scenario", opts["scenario"], SCENARIOS)
    if opts["defense"] not in DEFENSES:
        raise unknown("defense", opts["defense"], DEFENSES)
    if opts["defense_param"] and opts["defense"] == "none":
        raise MiaError("--defense-param given but --defense is none; choose a defense (see `mia defenses`)")
    spec = DATASETS.get(opts["dataset"])
    dataset_params = coerce(spec.params, key_values(opts["dataset_param"], "--dataset-param"),
                            f"dataset {spec.name}")
    split = SplitConfig(member_fraction=opts["member_fraction"], nonmember_fraction=opts["nonmember_fraction"],
                        validation_fraction=opts["validation_fraction"])
    return resolve_config(
        dataset=spec.name, model=opts["model"] or None, seed=opts["seed"],
        train_overrides={k: opts[k] for k in _TRAIN_KEYS},
        data_dir=opts["data_dir"], download=opts["download"], dataset_params=dataset_params,
        norm=opts["norm"], scenario=opts["scenario"], defense=opts["defense"], split=split)
