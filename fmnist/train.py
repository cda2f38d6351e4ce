"""Train a network: `python -m fmnist.train model=NAME [key=value ...]` (or `fmnist-train ...`), NAME one of
cnn, rnn, bilstm (the study's), lstm, gru, attention, resnet (beyond it).

Fits with Lightning, tests the best checkpoint, and leaves in the run folder `.hydra/`,
`checkpoints/`, TensorBoard event files, `model_summary.md` and `metrics.json`. The command only;
the work is done by fmnist/training/fit.py.
"""

from __future__ import annotations

import logging
import math
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from fmnist.runs.folder import interrupted_message
from fmnist.runs.resume import cli_args
from fmnist.training.console import route_lightning_logs, to_log_file
from fmnist.training.fit import train
from fmnist.training.sweeps import FailedJob
from fmnist.utils.config import CONF_DIR, check_choices
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import FmnistError


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | FailedJob | None:
    """Hydra entry point; returns `val/acc_best` for sweepers (None when the run has none: Optuna marks it FAIL).

    In a multirun a failed or interrupted job returns a FailedJob instead of raising, so that the sweep
    reaches its end and reports every job (fmnist/training/sweeps.py says why).
    """
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    route_lightning_logs()
    try:
        metrics = train(cfg)
    except SIGTERMException:  # Ctrl-C or SIGTERM: stops a sweep too, once its summary is written
        message = interrupted_message(cfg.resume or cfg.output_dir)
        if multirun:
            return FailedJob("INTERRUPTED", message.removeprefix("interrupted: "))
        to_log_file(message, logging.WARNING)  # the resume command, in train.log too
        raise SystemExit(f"\n{message}") from None  # on a line of its own, after the progress bar
    except FmnistError as error:
        if multirun:
            logging.getLogger("fmnist.train").error(f"job failed: {error}")
            return FailedJob.of(error)
        to_log_file(f"error: {error}")  # the values are checked before the folder exists (RunFolderGuard)
        raise SystemExit(f"error: {error}") from None
    except Exception as error:
        if not multirun:
            raise
        logging.getLogger("fmnist.train").exception("job failed")  # not a user error: its traceback goes to the log
        return FailedJob.of(error)
    value = metrics.get("val/acc_best")
    return value if isinstance(value, float) and math.isfinite(value) else None


@quiet_pipe
def cli() -> None:
    """The console script: `resume=RUN_DIR` brings the run's own overrides, then Hydra composes."""
    try:
        check_choices(sys.argv[1:])
        sys.argv = cli_args(sys.argv)
    except FmnistError as error:
        raise SystemExit(f"error: {error}") from None
    main()


if __name__ == "__main__":
    cli()
