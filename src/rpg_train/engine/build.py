"""Building the RPG model from the config (engine side of the rpg package)."""
from __future__ import annotations

from ..config import ConfigError
from ..models import create_model
from ..rpg import apply_rpg
from ..rpg.compact import tables_fingerprint


def model_spec(cfg, info: dict) -> dict:
    """create_model's arguments: the dataset fills what the config leaves null."""
    m = cfg.model
    return dict(name=m.name,
                num_classes=info["num_classes"] if m.num_classes is None else m.num_classes,
                in_chans=info["in_chans"] if m.in_chans is None else m.in_chans,
                small_input=info["small_input"] if m.small_input is None else m.small_input,
                **dict(m.kwargs))


def build_model(cfg, info: dict):
    spec = model_spec(cfg, info)
    try:
        model = create_model(**spec)
    except TypeError as err:  # an unknown model.kwargs key
        raise ConfigError(f"model.kwargs={dict(cfg.model.kwargs)} does not fit "
                          f"{spec['name']}: {err}") from None
    r = cfg.rpg
    try:
        apply_rpg(model, r.scope, r.params, seed=r.seed, sampling=r.sampling, sign=r.sign,
                  share_stem=r.share_stem, share_head=r.share_head)
    except ValueError as err:
        # apply_rpg names its argument first ("params=0 is out of range ..."): add the group
        msg = str(err)
        raise ConfigError(msg if msg.startswith("apply_rpg") else f"rpg.{msg}") from None
    return model, spec


def identity(model, spec: dict) -> dict:
    """What a checkpoint must match to be loaded into this model: backbone, recipe, tables."""
    return dict(model=spec, rpg=getattr(model, "rpg_spec", None),
                fingerprint=tables_fingerprint(model))
