"""train(cfg): every model family and scope, outputs, resume, evaluate, bad input."""
import contextlib
import json
import os
import pickle
import random
import signal

import numpy as np
import pytest
import torch

from rpg_train.engine import Interrupted, checkpoint, optim, train
from rpg_train.engine.optim import lr_schedule, param_groups
from rpg_train.engine.signals import StopSignals
from rpg_train.engine.state import Act, Action, check
from rpg_train.errors import UserError
from rpg_train.evaluate import evaluate_checkpoint, main as evaluate_main
from rpg_train.models import create_model
from rpg_train.rpg import apply_rpg


@pytest.mark.parametrize("model", ["resnet18", "resnet20", "timm:resnet18"])
@pytest.mark.parametrize("scope", ["network", "stage", "block", "layer", "none"])
def test_two_steps_for_every_family_and_scope(quick_cfg, model, scope):
    cfg = quick_cfg(f"model.name={model}", f"rpg.scope={scope}", "trainer.limit_batches=2")
    results = train(cfg)
    assert results["steps"] == 2 and results["final_top1"] is not None
    rep = results["param_report"]
    assert rep["ring"] == (0 if scope == "none" else 2000)
    assert rep["trainable"] == rep["ring"] + rep["unshared"]


def test_outputs_of_a_run(quick_cfg, tmp_path):
    results = train(quick_cfg("trainer.epochs=2"))
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
            "images_per_sec", "elapsed"} <= set(rows[0])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["final_top1"] == rows[-1]["val_top1"]
    assert saved["best_top1"] == max(r["val_top1"] for r in rows)
    assert saved["param_report"]["ring"] == 2000 and saved["rpg"]["scope"] == "network"
    assert saved["wall_time"] > 0 and saved["peak_memory_mb"] > 0
    assert (out / "last.pt").exists() and (out / "best.pt").exists()
    assert (out / "config.yaml").exists() and not list(out.glob("*.tmp"))


def test_train_then_evaluate_gives_the_same_top1(quick_cfg, tmp_path, capsys):
    results = train(quick_cfg())
    ev = evaluate_checkpoint(tmp_path / "run" / "last.pt")
    assert ev["top1"] == results["final_top1"] and ev["top5"] == results["final_top5"]
    assert ev["param_report"] == results["param_report"]
    assert evaluate_main([f"ckpt={tmp_path / 'run' / 'last.pt'}"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == results["final_top1"]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("elapsed", "images_per_sec")} for r in rows]


def test_two_epochs_equal_one_then_resume(quick_cfg, tmp_path):
    full = train(quick_cfg("trainer.epochs=2", out="full"))
    steps_per_epoch = full["steps"] // 2
    train(quick_cfg("trainer.epochs=2", f"trainer.max_steps={steps_per_epoch}", out="split"))
    resumed = train(quick_cfg("trainer.epochs=2", "trainer.resume=auto", out="split"))
    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "split" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    key = "rpg_rings.network.weight"
    assert torch.equal(a["model"][key], b["model"][key])
    assert resumed["final_top1"] == full["final_top1"] and resumed["steps"] == full["steps"]
    rows = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("full", "split")]
    assert _strip(map(json.loads, rows[0])) == _strip(map(json.loads, rows[1]))


def test_the_tables_seed_is_the_run_seed_in_the_outputs_and_on_resume(quick_cfg, tmp_path):
    """rpg.seed defaults to ${trainer.seed}: written resolved (an int), the same on resume;
    a resume under another trainer.seed draws other tables and is refused."""
    train(quick_cfg("trainer.seed=4", "trainer.epochs=2", "trainer.max_steps=4"))
    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text())["rpg"]["seed"] == 4
    assert "  seed: 4\n" in (out / "config.yaml").read_text().split("\ndata:")[0]
    assert _state(out / "last.pt")["identity"]["rpg"]["seed"] == 4
    resumed = train(quick_cfg("trainer.seed=4", "trainer.epochs=2", "trainer.resume=auto"))
    assert resumed["steps"] == 8 and resumed["rpg"]["seed"] == 4
    # another run seed is refused first, as any resume that changes trainer.seed
    with pytest.raises(UserError, match=r"was trained with trainer.seed 4 \(now 5\)"):
        train(quick_cfg("trainer.seed=5", "trainer.epochs=2", f"trainer.resume={out / 'last.pt'}",
                        out="other"))
    # the same run seed with other tables is another ring
    with pytest.raises(UserError, match=r"is a checkpoint of a different rpg .*'seed': 4.* != "
                                        r"this run's .*'seed': 5"):
        train(quick_cfg("trainer.seed=4", "rpg.seed=5", "trainer.epochs=2",
                        f"trainer.resume={out / 'last.pt'}", out="other2"))


def test_resume_refuses_other_model_ring_and_non_checkpoints(quick_cfg, tmp_path):
    train(quick_cfg())
    last = tmp_path / "run" / "last.pt"
    with pytest.raises(UserError, match=r"trainer.resume='.*last.pt' is a checkpoint of a "
                                        r"different rpg"):
        train(quick_cfg(f"trainer.resume={last}", "rpg.params=3000", out="other"))
    with pytest.raises(UserError, match=r"different model"):
        train(quick_cfg(f"trainer.resume={last}", "model.name=resnet32", out="other2"))
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(UserError, match=r"trainer.resume='.*junk.pt' is not a checkpoint"):
        train(quick_cfg(f"trainer.resume={junk}", out="other3"))
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(UserError, match=r"is not an rpg_train checkpoint"):
        train(quick_cfg(f"trainer.resume={tmp_path / 'partial.pt'}", out="other4"))


@pytest.mark.parametrize("override,message", [
    ("rpg.params=1e9", r"rpg.params=1000000000 is out of range: scope='network' generates "
                       r"\d+ weights, so params must be in \[1, \d+\]"),
    ("rpg.scope=layer", r"rpg.params=5 leaves the layer ring"),
])
def test_ring_errors_name_the_key(quick_cfg, override, message):
    extra = ["rpg.params=5"] if override == "rpg.scope=layer" else []
    with pytest.raises(UserError, match=message):
        train(quick_cfg(override, *extra))


def test_missing_dataset_names_the_root(compose_cfg, tmp_path):
    cfg = compose_cfg(["data=mnist", f"data.root={tmp_path}", "data.download=false"],
                      out_dir=tmp_path / "run")
    with pytest.raises(UserError, match=f"^data.root='{tmp_path}' holds no mnist idx files"):
        train(cfg)


def test_ring_gets_weight_decay_and_norms_follow_wd_norm():
    model = apply_rpg(create_model("resnet20", 10), "network", 1000)
    groups = {g["group"]: g for g in param_groups(model, 5e-4, wd_norm=False)}
    ring = model.rpg_rings.network.weight
    assert any(p is ring for p in groups["ring"]["params"])
    assert groups["ring"]["weight_decay"] == 5e-4
    assert any(p is model.bn1.weight for p in groups["no_decay"]["params"])
    assert any(p is model.fc.bias for p in groups["no_decay"]["params"])
    assert any(p is model.fc.weight for p in groups["decay"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    decayed = {g["group"]: g for g in param_groups(model, 5e-4, wd_norm=True)}
    assert "no_decay" not in decayed
    assert any(p is model.bn1.weight for p in decayed["decay"]["params"])


def test_schedules():
    kw = dict(epochs=90, warmup_epochs=0, warmup_start=0.1, min_ratio=0.0, step_size=30,
              gamma=0.1, decay_epochs=45)
    assert lr_schedule(name="exp", **kw)(45.5) == pytest.approx(0.1)
    assert lr_schedule(name="exp", **kw)(90) == pytest.approx(0.01)
    assert lr_schedule(name="step", **kw)(61) == pytest.approx(0.01)
    assert lr_schedule(name="cosine", **kw)(45) == pytest.approx(0.5)
    assert lr_schedule(name="cosine", **{**kw, "warmup_epochs": 1})(0.5) == pytest.approx(0.55)
    assert lr_schedule(name="constant", **kw)(10) == 1.0


def test_wandb_offline_writes_the_run(quick_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(quick_cfg("logger=wandb", "logger.mode=auto", "logger.project=test"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)


# ---------------------------------------------------------------- loading is not running code
class _Payload:
    """Unpickling this runs `touch <marker>`: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_checkpoint(path, marker):
    torch.save(dict.fromkeys(checkpoint.REQUIRED, 0) | {"config": _Payload(marker)}, path)
    return path


def test_the_hostile_payload_is_live(tmp_path):
    """What unpickling the payload below would call really creates the marker."""
    call, args = _Payload(tmp_path / "ran").__reduce__()
    call(*args)
    assert (tmp_path / "ran").exists()


def test_a_pickled_payload_is_refused_without_running_it(quick_cfg, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _hostile_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UserError) as info:
        train(quick_cfg(f"trainer.resume={evil}"))
    assert str(info.value) == (f"trainer.resume='{evil}' is not a safe rpg_train checkpoint: it "
                               "holds objects other than tensors and plain containers "
                               "(posix.system); refused without running them")
    assert evaluate_main([f"ckpt={evil}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: ckpt='{evil}' is not a safe rpg_train checkpoint: it holds objects "
                   "other than tensors and plain containers (posix.system); refused without "
                   "running them"]
    assert not marker.exists()
    with open(tmp_path / "evil2.pt", "wb") as f:  # a bare pickle, not torch's zip format
        pickle.dump(_Payload(marker), f)
    with pytest.raises(UserError, match=r"^ckpt='.*evil2.pt' is not a safe rpg_train"):
        evaluate_checkpoint(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # numpy's cached gaussian is part of its state
    checkpoint.save(tmp_path / "rng.pt", dict(rng=checkpoint.rng_state()))
    first = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    state = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    checkpoint.set_rng_state(state)
    again = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_checkpoints_load_with_weights_only(quick_cfg, tmp_path):
    train(quick_cfg())
    state = _state(tmp_path / "run" / "last.pt")
    assert state["config"]["rpg"]["params"] == 2000 and state["identity"]["model"]["name"] == \
        "resnet20"
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


def test_evaluate_refuses_a_missing_checkpoint_with_one_line(tmp_path, capsys):
    assert evaluate_main([f"ckpt={tmp_path / 'none.pt'}"]) == 2
    assert capsys.readouterr().err == f"error: ckpt='{tmp_path / 'none.pt'}' does not exist\n"


def test_evaluate_overrides_are_typed(quick_cfg, tmp_path):
    train(quick_cfg())
    with pytest.raises(UserError, match=r"^model.nmae='x' is not valid: Key 'nmae' not in"):
        evaluate_checkpoint(tmp_path / "run" / "last.pt", ["model.nmae=x"])


# ---------------------------------------------------------------- bugs keep their traceback
@pytest.mark.parametrize("error", [ValueError("a bug"), FileNotFoundError("a bug's file")])
def test_a_bug_inside_training_is_not_a_user_error(quick_cfg, monkeypatch, error):
    def broken(*args, **kw):
        raise error

    monkeypatch.setattr(optim, "build_optimizer", broken)
    with pytest.raises(type(error)) as info:
        train(quick_cfg())
    assert info.value is error and not isinstance(info.value, UserError)


# ---------------------------------------------------------------- stopping at the epoch's edge
@pytest.mark.parametrize("when", ["last step", "after evaluation"])
def test_a_stop_at_the_end_of_an_epoch_resumes_exactly(quick_cfg, tmp_path, when):
    full = train(quick_cfg("trainer.epochs=2", out="full"))
    fired = []

    def arm(run, at):  # the signal arrives at the edge: after the last step, or evaluation
        pos = run.pos
        at_edge = pos.epoch == 0 and pos.batch == run.batches_per_epoch
        if at_edge and pos.evaluated == (when == "after evaluation") and not fired:
            fired.append(pos.step)
            run.stop.signum = signal.SIGTERM
        return check(run, at)

    with pytest.raises(Interrupted, match="SIGTERM"):
        train(quick_cfg("trainer.epochs=2", out="cut"), checker=arm)
    cut = _state(tmp_path / "cut" / "last.pt")
    assert fired and (cut["epoch"], cut["batch"]) == ((1, 0) if when == "after evaluation"
                                                      else (0, full["steps"] // 2))
    resumed = train(quick_cfg("trainer.epochs=2", "trainer.resume=auto", out="cut"))
    assert resumed["final_top1"] == full["final_top1"] and resumed["steps"] == full["steps"]
    rows = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("full", "cut")]
    assert _strip(map(json.loads, rows[0])) == _strip(map(json.loads, rows[1]))
    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_the_trainer_performs_the_action_the_check_returns(quick_cfg, tmp_path):
    def stop_after_step_1(run, at):
        return Action(Act.STOP, signal.SIGUSR1) if run.pos.step == 1 else check(run, at)

    with pytest.raises(Interrupted, match="SIGUSR1"):
        train(quick_cfg(), checker=stop_after_step_1)
    saved = _state(tmp_path / "run" / "last.pt")
    assert (saved["step"], saved["batch"]) == (1, 1)


def test_stop_signals_set_a_flag_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and str(Interrupted(stop.signum)) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def _evaluate_uneven(rank, world, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from rpg_train.engine.loop import evaluate_loader

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)))
    x, y = torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), torch.tensor(
        [0, 1, 2, 0, 1])
    torch.nn.functional.cross_entropy(model(x + rank), y).backward()  # BatchNorm stats differ

    class Shard(list):  # rank 0 holds every sample, rank 1 none (a held-out split of 1, say)
        device = torch.device("cpu")

        def set_epoch(self, epoch):
            pass

    got = evaluate_loader(model, Shard([(x, y)] if rank == 0 else []), contextlib.nullcontext)
    torch.save(dict(got, state=model.module.state_dict()), f"{out}.{rank}")
    dist.destroy_process_group()


def test_evaluate_with_an_empty_shard_on_one_rank(tmp_path):
    """Rank 1 has no batches; the DDP model's buffers (rank 0's after evaluate) must not make
    a collective that rank 1 never joins. The metrics are rank 0's samples', on both ranks."""
    import torch.multiprocessing as mp

    from conftest import free_port

    mp.spawn(_evaluate_uneven, args=(2, free_port(), str(tmp_path / "m")), nprocs=2)
    a, b = (torch.load(tmp_path / f"m.{r}") for r in (0, 1))
    sa, sb = a.pop("state"), b.pop("state")
    assert a == b and all(torch.equal(sa[k], sb[k]) for k in sa)  # the same model evaluated
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model.load_state_dict(sa)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    hits = (model.eval()(x).argmax(1) == torch.tensor([0, 1, 2, 0, 1])).sum().item()
    assert a["val_top1"] == pytest.approx(100 * hits / 5)
