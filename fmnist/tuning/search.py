"""A hyperparameter search (the logic of `fmnist.tune`): an Optuna study whose trials are ordinary fmnist runs.

Each trial is composed with Hydra's compose API from fmnist/conf/train.yaml, the command's overrides and the
parameters Optuna draws from the search space (fmnist/tuning/space.py), and trained in this process with
`fmnist.training.fit.train`, so that Optuna's Lightning pruning callback can stop it after an epoch. Every
trial leaves a run folder (`trial_NNNN/`: metrics.json, checkpoints, TensorBoard, train.log), pruned ones
too. The study lives in any SQLAlchemy storage (a SQLite file in the study's folder by default): running the
command again continues it, and several commands (workers) on one storage share it, each trial numbered
once by the storage. The search sees only the stored trials of its search space (`OwnTrials`): another space's
trial, or one written by hand, is ignored, or refuses the study where Optuna cannot hold both. The end:
study_summary.md/.csv, best.yaml and the command that retrains the best trial.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import logging
import math
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna_integration import PyTorchLightningPruningCallback
from sqlalchemy.engine import make_url

from fmnist.training.checks import check_config
from fmnist.training.console import TqdmHandler, route_lightning_logs
from fmnist.training.fit import train
from fmnist.training.sweeps import test_once
from fmnist.tuning.space import contained, mismatch, search_space
from fmnist.utils.checks import boolean, check_values, integer, seed_in_range, text
from fmnist.utils.config import compose_config, hydra_value, override_key
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import LogFile, write_text

RULES = {
    "tune.n_trials": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "tune.dir": (text, "a folder", None, "a folder (or null: outputs/tune/<model>)", True),
    "tune.storage": (text, "a URL", None, "a SQLAlchemy URL, e.g. sqlite:///study.db (or null)", True),
    "tune.study_name": (text, "a name", None, "a name (or null: fmnist_<model>)", True),
    "tune.search_space": (text, "a name", None, "a config of fmnist/conf/search_space/ (or null: the model's)", True),
    "tune.metric": (text, "a metric name", None, "a key of metrics.json, e.g. val/acc_best", False),
    "tune.sampler_seed": (integer, "an integer", seed_in_range, "an integer from 0 to 4294967295 (or null)", True),
    "tune.n_startup_trials": (integer, "an integer", lambda v: v >= 0, "an integer >= 0", False),
    "tune.test_best": (boolean, "true or false", None, "true or false", False),
}
SET_BY_TUNE = ("output_dir", "resume", "overwrite", "test", "hydra.run.dir", "hydra.sweep.dir")
TIMED = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
log = logging.getLogger("fmnist.tune")


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(the search's overrides: tune.* and pruner, the trials' overrides)."""
    ours = [a for a in args if a.lstrip("+~").startswith(("tune.", "pruner=", "pruner."))]
    return ours, [a for a in args if a not in ours]


def _compose(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Hydra's compose, its errors (an unknown key or option, a bad value) as one FmnistError."""
    try:
        return compose_config(overrides, config_name=config_name)
    except Exception as error:  # noqa: BLE001 - Hydra's and OmegaConf's errors all end the command in one line
        text = " ".join(str(error).split())
        raise FmnistError(text[:400] or type(error).__name__) from None


def _storage_url(url: str) -> str:
    """`postgresql://` with psycopg 3 when psycopg2, SQLAlchemy's default driver, is not installed."""
    if url.startswith("postgresql://"):
        try:
            import psycopg2  # noqa: F401
        except ModuleNotFoundError:
            return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage; workers that start together may race to create its tables: the loser tries again."""
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna: no warning for users
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except Exception as error:  # noqa: BLE001 - SQLAlchemy's IntegrityError/ProgrammingError of the race
            racing = any(word in str(error) for word in ("already exists", "duplicate key", "UniqueViolation"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _parsed(url: str):
    """SQLAlchemy's reading of a URL; None where it has none, or where its user part may end at another @ than
    SQLAlchemy's (a raw @ in a password: `user:p@ss@host` would be read as password `p`, host `ss@host`)."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy's ArgumentError, or a ValueError of a port
        return None
    has_user = parsed.username is not None or parsed.password is not None or "@" in (parsed.host or "")
    return None if has_user and url.count("@") > 1 else parsed


def shown_url(url: str) -> str:
    """A storage URL as it may be printed: no password, in the user part or in the query."""
    parsed = _parsed(url)
    if parsed is not None:
        return parsed.difference_update_query(["password"]).render_as_string(hide_password=True)
    # no reading to trust: no part of the user part, which may run to the last @, nor of the query
    head, at, tail = url.rpartition("@")
    tail = "..." if "?" in head else tail.split("?", 1)[0]  # an @ in the query: what follows it is the query's
    if at and "://" in head:
        return f"{head.split('://', 1)[0]}://***@{tail}"
    return tail


def _secret_free(text: str, url: str) -> str:
    """`text` (a driver's message) without the URL's password or user part."""
    parsed = _parsed(url)
    if parsed is not None:
        raw = url.split("://", 1)[-1].rsplit("@", 1)[0].partition(":")[2] if "@" in url else ""
        secrets = [parsed.password, parsed.query.get("password"), raw]
    else:  # everything before the last @ may be secret, a query's password too, and the pieces SQLAlchemy split off
        userinfo = url.split("://", 1)[-1].rsplit("@", 1)[0] if "@" in url else ""
        passwords = [userinfo.partition(":")[2], *parse_qs(url.partition("?")[2]).get("password", [])]
        pieces = [p for s in (userinfo, *passwords) for p in s.replace(":", "@").split("@") if len(p) >= 3]
        secrets = [userinfo, *passwords, *pieces]
    for secret in sorted((s for s in secrets if isinstance(s, str) and s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _scrubbed(text: str, ours: list[str]) -> str:
    """`text` (an error about the search's overrides) without the password of a tune.storage= among them."""
    for override in ours:
        key, _, value = override.partition("=")
        url = value.strip("'\"")
        if key.lstrip("+~") == "tune.storage" and url:
            text = _secret_free(text.replace(value, shown_url(url)).replace(url, shown_url(url)), url)
    return text


def _check_url(url: str) -> None:
    """Refuse, before connecting, a URL that SQLAlchemy can't read or may read with a piece of a password as host."""
    shown = shown_url(url)
    if _parsed(url) is not None:
        return
    if url.count("@") > 1:
        raise FmnistError(
            f"tune.storage={shown}: more than one @ in it, so where its password ends is unclear. Fix: write each @ "
            "of a user name, password or database name as %40"
        )
    raise FmnistError(
        f"tune.storage={shown} is not a SQLAlchemy URL, e.g. sqlite:///path/optuna.db or "
        "postgresql://user:password@host:5432/db (an @ : / of a password written %40 %3A %2F)"
    )


class StorageUnreadable(FmnistError):
    """The study's trials can't be read (a row Optuna can't parse): the search stops, not trial by trial."""


class OwnTrials(_CachedStorage):
    """Optuna's cached RDB storage as the search sees it: only the trials of its search space.

    Optuna's sampler and pruner, its queue of enqueued trials, the best trial and the summary all read the trials
    through `get_all_trials`, so a trial of another space, or one written by hand, is ignored by all of them.
    `ignored` says which and why (refused: Optuna's storage would refuse this space's parameters beside it).
    """

    def __init__(self, backend: optuna.storages.RDBStorage, space: dict[str, BaseDistribution], url: str):
        super().__init__(backend)
        self.space = space
        self.scrub = lambda text: _secret_free(text, url)
        self.ignored: dict[int, tuple[str, bool]] = {}  # trial number: (why, refused)
        self._verdicts: dict[int, bool] = {}  # a finished trial's, by trial id: it won't change

    def _own(self, trial: optuna.trial.FrozenTrial) -> bool:
        if trial._trial_id in self._verdicts:
            return self._verdicts[trial._trial_id]
        problem = mismatch(trial, self.space)
        if problem is not None:
            self.ignored[trial.number] = problem
        if trial.state.is_finished():
            self._verdicts[trial._trial_id] = problem is None
        return problem is None

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        own = [t for t in self.every_trial(study_id, states) if self._own(t)]
        return copy.deepcopy(own) if deepcopy else own

    def every_trial(self, study_id: int, states=None) -> list[optuna.trial.FrozenTrial]:
        """All the study's trials, those ignored too."""
        try:
            return super().get_all_trials(study_id, deepcopy=False, states=states)
        except Exception as error:  # noqa: BLE001 - Optuna reads them all at once: one bad row, none can be read
            reason = self.scrub(" ".join(f"{type(error).__name__}: {error}".split()))[:200]
            raise StorageUnreadable(
                f"the study's trials cannot be read from its storage ({reason}): a trial written there by hand or "
                "by another program? Fix: a new study (another tune.dir=, and another tune.study_name= on a shared "
                "tune.storage)"
            ) from None

    def get_best_trial(self, study_id: int) -> optuna.trial.FrozenTrial:
        return BaseStorage.get_best_trial(self, study_id)  # from get_all_trials (the cached one asks the database)


def open_study(settings: DictConfig, storage_url: str, study_name: str, space: dict) -> optuna.Study:
    """The study (created, or loaded when it exists); one FmnistError for a storage that can't be used."""
    _check_url(storage_url)
    shown = shown_url(storage_url)
    try:
        storage = OwnTrials(_rdb_storage(_storage_url(storage_url)), space, storage_url)
        return optuna.create_study(
            storage=storage,
            study_name=study_name,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(
                seed=settings.tune.sampler_seed, n_startup_trials=settings.tune.n_startup_trials
            ),
            pruner=hydra.utils.instantiate(settings.pruner),
            load_if_exists=True,
        )
    except ModuleNotFoundError as error:
        raise FmnistError(
            f"tune.storage={shown}: its database driver {error.name} is not installed. Fix: pip install "
            f"{'psycopg[binary]' if 'psycopg' in str(error.name) else error.name}"
        ) from None
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's errors: a malformed URL, no server, refused login
        reason = _secret_free(" ".join(str(error).split()), storage_url)[:300]
        raise FmnistError(f"tune.storage={shown} cannot be used: {reason}") from None


def _suggest(trial: optuna.Trial, key: str, distribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def _override(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{key}={value!r}"
    return f"{key}={hydra_value(str(value), key)}"


def _checked_params(params: dict[str, Any], distributions: dict, where: str) -> dict[str, Any]:
    """A trial's parameters as read from the storage: only the space's keys, each a value its dimension gives."""
    unknown = sorted(set(params) - set(distributions))
    if unknown:
        raise FmnistError(f"{where} has parameters that the search space lacks: {', '.join(unknown)}")
    for key, value in params.items():
        if not contained(distributions[key], value):
            raise FmnistError(f"{where}: {key}={value!r} is outside the search space")
    return params


class Search:
    """The study, its folder, the trials' base overrides and the search space; `objective` runs one trial."""

    def __init__(self, settings: DictConfig, base: list[str]):
        self.settings, self.base = settings, base
        given = sorted({override_key(o) for o in base} & set(SET_BY_TUNE))
        if given:
            raise FmnistError(f"{', '.join(given)}: set by fmnist.tune for each trial (tune.dir= chooses the folder)")
        probe = _compose([*base, "output_dir=."])  # the trials' base config: Hydra checks every override
        check_config(probe)
        self.model = str(probe.name)
        self.dir = Path(settings.tune.dir or Path("outputs") / "tune" / self.model)
        space_name = settings.tune.search_space or self.model
        where = f"fmnist/conf/search_space/{space_name}.yaml"
        try:
            space = compose_config([], config_name=f"search_space/{space_name}")
        except Exception as error:  # noqa: BLE001 - Hydra's missing or malformed config
            if "Cannot find primary config" in str(error):
                raise FmnistError(
                    f"{where} does not exist: no search space for model={self.model}. Fix: write it, or choose "
                    "one with tune.search_space=NAME"
                ) from None
            raise FmnistError(f"{where} cannot be read: {str(error).splitlines()[0][:300]}") from None
        self.space = search_space(space.get("search_space", space), probe, where)  # composed under its group's key
        self.where = where
        fixed = sorted({override_key(o) for o in base} & set(self.space))
        if fixed:
            raise FmnistError(
                f"{', '.join(fixed)}: searched by {where}, so a value on the command line would be overridden by "
                "each trial's. Fix: leave it out, or search another space with tune.search_space=NAME"
            )
        self.metric = str(settings.tune.metric)
        self.reported: set[int] = set()  # ignored trials already told
        self.finished: list[optuna.trial.FrozenTrial] = []  # this command's trials
        self.refusal: str | None = None

    def run_dir(self, number: int) -> Path:
        """A trial's folder: from its number, never from what the storage says."""
        return self.dir / f"trial_{number:04d}"

    def check_folder(self, study: optuna.Study) -> None:
        """Refuse a study folder holding trial folders that are not this study's (another study's, a deleted one's)."""
        own = {self.run_dir(t.number).name for t in study._storage.every_trial(study._study_id)}
        foreign = sorted(p.name for p in self.dir.glob("trial_*") if p.name not in own)
        if foreign:
            raise FmnistError(
                f"tune.dir={self.dir} holds trial folders of another study ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}), which this study's trials would collide with. "
                "Fix: another tune.dir=, or the tune.storage and tune.study_name that made them"
            )

    def check_trials(self, study: optuna.Study, tell: bool = True) -> str | None:
        """Read the storage's trials: one line for those newly ignored (`tell`); the refusal, once a trial makes the
        study one whose trials cannot go on (Optuna's storage refuses this space's parameter beside another kind)."""
        study.get_trials(deepcopy=False)
        storage: OwnTrials = study._storage
        new = sorted(set(storage.ignored) - self.reported)
        if new and tell:
            self.reported.update(new)
            told = "; ".join(f"trial {n}: {storage.ignored[n][0]}" for n in new[:3])
            more = f"; and {len(new) - 3} more" if len(new) > 3 else ""
            log.warning(f"ignored {len(new)} trials of the study that are not of {self.where} ({told}{more})")
        refused = next((n for n in sorted(storage.ignored) if storage.ignored[n][1]), None)
        if refused is not None and self.refusal is None:
            self.refusal = (
                f"study {study.study_name}: trial {refused}'s {storage.ignored[refused][0]}; Optuna keeps one kind "
                "of each parameter in a study, so this search space's trials cannot go on in it. Fix: a new study "
                f"(another tune.dir=, and another tune.study_name= on a shared tune.storage), or delete trial {refused}"
            )
        return self.refusal

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """The trial's line; the search stops once the study is refused."""
        self.finished.append(trial)
        _trial_line(study, trial)
        if self.check_trials(study):
            study.stop()

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        return [*self.base, *(_override(k, v) for k, v in params.items())]

    def objective(self, trial: optuna.Trial) -> float:
        """Train one trial; its value is its `tune.metric` (NaN, which Optuna marks FAIL, when it has none)."""
        run_dir = self.run_dir(trial.number)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))  # for the summary: workers may start in other folders
        handler: logging.Handler | None = None
        try:
            try:
                suggested = {key: _suggest(trial, key, d) for key, d in self.space.items()}
            except ValueError:  # Optuna's storage refuses a parameter beside another kind of it (another trial's)
                if self.check_trials(trial.study):
                    trial.set_user_attr("error", "the storage refuses its parameters: see the command's error")
                    trial.study.stop()
                    return math.nan
                raise
            params = _checked_params(suggested, self.space, f"trial {trial.number}")
            handler = LogFile(_new_folder(run_dir) / "train.log")
            handler.setFormatter(TIMED)
            logging.getLogger().addHandler(handler)
            overrides = [*self.trial_overrides(params), f"output_dir={run_dir}", "test=false"]
            cfg = compose_config(overrides)
            _write_run_config(run_dir, cfg, overrides)
            pruning = PyTorchLightningPruningCallback(trial, monitor="val/acc")
            metrics = train(cfg, callbacks=[pruning], stops=(optuna.TrialPruned,), next_steps_line=False)
        except (optuna.TrialPruned, KeyboardInterrupt, StorageUnreadable):
            raise
        except SIGTERMException as error:  # a SystemExit, which Optuna would leave RUNNING: it marks this one FAIL
            trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)")
            raise KeyboardInterrupt from error
        except FmnistError as error:
            trial.set_user_attr("error", str(error)[:500])
            log.error(f"trial {trial.number} failed: {error}")
            return math.nan
        except Exception as error:  # noqa: BLE001 - the search goes on; the traceback is in the trial's train.log
            trial.set_user_attr("error", f"{type(error).__name__}: {str(error)[:400]}")
            log.exception(f"trial {trial.number} failed: {type(error).__name__}: {error}")
            return math.nan
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            trial.set_user_attr("error", f"metrics.json has no {self.metric}")
            return math.nan
        return float(value)


def _make_folder(folder: Path) -> bool:
    """The study's folder, made if needed (True: made now); one FmnistError when it can't be."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise FmnistError(f"tune.dir={folder} is a file, not a folder. Fix: give a folder")
    made = not os.path.lexists(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise FmnistError(f"tune.dir={folder} cannot be written: {error.strerror or error}") from None
    return made


def _write_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """The trial's `.hydra/` as a Hydra run leaves it (config.yaml, hydra.yaml, overrides.yaml): a normal run folder."""
    folder = run_dir / ".hydra"
    folder.mkdir()
    write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": HydraConfig.get()})))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


def _new_folder(folder: Path) -> Path:
    try:  # a trial number is the storage's: never an earlier trial's folder
        folder.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise FmnistError(f"{folder} exists already: it is not this trial's") from None
    return folder


def _setup_logging(log_file: Path) -> None:
    """The terminal (through tqdm) and the study's tune.log; each trial adds its own train.log."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = TqdmHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    file = LogFile(log_file)
    file.setFormatter(TIMED)
    root.handlers[:] = [console, file]
    for name in ("alembic", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.disable_default_handler()  # its warnings reach the handlers above
    optuna.logging.enable_propagation()
    route_lightning_logs()


def _trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    state = trial.state.name
    value = f" {trial.value:.4f}" if trial.value is not None and state == "COMPLETE" else ""
    # stopped at that epoch's validation: its metrics.json counts the epochs before it, whose checkpoints it has
    pruned = state == "PRUNED" and trial.intermediate_values
    at = f" at the validation of epoch {max(trial.intermediate_values) + 1}" if pruned else ""
    seconds = f" in {trial.duration.total_seconds():.1f} s" if trial.duration else ""
    log.info(f"trial {trial.number}: {state}{value}{at}{seconds} ({params}) {trial.user_attrs.get('run_dir', '')}")


def summary_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial of the study (every worker's; not those ignored), in number order."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "epochs reported": len(t.intermediate_values),
                "params": " ".join(f"{k}={v}" for k, v in t.params.items()),
                "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
                "run_dir": t.user_attrs.get("run_dir", ""),
                "error": t.user_attrs.get("error", ""),
            }
        )
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if key == "value" and isinstance(value, float) else str(value)


def write_summary(study: optuna.Study, folder: Path, metric: str) -> list[dict[str, Any]]:
    """study_summary.csv and study_summary.md (every trial, and a count per state); returns the rows."""
    rows = summary_rows(study)
    columns = list(rows[0]) if rows else ["trial", "state", "value"]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / "study_summary.csv", table.getvalue())
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    lines = [
        f"# Study {study.study_name}: {len(rows)} trials, " + ", ".join(f"{n} {s}" for s, n in states.items() if n),
        "",
        f"value: {metric} (maximised)",
        "",
    ]
    ignored = getattr(study._storage, "ignored", {})
    if ignored:
        told = "; ".join(f"trial {n}: {why}" for n, (why, _) in sorted(ignored.items())[:20])
        lines += [f"Ignored, not of this search space: {told}{'; ...' if len(ignored) > 20 else ''}", ""]
    lines += [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        cells = [_cell(k, v) for k, v in r.items()]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    write_text(folder / "study_summary.md", "\n".join(lines) + "\n")
    return rows


def write_best(search: Search, study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, str] | None:
    """best.yaml (the best trial's overrides, a YAML list) and the command that retrains it; None without one."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    params = _checked_params(best.params, search.space, f"the best trial ({best.number}) in the storage")
    overrides = search.trial_overrides(params)
    command = "python -m fmnist.train " + " ".join(shlex.quote(o) for o in overrides)
    one_line = all(c.isprintable() for c in command + study.study_name)  # a header line never becomes two
    header = (
        f"# The best trial of study {study.study_name if one_line else '(name not shown)'}: trial {best.number}, "
        f"{search.metric} {best.value:.4f}, {search.run_dir(best.number)}\n"
        + (f"# Retrain it (and test it) with:\n#   {command}\n" if one_line else "")
    )
    write_text(search.dir / "best.yaml", header + OmegaConf.to_yaml(OmegaConf.create(overrides)))
    return best, command


def _settings(ours: list[str]) -> DictConfig:
    """fmnist/conf/tune.yaml with the search's overrides, checked; its errors never show a storage URL's password."""
    try:
        settings = _compose(ours, config_name="tune")
        unknown = sorted({f"tune.{k}" for k in settings.tune} - set(RULES)) + sorted(set(settings) - {"tune", "pruner"})
        if unknown:
            raise FmnistError(f"{', '.join(unknown)}: not a setting of fmnist.tune (fmnist/conf/tune.yaml lists them)")
        check_values(settings, RULES)
        return settings
    except FmnistError as error:
        parser = OverridesParser.create()
        for override in ours:  # Hydra's grammar errors may not say which override: the first it can't read
            try:
                parser.parse_overrides([override])
            except Exception:  # noqa: BLE001 - Hydra's OverrideParseException and ANTLR's
                raise FmnistError(_scrubbed(f"{override}: {error}", ours)) from None
        raise FmnistError(_scrubbed(str(error), ours)) from None
    except OmegaConfBaseException as error:  # e.g. an interpolation of a value that does not resolve
        raise FmnistError(_scrubbed(" ".join(str(error).split())[:400], ours)) from None


def tune(args: list[str]) -> dict[str, Any]:
    """Run the search the command line describes; return what it found (the summary's rows and the best)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # fmnist prints one line per trial, with its error
    ours, base = split_args(args)
    settings = _settings(ours)
    search = Search(settings, base)
    study_name = settings.tune.study_name or f"fmnist_{search.model}"
    made = _make_folder(search.dir)
    storage = settings.tune.storage or f"sqlite:///{(search.dir / 'optuna.db').resolve()}"
    try:
        study = open_study(settings, storage, study_name, search.space)
        search.check_folder(study)
        if search.check_trials(study, tell=False):
            raise FmnistError(search.refusal)
    except FmnistError:
        if made:
            with contextlib.suppress(OSError):
                search.dir.rmdir()  # only when empty: a refused start leaves no folder behind
        raise
    _setup_logging(search.dir / "tune.log")
    earlier = len(study.get_trials(deepcopy=False))
    log.info(
        f"study {study_name} ({earlier} trials so far) in {shown_url(storage)}: {settings.tune.n_trials} trials of "
        f"{search.model} over {', '.join(search.space)}; pruner {type(study.pruner).__name__}; folder {search.dir}"
    )
    search.check_trials(study)  # the trials ignored so far: told once
    start = time.perf_counter()
    interrupted = False
    try:
        n_trials = settings.tune.n_trials
        study.optimize(search.objective, n_trials=n_trials, callbacks=[search.after_trial], gc_after_trial=True)
    except (KeyboardInterrupt, SIGTERMException):
        interrupted = True
    search.check_trials(study)
    rows = write_summary(study, search.dir, search.metric)
    log.info(f"{len(rows)} trials in the study; this command: {time.perf_counter() - start:.1f} s")
    log.info(f"study summary: {search.dir / 'study_summary.md'}")
    found = write_best(search, study)
    result: dict[str, Any] = {"rows": rows, "dir": search.dir, "best": None}
    if found:
        best, command = found
        result["best"] = {"trial": best.number, "value": best.value, "params": best.params, "command": command}
        log.info(f"best: trial {best.number}, {search.metric} {best.value:.4f} ({search.dir / 'best.yaml'})")
        log.info(f"retrain it: {command}")
        best_dir = search.run_dir(best.number)
        if settings.tune.test_best and not interrupted and not search.refusal and (best_dir / "metrics.json").is_file():
            base_cfg = _compose([*search.trial_overrides(best.params), "output_dir=."])
            result["test"] = test_once(base_cfg.data, best_dir, f"best trial {best.number}")
    if interrupted:
        raise FmnistError(
            f"interrupted: the study keeps its {len(rows)} trials; run the same command again to continue it"
        )
    if search.refusal:
        raise FmnistError(search.refusal)
    failed = [t for t in search.finished if t.state == optuna.trial.TrialState.FAIL]
    if search.finished and len(failed) == len(search.finished):
        why = " ".join(str(failed[0].user_attrs.get("error", "")).split())[:200]
        raise FmnistError(
            f"all {len(failed)} trials of this command failed (trial {failed[0].number}: {why or 'no error recorded'})"
            f": see {search.dir / 'study_summary.md'}"
        )
    if not found:
        raise FmnistError(f"no trial completed: see {search.dir / 'study_summary.md'}")
    return result
