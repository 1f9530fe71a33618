"""Raw dataset readers: idx (MNIST family), CIFAR pickles, ImageNet folders.

Readers return whole splits as uint8 NCHW tensors plus int64 labels; they never
normalise or augment (that happens on the device, see loaders.py).
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_TV_FOLDER = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def default_root(name: str, root) -> str:
    return str(root) if root not in (None, "") else os.path.join(".", "data", name)


# ---------------------------------------------------------------- idx (MNISTs)
def _bad_file(path: str, problem: str) -> UserError:
    """A data file that cannot be used is the user's to fix: name the folder under data.root."""
    return UserError("data.root", os.path.dirname(path), f"holds a bad file {problem}")


def read_idx(path, expect_magic: int | None = None) -> np.ndarray:
    """Parse an idx file of unsigned bytes (optionally .gz) into a numpy array."""
    path = str(path)
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            buf = f.read()
    except (OSError, EOFError) as e:  # corrupt gzip stream
        raise _bad_file(path, f"{os.path.basename(path)} (cannot read it: {e})") from e
    if len(buf) < 4:
        raise _bad_file(path, f"{os.path.basename(path)}: idx file truncated ({len(buf)} bytes)")
    magic = int.from_bytes(buf[:4], "big")
    ndim = buf[3]
    # byte 2 = 0x08 is the unsigned-byte type code; nothing else is used by (Fashion-)MNIST
    if buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08 or (expect_magic is not None
                                                        and magic != expect_magic):
        want = expect_magic if expect_magic is not None else "0x0000080N"
        raise _bad_file(path, f"{os.path.basename(path)}: idx magic number {magic} "
                              f"(expected {want})")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(buf) != header + int(np.prod(dims)):
        raise _bad_file(path, f"{os.path.basename(path)}: idx size {len(buf)} does not match "
                              f"header dims {dims}")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_file(directory: str, stem: str) -> str | None:
    # prefer the uncompressed file (faster), fall back to .gz
    for cand in (stem, stem + ".gz"):
        p = os.path.join(directory, cand)
        if os.path.isfile(p):
            return p
    return None


def idx_search_dirs(name: str, root: str) -> list[str]:
    dirs = [root, os.path.join(root, "raw"), os.path.join(root, _TV_FOLDER[name], "raw")]
    if name == "fashion_mnist":
        dirs.append(SYSTEM_FASHION_MNIST)
    return dirs


def _idx_dir_files(directory: str) -> dict | None:
    found = {}
    for split, stems in IDX_FILES.items():
        paths = [_find_idx_file(directory, s) for s in stems]
        if None in paths:
            return None
        found[split] = paths
    return found


def load_idx_dir(directory: str) -> dict:
    files = _idx_dir_files(directory)
    if files is None:
        raise UserError("data.root", directory, "holds no complete set of idx files")
    out = {}
    for split, (img_path, lbl_path) in files.items():
        x = read_idx(img_path, IDX_IMAGES_MAGIC)
        y = read_idx(lbl_path, IDX_LABELS_MAGIC)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise _bad_file(img_path, f"pair {os.path.basename(img_path)} / "
                            f"{os.path.basename(lbl_path)}: images {tuple(x.shape)}, labels "
                            f"{tuple(y.shape)} disagree")
        out[split] = (torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    return out


def load_mnist_like(name: str, root, download: bool) -> dict:
    """{'train': (x uint8 N1HW, y int64), 'test': ...} for fashion_mnist / mnist."""
    root = default_root(name, root)
    for d in idx_search_dirs(name, root):
        if _idx_dir_files(d) is not None:
            return load_idx_dir(d)
    err = ""
    if download:
        try:
            from torchvision import datasets as tvd

            cls = tvd.FashionMNIST if name == "fashion_mnist" else tvd.MNIST
            cls(root, train=True, download=True)
            cls(root, train=False, download=True)
            return load_idx_dir(os.path.join(root, _TV_FOLDER[name], "raw"))
        except Exception as e:  # no network, disk full, ...: report together with the hints below
            err = f" Download failed: {type(e).__name__}: {e}."
    looked = ", ".join(idx_search_dirs(name, root))
    hint = "set data.download=true"
    if name == "fashion_mnist":
        hint = (f"`apt-get install dataset-fashion-mnist` (installs {SYSTEM_FASHION_MNIST}) or "
                + hint)
    raise UserError(
        "data.root", root, f"holds no {name} idx files (looked in: {looked}).{err} "
        f"To get the data: {hint}, or put the four idx files "
        f"({', '.join(IDX_FILES['train'] + IDX_FILES['test'])}, optionally .gz) in data.root."
    )


# ---------------------------------------------------------------- CIFAR
# what the official CIFAR pickles need: numpy arrays and their dtypes, nothing that runs code
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"),
                  ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                  ("numpy", "dtype"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
                  ("__builtin__", "object"), ("builtins", "object")}


class _CifarUnpickler(pickle.Unpickler):
    """Loads CIFAR's python pickles without importing anything else, so a crafted file
    cannot run code."""

    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        try:
            d = _CifarUnpickler(f, encoding="bytes").load()
        except Exception as e:  # noqa: BLE001 - any bytes that are no pickle: the same one line
            raise _bad_file(path, f"{os.path.basename(path)} (not a CIFAR pickle: {e})") from None
    if not isinstance(d, dict):
        raise _bad_file(path, f"{os.path.basename(path)} (not a CIFAR pickle: {type(d).__name__})")
    # the official files are py2 pickles (bytes keys); accept str keys as well
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar_batch(path: str, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle as (uint8 N3HW images, int64 labels), checked: images and labels
    of one file pair up by position, so counts that differ would shift every label."""
    b = _unpickle(path)

    def bad(problem: str) -> UserError:
        return _bad_file(path, f"{os.path.basename(path)} ({problem})")
    if "data" not in b or label_key not in b:
        raise bad(f"a CIFAR file has keys 'data' and '{label_key}'; this one has "
                  f"{sorted(map(str, b))}")
    x, y = b["data"], b[label_key]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        what = (f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__)
        raise bad(f"'data' is {what}; CIFAR's is uint8 of shape (N, 3072)")
    try:
        y = np.asarray(y)
    except Exception:  # noqa: BLE001 - ragged nesting: reported below as not integers
        y = np.asarray(None)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise bad(f"'{label_key}' is not a list of integer labels")
    if len(y) != len(x):
        raise bad(f"{len(x)} images but {len(y)} labels")
    if len(y) and not (0 <= y.min() and y.max() < classes):
        raise bad(f"labels {y.min()}..{y.max()} are outside 0..{classes - 1}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _cifar_folder(name: str, root: str) -> str | None:
    folder, train, test, _ = _CIFAR[name]
    for d in (os.path.join(root, folder), root):
        if all(os.path.isfile(os.path.join(d, f)) for f in train + test):
            return d
    return None


def load_cifar(name: str, root, download: bool) -> dict:
    """{'train': (x uint8 N3HW, y int64), 'test': ...} for cifar10 / cifar100."""
    root = default_root(name, root)
    folder, train_files, test_files, label_key = _CIFAR[name]
    d = _cifar_folder(name, root)
    err = ""
    if d is None and download:
        try:
            from torchvision import datasets as tvd

            (tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100)(root, train=True, download=True)
            d = _cifar_folder(name, root)
        except Exception as e:
            err = f" Download failed: {type(e).__name__}: {e}."
    if d is None:
        raise UserError(
            "data.root", root, f"holds no {name}: expected the python-pickle folder "
            f"{os.path.join(root, folder)} ({', '.join(train_files + test_files)}).{err} "
            "Set data.download=true or extract the official CIFAR python archive into data.root."
        )
    out = {}
    for split, files in (("train", train_files), ("test", test_files)):
        xs, ys = [], []
        for f in files:
            x, y = read_cifar_batch(os.path.join(d, f), label_key, 10 if name == "cifar10" else 100)
            xs.append(x)
            ys.append(y)
        out[split] = (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))
    return out


# ---------------------------------------------------------------- ImageNet
def imagenet_classes(root) -> list[str] | None:
    train = Path(default_root("imagenet", root)) / "train"
    if not train.is_dir():
        return None
    return sorted(e.name for e in os.scandir(train) if e.is_dir())


def imagenet_folder(root, split: str, classes: list[str]):
    """ImageFolder over root/<split> with the class->index map fixed by the train classes."""
    from torchvision.datasets import ImageFolder

    class_to_idx = {c: i for i, c in enumerate(classes)}

    class _Folder(ImageFolder):
        def find_classes(self, directory):
            extra = {e.name for e in os.scandir(directory) if e.is_dir()} - set(classes)
            if extra:
                raise UserError("data.root", root, f"has class folders in {split} that train "
                                f"lacks: {sorted(extra)[:5]}")
            return list(classes), class_to_idx

    return _Folder(os.path.join(default_root("imagenet", root), split), allow_empty=True)


# ---------------------------------------------------------------- synthetic
SYNTHETIC_SEED = 1234  # fixed: every run sees the same synthetic train/val sets


def make_synthetic(n: int, in_chans: int, size: int, num_classes: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_chans, size, size, generator=g)
    y = torch.randint(num_classes, (n,), generator=g)
    return x, y
