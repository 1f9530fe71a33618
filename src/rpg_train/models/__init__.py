"""Backbone registry: torchvision ResNets, the CIFAR ResNets and any timm model.

`create_model` records how it was called in `model.model_spec`, so a compact RPG file can
rebuild the same backbone from its recipe.
"""
from __future__ import annotations

import warnings

import torch.nn as nn
import torchvision

from .cifar_resnet import CifarResNet

_TORCHVISION = ("resnet18", "resnet34", "resnet50")
_CIFAR = {"resnet20": 20, "resnet32": 32, "resnet56": 56}


def available() -> list[str]:
    """Model names `create_model` accepts; `timm:<name>` takes any timm model name."""
    return [*_TORCHVISION, *_CIFAR, "timm:<name>"]


def is_available(name: str) -> bool:
    if name.startswith("timm:"):
        import timm

        return timm.is_model(name[5:])
    return name in _TORCHVISION or name in _CIFAR


def _torchvision_resnet(name, num_classes, in_chans, small_input, **kw):
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kw)
    if small_input or in_chans != 3:
        # CIFAR stem: 3x3 stride-1 conv and no max-pool keeps 32x32 inputs at full resolution
        k, s, p = (3, 1, 1) if small_input else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_chans, 64, k, s, p, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small_input:
        model.maxpool = nn.Identity()
    return model


def _timm_model(name, num_classes, in_chans, small_input, **kw):
    import timm

    if small_input:  # no generic way to swap the stem of an arbitrary timm model
        warnings.warn(f"model 'timm:{name}' keeps its own stem; small_input=True is ignored",
                      stacklevel=3)

    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans, **kw)
    except RuntimeError as err:  # timm's "Unknown model (...)"
        raise ValueError(f"model='timm:{name}': {err}") from None


def create_model(name: str, num_classes: int, in_chans: int = 3, small_input: bool = False,
                 **kw) -> nn.Module:
    """Build a plain (dense) backbone by name; see `available()`."""
    if name in _TORCHVISION:
        model = _torchvision_resnet(name, num_classes, in_chans, small_input, **kw)
    elif name in _CIFAR:
        model = CifarResNet(_CIFAR[name], num_classes=num_classes, in_chans=in_chans, **kw)
    elif name.startswith("timm:"):
        model = _timm_model(name[5:], num_classes, in_chans, small_input, **kw)
    else:
        raise ValueError(f"model={name!r} is not a known model; choose one of: "
                         + ", ".join(available()))
    model.model_spec = dict(name=name, num_classes=num_classes, in_chans=in_chans,
                            small_input=small_input, **kw)
    return model
