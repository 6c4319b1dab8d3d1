"""The CIFAR AlexNet of the FL membership-inference papers (FedMIA).

Five convs (11x11 stride 4, 5x5, three 3x3) with two max-pools, a global
max-pool and one linear layer: AlexNet's FC stack is removed for 32x32 inputs.
It has no normalization layers, so ``norm`` does not change it; without them
it wants a 10x smaller learning rate than the BatchNorm CNNs (its recipe).
"""

from __future__ import annotations

from torch import Tensor, nn

from mia.models.spec import MODELS, ModelSpec, NormLayer


class AlexNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def alexnet(input_shape: tuple[int, ...], num_classes: int, norm_layer: NormLayer) -> AlexNet:
    return AlexNet(input_shape[0], num_classes)


MODELS.register("alexnet", ModelSpec(
    "alexnet", alexnet, ("image",), "CIFAR AlexNet of FedMIA (5 convs, linear head, no norm), 2.5M parameters",
    min_size=16, recipe="sgd-cnn-nonorm"))
