"""Backbone registry: torchvision ResNets, the CIFAR ResNets and any timm model.

`create_model` records how it was called in `model.model_spec`, so a compact RPG file can
rebuild the same backbone from its recipe. Bad arguments raise `UserError` keyed by the
argument (`name`, `kwargs`, `kwargs.shortcut`); the engine files them under `model.`.
"""
from __future__ import annotations

import warnings
from functools import partial

import torch.nn as nn
import torchvision

from ..errors import UserError
from .cifar_resnet import CifarResNet

TIMM = "timm:"  # prefix: timm:<any timm model name>


def _torchvision_resnet(arch, num_classes, in_chans, small_input, **kw):
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, **kw)
    if small_input or in_chans != 3:
        # CIFAR stem: 3x3 stride-1 conv and no max-pool keeps 32x32 inputs at full resolution
        k, s, p = (3, 1, 1) if small_input else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_chans, 64, k, s, p, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small_input:
        model.maxpool = nn.Identity()
    return model


def _cifar_resnet(depth, num_classes, in_chans, small_input, **kw):
    return CifarResNet(depth, num_classes=num_classes, in_chans=in_chans, **kw)


def _timm_model(arch, num_classes, in_chans, small_input, **kw):
    import timm

    if not timm.is_model(arch):
        raise UserError("name", TIMM + arch, "is not a timm model (timm.list_models() has "
                        "the names)")
    if small_input:  # no generic way to swap the stem of an arbitrary timm model
        warnings.warn(f"model 'timm:{arch}' keeps its own stem; small_input=True is ignored",
                      stacklevel=3)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes,
                             in_chans=in_chans, **kw)


# model.name -> builder(num_classes, in_chans, small_input, **kwargs)
MODELS = {
    "resnet18": partial(_torchvision_resnet, "resnet18"),
    "resnet34": partial(_torchvision_resnet, "resnet34"),
    "resnet50": partial(_torchvision_resnet, "resnet50"),
    "resnet20": partial(_cifar_resnet, 20),
    "resnet32": partial(_cifar_resnet, 32),
    "resnet56": partial(_cifar_resnet, 56),
}


def available() -> list[str]:
    """Model names `create_model` accepts; `timm:<name>` takes any timm model name."""
    return [*MODELS, TIMM + "<name>"]


def is_available(name: str) -> bool:
    if name.startswith(TIMM):
        import timm

        return timm.is_model(name[len(TIMM):])
    return name in MODELS


def _builder(name: str):
    if name.startswith(TIMM):
        return partial(_timm_model, name[len(TIMM):])
    if name not in MODELS:
        raise UserError("name", name, "is not a known model; choose one of: "
                        + ", ".join(available()))
    return MODELS[name]


def create_model(name: str, num_classes: int, in_chans: int = 3, small_input: bool = False,
                 **kw) -> nn.Module:
    """Build a plain (dense) backbone by name; see `available()`."""
    builder = _builder(name)
    try:
        model = builder(num_classes=num_classes, in_chans=in_chans, small_input=small_input,
                        **kw)
    except UserError as err:  # a backbone argument: it came in through kwargs
        raise err.under("kwargs") if err.key in kw else err
    except TypeError as err:  # an argument the backbone does not take
        if not kw:
            raise  # not the user's: no extra arguments were given
        raise UserError("kwargs", kw, f"do not fit {name}: {err}") from err
    model.model_spec = dict(name=name, num_classes=num_classes, in_chans=in_chans,
                            small_input=small_input, **kw)
    return model
