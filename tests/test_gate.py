"""The garment gate: fitted on Fashion-MNIST alone, kept beside the checkpoint, trusted only as plain numbers."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from fmnist.models.gate import (
    KEEP,
    LEVELS,
    checkpoint_digest,
    fit_for,
    fit_gate,
    fit_temperature,
    gate_for,
    gate_from_json,
    gate_json,
    gate_path,
    read_gate,
)
from fmnist.utils.errors import FmnistError
from tests.conftest import assert_one_error_line, run_cli

CLASSES, DIM = 10, 8


def _cloud(n: int, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Embeddings around one direction per class, logits that favour the class, and the labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    centres = torch.eye(CLASSES, DIM) * 4 + 1
    embeddings = centres[labels] + 0.3 * torch.randn(n, DIM, generator=generator)
    logits = 3 * torch.nn.functional.one_hot(labels, CLASSES).float() + torch.randn(n, CLASSES, generator=generator)
    return (embeddings, logits), labels


@pytest.fixture(scope="module")
def gate():
    train, train_labels = _cloud(2000, 0)
    val, val_labels = _cloud(1000, 1)
    return fit_gate(train, train_labels, val, val_labels)


def test_the_threshold_keeps_the_share_of_validation_garments_and_flags_what_is_far(gate):
    (embeddings, logits), _ = _cloud(1000, 1)
    _, likeness, not_garment = gate.judge(embeddings, logits)
    assert float(not_garment.float().mean()) == pytest.approx(1 - KEEP, abs=0.01)
    (held_out, held_logits), _ = _cloud(1000, 2)  # the same garments, never seen: about as many kept
    assert float(gate.judge(held_out, held_logits)[2].float().mean()) == pytest.approx(1 - KEEP, abs=0.03)
    far = -torch.ones(50, DIM) + 0.1 * torch.randn(50, DIM)  # unlike every class
    probs, far_likeness, far_flags = gate.judge(far, torch.zeros(50, CLASSES))
    assert bool(far_flags.all()) and float(far_likeness.max()) < 0.01
    assert 0 <= float(likeness.min()) and float(likeness.max()) <= 1 and torch.allclose(probs.sum(1), torch.ones(50))


def test_temperature_scaling_recovers_how_overconfident_the_logits_are():
    generator = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(20000, CLASSES, generator=generator)
    labels = torch.distributions.Categorical(logits=logits).sample()  # calibrated at T = 1
    assert fit_temperature(3 * logits, labels) == pytest.approx(3, rel=0.05)


def test_the_gate_file_round_trips_and_refuses_anything_else(gate):
    data = json.loads(json.dumps(gate_json(gate, "ab" * 32)))
    back = gate_from_json(data, "ab" * 32, CLASSES, DIM)
    assert torch.equal(back.means, gate.means) and torch.equal(back.quantiles, gate.quantiles)
    assert back.threshold == gate.threshold and back.temperature == gate.temperature

    def refused(change, digest="ab" * 32, dim=DIM):
        with pytest.raises(ValueError):
            gate_from_json({**data, **change}, digest, CLASSES, dim)

    refused({}, digest="cd" * 32)  # another checkpoint's gate
    refused({}, dim=DIM + 1)  # another network's: the arrays' sizes are the network's, not the file's
    refused({"precision": data["precision"] + "AAAA"})  # longer than the network asks for: refused undecoded
    refused({"means": "!" * len(data["means"])})  # not base64
    refused({"temperature": math.inf})
    refused({"temperature": 0.0})
    refused({"keep": 0.5})
    refused(
        {"quantiles": gate_json(gate.__class__(gate.means, gate.precision, LEVELS.flip(0), 1, 0, 0), "")["quantiles"]}
    )
    refused({"_target_": "os.system"})
    nan = gate_json(gate.__class__(gate.means * math.nan, gate.precision, gate.quantiles, 1, 0, 0), "ab" * 32)
    refused({"means": nan["means"]})


def test_a_gate_file_is_read_capped_by_the_network_size(tmp_path, gate):
    path = tmp_path / "x.gate.json"
    path.write_text(json.dumps(gate_json(gate, "ab" * 32)) + " " * (1 << 20))  # 1 MiB more than any 8-wide gate
    with pytest.raises(ValueError):
        read_gate(path, "ab" * 32, CLASSES, DIM)


class _Model(torch.nn.Module):
    """An 8-wide embedding and a classifier: enough for `gate_for`."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, DIM))
        self.classifier = torch.nn.Linear(DIM, CLASSES)

    def embed(self, x):
        return self.features(x)


class _Split:
    def __init__(self, n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
        self.labels = torch.arange(n) % CLASSES

    def __len__(self):
        return len(self.labels)


class _Data:
    """The datamodule's two splits, and how many times they were asked for."""

    def __init__(self):
        self.train_set, self.val_set, self.setups = _Split(300, 0), _Split(100, 1), 0

    def setup(self, stage):
        self.setups += 1


def test_the_gate_is_fitted_once_and_kept_beside_the_checkpoint(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"weights")
    model, data = _Model(), _Data()
    first = gate_for(model, ckpt, data)
    kept = gate_path(ckpt, checkpoint_digest(ckpt))
    assert kept.parent == tmp_path and kept.is_file() and data.setups == 1
    again = gate_for(model, ckpt, data)  # read back: no second fit
    assert data.setups == 1 and torch.equal(again.precision, first.precision)
    ckpt.write_bytes(b"other weights")  # a new checkpoint: a new gate, the old file left as it was
    gate_for(model, ckpt, data)
    assert data.setups == 2 and kept.is_file() and len(list(tmp_path.glob("last.gate-*.json"))) == 2


def test_a_file_at_the_gates_name_is_never_replaced(tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"weights")
    kept = gate_path(ckpt, checkpoint_digest(ckpt))
    kept.write_text('{"not": "a gate"}')
    data = _Data()
    gate_for(_Model(), ckpt, data)
    assert kept.read_text() == '{"not": "a gate"}' and data.setups == 1
    assert str(kept) in capsys.readouterr().out


def test_a_network_whose_outputs_are_nan_gets_no_gate(tmp_path):
    model = _Model()
    with torch.no_grad():
        model.features[1].weight.fill_(math.nan)
    (tmp_path / "last.ckpt").write_bytes(b"weights")
    with pytest.raises(FmnistError, match="NaN"):
        gate_for(model, tmp_path / "last.ckpt", _Data())
    assert not list(tmp_path.glob("*.gate-*"))


# ---------------------------------------------------------------- through the commands


@pytest.mark.slow
def test_predict_flags_garment_and_unsure_apart_and_evaluate_measures_the_gate(tmp_path, trained_run, tiny_root):
    from PIL import Image

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    data = [f"data.root={tiny_root}", "data.search_dirs=[]"]
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.effect_noise((64, 64), 80).save(photos / "noise.png")
    Image.new("L", (40, 30), 0).crop((0, 0, 40, 30)).save(photos / "blank.png")
    shirt = Image.new("L", (56, 56), 255)
    shirt.paste(40, (12, 8, 44, 50))
    shirt.save(photos / "shirt.png")
    result = run_cli("fmnist.predict", f"ckpt_path={ckpt}", f"inputs={photos}", "output_dir=out", *data, cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]  # the blank picture is an error row
    rows = {r["file"].rsplit("/", 1)[1]: r for r in json.loads((tmp_path / "out" / "predictions.json").read_text())}
    for name in ("noise.png", "shirt.png"):
        assert 0 <= rows[name]["garment_score"] <= 1 and isinstance(rows[name]["not_garment"], bool)
        assert isinstance(rows[name]["unsure"], bool)
        assert rows[name]["not_garment"] == (rows[name]["garment_score"] < 1 - KEEP)
    header = (tmp_path / "out" / "predictions.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["garment_score", "not_garment", "unsure", "error"]
    assert len(list(ckpt.parent.glob("last.gate-*.json"))) == 1

    without = run_cli(
        "fmnist.predict", f"ckpt_path={ckpt}", f"inputs={photos}", "output_dir=o2", "gate=false", cwd=tmp_path
    )
    assert "garment_score" not in json.loads((tmp_path / "o2" / "predictions.json").read_text())[0]
    assert without.returncode == 3

    out = tmp_path / "eval"
    result = run_cli(
        "fmnist.evaluate", f"ckpt_path={ckpt}", "ood=true", "ood_images=20", f"output_dir={out}", *data, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "ood.json").read_text())
    assert set(report["kinds"]) == {"digits", "letters", "words", "photos", "noise", "shapes"}
    for row in report["kinds"].values():
        assert 0 <= row["gate_auroc"] <= 1 and 0 <= row["gate_fpr95"] <= 1 and 0 < row["images"] <= 20
    assert (out / "ood.png").stat().st_size > 10_000 and "| digits |" in (out / "ood.md").read_text()
    assert "ood/noise/auroc" in json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_evaluate_ood_options_are_checked(tmp_path, trained_run):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    result = run_cli("fmnist.evaluate", f"ckpt_path={ckpt}", "ood=true", "ood_images=5", cwd=tmp_path)
    assert_one_error_line(result, "ood_images=5")
    assert not (tmp_path / "eval").exists()


def test_predict_without_data_for_the_gate_is_one_line_naming_the_way_out(tmp_path):
    from PIL import Image

    from fmnist.models import SimpleRNN

    model = SimpleRNN()
    state = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "fmnist_model": "SimpleRNN"}
    torch.save(state, tmp_path / "model.ckpt")
    Image.effect_noise((40, 40), 60).save(tmp_path / "photo.png")
    args = ["ckpt_path=model.ckpt", "inputs=photo.png", f"data.root={tmp_path / 'none'}", "data.search_dirs=[]"]
    result = run_cli("fmnist.predict", *args, "output_dir=out", cwd=tmp_path)
    assert_one_error_line(result, "gate=false")
    assert not (tmp_path / "out" / "predictions.csv").exists() and not list(tmp_path.glob("model.gate-*"))
    assert run_cli("fmnist.predict", *args, "output_dir=out", "gate=false", cwd=tmp_path).returncode == 0


# ---------------------------------------------------------------- hostile gate files, folders and networks


def test_a_gate_file_with_numbers_no_fit_gives_is_refused_not_a_crash(gate):
    """An integer of 400 digits is no OverflowError; values finite but huge would make every score NaN."""
    data = json.loads(json.dumps(gate_json(gate, "ab" * 32)))
    for name in ("temperature", "ece_before", "ece_after", "keep"):
        with pytest.raises(ValueError):
            gate_from_json({**data, name: 10**400}, "ab" * 32, CLASSES, DIM)
    huge = gate_json(
        gate.__class__(gate.means * 0 + 1e300, gate.precision * 0 + 1e300, gate.quantiles, 1, 0, 0), "ab" * 32
    )
    for name in ("means", "precision"):
        with pytest.raises(ValueError):
            gate_from_json({**data, name: huge[name]}, "ab" * 32, CLASSES, DIM)
    scores = gate.garment_score(torch.randn(20, DIM))  # a fitted gate's scores and precision are far from the cap
    assert bool(scores.isfinite().all()) and float(gate.precision.abs().max()) < 1e100


def test_a_link_at_the_gates_name_is_not_followed_nor_replaced(tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"weights")
    gate_for(_Model(), ckpt, _Data())
    kept = gate_path(ckpt, checkpoint_digest(ckpt))
    elsewhere = kept.rename(tmp_path / "elsewhere.json")  # this checkpoint's own gate, reached through a link
    kept.symlink_to(elsewhere)
    data = _Data()
    gate_for(_Model(), ckpt, data)
    assert data.setups == 1 and kept.is_symlink() and str(kept) in capsys.readouterr().out


def test_a_folder_the_gate_cannot_be_kept_in_only_costs_the_saving(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (real / "last.ckpt").write_bytes(b"weights")
    (tmp_path / "models").symlink_to(real)  # fmnist writes through no folder link (a read-only folder for non-root)
    fitted = gate_for(_Model(), tmp_path / "models" / "last.ckpt", _Data())
    assert fitted.temperature > 0 and not list(real.glob("*.gate-*")) and "note:" in capsys.readouterr().out


def test_measuring_a_network_that_overflows_on_some_pictures_is_one_error():
    from fmnist.analysis.ood import measure_gate

    class Bright(_Model):
        """Finite on the dark training images, infinite on bright pictures."""

        def embed(self, x):
            embedding = self.features(x)
            return torch.where(x.flatten(1).mean(1, keepdim=True) > 0.45, embedding * math.inf, embedding)

    model, data = Bright(), _Data()
    for split in (data.train_set, data.val_set):
        split.images //= 2
    fitted = fit_for(model, data)
    bright = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)  # uniform noise: half of it bright
    with pytest.raises(FmnistError, match="test garment"):
        measure_gate(model, fitted, bright, torch.arange(40) % CLASSES, 10)


def test_ctrl_c_while_fitting_ends_with_one_line_and_keeps_nothing(tmp_path, monkeypatch, capsys):
    import fmnist.models.gate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fmnist.models.gate, "network_outputs", interrupted)
    (tmp_path / "last.ckpt").write_bytes(b"weights")
    try:
        gate_for(_Model(), tmp_path / "last.ckpt", _Data())
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a KeyboardInterrupt traceback")
    except SystemExit as stop:
        assert stop.code == 130
    else:
        pytest.fail("Ctrl-C was swallowed")
    assert "interrupted" in capsys.readouterr().err and not list(tmp_path.glob("*.gate-*"))


@pytest.mark.slow
def test_predict_without_fashion_mnist_says_gate_false_classifies_anyway(tmp_path, trained_run):
    from PIL import Image

    Image.effect_noise((64, 64), 80).save(tmp_path / "noise.png")
    ckpt = tmp_path / "last.ckpt"  # a copy: no gate beside it yet, whatever the other tests kept
    shutil.copyfile(trained_run / "checkpoints" / "last.ckpt", ckpt)
    no_data = [f"data.root={tmp_path / 'nothing'}", "data.search_dirs=[]"]
    args = (f"ckpt_path={ckpt}", f"inputs={tmp_path / 'noise.png'}", *no_data)
    result = run_cli("fmnist.predict", *args, "output_dir=out", cwd=tmp_path)
    assert_one_error_line(result, str(tmp_path / "nothing"), "gate=false")
    assert not list((tmp_path / "out").glob("predictions.*")) and not list(ckpt.parent.glob("*.gate-*"))
    assert run_cli("fmnist.predict", *args, "output_dir=o2", "gate=false", cwd=tmp_path).returncode == 0


def test_a_checkpoint_swapped_for_a_fifo_after_loading_is_refused_without_waiting(tmp_path):
    import os
    import threading

    fifo = tmp_path / "last.ckpt"
    os.mkfifo(fifo)
    outcome = []

    def digest():
        try:
            outcome.append(checkpoint_digest(fifo))
        except FmnistError as error:
            outcome.append(error)

    reader = threading.Thread(target=digest, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked on the FIFO: a writer that closes at once lets it go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("reading the checkpoint waited on a FIFO")
    assert isinstance(outcome[0], FmnistError) and str(fifo) in str(outcome[0])


@pytest.mark.slow
def test_evaluate_ood_on_the_validation_split_is_refused_not_measured_on_the_test_split(tmp_path, trained_run):
    # the gate is fitted on the validation split, so ood=true measures it on the test split: split=val (kept to
    # leave the test set unseen) with ood=true is one error line, and nothing is written
    ckpt = tmp_path / "last.ckpt"  # a copy: no gate beside it, whatever the other tests kept beside theirs
    shutil.copyfile(trained_run / "checkpoints" / "last.ckpt", ckpt)
    out = tmp_path / "eval-val"
    result = run_cli("fmnist.evaluate", f"ckpt_path={ckpt}", "split=val", "ood=true", f"output_dir={out}", cwd=tmp_path)
    assert_one_error_line(result, "split=val", "ood=true")
    assert not out.exists() and not list(tmp_path.glob("*.gate-*"))


@pytest.mark.slow
def test_evaluate_ood_whose_gate_cannot_be_fitted_writes_no_report(tmp_path, trained_run, tiny_root):
    ckpt = tmp_path / "last.ckpt"
    shutil.copyfile(trained_run / "checkpoints" / "last.ckpt", ckpt)
    data = [f"data.root={tiny_root}", "data.search_dirs=[]", "data.val_fraction=0.02"]  # 8 validation images
    out = tmp_path / "eval"
    result = run_cli("fmnist.evaluate", f"ckpt_path={ckpt}", "ood=true", f"output_dir={out}", *data, cwd=tmp_path)
    assert_one_error_line(result, "validation")
    assert not out.exists() or not any(out.iterdir())  # nothing to replace with overwrite=true on the next try
