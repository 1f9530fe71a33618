"""The method label a run goes by in W&B and results.json: one word per baseline, so runs
can be grouped and compared at equal trainable parameters without reading their configs."""
from __future__ import annotations

# rpg.sampling values that name a method of their own
SAMPLING_METHODS = {"iid": "hashing", "plain": "plain-recurrence"}


def method_label(cfg: dict) -> str:
    """pruning | dense | width | hashing | plain-recurrence | subspace | rpg, with what sets a
    run apart from its method's control: -nosign (rpg, hashing), -signed (plain recurrence,
    whose control has no signs), +subspace (an offset on hashing or plain recurrence), -kN
    (rpg.k). From the resolved config (plain containers); keys a config may lack (older
    runs) read as their defaults."""
    if (cfg.get("prune") or {}).get("init") is not None:
        return "pruning"
    rpg, model = cfg.get("rpg") or {}, cfg.get("model") or {}
    if rpg.get("scope", "network") == "none":
        return "dense" if float(model.get("width", 1.0)) == 1.0 else "width"
    sampling = rpg.get("sampling", "even")
    label = SAMPLING_METHODS.get(sampling, "rpg")
    if rpg.get("offset", False):
        label = "subspace" if label == "rpg" else label + "+subspace"
    signed = rpg.get("sign", True) is not False
    if sampling == "plain" and signed:
        label += "-signed"
    elif sampling != "plain" and not signed:
        label += "-nosign"
    k = int(rpg.get("k", 1))
    return label + (f"-k{k}" if k > 1 else "")


def count(n: int) -> str:
    """4458 -> 4.5k, 11160576 -> 11.2M: short enough for a run name."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def run_name(method: str, model: str, trainable: int, seed: int) -> str:
    """The W&B run name when none is given: what differs between a study's runs."""
    return f"{method}-{model}-{count(trainable)}-s{seed}"
