"""The CIFAR ResNets of He et al. (2016, section 4.2): 6n+2 layers, widths w-2w-4w (w=16).

Shortcuts are option A by default (stride-2 subsampling plus zero-padded channels, parameter
free), as in the paper, so ResNet-20 has 0.27 M parameters; option B uses 1x1 conv + BN.
Stages are named layer1..layer3 like torchvision's, so RPG's stage and block scopes find them.
norm="group" swaps BatchNorm for GroupNorm: per-sample statistics, so a step does not depend
on how the batch is split over processes (small per-GPU batches; SyncBatchNorm needs CUDA).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError, check_choice


class _PadShortcut(nn.Module):
    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


NORMS: dict[str, Callable[[int], nn.Module]] = {  # model.kwargs.norm
    "batch": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(math.gcd(c, 8), c),
}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.downsample = _PadShortcut(stride, cout - cin)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout)
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    layer1: nn.Sequential  # set with setattr in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, base_width: int = 16,
                 shortcut: str = "A", norm: str = "batch"):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise UserError("depth", depth, "is not 6n+2 (20, 32, 44, 56, 110, ...)")
        check_choice("shortcut", shortcut, ("A", "B"), says="is not one of")
        check_choice("norm", norm, NORMS, says="is not one of")
        make_norm = NORMS[norm]
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, base_width, 3, 1, 1, bias=False)
        self.bn1 = make_norm(base_width)
        widths = [base_width, 2 * base_width, 4 * base_width]
        cin = base_width
        for i, w in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1, shortcut,
                                         make_norm))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
