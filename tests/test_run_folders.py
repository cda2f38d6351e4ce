"""A run folder is a file too: a resume writes only inside it and resolves nothing but its own keys, a new
run never replaces an earlier one, links planted in it are replaced rather than written through, and a best
checkpoint that is gone is one line (found by an outside review of the hardening)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fmnist.utils.files import write_atomically
from tests.conftest import run_cli, tiny_run_args


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


def _edit_config(run: Path, old: str, new: str) -> None:
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))


def _one_error_line(result, *needles: str) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "old, new, named",
    [
        ("dirpath: ${output_dir}/checkpoints", "dirpath: VICTIM", "callbacks.model_checkpoint.dirpath"),
        ("output_dir: ${output_dir}\n", "output_dir: VICTIM\n", "callbacks.model_summary.output_dir"),
        ("default_root_dir: ${output_dir}", "default_root_dir: ${output_dir}/../..", "trainer.default_root_dir"),
        ("filename: epoch_{epoch:03d}", "filename: ../../epoch_{epoch:03d}", "callbacks.model_checkpoint.filename"),
    ],
)
def test_a_resume_never_writes_where_the_run_config_points_outside_the_run(
    finished_tiny_run, tmp_path, old, new, named
):
    run = _copy(finished_tiny_run, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "last.ckpt").write_text("PRECIOUS")
    (victim / "model_summary.md").write_text("PRECIOUS")
    _edit_config(run, old, new.replace("VICTIM", str(victim)))
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    _one_error_line(result, "is refused", named)
    assert (victim / "last.ckpt").read_text() == "PRECIOUS"
    assert (victim / "model_summary.md").read_text() == "PRECIOUS"


@pytest.mark.slow
@pytest.mark.parametrize(
    "value, named",
    [
        ("${oc.env:SECRET_TOKEN}", "name="),
        ("\"${oc.decode:'{a: 1}'}\"", "name="),
        ("${name}", "name="),
    ],
)
def test_a_run_config_resolves_nothing_but_its_own_keys(finished_tiny_run, tmp_path, value, named):
    run = _copy(finished_tiny_run, tmp_path)
    _edit_config(run, "name: ${hydra:runtime.choices.model}", f"name: {value}")
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    _one_error_line(result, named)
    assert "s3cr3t" not in (run / "metrics.json").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, named",
    [
        ("data: [unclosed\n", "not readable YAML"),
        ("- a list\n", "not a run's config"),
    ],
)
def test_an_unreadable_run_config_is_one_line(finished_tiny_run, tmp_path, content, named):
    run = _copy(finished_tiny_run, tmp_path)
    (run / ".hydra" / "config.yaml").write_text(content)
    _one_error_line(run_cli("fmnist.train", f"resume={run}", cwd=tmp_path), named)


@pytest.mark.slow
def test_a_new_run_never_replaces_an_earlier_run_in_its_folder(finished_tiny_run, tmp_path, tiny_root):
    run = _copy(finished_tiny_run, tmp_path)
    before = (run / "metrics.json").read_bytes()
    common = tiny_run_args(tiny_root)
    result = run_cli("fmnist.train", *common, "seed=7", f"hydra.run.dir={run}", cwd=tmp_path)
    _one_error_line(result, "holds an earlier run", "overwrite=true", "resume=")
    assert (run / "metrics.json").read_bytes() == before
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    result = run_cli("fmnist.train", "-m", *common, "seed=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    _one_error_line(result, "holds the runs of an earlier sweep", "job folders 0")


def test_a_link_planted_where_a_file_goes_is_replaced_not_written_through(tmp_path):
    precious = tmp_path / "mine.md"
    precious.write_text("PRECIOUS")
    link = tmp_path / "run" / "model_summary.md"
    link.parent.mkdir()
    link.symlink_to(precious)
    write_atomically(link, b"# CNN")
    assert precious.read_text() == "PRECIOUS"
    assert not link.is_symlink() and link.read_text() == "# CNN"


@pytest.mark.slow
def test_a_resume_whose_best_checkpoint_is_gone_is_one_line(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / metrics["best_checkpoint"]).unlink()
    untested = {k: v for k, v in metrics.items() if not k.startswith("test/")}
    (run / "metrics.json").write_text(json.dumps(untested))  # as a run stopped while testing leaves it
    _one_error_line(run_cli("fmnist.train", f"resume={run}", cwd=tmp_path), "best checkpoint", "is gone")
