"""Evaluate any checkpoint: `python -m fmnist.evaluate ckpt_path=PATH [split=val] [output_dir=DIR]`.

The command only; the work is done by fmnist/analysis/evaluate.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fmnist.analysis.evaluate import evaluate
from fmnist.utils.config import CONF_DIR
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import exit_on_error


@quiet_pipe
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Compose fmnist/conf/evaluate.yaml with the command line, then run `evaluate` (fmnist/analysis/evaluate.py)."""
    exit_on_error(evaluate, cfg)


if __name__ == "__main__":
    main()
