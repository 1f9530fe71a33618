"""Datasets and deterministic, device-resident loaders.

build_loaders(cfg, device, seed, rank, world_size) -> (train, val): iterables of (images, labels)
on `device` with len(), .num_samples and .set_epoch(epoch); an epoch's order and augmentation
depend only on (seed, epoch, rank). build_data(...) -> Loaders(train, val, holdout) also
returns the held-out part of the training split when data.val_split > 0. `cfg` is the `data`
config (a DictConfig or config.DataConfig), read once into a typed DataSpec.
"""

from .loaders import DATASETS, Loaders, build_data, build_loaders, dataset_info
from .spec import DataSpec

__all__ = ["DATASETS", "DataSpec", "Loaders", "build_data", "build_loaders", "dataset_info"]
