"""What the user sees: W&B settings and labels, the console lines, the version and what a
run records about the code that made it. W&B never reaches the network here: runs use
WANDB_MODE or a stand-in for wandb.init that records its arguments."""
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import wandb
from omegaconf import OmegaConf

import rpg_train
from rpg_train import __main__ as app_main
from rpg_train.config import LoggerConfig
from rpg_train.engine import train
from rpg_train.errors import UserError
from rpg_train.evaluate import evaluate_checkpoint
from rpg_train.log import console, method_label, versions
from rpg_train.log.versions import git_commit, provenance
from rpg_train.log.wandb_logger import init_args
from rpg_train.validation import validate

ROOT = Path(__file__).resolve().parents[1]
WANDB_VARS = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_ENTITY", "WANDB_RUN_GROUP",
              "WANDB_NAME", "WANDB_TAGS", "WANDB_API_KEY")


@pytest.fixture
def clean_env(monkeypatch):
    for var in WANDB_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# ---------------------------------------------------------------- method label
@pytest.mark.parametrize("cfg, label", [
    ({}, "rpg"),
    ({"rpg": {"scope": "network", "sampling": "even", "sign": True}}, "rpg"),
    ({"rpg": {"scope": "stage", "sampling": "ring"}}, "rpg"),
    ({"rpg": {"scope": "none"}, "model": {"width": 1.0}}, "dense"),
    ({"rpg": {"scope": "none"}, "model": {"width": 0.25}}, "width"),
    ({"rpg": {"scope": "none"}, "prune": {"init": "dense/last.pt"}}, "pruning"),
    ({"rpg": {"scope": "network", "sampling": "iid"}}, "hashing"),
    ({"rpg": {"scope": "network", "sampling": "plain", "sign": False}}, "plain-recurrence"),
    ({"rpg": {"scope": "network", "sampling": "plain"}}, "plain-recurrence-signed"),
    ({"rpg": {"scope": "network", "sampling": "iid", "offset": True}}, "hashing+subspace"),
    ({"rpg": {"scope": "network", "offset": True, "sign": False}}, "subspace-nosign"),
    ({"rpg": {"scope": "network", "k": 4}}, "rpg-k4"),
    ({"rpg": {"scope": "network", "offset": True}}, "subspace"),
    ({"rpg": {"scope": "network", "sign": False}}, "rpg-nosign"),
    ({"rpg": {"scope": "network"}, "prune": {"init": None}}, "rpg"),
])
def test_method_label(cfg, label):
    assert method_label(cfg) == label


# ---------------------------------------------------------------- W&B settings
def _logger(**keys):
    return OmegaConf.merge(OmegaConf.structured(LoggerConfig), {"name": "wandb", **keys})


def test_wandb_environment_applies_where_the_config_is_unset(clean_env, tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40, "WANDB_PROJECT": "p-env",
           "WANDB_DIR": str(tmp_path / "wd"), "WANDB_ENTITY": "e-env",
           "WANDB_RUN_GROUP": "g-env", "WANDB_NAME": "n-env", "WANDB_TAGS": "a, b"}
    args = init_args(_logger(), env, tmp_path / "run", "rpg-resnet20-4k-s0", ["rpg"])
    assert args == dict(project="p-env", entity="e-env", group="g-env", name="n-env",
                        tags=["a", "b", "rpg"], dir=str(tmp_path / "wd"), mode="offline")
    # what the user set wins over the environment
    mine = _logger(project="p", entity="e", group="g", run_name="n", tags=["t"], mode="online")
    args = init_args(mine, env, tmp_path / "run", "default", ["rpg"])
    assert args == dict(project="p", entity="e", group="g", name="n", tags=["t", "rpg"],
                        dir=str(tmp_path / "wd"), mode="online")
    # neither: the project's defaults (offline without credentials, never a prompt)
    args = init_args(_logger(), {}, tmp_path / "run", "default", ["rpg"])
    assert args == dict(project="rpg-train", entity=None, group=None, name="default",
                        tags=["rpg"], dir=str(tmp_path / "run"), mode="offline")
    assert init_args(_logger(), {"WANDB_MODE": "dryrun"}, tmp_path, "", [])["mode"] == "offline"
    with pytest.raises(UserError, match="WANDB_MODE='of' is not a W&B mode"):
        init_args(_logger(), {"WANDB_MODE": "of"}, tmp_path, "", [])


class FakeRun:
    """What WandbLogger uses of a wandb run, recorded."""

    def __init__(self, kwargs):
        self.kwargs, self.rows, self.summary, self.id = kwargs, [], {}, kwargs["id"]
        self.dir = str(Path(kwargs["dir"]) / "wandb" / "run" / "files")

    def log(self, row, step):
        self.rows.append((step, row))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []

    def init(**kwargs):
        runs.append(FakeRun(kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


def test_wandb_mode_disabled_from_the_environment_writes_nothing(quick_cfg, tmp_path,
                                                                 clean_env, fake_wandb):
    clean_env.setenv("WANDB_MODE", "disabled")
    clean_env.setenv("WANDB_API_KEY", "x" * 40)
    results = train(quick_cfg("logger=wandb", "trainer.limit_batches=1"))
    assert fake_wandb == [] and "wandb" not in results
    assert not (tmp_path / "run" / "wandb").exists()
    assert not (tmp_path / "run" / "wandb_id.txt").exists()


def test_wandb_run_carries_env_settings_name_tags_method_and_params(quick_cfg, tmp_path,
                                                                    clean_env, fake_wandb):
    clean_env.setenv("WANDB_MODE", "offline")
    clean_env.setenv("WANDB_API_KEY", "x" * 40)  # credentials: still offline
    clean_env.setenv("WANDB_PROJECT", "from-env")
    clean_env.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    clean_env.setenv("WANDB_RUN_GROUP", "study-1")
    results = train(quick_cfg("logger=wandb", "trainer.limit_batches=1"))
    (run,) = fake_wandb
    k = run.kwargs
    trainable = results["param_report"]["trainable"]
    assert (k["mode"], k["project"], k["dir"], k["group"]) == (
        "offline", "from-env", str(tmp_path / "wandb_dir"), "study-1")
    assert k["name"] == f"rpg-resnet20-{trainable / 1000:.3g}k-s0"
    assert k["tags"] == ["rpg", "resnet20", "synthetic"]
    assert k["config"]["method"] == "rpg" and k["config"]["params"] == results["param_report"]
    assert run.summary["method"] == "rpg" and run.summary["params/trainable"] == trainable
    assert run.summary["final/top1"] == results["final_top1"] and run.finished
    assert results["method"] == "rpg"
    assert results["wandb"] == dict(project="from-env", entity=None, group="study-1",
                                    name=k["name"], mode="offline", id=k["id"])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["method"] == "rpg" and saved["wandb"]["group"] == "study-1"


def test_debug_fast_keeps_the_chosen_logger(compose_cfg):
    assert compose_cfg(["logger=wandb", "debug=fast"]).logger.name == "wandb"
    assert compose_cfg(["debug=fast"]).logger.name == "none"


# ---------------------------------------------------------------- console
def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "rpg_train"]


STATUS = re.compile(r"epoch 1/1  batch (\d)/3  loss \d+\.\d{4}  \d+ img/s  eta \d+m\d\ds")


def test_first_lines_then_a_status_line_without_a_terminal(quick_cfg, tmp_path, caplog):
    caplog.set_level("INFO", logger="rpg_train")
    train(quick_cfg("trainer.limit_batches=3", "trainer.log_every_s=1e-9"))
    lines = _messages(caplog)
    assert lines[:2] == [f"run directory: {tmp_path / 'run'}",
                         "preparing: building resnet20 (rpg), loading synthetic ..."]
    status = [m for m in lines if m.startswith("epoch 1/1  batch")]
    assert [STATUS.fullmatch(m).group(1) for m in status] == ["1", "2", "3"]
    caplog.clear()
    train(quick_cfg("trainer.limit_batches=3", "trainer.log_every_s=0", out="off"))
    assert not [m for m in _messages(caplog) if m.startswith("epoch 1/1  batch")]


def test_log_every_s_must_not_be_negative(compose_cfg, tmp_path):
    with pytest.raises(UserError, match=r"trainer.log_every_s=-1.0 must not be negative"):
        validate(compose_cfg(["trainer.log_every_s=-1"], out_dir=tmp_path))


def test_evaluation_shows_a_bar_on_a_terminal_only(quick_cfg, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(console, "on_terminal", lambda: True)
    train(quick_cfg("trainer.limit_batches=1"))  # trainer.progress=false: no bar at all
    assert "eval" not in capsys.readouterr().err
    train(quick_cfg("trainer.limit_batches=1", "trainer.progress=true", out="bars"))
    err = capsys.readouterr().err
    assert "epoch 1:" in err and "eval:" in err
    evaluate_checkpoint(tmp_path / "run" / "last.pt")
    assert "eval:" in capsys.readouterr().err
    monkeypatch.setattr(console, "on_terminal", lambda: False)
    evaluate_checkpoint(tmp_path / "run" / "last.pt")
    assert "eval" not in capsys.readouterr().err


# ---------------------------------------------------------------- version and provenance
PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_from_the_metadata_else_pyproject(monkeypatch):
    assert rpg_train.__version__ == importlib.metadata.version("rpg-train")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert rpg_train._version() == PYPROJECT_VERSION


def test_version_flag_prints_the_package_version(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rpg-train", "--version"])
    with pytest.raises(SystemExit) as stop:
        app_main.cli()
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"rpg-train {rpg_train.__version__}\n"
    proc = subprocess.run([sys.executable, "-m", "rpg_train", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, f"rpg-train {rpg_train.__version__}\n")


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_of_the_checkout_and_none_elsewhere(tmp_path, monkeypatch):
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("[project]\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "pyproject.toml")
    _git(repo, "commit", "-qm", "one")
    monkeypatch.setattr(versions, "_CHECKOUT", repo)
    head = _git(repo, "rev-parse", "HEAD")
    assert git_commit() == (head, False)
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert git_commit() == (head, True)
    (repo / "untracked.txt").write_text("not part of the code")
    (repo / "pyproject.toml").write_text("[project]\n")
    assert git_commit() == (head, False)
    # an installed package: no checkout around it, even inside someone's repository
    monkeypatch.setattr(versions, "_CHECKOUT", repo / "venv" / "lib")
    assert git_commit() == (None, None)


def test_results_and_checkpoints_record_version_commit_and_torch(quick_cfg, tmp_path):
    results = train(quick_cfg("trainer.limit_batches=1"))
    expected = provenance()
    assert expected["version"] == rpg_train.__version__
    assert expected["torch"] == torch.__version__ and type(expected["torch"]) is str
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    from_checkout = Path(rpg_train.__file__).resolve().parents[1] == ROOT / "src"
    assert expected["git_commit"] == (head if from_checkout and head else None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["provenance"] == results["provenance"] == expected
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "run" / name, map_location="cpu", weights_only=True)
        assert state["provenance"] == expected
