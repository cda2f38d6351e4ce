"""Every bad input ends in one line naming the key or file and the fix, before anything is written: config
values, broken data, Ctrl-C while the data loads, the commands' arguments and output files, hostile images."""

import ast
import csv
import errno
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from PIL import Image

import fmnist.data.idx
import fmnist.utils.checks
from fmnist.data.datamodule import FashionMNISTDataModule
from fmnist.data.idx import ensure_raw_files, load_split, raw_folder
from fmnist.data.photos import to_fashion_mnist
from fmnist.deploy.predict import predict_files, print_table, write_predictions
from fmnist.models.checkpoint import load_model
from fmnist.training.fit import train
from fmnist.utils.config import compose_config
from fmnist.utils.errors import FmnistError
from tests.conftest import (
    ROOT,
    assert_error_names,
    assert_one_error_line,
    idx_bytes,
    run_cli,
    write_tiny_fashion_mnist,
)

# ---- config values: refused before any data is read or any folder made -----------------------------------


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: False))
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: False))


@pytest.mark.parametrize(
    "model, override, named",
    [
        ("rnn", "seed=-5", ("seed=-5",)),
        ("rnn", "seed=4294967296", ("seed=4294967296",)),
        ("cnn", "model.conv_dropout=[0.2]", ("model.conv_dropout=[0.2]",)),
        ("cnn", "model.conv_dropout=[0.2,0.3,1.0]", ("model.conv_dropout=[0.2, 0.3, 1.0]",)),
        ("cnn", "model.dense_dropout=-0.1", ("model.dense_dropout=-0.1",)),
        ("bilstm", "model.dropout=abc", ("model.dropout=abc",)),
        ("rnn", "trainer.max_time=abc", ("trainer.max_time=abc",)),
        ("rnn", "trainer.max_time=00:00:00:00", ("trainer.max_time=00:00:00:00",)),
        ("rnn", "trainer.limit_train_batches=0", ("trainer.limit_train_batches=0",)),
        ("rnn", "trainer.limit_val_batches=0.0", ("trainer.limit_val_batches=0.0",)),
        ("rnn", "trainer.limit_test_batches=2.5", ("trainer.limit_test_batches=2.5",)),
        ("rnn", "trainer.max_steps=0", ("trainer.max_steps=0",)),
        (
            "rnn",
            "trainer.check_val_every_n_epoch=3",
            ("trainer.check_val_every_n_epoch=3", "trainer.max_epochs=1"),
        ),
        ("rnn", "trainer.accelerator=abc", ("trainer.accelerator=abc", "cpu")),
        ("rnn", "trainer.devices=0", ("trainer.devices=0",)),
        ("rnn", "trainer.devices=[0,1]", ("trainer.devices=[0, 1]", "trainer.devices=1")),
        ("rnn", "data.val_fraction=abc", ("data.val_fraction=abc",)),
    ],
)
def test_bad_config_values_fail_before_any_data_or_folder_is_touched(
    train_cfg, tmp_path, no_data_access, model, override, named
):
    with pytest.raises(FmnistError) as info:
        train(train_cfg(model, f"output_dir={tmp_path / 'run'}", override))
    assert_error_names(str(info.value), *named)
    assert not (tmp_path / "run").exists()


def test_data_root_that_is_a_file_is_refused_before_any_data(train_cfg, tmp_path, no_data_access):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(FmnistError) as info:
        train(train_cfg("rnn", f"output_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'notes.txt'}"))
    assert_error_names(str(info.value), f"data.root={tmp_path / 'notes.txt'}", "data.root=data")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides", [["trainer.accelerator=gpu"], ["trainer=gpu_fast"], ["trainer=ddp"]])
def test_a_gpu_trainer_on_a_machine_without_gpu_is_refused(tmp_path, tiny_root, no_data_access, no_gpu, overrides):
    cfg = compose_config(["model=rnn", f"data.root={tiny_root}", f"output_dir={tmp_path / 'run'}", *overrides])
    try:
        with pytest.raises(FmnistError) as info:
            train(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert_error_names(str(info.value), "trainer.accelerator=gpu", "trainer.accelerator=cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "model, override, named",
    [
        ("rnn", "data.val_fraction=0.99999", ("data.batch_size=50", "data.val_fraction=0.99999")),
        ("rnn", "data.batch_size=1000", ("data.batch_size=1000", "data.val_fraction")),
        ("rnn", "data.val_fraction=1e-6", ("data.val_fraction=1e-06", "data.val_fraction=0.0025")),
        ("cnn", "data.batch_size=359", ("data.batch_size=359", "BatchNorm")),
        (
            "rnn",
            "trainer.limit_train_batches=0.001",
            ("trainer.limit_train_batches=0.001", "trainer.limit_train_batches=1"),
        ),
    ],
)
def test_splits_training_cannot_use_are_refused_from_the_headers_before_training(
    train_cfg, tmp_path, model, override, named
):
    with pytest.raises(FmnistError) as info:
        train(train_cfg(model, override))
    assert_error_names(str(info.value), *named)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_cli_bad_seed_is_one_line(tmp_path):
    result = run_cli("fmnist.train", "seed=-5", cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert_one_error_line(result, "seed=-5")


# ---- broken data ------------------------------------------------------------------------------------------


def _make_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    "name, damage, named",
    [
        ("train-images-idx3-ubyte", _make_folder, ("is a folder",)),
        ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(b""), ("is empty", "0 bytes")),
        (
            "train-images-idx3-ubyte",
            lambda p: p.write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8))),
            ("no images", "0x28x28"),
        ),
    ],
)
def test_a_broken_raw_file_is_one_error_naming_it(tmp_path, name, damage, named):
    raw = write_tiny_fashion_mnist(raw_folder(tmp_path / "root"))
    damage(raw / name)
    with pytest.raises(FmnistError) as info:
        FashionMNISTDataModule(root=str(tmp_path / "root"), search_dirs=[]).setup()
    assert_error_names(str(info.value), str(raw / name), *named)


def test_a_raw_folder_that_cannot_be_made_is_one_error(tmp_path):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    (tmp_path / "a_file").write_text("")
    raw = raw_folder(tmp_path / "a_file" / "root")
    with pytest.raises(FmnistError) as info:
        ensure_raw_files(tmp_path / "a_file" / "root", search_dirs=[str(debian)])
    assert_error_names(str(info.value), str(raw), "Not a directory", "data.root=PATH")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_reading_the_data_is_one_line_and_status_130(tiny_root, monkeypatch, capsys):
    monkeypatch.setattr(fmnist.data.idx, "_read_idx", _interrupt)
    with pytest.raises(SystemExit) as info:
        load_split(tiny_root, train=True)
    assert info.value.code == 130
    assert_error_names(capsys.readouterr().err, "interrupted", str(raw_folder(tiny_root)), "nothing was trained")


def test_ctrl_c_while_unpacking_the_data_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    monkeypatch.setattr(fmnist.data.idx, "_copy_idx", _interrupt)
    with pytest.raises(SystemExit) as info:
        ensure_raw_files(tmp_path / "root", search_dirs=[str(debian)])
    assert info.value.code == 130
    raw = raw_folder(tmp_path / "root")
    assert_error_names(capsys.readouterr().err, "interrupted", str(debian), str(raw), "nothing was trained")
    assert list(raw.iterdir()) == []  # the staging folder went with the interrupt


@pytest.mark.slow
def test_cli_ctrl_c_while_the_data_loads_is_one_line_and_status_130(tmp_path, tiny_root):
    # A real SIGINT, sent while torchvision reads the files (inside Lightning's fit, before training).
    (tmp_path / "interrupt.py").write_text(
        textwrap.dedent("""
        import os, runpy, signal, time
        import fmnist.data.idx

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started in background

        def reading(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)  # the signal arrives here

        fmnist.data.idx._read_idx = reading
        runpy.run_module("fmnist.train", run_name="__main__")
    """)
    )
    result = run_cli(
        "interrupt",
        "model=rnn",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        timeout=120,
        process=True,  # a real SIGINT, and the script beside it as a module
    )
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert_error_names(result.stderr.strip().splitlines()[-1], "interrupted", str(raw_folder(tiny_root)))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.json").exists()


# ---- the commands' arguments ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fmnist.evaluate", "fmnist.cluster", "fmnist.predict", "fmnist.export"])
def test_cli_a_missing_ckpt_path_is_one_line(tmp_path, command):
    result = run_cli(command, cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert_one_error_line(result, "required", "ckpt_path=")


# Where each command's logic (and its load_model) lives: the command modules are thin entry points.
LOGIC = {
    "evaluate": "fmnist.analysis.evaluate",
    "cluster": "fmnist.analysis.cluster",
    "predict": "fmnist.deploy.predict",
    "export": "fmnist.deploy.export",
}


def _command(name: str, *overrides: str):
    """The command's function and its composed config."""
    module = __import__(f"fmnist.{name}", fromlist=[name])
    try:
        return getattr(module, name), compose_config(list(overrides), config_name=name)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def ckpt(trained_run) -> Path:
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.fixture
def garments(tmp_path) -> Path:
    folder = tmp_path / "garments"
    folder.mkdir()
    for i in range(3):
        image = np.zeros((40, 30), np.uint8)
        image[5 + i : 35, 8:22] = 200
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize(
    "name, overrides, named",
    [
        ("predict", ["inputs=x.png", "top_k=abc"], ("top_k=abc",)),
        ("predict", ["inputs=x.png", "batch_size=0"], ("batch_size=0",)),
        ("predict", [], ("required", "inputs=")),
        ("cluster", ["k=abc"], ("k=abc",)),
        ("cluster", ["seed=-1"], ("seed=-1",)),
        ("cluster", ["pixels_pca=0"], ("pixels_pca=0",)),
        ("evaluate", ["split=train"], ("split=train",)),
        ("evaluate", ["data.eval_batch_size=0"], ("data.eval_batch_size=0",)),
        ("export", ["tolerance=abc"], ("tolerance=abc",)),
        ("export", ["format=pickle"], ("format=pickle", "onnx", "torchscript")),
        ("export", ["overwrite=maybe"], ("overwrite=maybe",)),
    ],
)
def test_bad_command_values_fail_before_the_checkpoint_is_read(tmp_path, name, overrides, named, monkeypatch):
    monkeypatch.setattr(f"{LOGIC[name]}.load_model", lambda path: pytest.fail("the checkpoint was read"))
    function, cfg = _command(
        name,
        f"ckpt_path={tmp_path / 'x.ckpt'}",
        f"output_dir={tmp_path / 'out'}" if name != "export" else f"output={tmp_path / 'out' / 'm.ts.pt'}",
        *overrides,
    )
    with pytest.raises(FmnistError) as info:
        function(cfg)
    assert_error_names(str(info.value), *named)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["evaluate", "cluster"])
@pytest.mark.parametrize(
    "device, named",
    [("cuda", ("device=cuda", "device=cpu")), ("abc", ("device=abc", "device=auto"))],
)
def test_a_device_this_machine_lacks_is_one_error(tmp_path, ckpt, monkeypatch, name, device, named):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    function, cfg = _command(name, f"ckpt_path={ckpt}", f"device={device}", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(FmnistError) as info:
        function(cfg)
    assert_error_names(str(info.value), *named)
    assert not (tmp_path / "out").exists()


def test_no_command_imports_another():
    commands = {"train", "evaluate", "cluster", "predict", "export", "explore", "compare", "reproduce"}
    for name in commands:
        tree = ast.parse((ROOT / "fmnist" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {f"fmnist.{other}" for other in commands - {name}} & imported, name


# ---- output folders and files: probed first, never replaced without overwrite=true -----------------------


@pytest.mark.parametrize("name", ["evaluate", "predict", "cluster"])
def test_an_output_dir_that_is_a_file_or_read_only_is_one_error(tmp_path, ckpt, garments, monkeypatch, name):
    extra = [f"inputs={garments}"] if name == "predict" else []
    (tmp_path / "a_file").write_text("")
    function, cfg = _command(name, f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'a_file'}", *extra)
    with pytest.raises(FmnistError) as info:
        function(cfg)
    assert_error_names(str(info.value), str(tmp_path / "a_file"), "is a file", "output_dir=PATH")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fmnist.utils.checks.tempfile, "TemporaryFile", read_only)
    function, cfg = _command(name, f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'ro'}", *extra)
    with pytest.raises(FmnistError) as info:
        function(cfg)
    assert_error_names(str(info.value), str(tmp_path / "ro"), "Read-only file system", "output_dir=PATH")


@pytest.mark.slow
def test_cli_evaluate_into_the_run_folder_keeps_the_training_metrics(trained_run, tiny_root, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    before = (run / "metrics.json").read_bytes()
    args = [
        "fmnist.evaluate",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"output_dir={run}",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
    ]
    result = run_cli(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert_one_error_line(result, f"{run}/", "already exists", "output_dir=PATH", "overwrite=true")
    assert (run / "metrics.json").read_bytes() == before
    result = run_cli(*args, "overwrite=true", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["checkpoint"].endswith("last.ckpt")


def test_export_never_replaces_the_checkpoint_nor_an_existing_file(tmp_path, ckpt):
    copy = shutil.copyfile(ckpt, tmp_path / "last.ckpt")
    before = copy.read_bytes()
    for overwrite in ("false", "true"):
        export, cfg = _command(
            "export", f"ckpt_path={copy}", "format=torchscript", f"output={copy}", f"overwrite={overwrite}"
        )
        with pytest.raises(FmnistError) as info:
            export(cfg)
        assert_error_names(str(info.value), str(copy), "being exported", "output=PATH")
    assert copy.read_bytes() == before
    (tmp_path / "last.ts.pt").write_text("someone's file")
    export, cfg = _command(
        "export", f"ckpt_path={copy}", "format=torchscript", "data.search_dirs=[]", f"data.root={tmp_path / 'none'}"
    )
    with pytest.raises(FmnistError) as info:
        export(cfg)
    assert_error_names(str(info.value), str(tmp_path / "last.ts.pt"), "already exists", "output=PATH", "overwrite=true")
    assert (tmp_path / "last.ts.pt").read_text() == "someone's file"


@pytest.mark.parametrize(
    "name, existing",
    [("predict", "predictions.json"), ("cluster", "clusters.md"), ("cluster", "projector/projector_config.pbtxt")],
)
def test_predict_and_cluster_never_replace_files_without_overwrite(tmp_path, ckpt, garments, name, existing):
    extra = [f"inputs={garments}"] if name == "predict" else []
    out = tmp_path / "out"
    (out / existing).parent.mkdir(parents=True)
    (out / existing).write_text("kept")
    function, cfg = _command(name, f"ckpt_path={ckpt}", f"output_dir={out}", *extra)
    with pytest.raises(FmnistError) as info:
        function(cfg)
    assert_error_names(str(info.value), str(out / existing), "already exists", "output_dir=PATH", "overwrite=true")
    assert (out / existing).read_text() == "kept" and len(list(out.rglob("*"))) == len(Path(existing).parts)


# ---- predict: hostile images and file names ---------------------------------------------------------------


def test_a_decompression_bomb_is_an_error_row_and_the_other_files_are_predicted(tmp_path, ckpt, garments):
    Image.new("1", (20000, 20000)).save(garments / "bomb.png")  # 400 megapixels, about 50 KB on disk
    assert (garments / "bomb.png").stat().st_size < 200_000
    files = sorted(garments.iterdir())
    results = predict_files(load_model(ckpt), files)
    rows = {Path(r["file"]).name: r for r in results}
    assert rows["bomb.png"].keys() == {"file", "error"} and rows["bomb.png"]["file"] == str(garments / "bomb.png")
    assert_error_names(rows["bomb.png"]["error"], "too large", "50,000,000")
    assert all(len(rows[f"{i}.png"]["top"]) == 3 for i in range(3))
    # below Pillow's own bomb error but above fmnist's limit: refused from the header, before decoding
    Image.new("1", (8000, 8000)).save(garments / "big.png")
    (row,) = predict_files(load_model(ckpt), [garments / "big.png"])
    assert_error_names(row["error"], "too large", "8000x8000", "50,000,000")


def test_predict_works_in_bounded_batches_and_keeps_the_order(tmp_path, garments):
    files = sorted(garments.iterdir()) * 3
    files.insert(4, tmp_path / "missing.png")
    seen = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier, self.weight = torch.nn.Identity(), torch.nn.Parameter(torch.zeros(1))

        def embed(self, images):
            seen.append(len(images))
            return torch.zeros(len(images), 10)

    model = Model()
    results = predict_files(model, files, top_k=2, batch_size=2)
    assert max(seen) <= 2 and sum(seen) == 9
    assert [r["file"] for r in results] == [str(f) for f in files] and "error" in results[4]


def test_a_16_bit_garment_is_seen_like_its_8_bit_copy():
    garment = np.full((60, 40), 10_000, np.uint16)  # 16-bit: every sample above 255, Pillow's "L" would be white
    garment[10:50, 12:30] = 50_000
    for mode_image in (Image.fromarray(garment), Image.fromarray(garment.astype(np.int32))):  # I;16 and I
        prepared = to_fashion_mnist(mode_image)
        expected = to_fashion_mnist(Image.fromarray((garment // 257).astype(np.uint8)))
        assert prepared.max() > 0.9 and torch.allclose(prepared, expected, atol=2 / 255)


def test_nan_probabilities_become_error_rows_in_valid_json(tmp_path, ckpt, garments):
    model = load_model(ckpt)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    results = predict_files(model, sorted(garments.iterdir()))
    assert all(r["error"].startswith("the model's output is not a number") and "top" not in r for r in results)
    write_predictions(results, tmp_path, 3)
    json.loads((tmp_path / "predictions.json").read_text(), parse_constant=pytest.fail)  # no NaN in the file


@pytest.mark.slow
def test_cli_predict_with_a_nan_checkpoint_is_one_line_and_valid_json(tmp_path, ckpt, garments, tiny_root):
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["classifier.weight"].fill_(float("nan"))
    torch.save(checkpoint, tmp_path / "nan.ckpt")
    data = [f"data.root={tiny_root}", "data.search_dirs=[]"]  # the garment gate finds NaN, and steps aside
    result = run_cli(
        "fmnist.predict", f"ckpt_path={tmp_path / 'nan.ckpt'}", f"inputs={garments}", *data, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert_one_error_line(result, "3 input file", "NaN")
    json.loads((tmp_path / "predictions.json").read_text(), parse_constant=pytest.fail)


def test_a_newline_in_a_file_name_is_escaped_in_the_table_only(tmp_path, ckpt, garments, capsys):
    odd = garments / "two\nlines\t.png"
    shutil.copyfile(garments / "0.png", odd)
    results = predict_files(load_model(ckpt), sorted(garments.iterdir()))
    print_table(results)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and any(line.startswith(str(garments / "two\\nlines\\t.png")) for line in lines)
    write_predictions(results, tmp_path, 3)
    assert str(odd) in {r["file"] for r in json.loads((tmp_path / "predictions.json").read_text())}
    with open(tmp_path / "predictions.csv", newline="") as handle:
        assert str(odd) in {row[0] for row in csv.reader(handle)}


def test_only_plain_image_formats_are_decoded(tmp_path, ckpt):
    Image.new("RGB", (28, 28)).save(tmp_path / "garment.eps")  # Pillow would hand EPS to Ghostscript
    (row,) = predict_files(load_model(ckpt), [tmp_path / "garment.eps"])
    assert_error_names(row["error"], "PNG", "JPEG", "TIFF")


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_float_image_with_nan_or_inf_pixels_is_refused(tmp_path, bad):
    garment = np.zeros((60, 40), np.float32)
    garment[10:50, 12:30] = 0.8
    garment[20:30, 15:25] = bad
    with pytest.raises(ValueError) as info:
        to_fashion_mnist(Image.fromarray(garment))  # mode "F", as a float TIFF opens
    assert_error_names(str(info.value), "NaN", "infinite")
    Image.fromarray(garment).save(tmp_path / "float.tif")
    from fmnist.deploy.predict import load_image

    with pytest.raises(ValueError) as info:
        load_image(tmp_path / "float.tif")
    assert_error_names(str(info.value), "NaN", "infinite")


def test_explore_never_replaces_samples_png_without_overwrite(tmp_path, monkeypatch):
    import fmnist.analysis.explore

    monkeypatch.setattr(
        fmnist.analysis.explore, "ensure_raw_files", lambda *a, **k: pytest.fail("the data was touched")
    )
    (tmp_path / "samples.png").write_text("kept")
    function, cfg = _command("explore", f"output_dir={tmp_path}")
    with pytest.raises(FmnistError) as info:
        function(cfg)
    assert_error_names(
        str(info.value), str(tmp_path / "samples.png"), "already exists", "output_dir=PATH", "overwrite=true"
    )
    assert (tmp_path / "samples.png").read_text() == "kept"
    function, cfg = _command("explore", f"output_dir={tmp_path}", "overwrite=maybe")
    with pytest.raises(FmnistError) as info:
        function(cfg)
    assert_error_names(str(info.value), "overwrite=maybe")
