"""VGG-16 with normalization after every conv, CIFAR variant.

The five max-pools take 32x32 to 1x1; adaptive pooling then feeds a small
512-512-classes head instead of ImageNet VGG's 4096-wide one, so larger
inputs (64x64) work with the same head.
"""

from __future__ import annotations

from torch import Tensor, nn

from mia.models.spec import MODELS, ModelSpec, NormLayer, init_conv_net

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list, in_channels: int, num_classes: int, norm_layer: NormLayer):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), norm_layer(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(cin, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes))
        init_conv_net(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16(input_shape: tuple[int, ...], num_classes: int, norm_layer: NormLayer) -> VGG:
    return VGG(VGG16, input_shape[0], num_classes, norm_layer)


MODELS.register("vgg16", ModelSpec(
    "vgg16", vgg16, ("image",), "VGG-16 with BatchNorm (CIFAR variant, small head), 15M parameters",
    min_size=32))
