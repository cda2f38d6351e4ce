"""The Hydra callback that checks a new run's config before its folder exists and never lets it replace an
earlier run's folder (fmnist/runs/ owns the folder itself)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fmnist.runs.folder import RUN_MARKERS, holds_run, resume_command, run_folders
from fmnist.training.checks import check_config
from fmnist.utils.errors import FmnistError


class RunFolderGuard(Callback):
    """Hydra callback, before the run folder exists: the config's values are checked (an error leaves no
    folder behind), and a new run never writes into the folder of an earlier run (Hydra would replace its
    `.hydra/` before the job starts, and the run its checkpoints and metrics.json). `resume=RUN_DIR`
    continues a run in its folder; `overwrite=true` replaces it on purpose."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("resume") or os.environ.get("LOCAL_RANK", "0") != "0":
            return  # Lightning starts DDP's other ranks in the folder rank 0 has just made
        try:  # before Hydra makes the run folder: a config error leaves no folder behind
            check_config(config)
        except FmnistError as error:
            raise SystemExit(f"error: {error}") from None
        if config.get("overwrite"):
            return
        HydraConfig.instance().set_config(config)  # as Hydra does next: the folders may read ${hydra:...}
        for key in ("hydra.run.dir", "output_dir"):  # output_dir= moves the results out of the run folder
            value = OmegaConf.select(config, key)  # None: output_dir's default, the run folder itself
            folder = Path(value) if value is not None else None
            if folder is not None and holds_run(folder):
                found = ", ".join(marker for marker in RUN_MARKERS if os.path.lexists(folder / marker))
                raise SystemExit(
                    f"error: {folder} holds an earlier run (its {found}), "
                    f"which a new run would replace. Fix: continue it with `{resume_command(folder)}`, choose "
                    f"another {key}=PATH, or add overwrite=true to replace it"
                )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("overwrite"):
            return
        folder = Path(config.hydra.sweep.dir)
        taken = sorted(str(p.relative_to(folder)) for p in run_folders(folder))
        if taken:
            shown = ", ".join(taken[:5]) + (", ..." if len(taken) > 5 else "")
            raise SystemExit(
                f"error: {folder} holds the runs of an earlier sweep (job folders {shown}), which this "
                "sweep would replace. Fix: choose another hydra.sweep.dir=PATH, or add overwrite=true to "
                "replace them"
            )
