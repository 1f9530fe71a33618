"""Datasets and deterministic, device-resident loaders.

build_loaders(cfg, device, seed, rank, world_size) -> (train, val): iterables of (images, labels)
on `device` with len(), .num_samples and .set_epoch(epoch); an epoch's order and augmentation
depend only on (seed, epoch, rank).
"""

from .loaders import DATASETS, build_loaders, dataset_info

__all__ = ["DATASETS", "build_loaders", "dataset_info"]
