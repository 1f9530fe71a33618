"""The ImageNet training loader against a bare decode-and-crop DataLoader. One JSON line.

    python scripts/bench_data.py [--images 512] [--workers 2] [--batch 32] [--epochs 3]
                                 [--root DIR] [--device cpu|cuda]

Writes --images JPEGs of 500x375 (ImageNet's typical size; smooth random pictures, so they
compress like photographs) in 4 class folders under --root (a temporary folder by default;
an existing one is reused), then times whole epochs of
- ours: rpg_train's ImageNet train loader (data=imagenet: seeded per-sample augmentation,
  uint8 from the workers, normalised on --device, persistent workers, prefetch), and
- bare: torchvision's reference pipeline, ImageFolder + RandomResizedCrop(224) + flip +
  ToTensor + Normalize in a plain DataLoader with the same workers, batch and persistent
  workers, batches moved to --device (float32, ready for a model), and
- crop_only: the same without ToTensor + Normalize (uint8 out, not normalised: less work
  than a model's input needs, a bound),
each epoch in turn after one warm-up epoch each. ratio: median images/second of ours over
bare (>= 0.9 is the target); ratio_vs_crop_only: over crop_only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image


def write_images(root: Path, n: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "train" / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        noise = rng.integers(-12, 13, (375, 500, 3))
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
        img.save(d / f"{i:06d}.JPEG", quality=90)
    (root / "val").mkdir(exist_ok=True)
    for c in range(classes):  # one image per class, so the folder reads as ImageNet
        src = next((root / "train" / f"n{c:08d}").iterdir())
        (root / "val" / f"n{c:08d}").mkdir(exist_ok=True)
        (root / "val" / f"n{c:08d}" / src.name).write_bytes(src.read_bytes())


def ours(root, a):
    from rpg_train.data import build_loaders

    cfg = OmegaConf.create(dict(name="imagenet", root=str(root), batch_size=a.batch,
                                eval_batch_size=a.batch, num_workers=a.workers, augment=True,
                                val_split=0))
    train, _ = build_loaders(cfg, a.device, seed=0)
    return train


def bare(root, a, normalize: bool):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms as T

    from rpg_train.data.transforms import MEAN_STD

    tail = ([T.ToTensor(), T.Normalize(*MEAN_STD["imagenet"])] if normalize
            else [T.PILToTensor()])
    folder = datasets.ImageFolder(str(root / "train"), T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *tail]))
    loader = DataLoader(folder, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                        drop_last=True, pin_memory=a.device == "cuda",
                        persistent_workers=a.workers > 0)

    class Moved:  # what any training loop does with a batch
        def set_epoch(self, epoch):
            pass

        def __iter__(self):
            for x, y in loader:
                yield x.to(a.device, non_blocking=True), y.to(a.device, non_blocking=True)

    return Moved()


def epoch(loader, e: int, device) -> float:
    """Images per second of one whole epoch."""
    loader.set_epoch(e)
    n, start = 0, time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--root")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root or tmp)
        if not (root / "train").is_dir():
            write_images(root, a.images)
        loaders = {"ours": ours(root, a), "bare": bare(root, a, True),
                   "crop_only": bare(root, a, False)}
        for loader in loaders.values():  # warm-up: worker start, file cache
            epoch(loader, 0, a.device)
        rates = {name: [] for name in loaders}
        for e in range(1, a.epochs + 1):
            names = list(loaders) if e % 2 else list(loaders)[::-1]
            for name in names:
                rates[name].append(epoch(loaders[name], e, a.device))
    med = {name: statistics.median(r) for name, r in rates.items()}
    print(json.dumps(dict(images=a.images, workers=a.workers, batch=a.batch, device=a.device,
                          epochs=a.epochs, ours_img_s=round(med["ours"], 1),
                          bare_img_s=round(med["bare"], 1),
                          crop_only_img_s=round(med["crop_only"], 1),
                          ratio=round(med["ours"] / med["bare"], 3),
                          ratio_vs_crop_only=round(med["ours"] / med["crop_only"], 3))))


if __name__ == "__main__":
    main()
