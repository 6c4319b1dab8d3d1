"""DenseNet-121, CIFAR variant (growth 32, blocks 6-12-24-16, 3x3 stem, no max-pool)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mia.models.spec import MODELS, ModelSpec, NormLayer, init_conv_net


class Bottleneck(nn.Module):
    """norm-ReLU-1x1 (4 x growth) then norm-ReLU-3x3 (growth); output is concatenated to the input."""

    def __init__(self, cin: int, growth: int, norm_layer: NormLayer):
        super().__init__()
        self.body = nn.Sequential(
            norm_layer(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            norm_layer(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.body(x), x], 1)


def transition(cin: int, cout: int, norm_layer: NormLayer) -> nn.Sequential:
    return nn.Sequential(norm_layer(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, blocks: list[int], growth: int, in_channels: int, num_classes: int,
                 norm_layer: NormLayer, reduction: float = 0.5):
        super().__init__()
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(Bottleneck(channels, growth, norm_layer))
                channels += growth
            if i < len(blocks) - 1:
                out = int(channels * reduction)
                layers.append(transition(channels, out, norm_layer))
                channels = out
        layers += [norm_layer(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_net(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def densenet121(input_shape: tuple[int, ...], num_classes: int, norm_layer: NormLayer) -> DenseNet:
    return DenseNet([6, 12, 24, 16], 32, input_shape[0], num_classes, norm_layer)


MODELS.register("densenet121", ModelSpec(
    "densenet121", densenet121, ("image",),
    "DenseNet-121, CIFAR variant (growth 32, 3x3 stem), 7M parameters", min_size=8))
