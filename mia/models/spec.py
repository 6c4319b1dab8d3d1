"""The model registry and the pieces every architecture shares.

Architectures register a :class:`ModelSpec` in :data:`MODELS`; callers go
through :func:`mia.models.build_model`, which checks that the model fits the
data before building it. Normalization is a constructor argument
(``norm_layer``, as in torchvision) so that one architecture serves both
ordinary training (BatchNorm) and DP-SGD/federated training (GroupNorm: Opacus
cannot compute per-sample gradients through BatchNorm, and BatchNorm running
statistics leak and average badly across FL clients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import nn

from mia.errors import PLUGIN_HINT
from mia.registry import Registry

NormLayer = Callable[[int], nn.Module]
"""Builds a 2-d normalization layer for a number of channels."""

ModelBuilder = Callable[[tuple[int, ...], int, NormLayer], nn.Module]
"""``build(input_shape, num_classes, norm_layer) -> nn.Module``."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    ``kinds`` are the data kinds it accepts (``"image"``: ``C x H x W`` inputs,
    ``"tabular"``: ``D`` features); ``min_size`` is the smallest image side its
    down-sampling survives; ``recipe`` names its default training recipe in
    :mod:`mia.train.recipes` (unnamed: ``adam`` for a tabular-only model, ``sgd-cnn`` otherwise).
    """

    name: str
    build: ModelBuilder
    kinds: tuple[str, ...]
    description: str
    min_size: int = 1
    recipe: str = ""  # empty: "adam" for a tabular-only model, else "sgd-cnn"

    def __post_init__(self):
        from mia.errors import MiaError

        if isinstance(self.kinds, str) or not set(self.kinds) <= {"image", "tabular"} or not self.kinds:
            raise MiaError(f"model {self.name}: kinds must be a tuple of 'image'/'tabular', got {self.kinds!r}")
        if not self.recipe:  # a user's tabular model without a recipe trained with the CIFAR CNN's SGD at lr 0.1
            object.__setattr__(self, "recipe", "adam" if set(self.kinds) == {"tabular"} else "sgd-cnn")


MODELS: Registry[ModelSpec] = Registry("model", hint=PLUGIN_HINT)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups, the Opacus replacement for BatchNorm.

    Opacus' ``ModuleValidator.fix`` uses ``min(32, C)`` groups; ``gcd(C, 32)``
    is the same for the usual channel counts and still divides odd ones.
    """
    return nn.GroupNorm(math.gcd(channels, 32), channels)


NORMS: dict[str, NormLayer] = {"bn": nn.BatchNorm2d, "gn": group_norm}
"""``norm`` names accepted by :func:`mia.models.build_model`."""


def init_conv_net(model: nn.Module) -> None:
    """He initialization for convs, unit/zero affine norms, zero linear biases (torchvision's)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
