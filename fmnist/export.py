"""Export a checkpoint for deployment: `python -m fmnist.export ckpt_path=PATH format=onnx|torchscript`.

The command only; the work is done by fmnist/deploy/export.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fmnist.deploy.export import export
from fmnist.utils.config import CONF_DIR
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import exit_on_error


@quiet_pipe
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    """Compose fmnist/conf/export.yaml with the command line, then run `export` (fmnist/deploy/export.py)."""
    exit_on_error(export, cfg)


if __name__ == "__main__":
    main()
