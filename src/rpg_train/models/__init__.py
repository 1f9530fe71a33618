"""Backbone registry: torchvision ResNets, the CIFAR ResNets and any timm model.

`create_model` records how it was called in `model.model_spec`, so a compact RPG file can
rebuild the same backbone from its recipe. Bad arguments raise `UserError` keyed by the
argument (`name`, `kwargs`, `kwargs.shortcut`); the engine files them under `model.`.
"""
from __future__ import annotations

import warnings
from functools import partial

import torch.nn as nn

from ..errors import UserError
from .cifar_resnet import CifarResNet
from .input_size import smallest_input  # noqa: F401  (validate's check)
from .tv_resnet import scaled, torchvision_resnet

TIMM = "timm:"  # prefix: timm:<any timm model name>


def _cifar_resnet(depth, num_classes, in_chans, small_input, width=1.0, **kw):
    return CifarResNet(depth, num_classes=num_classes, in_chans=in_chans,
                       base_width=scaled(16, width), **kw)


def _timm_model(arch, num_classes, in_chans, small_input, width=1.0, **kw):
    import timm

    if width != 1:
        raise UserError("width", width, f"is not supported for timm models (timm:{arch}); "
                        "only the torchvision and CIFAR ResNets take a width multiplier")
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
    "resnet18": partial(torchvision_resnet, "resnet18"),
    "resnet34": partial(torchvision_resnet, "resnet34"),
    "resnet50": partial(torchvision_resnet, "resnet50"),
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
        raise UserError.choice("name", name, available(),
                               says="is not a known model; choose one of")
    return MODELS[name]


def create_model(name: str, num_classes: int, in_chans: int = 3, small_input: bool = False,
                 width: float = 1.0, **kw) -> nn.Module:
    """Build a plain (dense) backbone by name; see `available()`. `width` multiplies every
    channel count (the width baseline of the parameter studies)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise UserError("width", width, "must be a positive channel multiplier (1 = the "
                        "standard network)")
    builder = _builder(name)
    try:
        model = builder(num_classes=num_classes, in_chans=in_chans, small_input=small_input,
                        width=width, **kw)
    except UserError as err:  # a backbone argument: it came in through kwargs
        raise (err.under("kwargs") if err.key in kw else err) from None
    except TypeError as err:  # an argument the backbone does not take
        if not kw:
            raise  # not the user's: no extra arguments were given
        raise UserError("kwargs", kw, f"do not fit {name}: {err}") from err
    # width only when set, so the specs (and checkpoints) of standard models are unchanged
    model.model_spec = dict(name=name, num_classes=num_classes, in_chans=in_chans,
                            small_input=small_input, **({} if width == 1 else {"width": width}),
                            **kw)
    return model
