"""DataSpec: what the loaders read of the `data` config, typed and built once."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..config import DataConfig


@dataclass(frozen=True)
class DataSpec:
    """The data.* keys the loaders read. Built by `from_config` from the composed config (an
    OmegaConf DictConfig), the schema's DataConfig or another DataSpec; a key the source lacks
    takes the schema's default, so the defaults live in config.DataConfig alone."""

    name: str
    root: str | None
    batch_size: int
    eval_batch_size: int
    num_workers: int  # ImageNet only
    download: bool
    augment: bool
    val_split: int
    auto_augment: str | None  # ImageNet only
    re_prob: float  # ImageNet only
    # synthetic only
    num_train: int
    num_val: int
    in_chans: int
    image_size: int
    num_classes: int

    @classmethod
    def from_config(cls, cfg: Any = None) -> DataSpec:
        """The spec of `cfg` (None: the schema's defaults)."""
        if isinstance(cfg, cls):
            return cfg
        schema = DataConfig()
        value = {f.name: getattr(cfg, f.name, getattr(schema, f.name)) for f in fields(cls)}
        root, policy = value["root"], value["auto_augment"]
        return cls(
            name=str(value["name"]), root=None if root is None else str(root),
            batch_size=int(value["batch_size"]), eval_batch_size=int(value["eval_batch_size"]),
            num_workers=int(value["num_workers"]), download=bool(value["download"]),
            augment=bool(value["augment"]), val_split=int(value["val_split"]),
            auto_augment=None if policy is None else str(policy),
            re_prob=float(value["re_prob"]), num_train=int(value["num_train"]),
            num_val=int(value["num_val"]), in_chans=int(value["in_chans"]),
            image_size=int(value["image_size"]), num_classes=int(value["num_classes"]),
        )
