"""torchvision's ResNets with two changes a small-parameter study needs: a CIFAR stem for small
inputs, and a channel multiplier `width` (every stage, the stem and the head scale together;
width 1 is torchvision's model itself)."""
from __future__ import annotations

import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


def scaled(channels: int, width: float) -> int:
    """Channels at a width multiplier: rounded, never below one."""
    return max(1, round(channels * width))


class ScaledResNet(ResNet):
    """torchvision's ResNet with every channel count times `width`. torchvision fixes the stem
    at 64 channels and the head at 512 * expansion, so the stem is rebuilt when the first stage
    is made (before torchvision's init loop runs over it) and the head at the end."""

    def __init__(self, block, layers, width: float, num_classes: int = 1000, **kw):
        self.width = width
        super().__init__(block, layers, num_classes=num_classes, **kw)
        self.fc = nn.Linear(self.inplanes, num_classes)  # inplanes: the last stage's output

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # the first stage: the stem must feed it scaled channels
            self.inplanes = scaled(64, self.width)
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
            self.bn1 = self._norm_layer(self.inplanes)
        return super()._make_layer(block, scaled(planes, self.width), blocks, stride, dilate)


def torchvision_resnet(arch, num_classes, in_chans, small_input, width=1.0, **kw):
    if width == 1:
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, **kw)
    else:
        model = ScaledResNet(*ARCHS[arch], width, num_classes=num_classes, **kw)
    if small_input or in_chans != 3:
        # CIFAR stem: 3x3 stride-1 conv and no max-pool keeps 32x32 inputs at full resolution
        k, s, p = (3, 1, 1) if small_input else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_chans, model.bn1.num_features, k, s, p, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small_input:
        model.maxpool = nn.Identity()
    return model
