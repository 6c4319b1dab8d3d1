"""Default training recipes, by architecture, adjusted for the data.

The architecture decides the optimizer family (REFERENCE.md section 6): the
BatchNorm CNNs take the CIFAR recipe (SGD 0.1, momentum 0.9, weight decay
5e-4, cosine, batch 128; 100-200 epochs in the papers, a modest 50 here),
FedMIA's norm-free AlexNet the same at lr 0.01, the tabular ``fc`` net Adam
1e-3, and the small digit models Adam 1e-3 with batch 64. Anything the caller
passes overrides the table.
"""

from __future__ import annotations

from dataclasses import fields, replace

from mia.errors import MiaError
from mia.models import model_spec
from mia.train.config import TrainConfig
from mia.train.predict import resolve_device

_SGD_CNN = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                batch_size=128, epochs=50, augment=True)

RECIPES: dict[str, dict] = {
    "sgd-cnn": _SGD_CNN,
    "sgd-cnn-nonorm": {**_SGD_CNN, "lr": 0.01},
    "adam": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=128,
                 epochs=30, augment=False),
    "adam-small": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=64,
                       epochs=30, augment=False),
}
"""Recipe name (``ModelSpec.recipe``) -> :class:`TrainConfig` fields."""

DATA_ADJUSTMENTS: dict[str, dict] = {
    "tabular": {"batch_size": 128},  # tabular sets are larger than digits: batch 128 as for `fc`
}
"""Dataset name or data kind -> fields that differ from the model's recipe for that data."""

_FIELDS = {f.name for f in fields(TrainConfig)}


def default_config(dataset_name_or_kind: str, model_name: str, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` for ``model_name`` on a dataset (by name, or its kind), plus ``overrides``."""
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise MiaError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    for name, value in overrides.items():
        _check_type(name, value)
    name = model_spec(model_name).recipe
    if name not in RECIPES:
        raise MiaError(f"model {model_name!r} names recipe {name!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    return TrainConfig(**{**recipe, **DATA_ADJUSTMENTS.get(dataset_name_or_kind, {}), **overrides})


_DEFAULTS = TrainConfig()


def _check_type(name: str, value: object) -> None:
    """An override of the default's type (an int where a float goes), or a one-line error: ``epochs="3"``
    failed inside the first training step."""
    default = getattr(_DEFAULTS, name)
    if default is None or value is None:
        return
    kind = type(default)
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise MiaError(f"training option {name}={value!r} must be {kind.__name__}")


def without_inert_settings(train: TrainConfig, recipe: TrainConfig | None, augmentable: bool) -> TrainConfig:
    """``train`` with the settings that change nothing about the model it trains set to their defaults.

    What a cache of trained models keys on (reference pools, mem-scores), so
    that the same models are found under settings that do not change them:
    ``channels_last`` is only used on CUDA; ``augment`` only where the data
    allows crop and flip (``augmentable``), so elsewhere it is keyed at the
    model's ``recipe`` value (as given when there is no recipe); ``amp`` and
    ``cpu_bf16`` change a CPU model only together, and ``cpu_bf16`` never a
    CUDA one; ``momentum`` is only read by SGD. Defaults, rather than dropping
    the fields, keep the keys of caches filled before this normalization.
    """
    cuda = resolve_device(train.device).type == "cuda"
    inert: dict[str, object] = {}
    if not cuda:
        inert["channels_last"] = _DEFAULTS.channels_last
        if not (train.amp and train.cpu_bf16):
            inert.update(amp=_DEFAULTS.amp, cpu_bf16=_DEFAULTS.cpu_bf16)
    else:
        inert["cpu_bf16"] = _DEFAULTS.cpu_bf16
    if recipe is not None and not augmentable:
        inert["augment"] = recipe.augment
    if train.optimizer != "sgd":
        inert["momentum"] = _DEFAULTS.momentum
    return replace(train, **inert)
