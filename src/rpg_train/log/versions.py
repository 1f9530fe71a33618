"""What produced a run: package version, git commit, torch version (results.json and every
checkpoint; plain strings and booleans, so weights_only loading reads them)."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import torch

from .. import __version__

# src/rpg_train/log/versions.py -> the checkout holding src/
_CHECKOUT = Path(__file__).resolve().parents[3]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_CHECKOUT), *args], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs (a slow mount)
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the package runs from; (None, None) when it is not
    run from a git checkout of rpg-train (an installed wheel, whatever repository its
    virtual environment sits in)."""
    if not ((_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / ".git").exists()):
        return None, None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """Read once per process: a run records the code it started with."""
    commit, dirty = git_commit()
    return dict(version=__version__, git_commit=commit, git_dirty=dirty,
                torch=str(torch.__version__))  # a str subclass weights_only refuses
