"""Checkpoint files damaged on disk or not written at all: an empty file, a flipped byte, a
full disk. Each is one line naming the key and the file; resume falls back to last.prev.pt."""
import errno
import io
import logging
import struct
import zipfile

import pytest
import torch

from rpg_train.engine import checkpoint
from rpg_train.errors import UserError


def _state(step: int) -> dict:
    return dict(model={"w": torch.arange(1000.0) + step}, optimizer={}, scheduler={},
                epoch=0, batch=step, step=step, identity={}, config={})


@pytest.fixture
def run_dir(tmp_path):
    """last.pt at step 2, last.prev.pt at step 1, as save(keep_previous=True) leaves them."""
    checkpoint.save(tmp_path / "last.pt", _state(1), keep_previous=True)
    checkpoint.save(tmp_path / "last.pt", _state(2), keep_previous=True)
    return tmp_path


def _falls_back(run_dir, caplog, reason: str) -> None:
    last = run_dir / "last.pt"
    with caplog.at_level(logging.WARNING, logger="rpg_train"):
        ckpt = checkpoint.load_latest(last)
    assert ckpt.path == run_dir / "last.prev.pt" and ckpt.state["step"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {last} is unreadable ({reason}); resuming from {ckpt.path}, the checkpoint "
        "before it"]


def test_an_empty_last_pt_falls_back_to_the_one_before(run_dir, caplog):
    (run_dir / "last.pt").write_bytes(b"")
    with pytest.raises(UserError) as err:
        checkpoint.load(run_dir / "last.pt", key="ckpt")
    assert str(err.value) == f"ckpt='{run_dir / 'last.pt'}' is not a checkpoint (the file is empty)"
    _falls_back(run_dir, caplog, "is not a checkpoint (the file is empty)")


def _flip_a_tensor_byte(path) -> str:
    """Flip one byte inside the first tensor's data; returns that entry's name."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        entry = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26:
                                                    entry.header_offset + 30])
    data[entry.header_offset + 30 + name_len + extra_len + 41] ^= 0x10
    path.write_bytes(bytes(data))
    return entry.filename


def test_a_flipped_byte_inside_a_tensor_is_refused_and_resume_falls_back(run_dir, caplog):
    last = run_dir / "last.pt"
    name = _flip_a_tensor_byte(last)
    # torch alone loads it, one weight changed
    loaded = torch.load(last, weights_only=True)["model"]["w"]
    assert not torch.equal(loaded, _state(2)["model"]["w"])
    reason = (f"is damaged: its entry {name} does not match the checksum stored with it (a bit "
              "flipped on disk or in a copy)")
    with pytest.raises(UserError) as err:
        checkpoint.load(last)
    assert str(err.value) == f"trainer.resume='{last}' {reason}"
    _falls_back(run_dir, caplog, reason)


def _full_disk_after(nbytes: int):
    """open() for the checkpoint module whose files take `nbytes`, then fail like a full disk."""
    real = open

    class Full(io.FileIO):
        written = 0

        def write(self, data):
            if Full.written + len(data) > nbytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            Full.written += len(data)
            return super().write(data)

    def fake(path, mode="r", *args, **kw):
        return Full(path, "wb") if "w" in mode else real(path, mode, *args, **kw)
    return fake


@pytest.mark.parametrize("nbytes", [0, 3000])
def test_a_full_disk_is_one_line_and_leaves_no_tmp(run_dir, monkeypatch, nbytes):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    monkeypatch.setattr(checkpoint, "open", _full_disk_after(nbytes), raising=False)
    with pytest.raises(UserError) as err:
        checkpoint.save(run_dir / "last.pt", _state(3), keep_previous=True)
    assert str(err.value) == (
        f"out_dir='{run_dir}' is full: saving last.pt failed (No space left on device); the "
        "checkpoints already there are unchanged. Free space (or fix the folder), then "
        "continue with trainer.resume=auto")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # no last.pt.tmp


def test_a_full_disk_during_training_stops_the_run_in_one_line(quick_cfg, tmp_path, monkeypatch):
    from rpg_train.engine import train

    monkeypatch.setattr(checkpoint, "open", _full_disk_after(2000), raising=False)
    with pytest.raises(UserError, match=r"^hydra.run.dir='.*run' is full: saving last.pt failed"):
        train(quick_cfg("trainer.max_steps=1"))
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_every_checkpoint_carries_the_format_version(run_dir):
    raw = torch.load(run_dir / "last.pt", weights_only=True)
    assert raw["format"] == checkpoint.FORMAT == 2


def test_a_checkpoint_of_a_newer_format_is_refused_in_one_line(tmp_path):
    torch.save({**_state(1), "format": checkpoint.FORMAT + 1}, tmp_path / "new.pt")
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path / "new.pt", key="ckpt")
    assert str(err.value) == (f"ckpt='{tmp_path / 'new.pt'}' was written by a newer rpg_train "
                              f"(checkpoint format {checkpoint.FORMAT + 1}; this version reads "
                              f"up to {checkpoint.FORMAT})")


def test_an_unversioned_checkpoint_of_the_oldest_shape_resumes_exactly(quick_cfg, tmp_path):
    """Format 1 (no version): no ema, schedule, skipped_steps, loss_start, selected,
    ring_prune or provenance, rank 0's sums only, an identity without its later fields."""
    from rpg_train.engine import train

    full = train(quick_cfg("trainer.epochs=2", out="full"))
    train(quick_cfg("trainer.epochs=2", "trainer.max_steps=6", out="cut"))  # mid epoch 2
    last = tmp_path / "cut" / "last.pt"
    state = torch.load(last, weights_only=True)
    for key in ("format", "ema", "schedule", "skipped_steps", "loss_start", "selected",
                "ring_prune", "provenance"):
        del state[key]
    state["sums"] = state["sums"][0]
    del state["identity"]["holdout"]
    torch.save(state, last)
    old = checkpoint.load(last)
    assert old.state["format"] == checkpoint.FORMAT and old.state["schedule"] == {}
    assert old.state["sums"] == [state["sums"]] and old.state["identity"]["holdout"] is None
    resumed = train(quick_cfg("trainer.epochs=2", "trainer.resume=auto", out="cut"))
    assert resumed["final_top1"] == full["final_top1"] and resumed["steps"] == full["steps"]
