"""Settings a resumed run must keep because the checkpoint holds them: the optimizer's state
dict brings back its own lr, momentum, betas and weight decay, and the data order follows
trainer.seed. A resume that changed one would record the new value in config.yaml and
results.json while training with the old one, so it is refused in one line."""
from __future__ import annotations

from omegaconf import OmegaConf

from .checkpoint import Checkpoint

KEPT = ("optim.name", "optim.lr", "optim.lr_batch", "optim.weight_decay", "optim.wd_norm",
        "optim.no_wd_1d", "trainer.seed")
BY_OPTIMIZER = {"sgd": ("optim.momentum", "optim.nesterov"), "adamw": ("optim.betas",)}


def check_kept(ckpt: Checkpoint, cfg) -> None:
    """Refuse a resume whose optimizer settings or seed differ from the checkpoint's config
    (a key the checkpoint's config lacks, from an older version, is not checked)."""
    theirs = ckpt.state["config"]
    mine = OmegaConf.to_container(cfg, resolve=True)
    diff = []
    for key in KEPT + BY_OPTIMIZER.get(mine["optim"]["name"], ()):
        group, name = key.split(".")
        if name in theirs.get(group, {}) and theirs[group][name] != mine[group][name]:
            diff.append(f"{key} {theirs[group][name]} (now {mine[group][name]})")
        if diff and key == "optim.name":  # the others belong to another optimizer
            break
    if diff:
        raise ckpt.error("was trained with " + ", ".join(diff) + "; resume with the same "
                         "values (the checkpoint's optimizer state and data order hold them), "
                         "or start a new run")
