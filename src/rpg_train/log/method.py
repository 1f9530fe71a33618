"""The method label a run goes by in W&B and results.json: one word per baseline, so runs
can be grouped and compared at equal trainable parameters without reading their configs."""
from __future__ import annotations

# rpg.sampling values that name a method of their own
SAMPLING_METHODS = {"iid": "hashing", "plain": "plain-recurrence"}


def method_label(cfg: dict) -> str:
    """pruning | dense | width | hashing | plain-recurrence | subspace | rpg-nosign | rpg,
    from the resolved config (plain containers). Keys a config may lack (older runs, or
    generator options added later) read as their defaults."""
    if (cfg.get("prune") or {}).get("init") is not None:
        return "pruning"
    rpg, model = cfg.get("rpg") or {}, cfg.get("model") or {}
    if rpg.get("scope", "network") == "none":
        return "dense" if float(model.get("width", 1.0)) == 1.0 else "width"
    sampling = rpg.get("sampling", "even")
    if sampling in SAMPLING_METHODS:
        return SAMPLING_METHODS[sampling]
    if rpg.get("offset", False):
        return "subspace"
    if rpg.get("sign", True) is False:
        return "rpg-nosign"
    return "rpg"


def count(n: int) -> str:
    """4458 -> 4.5k, 11160576 -> 11.2M: short enough for a run name."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def run_name(method: str, model: str, trainable: int, seed: int) -> str:
    """The W&B run name when none is given: what differs between a study's runs."""
    return f"{method}-{model}-{count(trainable)}-s{seed}"
