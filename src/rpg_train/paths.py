"""Where the app's Hydra configs are: the checkout's top-level `conf/`, which a wheel ships
inside the package as `rpg_train/conf` (pyproject.toml maps the one onto the other)."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The `conf/` tree the app composes its config from.

    Installed from a wheel (`pip install .`): `rpg_train/conf` beside this file. Imported
    from a checkout (`pip install -e .`, or `src/` on the path): the checkout's `conf/`, so
    an edit there takes effect at once. If neither exists, the packaged path, which Hydra
    then reports as missing.
    """
    packaged, checkout = _PACKAGE / "conf", _PACKAGE.parents[1] / "conf"
    for candidate in (packaged, checkout):
        if (candidate / "config.yaml").is_file():
            return candidate
    return packaged


CONF = str(config_dir())

# What a process of rank > 0 adds to its overrides: the same config, but Hydra writes nothing
# (no .hydra/, no train.log): only rank 0 writes the run directory. Used under torchrun
# (rpg_train.__main__) and by the SLURM launcher (hydra_plugins.rpg_train_launcher).
QUIET = ["hydra.output_subdir=null", "hydra/job_logging=none"]
