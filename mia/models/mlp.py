"""Fully connected networks: ``fc`` for tabular benchmarks, ``mlp`` for anything small.

``fc`` is the Purchase100/Texas100 network of the MIA literature
(1024-512-256-128, tanh; Nasr et al. 2018, SELENA). ``mlp`` flattens any
input, so it also serves small images such as 8x8 digits.
"""

from __future__ import annotations

import math

from torch import nn

from mia.models.spec import MODELS, ModelSpec, NormLayer


def dense_stack(in_features: int, widths: list[int], num_classes: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for w in widths:
        layers += [nn.Linear(in_features, w), act()]
        in_features = w
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def fc(input_shape: tuple[int, ...], num_classes: int, norm_layer: NormLayer) -> nn.Sequential:
    return dense_stack(input_shape[0], [1024, 512, 256, 128], num_classes, nn.Tanh)


def mlp(input_shape: tuple[int, ...], num_classes: int, norm_layer: NormLayer) -> nn.Sequential:
    return dense_stack(math.prod(input_shape), [256, 128], num_classes, nn.ReLU)


MODELS.register("fc", ModelSpec(
    "fc", fc, ("tabular",), "tabular MLP 1024-512-256-128 with tanh (Purchase100/Texas100)",
    recipe="adam"))
MODELS.register("mlp", ModelSpec(
    "mlp", mlp, ("image", "tabular"), "flatten, 256-128 ReLU MLP; any input shape (e.g. 8x8 digits)",
    recipe="adam-small"))
