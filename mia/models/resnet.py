"""CIFAR-style ResNet-18 (He et al. 2016, as used by SELENA and FedMIA).

Unlike torchvision's ImageNet ResNet the stem is a single 3x3 stride-1 conv
with no max-pool, so 32x32 inputs keep enough resolution; the head pools
adaptively, so 64x64 (TinyImageNet) and other sizes work unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from mia.models.spec import MODELS, ModelSpec, NormLayer, init_conv_net


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, norm_layer: NormLayer):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = norm_layer(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          norm_layer(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks; ``layers`` blocks per stage, widths 64-128-256-512."""

    def __init__(self, layers: list[int], in_channels: int, num_classes: int, norm_layer: NormLayer):
        super().__init__()
        self.stem = nn.Sequential(conv3x3(in_channels, 64), norm_layer(64), nn.ReLU(inplace=True))
        stages, cin = [], 64
        for i, (blocks, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            for b in range(blocks):
                stride = 2 if i > 0 and b == 0 else 1
                stages.append(BasicBlock(cin, width, stride, norm_layer))
                cin = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        init_conv_net(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(x.flatten(1))


def resnet18(input_shape: tuple[int, ...], num_classes: int, norm_layer: NormLayer) -> ResNet:
    return ResNet([2, 2, 2, 2], input_shape[0], num_classes, norm_layer)


MODELS.register("resnet18", ModelSpec(
    "resnet18", resnet18, ("image",),
    "CIFAR-style ResNet-18 (3x3 stem, no max-pool, adaptive pooling), 11M parameters",
    min_size=8))
