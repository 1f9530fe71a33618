"""`python -m rpg_train [overrides]`: compose the config, train, exit with a status."""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from .config import register
from .errors import UserError

register()
log = logging.getLogger("rpg_train")
from .paths import CONF  # noqa: E402  conf/: the checkout's, or the copy a wheel ships


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .engine import Interrupted, train

    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.out_dir = hc.runtime.output_dir
        if hc.mode == RunMode.MULTIRUN and cfg.logger.group is None:
            cfg.logger.group = str(hc.sweep.dir)  # one W&B group per sweep
    try:
        results = train(cfg)
    except UserError as err:  # bad input: one line; anything else is a bug with a traceback
        log.error("error: %s", str(err).splitlines()[0])
        if hc.mode == RunMode.MULTIRUN:
            return None  # let the sweep's other jobs run
        sys.exit(2)
    except Interrupted as stop:
        sys.exit(130 if str(stop) == "Ctrl-C" else 143)
    # what a Hydra sweeper would optimise: the held-out pick when there is one
    return results.get("selected_top1", results["final_top1"])


if __name__ == "__main__":
    main()
