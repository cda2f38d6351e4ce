"""Group garments by learned similarity: `python -m fmnist.cluster ckpt_path=PATH [k=10]`.

The command only; the work is done by fmnist/analysis/cluster.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fmnist.analysis.cluster import cluster
from fmnist.utils.config import CONF_DIR
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import exit_on_error


@quiet_pipe
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="cluster")
def main(cfg: DictConfig) -> None:
    """Compose fmnist/conf/cluster.yaml with the command line, then run `cluster` (fmnist/analysis/cluster.py)."""
    exit_on_error(cluster, cfg)


if __name__ == "__main__":
    main()
