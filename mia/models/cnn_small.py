"""A three-conv network for small images (8x8 digits up to 32x32), quick to train many times.

No normalization layers, in the style of the Opacus example CNNs, so it
trains unchanged under DP-SGD; adaptive pooling to 4x4 makes the head the
same size for every input resolution.
"""

from __future__ import annotations

from torch import nn

from mia.models.spec import MODELS, ModelSpec, NormLayer


def cnn_small(input_shape: tuple[int, ...], num_classes: int, norm_layer: NormLayer) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(64 * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))


MODELS.register("cnn-small", ModelSpec(
    "cnn-small", cnn_small, ("image",), "3 convs + 2 linear layers for small images (digits, 32x32)",
    min_size=2, recipe="adam-small"))
