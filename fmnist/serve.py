"""Serve the web page: `python -m fmnist.serve ckpt_path=PATH [catalog=FOLDER] [host=127.0.0.1] [port=7860]`.

The command only; the work is done by fmnist/web/app.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fmnist.utils.config import CONF_DIR
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import exit_on_error


@quiet_pipe
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    """Compose fmnist/conf/serve.yaml with the command line, then run `serve` (fmnist/web/app.py)."""
    try:
        from fmnist.web.app import serve
    except ModuleNotFoundError as error:
        raise SystemExit(f"error: the web page needs {error.name}. Fix: pip install -e '.[web]'") from None
    try:
        exit_on_error(serve, cfg)
    except KeyboardInterrupt:
        raise SystemExit("stopped: the page is no longer served") from None


if __name__ == "__main__":
    main()
