"""WideResNet-D-W (Zagoruyko & Komodakis 2016), the LiRA/RMIA reference architecture.

Pre-activation basic blocks, ``(D - 4) / 6`` per stage, widths 16W-32W-64W.
Any depth ``6n + 4`` and width ``W`` is available as ``wrnD-W`` through
:func:`wrn_spec`; ``wrn28-2`` is registered so that it shows in listings.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from mia.errors import MiaError
from mia.models.spec import MODELS, ModelSpec, NormLayer, init_conv_net

WRN_NAME = re.compile(r"wrn(\d+)-(\d+)")


class WideBlock(nn.Module):
    """norm-ReLU-conv-norm-ReLU-conv; the shortcut projects the activated input when shapes differ."""

    def __init__(self, cin: int, cout: int, stride: int, norm_layer: NormLayer):
        super().__init__()
        self.bn1 = norm_layer(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.project = None
        if stride != 1 or cin != cout:
            self.project = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(act))))
        return out + (x if self.project is None else self.project(act))


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, in_channels: int, num_classes: int,
                 norm_layer: NormLayer):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks, cin = [], 16
        for i, cout in enumerate(widths):
            for b in range(n):
                blocks.append(WideBlock(cin, cout, 2 if i > 0 and b == 0 else 1, norm_layer))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(norm_layer(cin), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        init_conv_net(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


def wrn_spec(depth: int, width: int) -> ModelSpec:
    """The spec of ``wrn{depth}-{width}``; a depth that is not ``6n + 4`` is a :class:`MiaError`."""
    if depth < 10 or (depth - 4) % 6 or width < 1:
        raise MiaError(f"wrn{depth}-{width}: WideResNet depth must be 6n+4 (10, 16, 22, 28, 40) "
                       f"and width >= 1; e.g. wrn28-2 or wrn16-4")

    def build(input_shape: tuple[int, ...], num_classes: int, norm_layer: NormLayer) -> WideResNet:
        return WideResNet(depth, width, input_shape[0], num_classes, norm_layer)

    return ModelSpec(f"wrn{depth}-{width}", build, ("image",),
                     f"WideResNet-{depth}-{width} (any wrnD-W with D = 6n+4)", min_size=4)


MODELS.register("wrn28-2", wrn_spec(28, 2))
