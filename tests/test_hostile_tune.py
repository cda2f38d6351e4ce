"""`fmnist.tune` against a hostile study storage and storage URL: a trial that is not of the search space is
ignored (or refuses the study, where Optuna can't hold both), and no printed or written form of a storage URL
shows any part of its password."""

from __future__ import annotations

import csv
import math
import sqlite3
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, assert_one_error_line, compose_train, run_cli

optuna = pytest.importorskip("optuna", reason="the search needs pip install -e '.[sweeps]'")

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402

from fmnist.tuning.search import _secret_free, shown_url  # noqa: E402
from fmnist.tuning.space import mismatch, search_space  # noqa: E402

LR, BATCH = "model.optimizer.lr", "data.batch_size"
SPACE = {LR: FloatDistribution(1e-4, 1e-1, log=True), BATCH: CategoricalDistribution([32, 65, 128, 256])}


def tiny(root: Path, study: Path, *extra: str) -> list[str]:
    return [
        "model=rnn", f"data.root={root}", "data.search_dirs=[]", "debug=tiny", "trainer.max_epochs=1",
        f"tune.dir={study}", "tune.test_best=false", *extra,
    ]  # fmt: skip


def new_study(folder: Path) -> tuple[optuna.Study, str]:
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'optuna.db'}"
    return optuna.create_study(study_name="fmnist_rnn", storage=storage, direction="maximize"), storage


def own(value: float) -> optuna.trial.FrozenTrial:
    return create_trial(params={LR: 0.01, BATCH: 32}, distributions=SPACE, value=value)


def no_traceback(result) -> None:
    printed = result.stdout + result.stderr
    assert "Traceback" not in printed, printed[-3000:]


def test_the_space_s_distributions_are_those_the_poisoned_trials_are_written_against():
    cfg = compose_train(["model=rnn", "output_dir=."])
    assert search_space(OmegaConf.load(CONF / "search_space" / "rnn.yaml"), cfg, "s") == SPACE


def test_a_stored_trial_is_told_from_the_space_s_own():
    assert mismatch(own(0.5), SPACE) is None
    other_kind = {**SPACE, BATCH: FloatDistribution(1, 100)}
    other_kind = create_trial(params={LR: 0.01, BATCH: 33.5}, distributions=other_kind, value=0.9)
    why, refused = mismatch(other_kind, SPACE)
    assert refused and BATCH in why
    wider = {**SPACE, LR: FloatDistribution(1e-6, 10.0, log=True)}
    extra = {**SPACE, "evil.key": IntDistribution(0, 2)}
    cases = [
        (create_trial(params={LR: 5.0, BATCH: 32}, distributions=wider, value=0.9), LR),
        (create_trial(params={LR: 0.01, BATCH: 32, "evil.key": 1}, distributions=extra, value=0.9), "evil.key"),
        (create_trial(params={LR: 0.01}, distributions={LR: SPACE[LR]}, value=0.9), BATCH),
        (create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {BATCH: 33}}), BATCH),
        (create_trial(params={LR: 0.01, BATCH: 32}, distributions=SPACE, value=math.inf), "inf"),
    ]
    for trial, named in cases:
        why, refused = mismatch(trial, SPACE)
        assert named in why and not refused, why
    running = create_trial(state=TrialState.RUNNING, params={LR: 0.01}, distributions={LR: SPACE[LR]})
    assert mismatch(running, SPACE) is None  # another worker's, mid-suggestion


def test_a_trial_of_another_kind_refuses_the_study_in_one_line_before_any_trial(tmp_path, tiny_root):
    study, storage = new_study(tmp_path / "study")
    # another search space's trial: data.batch_size an interval (Optuna's storage then refuses the space's choice())
    poisoned = {LR: SPACE[LR], BATCH: FloatDistribution(1.0, 100.0)}
    study.add_trial(create_trial(params={LR: 0.01, BATCH: 33.5}, distributions=poisoned, value=0.99))
    result = run_cli("fmnist.tune", *tiny(tiny_root, tmp_path / "study", "tune.n_trials=2"), cwd=tmp_path)
    no_traceback(result)
    assert_one_error_line(result, "trial 0", BATCH, "tune.study_name=")
    trials = optuna.load_study(study_name="fmnist_rnn", storage=storage).get_trials()
    assert [t.number for t in trials] == [0]  # no trial of this command failed in it
    assert not list((tmp_path / "study").glob("trial_*"))


def test_trials_outside_the_space_are_ignored_told_once_and_the_search_goes_on(tmp_path, tiny_root):
    study, storage = new_study(tmp_path / "study")
    study.add_trial(own(0.1))  # trial 0: this space's
    wider = {**SPACE, LR: FloatDistribution(1e-6, 10.0, log=True)}
    study.add_trial(create_trial(params={LR: 5.0, BATCH: 32}, distributions=wider, value=0.999))  # 1: out of range
    extra = {**SPACE, "evil.key": IntDistribution(0, 2)}
    study.add_trial(create_trial(params={LR: 0.01, BATCH: 32, "evil.key": 1}, distributions=extra, value=0.998))  # 2
    study.enqueue_trial({BATCH: 33})  # 3: waiting, with a value no choice() of the space gives
    args = tiny(tiny_root, tmp_path / "study", "tune.n_trials=2", "tune.n_startup_trials=0", "pruner=none")
    result = run_cli("fmnist.tune", *args, cwd=tmp_path, timeout=600)
    no_traceback(result)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    told = [line for line in result.stdout.splitlines() if "trial 1" in line]
    assert len(told) == 1 and all(s in told[0] for s in (LR, "trial 2", "evil.key", "trial 3", BATCH)), told
    trials = {t.number: t for t in optuna.load_study(study_name="fmnist_rnn", storage=storage).get_trials()}
    assert trials[3].state == TrialState.WAITING  # never run
    assert [trials[n].state for n in (4, 5)] == [TrialState.COMPLETE] * 2, trials
    best = OmegaConf.load(tmp_path / "study" / "best.yaml")
    header = (tmp_path / "study" / "best.yaml").read_text().splitlines()[0]
    assert "trial 1," not in header and "trial 2," not in header and not any("evil" in o for o in best), header
    assert "3 trials, 3 COMPLETE" in (tmp_path / "study" / "study_summary.md").read_text()
    with open(tmp_path / "study" / "study_summary.csv", newline="") as table:
        assert [row["trial"] for row in csv.DictReader(table)] == ["0", "4", "5"]


def test_a_trial_of_another_kind_written_mid_search_stops_it_in_one_line(tmp_path, tiny_root, monkeypatch):
    import fmnist.tuning.search as search

    study, storage = new_study(tmp_path / "study")
    suggest = search._suggest

    def racing(trial, key, distribution):  # another space's worker writes data.batch_size first, as an interval
        if key == BATCH and len(study.get_trials()) == 1:
            poisoned = {LR: SPACE[LR], BATCH: FloatDistribution(1.0, 100.0)}
            study.add_trial(create_trial(params={LR: 0.01, BATCH: 33.5}, distributions=poisoned, value=0.99))
        return suggest(trial, key, distribution)

    monkeypatch.setattr(search, "_suggest", racing)
    result = run_cli("fmnist.tune", *tiny(tiny_root, tmp_path / "study", "tune.n_trials=3"), cwd=tmp_path)
    no_traceback(result)
    assert_one_error_line(result, "trial 1", BATCH, "tune.study_name=")
    states = [t.state for t in optuna.load_study(study_name="fmnist_rnn", storage=storage).get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE], states  # the search stopped at once
    assert not list((tmp_path / "study").glob("trial_*"))


def test_a_row_optuna_cannot_read_stops_the_search_in_one_line(tmp_path, tiny_root):
    study, storage = new_study(tmp_path / "study")
    study.add_trial(own(0.5))
    with sqlite3.connect(tmp_path / "study" / "optuna.db") as db:
        db.execute("UPDATE trial_params SET distribution_json = 'garbage'")
    result = run_cli("fmnist.tune", *tiny(tiny_root, tmp_path / "study", "tune.n_trials=1"), cwd=tmp_path)
    no_traceback(result)
    assert_one_error_line(result, "trial", "tune.dir=")


def test_a_command_whose_trials_all_fail_exits_non_zero(tmp_path, tiny_root):
    study, _ = new_study(tmp_path / "study")
    study.add_trial(own(0.5))  # an earlier trial completed: the study has a best, this command none
    args = tiny(tiny_root, tmp_path / "study", "tune.n_trials=1", "tune.metric=no/such_metric")
    result = run_cli("fmnist.tune", *args, cwd=tmp_path, timeout=600)
    no_traceback(result)
    assert_one_error_line(result, "trial 1", "no/such_metric")


SECRET_URLS = [
    ("postgresql://user:Pw1x@Zq9y@127.0.0.1:1/db", ("Pw1x", "Zq9y")),  # SQLAlchemy: password Pw1x, host Zq9y@...
    ("postgresql://user:Pw1x@Zq:9y7w@127.0.0.1:1/db", ("Pw1x", "Zq:9", "9y7w")),  # ... and a port it can't read
    ("postgresql://user:Pw1x/Qr8@Zq9y@127.0.0.1:1/db", ("Pw1x", "Qr8@", "Zq9y")),
    ("postgresql://user:Pw1x,Zq9y@127.0.0.1:1/db", ("Pw1x", "Zq9y")),  # a comma: Hydra's error quotes the override
    ("postgresql://user@127.0.0.1:1/db?password=Pw1x@Zq9y", ("Pw1x", "Zq9y")),
]


@pytest.mark.parametrize("url, secrets", SECRET_URLS)
def test_no_part_of_a_password_is_printed_or_written(tmp_path, tiny_root, url, secrets):
    result = run_cli("fmnist.tune", *tiny(tiny_root, tmp_path / "study", "tune.n_trials=1"), f"tune.storage={url}",
                     cwd=tmp_path)  # fmt: skip
    assert_one_error_line(result, "tune.storage")
    no_traceback(result)
    for secret in secrets:
        assert secret not in result.stdout + result.stderr, (secret, result.stderr)
        for file in tmp_path.rglob("*"):
            assert not file.is_file() or secret.encode() not in file.read_bytes(), file


@pytest.mark.parametrize("url, secrets", SECRET_URLS)
def test_shown_urls_and_driver_messages_hold_no_part_of_a_password(url, secrets):
    message = f"could not connect to {url.split('@', 1)[-1]}: {url} refused"
    for text in (shown_url(url), _secret_free(message, url)):
        assert not any(secret in text for secret in secrets), text
    assert shown_url("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert shown_url("sqlite:////tmp/a@b/optuna.db") == "sqlite:////tmp/a%40b/optuna.db"  # no user part: kept
