"""`python -m rpg_train [overrides]`: compose the config, train, exit with a status."""
from __future__ import annotations

import importlib.util
import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from . import sweep
from .config import register
from .errors import UserError

register()
EXIT = {"Ctrl-C": 130, "SIGUSR1": 138, "SIGUSR2": 140, "SIGTERM": 143}  # 128 + the number
log = logging.getLogger("rpg_train")
from .paths import CONF, QUIET  # noqa: E402  conf/: the checkout's, or the copy a wheel ships


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .engine import Diverged, Interrupted, RankLost, train
    from .engine.signals import pass_on

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    with open_dict(cfg):
        cfg.out_dir = hc.runtime.output_dir
        if multirun and cfg.logger.group is None and not os.environ.get("WANDB_RUN_GROUP"):
            cfg.logger.group = str(hc.sweep.dir)  # one W&B group per sweep
    if multirun:
        sweep.clear(cfg.out_dir)
    try:
        results = train(cfg)
    except UserError as err:  # bad input: no traceback (anything else is a bug and keeps it)
        log.error("error: %s", err)  # all of it: a cause quoted over lines ends in the hint
        if multirun:
            sweep.mark(cfg.out_dir, f"bad input: {err}")
            return None  # let the sweep's other jobs run
        sys.exit(2)
    except Interrupted as stop:
        pass_on(stop.own or stop.signum)  # under SLURM: submitit requeues the job (rank 0)
        sys.exit(EXIT.get(str(stop), 143))
    except RankLost as err:  # the traceback is the backend's, not ours: one line
        log.error("error: another process of this run was lost (%s); stopped. Start the "
                  "run again with trainer.resume=auto to continue from its last checkpoint",
                  err)
        sys.exit(1)
    except Diverged as bad:
        kept = ("last.pt holds the last good state" if os.path.exists(
            os.path.join(cfg.out_dir, "last.pt")) else "nothing was saved")
        log.error("error: %s; stopped (trainer.nan_policy=%s): %s", bad,
                  cfg.trainer.nan_policy, kept)
        if multirun:
            sweep.mark(cfg.out_dir, f"diverged: {bad}")
            return None
        sys.exit(3)
    # what a Hydra sweeper would optimise: the held-out pick when there is one
    return results.get("selected_top1", results["final_top1"])


def register_launchers() -> None:
    """Make hydra/launcher=slurm's classes known to Hydra. Its plugin scan finds them in an
    installed wheel but not through an editable install's import hook, so name them."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.rpg_train_launcher import launcher

    for cls in (launcher.SlurmLauncher, launcher.LocalLauncher):
        Plugins.instance().register(cls)


def cli() -> None:
    """The command line. A process of rank > 0 under torchrun or srun composes the same
    config but lets Hydra write nothing: it trains in rank 0's run directory (see
    engine.train). A one-process run into a run directory that a run holds is refused
    before Hydra writes its files (.hydra/) there; several processes are refused together,
    by train (none is left waiting for the others)."""
    if "--version" in sys.argv[1:]:  # the package's version, not Hydra's
        from . import __version__

        print(f"rpg-train {__version__}")
        sys.exit(0)
    from .engine.distributed import env_rank, env_world
    from .engine.rundir import busy, holder

    if env_rank() > 0:
        sys.argv += QUIET + ["hydra.run.dir=."]
    elif env_world() == 1 and not {"-m", "--multirun"} & set(sys.argv):
        run_dir = next((a.split("=", 1)[1] for a in sys.argv[1:]
                        if a.startswith("hydra.run.dir=")), None)
        if run_dir and (who := holder(run_dir)):
            print(f"error: {busy(os.path.abspath(run_dir), who)}", file=sys.stderr)
            sys.exit(2)
    launcher = next((a.split("=", 1)[1] for a in sys.argv[1:]
                     if a.startswith("hydra/launcher=")), "")
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
        register_launchers()
    elif launcher.startswith("slurm"):
        print(f"error: hydra/launcher={launcher} needs the slurm extra: pip install "
              "'rpg-train[slurm]' (hydra-submitit-launcher)", file=sys.stderr)
        sys.exit(2)
    main()
    if sweep.FAILED:  # the sweep went on past them; its exit status says they failed
        print(f"error: {len(sweep.FAILED)} job(s) of the sweep failed: "  # a line each
              + "; ".join(f.splitlines()[0] for f in sweep.FAILED), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
