"""Train/val loaders with epoch-deterministic order and augmentation.

Everything random in an epoch comes from local generators seeded by (seed, epoch, rank), so a
run resumed at epoch k sees exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import copy
import random
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import UserError, check_choice
from ..seeding import seed_everything
from . import datasets as ds
from .spec import DataSpec
from .transforms import AUGMENT, MEAN_STD, normalize, random_crop_flip

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")  # data.name
_INFO = {
    "fashion_mnist": (1, 10, 28, True),
    "mnist": (1, 10, 28, True),
    "cifar10": (3, 10, 32, True),
    "cifar100": (3, 100, 32, True),
    "imagenet": (3, 1000, 224, False),
}
# independent random streams derived from the same (seed, epoch, rank)
_PERM, _AUG, _SAMPLE, _WORKERS = 0, 1, 2, 3
_HOLDOUT_SEED = 20_200_611  # fixed: the held-out part never depends on the run's seed
Split = tuple[torch.Tensor, torch.Tensor]  # (images, labels) of a split held in memory


def _check_name(name) -> str:
    check_choice("data.name", name, DATASETS, says="is not a dataset; choose one of")
    return name


def dataset_info(name: str, cfg: Any = None) -> dict:
    """Channels, classes, image size and whether the CIFAR stem fits, of dataset `name`;
    `cfg` (a data config, DataSpec.from_config) gives synthetic's shape and ImageNet's root."""
    _check_name(name)
    spec = DataSpec.from_config(cfg)
    if name == "synthetic":
        return {"in_chans": spec.in_chans, "num_classes": spec.num_classes,
                "image_size": spec.image_size, "small_input": True}
    c, k, s, small = _INFO[name]
    if name == "imagenet":
        classes = ds.imagenet_classes(spec.root)
        k = len(classes) if classes else k
    return {"in_chans": c, "num_classes": k, "image_size": s, "small_input": small}


def mix_seed(*parts: int) -> int:
    """Hash integers into a 63-bit seed (SeedSequence decorrelates nearby seeds/epochs)."""
    seq = np.random.SeedSequence([int(p) % 2**63 for p in parts])
    state = seq.generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_indices(n: int, seed: int, epoch: int, rank: int, world_size: int,
                  train: bool) -> torch.Tensor:
    """This rank's sample indices for the epoch (CPU int64).
    Train: a seeded permutation shared by all ranks, truncated to a multiple of world_size and
    strided by rank (as DistributedSampler(drop_last=True)). Val: in order, rank::world_size."""
    if not train:
        return torch.arange(rank, n, world_size)
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, _PERM))
    perm = torch.randperm(n, generator=g)
    return perm[rank: (n // world_size) * world_size: world_size]


class _EpochLoaderBase:
    def __init__(self, n, batch_size, train, seed, rank, world_size):
        self.n, self.batch_size, self.train = n, int(batch_size), train
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch, self.start_batch = 0, 0
        self._shard = len(range(rank, n, world_size)) if not train else n // world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; `start_batch` > 0 resumes it mid-way with the same batches."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def indices(self) -> torch.Tensor:
        return epoch_indices(self.n, self.seed, self.epoch, self.rank, self.world_size, self.train)

    def __len__(self) -> int:
        if self.train:  # drop the last partial batch
            return self._shard // self.batch_size
        return -(-self._shard // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch (train excludes the dropped partial batch)."""
        return len(self) * self.batch_size if self.train else self._shard


class DeviceLoader(_EpochLoaderBase):
    """Whole split resident on `device` (uint8, or float for synthetic); batches are gathered,
    augmented and normalised there. No DataLoader, no workers."""

    def __init__(self, images, labels, /, *, batch_size, train, device, seed, rank=0, world_size=1,
                 mean=None, std=None, augment=False, pad=0, flip=False):
        super().__init__(len(images), batch_size, train, seed, rank, world_size)
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.mean = self.std = None
        if mean is not None:
            self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
            self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self.augment, self.pad, self.flip = bool(augment and train), int(pad), bool(flip)

    def __iter__(self):
        idx = self.indices().to(self.device)
        gen = None
        if self.augment:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(mix_seed(self.seed, self.epoch, self.rank, _AUG))
        bs = self.batch_size
        for i in range(len(self)):
            sel = idx[i * bs: (i + 1) * bs]
            x, y = self.images[sel], self.labels[sel]
            if gen is not None:  # also for skipped batches: keeps the random stream aligned
                x = random_crop_flip(x, self.pad, self.flip, gen)
            if i < self.start_batch:
                continue
            if self.mean is not None and self.std is not None:  # both set, or neither
                x = normalize(x, self.mean, self.std)
            yield x, y


class EpochSampler(Sampler):
    """Yields (index, augmentation seed) pairs for this rank and epoch."""

    def __init__(self, n, seed, rank, world_size, train):
        self.n, self.seed, self.rank, self.world_size, self.train = n, seed, rank, world_size, train
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self):
        idx = epoch_indices(self.n, self.seed, self.epoch, self.rank, self.world_size, self.train)
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, _SAMPLE))
        seeds = torch.randint(2**62, (len(idx),), generator=g)
        return iter(list(zip(idx.tolist(), seeds.tolist()))[self.start:])

    def __len__(self) -> int:
        if self.train:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))


class SeededImageDataset(Dataset):
    """Applies `transform` under a per-sample seed chosen by the sampler, so the augmentation
    of a sample depends only on (seed, epoch, rank, position), whatever the worker count
    (decoding/resampling itself is deterministic for a given PIL build). torchvision transforms
    draw from the global torch RNG, timm's policies from Python's and NumPy's: in the main
    process they are saved and restored, leaving the caller's untouched; a DataLoader
    worker's own are simply reseeded."""

    def __init__(self, folder, transform, seeded: bool):
        self.folder, self.transform, self.seeded = folder, transform, seeded

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        index, sample_seed = item
        path, target = self.folder.samples[index]
        img = self.folder.loader(path)
        if not self.seeded:
            return self.transform(img), target
        if get_worker_info() is not None:
            seed_everything(sample_seed, cpu_only=True)
            return self.transform(img), target
        saved = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(sample_seed, cpu_only=True)
                return self.transform(img), target
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])


class FolderLoader(_EpochLoaderBase):
    """torch DataLoader over image folders. Workers decode and crop to uint8 (a quarter of
    float32's bytes through shared memory, pinned memory and the bus); batches are moved to
    `device` (non_blocking) and normalised there. Workers live across epochs
    (persistent_workers) and keep `prefetch` batches each in flight."""

    def __init__(self, dataset, *, batch_size, train, device, seed, rank=0, world_size=1,
                 num_workers=0, mean=None, std=None, prefetch=4, re_prob=0.0):
        super().__init__(len(dataset), batch_size, train, seed, rank, world_size)
        self.device = torch.device(device)
        self.sampler = EpochSampler(len(dataset), self.seed, self.rank, self.world_size, train)
        self.shift = self.scale = None  # uint8 -> (x / 255 - mean) / std, in place
        if mean is not None:
            m = torch.tensor(mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
            s = torch.tensor(std, dtype=torch.float32, device=self.device).view(-1, 1, 1)
            self.shift, self.scale = m * 255, 1 / (s * 255)
        self.erase = None  # random erasing (timm), on the normalised batch on the device
        if train and re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(re_prob, mode="pixel", device=str(self.device))
        # seeds the workers' base seed; the augmentation itself uses per-sample seeds, so
        # workers that outlive an epoch change nothing
        self._gen = torch.Generator()
        workers = int(num_workers)
        self._loader = DataLoader(
            dataset, batch_size=self.batch_size, sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", drop_last=train, generator=self._gen,
            # the training workers live across epochs; evaluation's start once per pass
            persistent_workers=train and workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch, start_batch)
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)

    def __iter__(self):
        self._gen.manual_seed(mix_seed(self.seed, self.epoch, self.rank, _WORKERS))
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=True)
            if self.shift is not None:  # one float copy, then in place: a third of the passes
                x = x.float().sub_(self.shift).mul_(self.scale)
            if self.erase is not None:
                x = self.erase(x)
            yield x, y.to(self.device, non_blocking=True)


def auto_augment(policy: str | None, mean) -> list:
    """data.auto_augment as PIL transforms: timm's policies (its config strings), or
    torchvision's TrivialAugmentWide for `trivial`; [] for none."""
    from torchvision import transforms as T

    if not policy:
        return []
    if policy == "trivial":
        return [T.TrivialAugmentWide()]
    from timm.data import create_transform

    try:  # only the policy: timm's crop, flip and tensor conversion are left out
        _, secondary, _ = create_transform(224, is_training=True, auto_augment=policy,
                                           mean=tuple(mean), color_jitter=0.0, separate=True)
    except (AssertionError, KeyError, ValueError, IndexError) as err:
        raise UserError("data.auto_augment", policy, "is not a timm policy (e.g. "
                        "rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, v0) nor trivial") from err
    return list(secondary.transforms)


def _imagenet_loaders(spec: DataSpec, device, seed, rank, world_size, with_train=True):
    from torchvision import transforms as T

    root = ds.default_root("imagenet", spec.root)
    classes = ds.imagenet_classes(root)
    if not classes:
        raise UserError(
            "data.root", root, f"holds no imagenet: expected class folders under {root}/train "
            f"(and {root}/val), torchvision ImageFolder layout; ImageNet cannot be downloaded "
            "automatically."
        )
    mean, std = MEAN_STD["imagenet"]
    to_uint8 = T.PILToTensor()  # normalised on the device (FolderLoader)
    eval_tf = T.Compose([T.Resize(256), T.CenterCrop(224), to_uint8])
    aug = spec.augment
    policy = auto_augment(spec.auto_augment, mean)
    train_tf = (T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *policy, to_uint8])
                if aug else eval_tf)
    common = dict(device=device, seed=seed, rank=rank, world_size=world_size,
                  num_workers=spec.num_workers, mean=mean, std=std)
    train = holdout = None
    if with_train:  # scanning 1.28 M training files is not free: skip it for evaluation
        folder = ds.imagenet_folder(root, "train", classes)
        if spec.val_split:  # held-out training images, evaluated like the val folder
            keep, held = holdout_indices(len(folder), spec.val_split, "imagenet")
            folder, held = _folder_subset(folder, keep), _folder_subset(folder, held)
            holdout = FolderLoader(SeededImageDataset(held, eval_tf, False),
                                   batch_size=spec.eval_batch_size, train=False, **common)
        train = FolderLoader(SeededImageDataset(folder, train_tf, aug),
                             batch_size=spec.batch_size, train=True, re_prob=spec.re_prob,
                             **common)
    val_folder = ds.imagenet_folder(root, "val", classes)
    if len(val_folder) == 0:
        raise UserError("data.root", root, f"has no images under {root}/val/<class>/ (the "
                        "torchvision ImageFolder layout, the same class folders as train)")
    val = FolderLoader(SeededImageDataset(val_folder, eval_tf, False),
                       batch_size=spec.eval_batch_size, train=False, **common)
    return train, val, holdout


class Loaders(NamedTuple):
    train: Any  # None when built without the training split
    val: Any  # the test split (ImageNet: its val folder), what the headline is measured on
    holdout: Any = None  # data.val_split > 0: held-out training samples, to pick an epoch


def holdout_indices(total: int, n: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices of a training split of `total` samples: `n` held out, chosen
    by a fixed seed, the same for every run of the dataset, so runs with different seeds
    select on the same set."""
    if not 0 < n < total:
        raise UserError("data.val_split", n, f"must be in [0, {total - 1}]: {name} "
                        f"has {total} training samples")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(_HOLDOUT_SEED))
    return perm[n:].sort().values, perm[:n].sort().values


def holdout_split(images: torch.Tensor, labels: torch.Tensor, n: int,
                  name: str) -> tuple[Split, Split]:
    """(train, held-out) parts of an in-memory training split (holdout_indices)."""
    keep, held = holdout_indices(len(images), n, name)
    return (images[keep], labels[keep]), (images[held], labels[held])


def _folder_subset(folder, indices: torch.Tensor):
    """The same ImageFolder over some of its samples."""
    part = copy.copy(folder)
    part.samples = [folder.samples[i] for i in indices.tolist()]
    part.imgs, part.targets = part.samples, [t for _, t in part.samples]
    return part


def build_loaders(cfg: Any, device, seed: int, rank: int = 0, world_size: int = 1,
                  with_train: bool = True) -> tuple[Any, Any]:
    """(train_loader, val_loader) for cfg.name; see `build_data`."""
    data = build_data(cfg, device, seed, rank, world_size, with_train)
    return data.train, data.val


def rank0_first(fn, rank: int, world_size: int):
    """fn(True) on rank 0 (which may download), then fn(False) on the others once rank 0 is
    done, so processes never download into the same folder at once. Rank 0 reaches the
    barrier even when it fails; the others then fail on the missing files themselves."""
    if world_size == 1:
        return fn(True)
    import torch.distributed as dist

    barrier = dist.barrier if dist.is_available() and dist.is_initialized() else (lambda: None)
    if rank == 0:
        try:
            return fn(True)
        finally:
            barrier()
    barrier()
    return fn(False)


def build_data(cfg: Any, device, seed: int, rank: int = 0, world_size: int = 1,
               with_train: bool = True) -> Loaders:
    """The loaders for the data config `cfg` (DataSpec.from_config); see the package docstring
    for the contract. with_train=False leaves out the training split (and the held-out part),
    for evaluation."""
    spec = DataSpec.from_config(cfg)
    name = _check_name(spec.name)
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"bad rank={rank} for world_size={world_size}")
    split = spec.val_split
    holdout = None
    if name == "imagenet":
        train, val, holdout = _imagenet_loaders(spec, device, seed, rank, world_size, with_train)
    else:
        root, download = spec.root, spec.download
        kw = dict(device=device, seed=seed, rank=rank, world_size=world_size)
        if name == "synthetic":
            shape = (spec.in_chans, spec.image_size, spec.num_classes)
            data = dict(train=ds.make_synthetic(spec.num_train, *shape, seed=ds.SYNTHETIC_SEED),
                        test=ds.make_synthetic(spec.num_val, *shape, seed=ds.SYNTHETIC_SEED + 1))
            aug: dict[str, Any] = {}
        else:
            load = ds.load_cifar if name.startswith("cifar") else ds.load_mnist_like
            data = rank0_first(lambda first: load(name, root, download and first), rank,
                               world_size if download else 1)
            mean, std = MEAN_STD[name]
            pad, flip = AUGMENT[name]
            kw.update(mean=mean, std=std)
            aug = dict(augment=spec.augment, pad=pad, flip=flip)
        train_data = data["train"]
        if split and with_train:
            train_data, held = holdout_split(*train_data, split, name)
            holdout = DeviceLoader(*held, batch_size=spec.eval_batch_size, train=False, **kw)
        train = DeviceLoader(*train_data, batch_size=spec.batch_size, train=True, **aug, **kw)
        val = DeviceLoader(*data["test"], batch_size=spec.eval_batch_size, train=False, **kw)
    if not with_train:
        return Loaders(None, val)
    if len(train) == 0:
        raise UserError(
            "data.batch_size", spec.batch_size, f"exceeds the {train.n // world_size} training "
            f"samples per process of {name}; the train loader would be empty"
        )
    return Loaders(train, val, holdout)
