"""Search hyperparameters: `python -m fmnist.tune model=rnn [train overrides] [tune.n_trials=20] [pruner=median]`.

The command only; the work is done by fmnist/tuning/search.py. Not a Hydra app itself: each trial is composed
with Hydra's compose API, so that it can run in this process with Optuna's pruning callback.
"""

from __future__ import annotations

import sys

from fmnist.utils.config import check_choices
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import FmnistError


@quiet_pipe
def main() -> None:
    """Run the search of the command line; every problem ends it with one `error: ...` line."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print("usage: " + __doc__.strip().splitlines()[0].removeprefix("Search hyperparameters: ").strip("`."))
        print(
            "the tune.* keys and their defaults: fmnist/conf/tune.yaml; pruners: fmnist/conf/pruner/; "
            "spaces: fmnist/conf/search_space/"
        )
        return
    try:
        from fmnist.tuning.search import tune
    except ModuleNotFoundError as error:
        raise SystemExit(f"error: the search needs {error.name}. Fix: pip install -e '.[sweeps]'") from None
    try:
        check_choices(args)
        tune(args)
    except FmnistError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
