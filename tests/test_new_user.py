"""What a new user trips over, each found by following README literally (issue 29)."""

from __future__ import annotations

import pytest

from tests.conftest import assert_one_error_line, run_cli


@pytest.mark.parametrize(
    "command, override, named",
    [
        ("fmnist.train", "model=nope", "cnn"),
        ("fmnist.train", "trainer=gpu_fastest", "cpu_fast"),
        ("fmnist.train", "model=cnn,nope", "rnn"),
        ("fmnist.tune", "pruner=nope", "median"),
    ],
)
def test_an_unknown_config_choice_is_one_line_naming_the_choices(tmp_path, command, override, named):
    result = run_cli(command, override, cwd=tmp_path)
    assert_one_error_line(result, override, named)
    assert not (tmp_path / "outputs").exists()
