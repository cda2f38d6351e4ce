"""Explore the data, as the study's first step: `python -m fmnist.explore [output_dir=DIR] [overwrite=true]`.

The command only; the work is done by fmnist/analysis/explore.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fmnist.analysis.explore import explore
from fmnist.utils.config import CONF_DIR
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import exit_on_error


@quiet_pipe
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="explore")
def main(cfg: DictConfig) -> None:
    """Compose fmnist/conf/explore.yaml with the command line, then run `explore` (fmnist/analysis/explore.py)."""
    exit_on_error(explore, cfg)


if __name__ == "__main__":
    main()
