"""Writers of tiny datasets in the exact on-disk formats the readers expect."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx_file(path, arr: np.ndarray, magic: int, gz: bool) -> str:
    path = str(path) + (".gz" if gz else "")
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(_idx_bytes(arr, magic))
    return path


def write_idx(root, n_train: int, n_test: int, gz: bool = True, seed: int = 0) -> dict:
    """Four MNIST-style idx files in root; returns {'train': (x, y), 'test': (x, y)} as numpy."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, (n,), dtype=np.uint8)
        write_idx_file(os.path.join(root, f"{prefix}-images-idx3-ubyte"), x, 2051, gz)
        write_idx_file(os.path.join(root, f"{prefix}-labels-idx1-ubyte"), y, 2049, gz)
        out[split] = (x, y)
    return out


def _dump(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root, n_per_batch: int, seed: int = 0) -> dict:
    """cifar-10-batches-py with 5 train batches + test_batch of n_per_batch images each."""
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, (n_per_batch,)).tolist()
        _dump(os.path.join(d, name), {b"batch_label": name.encode(), b"labels": y, b"data": x,
                                      b"filenames": [b"img%d.png" % i for i in range(n_per_batch)]})
        xs.append(x)
        ys.append(y)
    _dump(os.path.join(d, "batches.meta"), {b"num_cases_per_batch": n_per_batch,
                                            b"label_names": [b"c%d" % i for i in range(10)],
                                            b"num_vis": 3072})
    train = (np.concatenate(xs[:5]).reshape(-1, 3, 32, 32), np.concatenate(ys[:5]))
    return {"train": train, "test": (xs[5].reshape(-1, 3, 32, 32), np.asarray(ys[5]))}


def write_cifar100(root, n: int, seed: int = 0) -> dict:
    """cifar-100-python with train/test of n images each and fine/coarse labels."""
    d = os.path.join(root, "cifar-100-python")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test"):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, (n,)).tolist()
        _dump(os.path.join(d, split), {b"filenames": [b"f%d.png" % i for i in range(n)],
                                       b"batch_label": split.encode(), b"fine_labels": fine,
                                       b"coarse_labels": [f // 5 for f in fine], b"data": x})
        out[split] = (x.reshape(-1, 3, 32, 32), np.asarray(fine))
    _dump(os.path.join(d, "meta"), {b"fine_label_names": [b"f%d" % i for i in range(100)],
                                    b"coarse_label_names": [b"c%d" % i for i in range(20)]})
    return out


def write_imagenet(root, classes, n_per_class: int, size=(48, 40)) -> None:
    """root/{train,val}/<class>/*.JPEG; each class a solid, distinct colour."""
    from PIL import Image

    for split in ("train", "val"):
        for ci, c in enumerate(classes):
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            colour = (40 + 80 * ci % 256, 200 - 60 * ci % 200, 100)
            for i in range(n_per_class):
                Image.new("RGB", size, colour).save(os.path.join(d, f"{c}_{i}.JPEG"), quality=95)
