"""Classify ordinary image files: `python -m fmnist.predict ckpt_path=PATH inputs=FILE_OR_DIR [top_k=3]`.

The command only; the work is done by fmnist/deploy/predict.py.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from fmnist.deploy.predict import predict
from fmnist.utils.config import CONF_DIR
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import exit_on_error


@quiet_pipe
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    """Compose fmnist/conf/predict.yaml with the command line, then run `predict` (fmnist/deploy/predict.py).

    Exit status: 0 when every file was classified; 1 on an error (nothing classified, or bad input); 3 when
    some files were classified and some could not be read (their error rows are in predictions.csv)."""
    results = exit_on_error(predict, cfg)
    failed = sum("error" in r for r in results)
    if failed:
        print(
            f"error: {failed} of {len(results)} input files could not be classified (their rows in "
            "predictions.csv say why); the others were",
            file=sys.stderr,
        )
        raise SystemExit(3)


if __name__ == "__main__":
    main()
