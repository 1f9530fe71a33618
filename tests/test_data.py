import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as fx  # noqa: E402
from rpg_train.config import DataConfig  # noqa: E402
from rpg_train.data import (  # noqa: E402
    DATASETS,
    DataSpec,
    build_loaders,
    dataset_info,
    datasets as ds,  # noqa: E402
)
from rpg_train.data.transforms import MEAN_STD, crop_flip, random_crop_flip  # noqa: E402
from rpg_train.errors import UserError  # noqa: E402

SYSTEM_FMNIST = "/usr/share/datasets/fashion-mnist"


def make_cfg(name, root=None, **kw):
    base = dict(name=name, root=None if root is None else str(root), batch_size=4,
                eval_batch_size=5, num_workers=0, download=False, augment=False,
                num_train=10, num_val=7, in_chans=3, image_size=8, num_classes=5)
    base.update(kw)
    return DataConfig(**base)


def ref_normalize(x_uint8, name):
    mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in MEAN_STD[name])
    return (torch.as_tensor(x_uint8).float() / 255.0 - mean) / std


def collect(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------ idx reader
@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    ref = fx.write_idx(tmp_path, 12, 7, gz=gz)
    data = ds.load_idx_dir(str(tmp_path))
    for split in ("train", "test"):
        x, y = data[split]
        assert x.shape == (len(ref[split][0]), 1, 28, 28) and x.dtype == torch.uint8
        assert y.dtype == torch.int64
        np.testing.assert_array_equal(x[:, 0].numpy(), ref[split][0])
        np.testing.assert_array_equal(y.numpy(), ref[split][1])


def test_idx_bad_magic_names_file(tmp_path):
    fx.write_idx(tmp_path, 3, 2, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[3] = 4  # 2051 -> 2052
    bad.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"^data.root='{tmp_path}' holds a bad file "
                                        "train-images-idx3-ubyte: idx magic number 2052"):
        ds.load_idx_dir(str(tmp_path))
    with pytest.raises(UserError, match="magic"):
        ds.read_idx(bad, 2051)


@pytest.mark.skipif(not os.path.isdir(SYSTEM_FMNIST), reason="dataset-fashion-mnist not installed")
def test_system_fashion_mnist(tmp_path):
    train, val = build_loaders(make_cfg("fashion_mnist", tmp_path / "none", batch_size=1000,
                                        eval_batch_size=2500), "cpu", seed=0)
    assert train.images.shape == (60000, 1, 28, 28) and val.images.shape == (10000, 1, 28, 28)
    assert train.num_samples == 60000 and val.num_samples == 10000 and len(val) == 4
    for ld in (train, val):
        assert ld.labels.min() == 0 and ld.labels.max() == 9
        assert torch.bincount(ld.labels).tolist() == [len(ld.labels) // 10] * 10  # balanced


@pytest.mark.parametrize("name,sub", [("fashion_mnist", "FashionMNIST/raw"), ("mnist", "raw"),
                                      ("mnist", "")])
def test_mnist_layouts_exact_pixels(tmp_path, name, sub):
    ref = fx.write_idx(tmp_path / sub, 10, 7)
    train, val = build_loaders(make_cfg(name, tmp_path, augment=False), "cpu", seed=3)
    x, y = collect(val)
    assert torch.equal(x, ref_normalize(ref["test"][0][:, None], name))
    assert torch.equal(y, torch.as_tensor(ref["test"][1], dtype=torch.int64))
    x, y = collect(train)
    idx = train.indices()[: train.num_samples]
    assert torch.equal(x, ref_normalize(ref["train"][0][idx.numpy(), None], name))
    assert torch.equal(y, torch.as_tensor(ref["train"][1], dtype=torch.int64)[idx])


# ------------------------------------------------------------ CIFAR
def test_cifar10_exact(tmp_path):
    ref = fx.write_cifar10(tmp_path, 3)
    train, val = build_loaders(make_cfg("cifar10", tmp_path), "cpu", seed=0)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, torch.from_numpy(ref["train"][0]))
    assert torch.equal(train.labels, torch.from_numpy(ref["train"][1]).long())
    x, y = collect(val)
    assert torch.equal(x, ref_normalize(ref["test"][0], "cifar10"))
    assert torch.equal(y, torch.from_numpy(ref["test"][1]).long())


def test_cifar100_exact(tmp_path):
    ref = fx.write_cifar100(tmp_path, 9)
    train, val = build_loaders(make_cfg("cifar100", tmp_path), "cpu", seed=0)
    assert torch.equal(train.images, torch.from_numpy(ref["train"][0]))
    assert torch.equal(train.labels, torch.from_numpy(ref["train"][1]).long())
    x, y = collect(val)
    assert torch.equal(x, ref_normalize(ref["test"][0], "cifar100"))
    assert torch.equal(y, torch.from_numpy(ref["test"][1]).long())
    assert dataset_info("cifar100")["num_classes"] == 100


# ------------------------------------------------------------ ImageNet
def test_imagenet_holds_out_training_images(tmp_path):
    from rpg_train.data import build_data

    fx.write_imagenet(tmp_path, ["n01", "n02", "n03"], 3)
    cfg = make_cfg("imagenet", tmp_path, batch_size=2, eval_batch_size=4, val_split=3)
    data = build_data(cfg, "cpu", seed=1)
    train = {p for p, _ in data.train._loader.dataset.folder.samples}
    held = {p for p, _ in data.holdout._loader.dataset.folder.samples}
    assert len(train) == 6 and len(held) == 3 and not train & held
    assert len(train | held) == 9  # every training image is in exactly one part
    again = build_data(make_cfg("imagenet", tmp_path, batch_size=2, val_split=3), "cpu", seed=7)
    # fixed, not per seed
    assert {p for p, _ in again.holdout._loader.dataset.folder.samples} == held
    x, y = collect(data.holdout)
    assert x.shape == (3, 3, 224, 224)
    assert sorted(y.tolist()) == sorted(t for _, t in data.holdout._loader.dataset.folder.samples)
    with pytest.raises(UserError, match=r"data.val_split=9 must be in \[0, 8\]: imagenet"):
        build_data(make_cfg("imagenet", tmp_path, val_split=9), "cpu", seed=1)


def test_an_imagenet_without_val_images_is_one_line(tmp_path):
    import shutil

    fx.write_imagenet(tmp_path, ["n01", "n02"], 2)
    for c in ("n01", "n02"):
        shutil.rmtree(tmp_path / "val" / c)
        (tmp_path / "val" / c).mkdir()
    with pytest.raises(UserError, match=r"^data.root='.*' has no images under .*/val/<class>/"):
        build_loaders(make_cfg("imagenet", tmp_path, batch_size=2), "cpu", seed=0)


def test_imagenet_folder(tmp_path):
    fx.write_imagenet(tmp_path, ["n01", "n02", "n03"], 3)
    assert dataset_info("imagenet", make_cfg("imagenet", tmp_path))["num_classes"] == 3
    assert dataset_info("imagenet", make_cfg("imagenet", tmp_path / "x"))["num_classes"] == 1000
    cfg = make_cfg("imagenet", tmp_path, batch_size=2, eval_batch_size=4, augment=True)
    train, val = build_loaders(cfg, "cpu", seed=1)
    assert len(train) == 4 and train.num_samples == 8 and len(val) == 3 and val.num_samples == 9
    x, y = collect(val)
    assert x.shape == (9, 3, 224, 224) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # solid colours: the centre pixel identifies the class
    centre = x[:, :, 112, 112]
    assert all(torch.allclose(centre[i], centre[3 * y[i]], atol=1e-5) for i in range(9))
    state = torch.get_rng_state()
    b1 = list(train)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert b1[0][0].shape == (2, 3, 224, 224)
    for xb, yb in b1:  # labels still match images after augmentation of solid colours
        assert torch.allclose(xb[:, :, 100, 100], centre[3 * yb], atol=1e-5)
    b2 = list(train)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(b1, b2))
    # workers ship uint8 (normalised on the device), the same values as torchvision's
    # ToTensor + Normalize
    from PIL import Image
    from torchvision import transforms as T
    img = val._loader.dataset.folder.loader(val._loader.dataset.folder.samples[0][0])
    assert val._loader.dataset[(0, 0)][0].dtype == torch.uint8
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize(*MEAN_STD["imagenet"])])(img)
    assert isinstance(img, Image.Image) and torch.allclose(x[0], ref, atol=1e-5)
    cfg.num_workers = 1  # per-sample seeds: identical batches with workers
    tw, _ = build_loaders(cfg, "cpu", seed=1)
    assert tw._loader.persistent_workers and tw._loader.prefetch_factor == 4
    b3 = list(tw)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(b1, b3))


# ------------------------------------------------------------ synthetic / info / errors
def test_synthetic():
    cfg = make_cfg("synthetic")
    train, val = build_loaders(cfg, "cpu", seed=0)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 2 and train.num_samples == 8 and len(val) == 2 and val.num_samples == 7
    assert int(y.max()) < 5
    other, _ = build_loaders(cfg, "cpu", seed=99)  # data set fixed, only the order depends on seed
    assert torch.equal(train.images, other.images) and not torch.equal(train.images, val.images[:4])
    assert dataset_info("synthetic", cfg) == {"in_chans": 3, "num_classes": 5, "image_size": 8,
                                              "small_input": True}


def test_the_loaders_read_one_typed_spec_with_the_schemas_defaults():
    import dataclasses

    from omegaconf import OmegaConf

    defaults = DataSpec.from_config(None)
    assert defaults == DataSpec.from_config(DataConfig())
    assert (defaults.name, defaults.eval_batch_size, defaults.num_workers) == (
        "fashion_mnist", 512, 8)
    spec = DataSpec.from_config(OmegaConf.create(dict(name="cifar10", root="/r", batch_size=7)))
    assert spec == dataclasses.replace(defaults, name="cifar10", root="/r", batch_size=7)
    assert DataSpec.from_config(spec) is spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.batch_size = 1  # type: ignore[misc]


def test_dataset_info_table():
    assert DATASETS == ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")
    assert dataset_info("fashion_mnist") == {"in_chans": 1, "num_classes": 10, "image_size": 28,
                                             "small_input": True}
    assert dataset_info("cifar10") == {"in_chans": 3, "num_classes": 10, "image_size": 32,
                                       "small_input": True}


def test_unknown_name():
    with pytest.raises(UserError, match="data.name='foo' is not a dataset; choose one of: "
                                        "fashion_mnist, mnist"):
        dataset_info("foo")
    with pytest.raises(UserError, match="synthetic"):
        build_loaders(make_cfg("foo"), "cpu", seed=0)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "imagenet"])
def test_missing_data_errors(tmp_path, name):
    root = str(tmp_path / "nowhere")
    with pytest.raises(UserError) as e:
        build_loaders(make_cfg(name, root), "cpu", seed=0)
    assert str(e.value).startswith(f"data.root='{root}' holds no ") and e.value.key == "data.root"


def test_missing_fashion_mnist_hints(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "SYSTEM_FASHION_MNIST", str(tmp_path / "no-system"))
    with pytest.raises(UserError) as e:
        build_loaders(make_cfg("fashion_mnist", tmp_path / "r"), "cpu", seed=0)
    msg = str(e.value)
    assert msg.startswith(f"data.root='{tmp_path / 'r'}' holds no fashion_mnist idx files")
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.download=true" in msg


def test_batch_larger_than_data():
    with pytest.raises(UserError, match="^data.batch_size=64 exceeds the 10 training samples"):
        build_loaders(make_cfg("synthetic", batch_size=64), "cpu", seed=0)


# ------------------------------------------------------------ determinism / sharding / augmentation
@pytest.fixture
def cifar_root(tmp_path):
    fx.write_cifar10(tmp_path, 20)
    return tmp_path


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
                                    for p, q in zip(a, b))


def test_epoch_determinism_and_resume(cifar_root):
    cfg = make_cfg("cifar10", cifar_root, batch_size=8, augment=True)
    a, _ = build_loaders(cfg, "cpu", seed=5)
    e0, e1, e2 = batches(a, 0), batches(a, 1), batches(a, 2)
    assert same(e0, batches(a, 0))  # re-iterating an epoch repeats it
    a.set_epoch(0)
    i0 = a.indices()
    a.set_epoch(1)
    assert not torch.equal(i0, a.indices()) and sorted(i0.tolist()) == sorted(a.indices().tolist())
    assert not same(e0, e1) and not same(e1, e2)
    fresh, _ = build_loaders(cfg, "cpu", seed=5)  # "resumed" run starting at epoch 2
    assert same(batches(fresh, 2), e2)
    other_seed, _ = build_loaders(cfg, "cpu", seed=6)
    assert not same(batches(other_seed, 2), e2)
    state = torch.get_rng_state()
    list(a)
    assert torch.equal(state, torch.get_rng_state())  # never touches the global RNG


def test_augmentation_shape_dtype_and_effect(cifar_root):
    cfg = make_cfg("cifar10", cifar_root, batch_size=16, augment=True)
    aug, val = build_loaders(cfg, "cpu", seed=0)
    cfg.augment = False
    plain, _ = build_loaders(cfg, "cpu", seed=0)
    xa, ya = collect(aug)
    xp, yp = collect(plain)
    assert xa.shape == xp.shape and xa.dtype == xp.dtype == torch.float32 and torch.equal(ya, yp)
    assert not torch.equal(xa, xp)
    xv, _ = collect(val)  # val never augmented
    assert torch.equal(xv, ref_normalize(val.images, "cifar10"))


def test_crop_flip_matches_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=g)
    pad = 2
    oy = torch.randint(0, 2 * pad + 1, (6,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (6,), generator=g)
    fl = torch.tensor([True, False, True, False, False, True])
    out = crop_flip(x, pad, oy, ox, fl)
    xp = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(6):
        ref = xp[i, :, oy[i]: oy[i] + 5, ox[i]: ox[i] + 7]
        assert torch.equal(out[i], ref.flip(-1) if fl[i] else ref)
    y = random_crop_flip(x, 2, True, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == torch.uint8


def test_world_size_2_shards(cifar_root):
    cfg = make_cfg("cifar10", cifar_root, batch_size=4, eval_batch_size=7)
    loaders = [build_loaders(cfg, "cpu", seed=2, rank=r, world_size=2) for r in range(2)]
    for ep in (0, 3):
        idx = []
        for tr, _ in loaders:
            tr.set_epoch(ep)
            idx.append(set(tr.indices().tolist()))
            assert len(tr) == 12 and tr.num_samples == 48 and len(tr.indices()) == 50
        assert len(idx[0]) == len(idx[1]) == 50 and not idx[0] & idx[1]
    (_, v0), (_, v1) = loaders
    assert v0.indices().tolist() == list(range(0, 20, 2))
    assert v1.indices().tolist() == list(range(1, 20, 2))
    assert len(v0) == 2 and v0.num_samples == 10
    x1, _ = collect(v1)
    assert torch.equal(x1, ref_normalize(v1.images[1::2], "cifar10"))


def test_len_and_num_samples_single_process(cifar_root):
    train, val = build_loaders(make_cfg("cifar10", cifar_root, batch_size=32, eval_batch_size=6),
                               "cpu", seed=0)
    assert len(train) == 3 and train.num_samples == 96 and len(list(train)) == 3
    assert len(val) == 4 and val.num_samples == 20
    assert [len(b[1]) for b in val] == [6, 6, 6, 2]


def test_start_batch_resumes_mid_epoch_with_the_same_batches(cifar_root, tmp_path):
    cfg = make_cfg("cifar10", cifar_root, batch_size=4, augment=True)
    train, _ = build_loaders(cfg, "cpu", seed=3)
    train.set_epoch(1)
    full = list(train)
    train.set_epoch(1, start_batch=2)
    assert same(list(train), full[2:])
    fx.write_imagenet(tmp_path, ["a", "b"], 3)
    inet, _ = build_loaders(make_cfg("imagenet", tmp_path, batch_size=2, augment=True), "cpu",
                            seed=1)
    inet.set_epoch(0)
    whole = list(inet)
    inet.set_epoch(0, start_batch=1)
    assert same(list(inet), whole[1:])


def test_val_only_loaders_skip_the_training_split(tmp_path, monkeypatch):
    fx.write_imagenet(tmp_path, ["a", "b"], 2)
    scanned = []
    real = ds.imagenet_folder
    monkeypatch.setattr(ds, "imagenet_folder", lambda root, split, classes: scanned.append(split)
                        or real(root, split, classes))
    train, val = build_loaders(make_cfg("imagenet", tmp_path, batch_size=2), "cpu", seed=0,
                               with_train=False)
    assert train is None and scanned == ["val"] and val.num_samples == 4


class _Payload:
    """Unpickling this would create a file: a crafted 'CIFAR batch'."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_cifar_pickle_is_refused_without_running_it(tmp_path):
    import pickle

    from rpg_train.errors import UserError

    fx.write_cifar10(tmp_path, 3)
    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "payload-ran"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({"data": _Payload(str(marker)), "labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match=r"data.root='.*cifar-10-batches-py' holds a bad file "
                                        r"data_batch_2 \(not a CIFAR pickle: refused to load "
                                        r"io.open\)"):
        build_loaders(make_cfg("cifar10", tmp_path), "cpu", seed=0)
    assert not marker.exists()


def _download_order(rank, world, log, port):
    import time

    import torch.distributed as dist

    from rpg_train.data.loaders import rank0_first

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)

    def load(first):
        if first:
            time.sleep(1.0)  # a slow download: the others must wait for it
        with open(log, "a") as f:
            f.write(f"{rank} {first}\n")

    rank0_first(load, rank, world)
    dist.destroy_process_group()


def test_only_rank_0_downloads_and_the_others_wait(tmp_path):
    import torch.multiprocessing as mp

    from conftest import free_port

    port = free_port()
    log = tmp_path / "log"
    mp.spawn(_download_order, args=(2, str(log), port), nprocs=2)
    assert log.read_text().splitlines() == ["0 True", "1 False"]


def _rewrite(path, **changes):
    """A CIFAR pickle as written by data_fixtures, with keys replaced (None: removed)."""
    import pickle

    with open(path, "rb") as f:
        d = pickle.load(f)
    for k, v in changes.items():
        d.pop(k.encode(), None)
        if v is not None:
            d[k.encode()] = v
    with open(path, "wb") as f:
        pickle.dump(d, f)


@pytest.mark.parametrize("changes, problem", [
    (dict(labels=[1, 2]), "3 images but 2 labels"),
    (dict(labels=None), r"a CIFAR file has keys 'data' and 'labels'; this one has "
                        r"\['batch_label', 'data', 'filenames'\]"),
    (dict(data=np.zeros((3, 3072))), r"'data' is float64 \(3, 3072\); CIFAR's is uint8 of "
                                     r"shape \(N, 3072\)"),
    (dict(data=np.zeros((3, 1024), np.uint8)), r"'data' is uint8 \(3, 1024\); CIFAR's is .*"),
    (dict(data=[[0] * 3072] * 3), r"'data' is list; CIFAR's is uint8 of shape \(N, 3072\)"),
    (dict(labels=[0.5, 1, 2]), "'labels' is not a list of integer labels"),
    (dict(labels=[0, 1, 10]), r"labels 0..10 are outside 0..9"),
])
def test_a_malformed_cifar_pickle_is_one_line_naming_the_file(tmp_path, changes, problem):
    fx.write_cifar10(tmp_path, 3)
    _rewrite(tmp_path / "cifar-10-batches-py" / "data_batch_3", **changes)
    with pytest.raises(UserError, match=r"^data.root='.*cifar-10-batches-py' holds a bad file "
                                        rf"data_batch_3 \({problem}\)$"):
        build_loaders(make_cfg("cifar10", tmp_path), "cpu", seed=0)


@pytest.mark.parametrize("content, problem", [
    (b"cnumpy\nndarray\n)R.", "ndarray() missing required argument 'shape' (pos 1)"),
    (b"\x80\x02K", "pickle data was truncated"),
    (b"N.", "NoneType"),
])
def test_a_file_that_is_no_cifar_pickle_is_one_line(tmp_path, content, problem):
    fx.write_cifar100(tmp_path, 4)
    (tmp_path / "cifar-100-python" / "test").write_bytes(content)
    with pytest.raises(UserError) as err:
        build_loaders(make_cfg("cifar100", tmp_path), "cpu", seed=0)
    assert str(err.value) == (f"data.root='{tmp_path / 'cifar-100-python'}' holds a bad file "
                              f"test (not a CIFAR pickle: {problem})")
