"""Classify ordinary image files: `python -m fmnist.predict ckpt_path=PATH inputs=FILE_OR_DIR [top_k=3]`.

The command only; the work is done by fmnist/deploy/predict.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fmnist.deploy.predict import predict
from fmnist.utils.config import CONF_DIR
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import exit_on_error


@quiet_pipe
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    """Compose conf/predict.yaml with the command line, then run `predict` (logic: fmnist/deploy/predict.py)."""
    exit_on_error(predict, cfg)


if __name__ == "__main__":
    main()
