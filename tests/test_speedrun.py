"""The speedrun (issue 15): its network, whitening, schedule, augmentation, TTA, tf32 switch and timing harness."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from fmnist.data.augment import build_augmentation
from fmnist.data.datamodule import FashionMNISTDataModule
from fmnist.models import MODELS, SpeedNet
from fmnist.models.base import triangular_schedule
from fmnist.models.checkpoint import load_model
from fmnist.models.speednet import whitening_filters
from fmnist.models.summary import keras_param_counts
from fmnist.training.fit import train
from fmnist.training.setup import set_tf32
from fmnist.utils.errors import FmnistError
from tests.conftest import compose_train, run_cli

ROOT = Path(__file__).resolve().parents[1]


def tiny(root: Path, out: Path, *extra: str, tier: str = "speedrun") -> list[str]:
    return [
        f"experiment={tier}",
        f"data.root={root}",
        "data.search_dirs=[]",
        f"output_dir={out}",
        "debug=tiny",
        *extra,
    ]


# ---------------------------------------------------------------- the network


def test_speednet_shapes_and_parameter_count():
    model = SpeedNet().eval()
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    assert model.embed(x).shape == (5, 128)
    counts = keras_param_counts(model)
    # convs 8*32*9 + 32*32*9 + 32*64*9 + 64*64*9 + 64*128*9 + 128*128*9 = 288,000; whitening bias 8;
    # BN shifts 2*(32+64+128) = 448; linear 128*10 = 1,280
    assert counts["trainable"] == 288_000 + 8 + 448 + 1_280
    assert "SpeedNet" in MODELS and MODELS["SpeedNet"] is SpeedNet
    assert not model.whiten.weight.requires_grad  # the whitening is computed, never trained
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in bns)


def test_wider_speednet_from_widths():
    assert SpeedNet(widths=[16, 32, 48]).embed(torch.rand(2, 1, 28, 28)).shape == (2, 48)


def test_whitening_filters_whiten_the_patches_they_were_computed_from():
    generator = torch.Generator().manual_seed(0)
    # correlated patches: a smooth image plus a little noise
    images = torch.nn.functional.avg_pool2d(torch.rand(200, 1, 30, 30, generator=generator), 3, 1)
    weight, bias = whitening_filters(images, eps=0.0)
    assert weight.shape == (8, 1, 2, 2) and bias.shape == (8,)
    torch.testing.assert_close(weight[4:], -weight[:4])
    out = torch.nn.functional.conv2d(images.double(), weight[:4].double(), bias[:4].double())
    patches = out.permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(patches.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-4, rtol=0)
    covariance = patches.T @ patches / len(patches)
    torch.testing.assert_close(covariance, torch.eye(4, dtype=torch.float64), atol=1e-3, rtol=1e-3)


def test_init_whitening_takes_uint8_images_and_sets_the_stem():
    model = SpeedNet()
    images = (torch.rand(50, 1, 28, 28) * 255).to(torch.uint8)
    model.init_whitening(images)
    weight, bias = whitening_filters(images.float() / 255, model.whiten_eps)
    torch.testing.assert_close(model.whiten.weight.data, weight.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(model.whiten.bias.data, bias)


# ---------------------------------------------------------------- the recipe's parts


def test_triangular_schedule_rises_to_the_peak_and_falls_to_the_end():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = triangular_schedule(optimizer, 10, 0.2, 0.3, 0.05)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.2) and rates[3] == pytest.approx(1.0)
    assert rates[9] == pytest.approx(0.05)  # the last of the 10 steps is taken at lr x end
    assert rates[10] == pytest.approx(0.05) and rates[11] == pytest.approx(0.05)  # and held after
    assert all(a < b for a, b in zip(rates[:3], rates[1:4], strict=True))
    assert all(a > b for a, b in zip(rates[3:9], rates[4:10], strict=True))


def test_augmentation_keeps_shapes_and_dtype_and_is_per_sample():
    augment = build_augmentation(flip=0.5, crop_padding=2)
    torch.manual_seed(0)
    image = torch.rand(1, 1, 28, 28)
    batch = image.repeat(64, 1, 1, 1)
    out = augment(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    distinct = {tuple(row.flatten().tolist()) for row in out.round(decimals=5)}
    assert len(distinct) > 10  # each image its own flip and crop, not one draw for the batch
    flips = build_augmentation(flip=0.5)(batch)
    flipped = torch.isclose(flips, image.flip(3)).flatten(1).all(1)
    kept = torch.isclose(flips, image).flatten(1).all(1)
    assert (flipped | kept).all() and 10 < int(flipped.sum()) < 54


def test_augmentation_is_deterministic_under_a_seed():
    augment = build_augmentation(flip=0.5, crop_padding=2, erasing=0.5)
    batch = torch.rand(16, 1, 28, 28)
    torch.manual_seed(3)
    first = augment(batch)
    torch.manual_seed(3)
    torch.testing.assert_close(augment(batch), first)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"flip": 2}, "flip must be a number from 0 to 1"),
        ({"crop_padding": 1.5}, "whole number"),
        ({"erasing": "yes"}, "erasing must be a number"),
    ],
)
def test_bad_augmentation_settings_are_one_error(settings, words):
    with pytest.raises(FmnistError, match=words):
        build_augmentation(**settings)


def test_augmentation_touches_training_batches_only():
    class Trainer:
        training = False

    datamodule = FashionMNISTDataModule(augment={"flip": 1.0, "crop_padding": 0, "erasing": 0.0})
    datamodule.trainer = Trainer()
    images = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28).div(28 * 28).mul(255).to(torch.uint8)
    batch = (images, torch.zeros(1, dtype=torch.long))
    plain = images.float() / 255
    torch.testing.assert_close(datamodule.on_after_batch_transfer(batch, 0)[0], plain)  # validation, test
    Trainer.training = True
    torch.testing.assert_close(datamodule.on_after_batch_transfer(batch, 0)[0], plain.flip(3))
    chunk = datamodule.on_after_batch_transfer([batch, batch], 0)  # the fast path's list of batches
    assert all(torch.equal(x, plain.flip(3)) for x, _ in chunk)
    assert FashionMNISTDataModule().augment is None  # augment=none: nothing runs


def test_augment_group_composes_for_any_model():
    cfg = compose_train(["model=cnn", "augment=strong", "output_dir=."])
    assert dict(cfg.data.augment) == {"flip": 0.5, "crop_padding": 2, "erasing": 0.5}
    assert dict(compose_train(["model=rnn", "output_dir=."]).data.augment) == {
        "flip": 0.0,
        "crop_padding": 0,
        "erasing": 0.0,
    }  # off for the study's recipes
    GlobalHydra.instance().clear()


def test_tf32_switch_sets_both_cuda_flags_and_null_restores_torchs_defaults():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(None)  # a later run of the same process gets torch's defaults again
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert compose_train(["output_dir=."]).tf32 is None
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.label_smoothing=1.5", "model.label_smoothing=1.5 is out of range: must be a number in [0, 1)"),
        ("model.lr_triangle=[0,0.2,0.01]", "model.lr_triangle=[0, 0.2, 0.01] is out of range: must be [start, peak"),
        ("model.lr_triangle=[0.1]", "model.lr_triangle=[0.1] is not a list of 3 numbers"),
        ("model.widths=[32,64]", "model.widths=[32, 64] is not a list of 3 integers"),
        ("data.augment.flip=2", "data.augment.flip=2 is out of range: must be a probability in [0, 1]"),
        ("data.augment.crop_padding=1.5", "data.augment.crop_padding=1.5 is not an integer"),
        ("tf32=yes", "tf32=yes is not true or false: must be true, false or null"),
        ("trainer.precision=16-mixed", "trainer.precision=16-mixed does not apply to the fast path"),
        ("trainer.max_epochs=-1", "model.lr_schedule=true needs a last step"),
    ],
)
def test_bad_speedrun_settings_are_one_line_before_any_data_is_read(tmp_path, no_data_access, override, words):
    cfg = compose_train(["experiment=speedrun", "trainer=cpu_fast", f"output_dir={tmp_path}", override])
    with pytest.raises(FmnistError, match=re.escape(words)):
        train(cfg)
    GlobalHydra.instance().clear()


def test_constructor_refuses_settings_a_checkpoint_could_carry():
    with pytest.raises(ValueError, match="label_smoothing"):
        SpeedNet(label_smoothing=2.0)
    with pytest.raises(ValueError, match="lr_triangle"):
        SpeedNet(lr_triangle=(0.0, 0.2, 0.1))


# ---------------------------------------------------------------- through fmnist.train


@pytest.mark.slow
def test_speedrun_config_trains_two_steps_and_tests_with_tta(tiny_root, tmp_path):
    cfg = compose_train(tiny(tiny_root, tmp_path, "trainer.limit_train_batches=2"))
    assert cfg.model._target_ == "fmnist.models.SpeedNet" and cfg.data.augment.flip == 0.5 and cfg.tier == 0.93
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    assert metrics["steps"] == 2 and metrics["model"] == "speedrun"
    assert 0 <= metrics["test/acc"] <= 1 and 0 <= metrics["test/acc_tta"] <= 1  # TTA next to the plain figure
    model = load_model(tmp_path / metrics["best_checkpoint"])
    assert isinstance(model, SpeedNet) and model.hparams["tta"] and model.hparams["label_smoothing"] == 0
    # the whitening was set from the training images (not left at its random initialisation)
    datamodule = FashionMNISTDataModule(root=str(tiny_root), search_dirs=())
    datamodule.setup("fit")
    weight, _ = whitening_filters(datamodule.train_set.images[:5000].float() / 255, model.whiten_eps)
    torch.testing.assert_close(model.whiten.weight.data, weight.contiguous(memory_format=torch.channels_last))


# each tier's recipe, as docs/SPEEDRUN.md states it: widths, epochs, augmentation, label smoothing, target
TIERS = {
    "speedrun": ([32, 64, 128], 4, (0.5, 0), 0, 0.93),
    "speedrun_94": ([48, 96, 192], 8, (0.5, 0), 0, 0.94),
    "cpu95": ([64, 128, 256], 20, (0.5, 2), 0.2, 0.95),
    "speedrun_95": ([128, 256, 256], 25, (0.5, 2), 0.2, 0.95),
}


@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_composes_to_its_documented_recipe(tier, tmp_path):
    cfg = compose_train([f"experiment={tier}", f"output_dir={tmp_path}"])
    widths, epochs, (flip, padding), smoothing, target = TIERS[tier]
    assert list(cfg.model.widths) == widths and cfg.trainer.max_epochs == epochs and cfg.tier == target
    assert (cfg.data.augment.flip, cfg.data.augment.crop_padding) == (flip, padding)
    assert cfg.model.label_smoothing == smoothing and cfg.name == tier
    assert cfg.model.tta and cfg.model.lr_schedule and cfg.data.batch_size == 256


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["speedrun_94", "cpu95"])
def test_the_new_tiers_train_an_epoch_in_bf16(tier, tiny_root, tmp_path):
    cfg = compose_train(tiny(tiny_root, tmp_path, "trainer=cpu_bf16", "trainer.max_epochs=1", tier=tier))
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    # one epoch of the tiny data's 360 training images in batches of 50: 8 optimizer steps, in one chunk
    assert metrics["steps"] == 8 and metrics["model"] == tier and 0 <= metrics["test/acc_tta"] <= 1
    assert isinstance(load_model(tmp_path / metrics["best_checkpoint"]), SpeedNet)


@pytest.mark.slow
def test_a_scheduled_run_refuses_more_epochs_on_resume(tiny_root, tmp_path):
    run = tmp_path / "run"
    data = [f"data.root={tiny_root}", "data.search_dirs=[]", "debug=tiny", "trainer.limit_train_batches=2"]
    first = run_cli("fmnist.train", "experiment=speedrun", *data, f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-1500:]
    again = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=3", cwd=tmp_path)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert "trainer.max_epochs cannot change on resume for it" in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "tier, fast_trainer, precision",
    [("speedrun", "cpu_fast", "32-true"), ("speedrun", "cpu_bf16", "bf16-mixed"), ("cpu95", "cpu_bf16", "bf16-mixed")],
)
def test_fast_path_follows_the_default_path_with_schedule_and_augmentation(
    tiny_root, tmp_path, tier, fast_trainer, precision
):
    # 360 training images in batches of 50: 8 batches an epoch (the last of 10), in chunks of 3 (3 + 3 + 2).
    # In bf16 the fast path's one autocast spans a chunk of optimizer steps: stale bf16 weights would show here.
    runs = {}
    paths = (
        ("default", [f"trainer.precision={precision}"]),
        ("fast", [f"trainer={fast_trainer}", "data.batches_per_step=3"]),
    )
    for name, extra in paths:
        cfg = compose_train(
            tiny(tiny_root, tmp_path / name, "trainer.max_epochs=2", "data.eval_batch_size=50", *extra, tier=tier)
        )
        runs[name] = train(cfg)
        GlobalHydra.instance().clear()
    assert runs["fast"]["steps"] == runs["default"]["steps"] == 16
    weights = {}
    for name in runs:
        checkpoint = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        weights[name] = checkpoint["state_dict"]
        # the schedule ran to its end exactly: lr x the end factor after the last of 16 optimizer steps
        last_lr = checkpoint["lr_schedulers"][0]["_last_lr"][0]
        assert last_lr == pytest.approx(0.2 * 0.01), name
    for key, tensor in weights["default"].items():
        torch.testing.assert_close(weights["fast"][key], tensor, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_timing_harness_returns_figures_for_each_seed(tiny_root, tmp_path):
    out = tmp_path / "speedrun.json"
    data = [f"data.root={tiny_root}", "data.search_dirs=[]", "trainer.max_epochs=1", "trainer.limit_val_batches=1"]
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "speedrun.py"),
        "--seeds",
        "2",
        "--cnn-epoch",
        "--plain",
        "--json",
        str(out),
        *(f"-o{o}" for o in data),
        "-rtrainer.limit_train_batches=2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [row["seed"] for row in result["seeds"]] == [0, 1]
    for row in result["seeds"]:
        assert row["train_seconds"] > 0 and row["steps"] == 2
        assert 0 <= row["acc_plain"] <= 1 and 0 <= row["acc_tta"] <= 1 and row["seconds_tta"] > 0
    assert result["cnn_epoch_seconds"] > 0 and result["cnn_epochs"] > 0 and result["plain_seconds"] > 0
    assert 0 <= result["at_target"] <= 1 and "test accuracy with flip TTA" in done.stdout


def _saved_tier(path: Path, **changes) -> Path:
    row = {"seed": 0, "acc_tta": 0.94, "macro_f1_tta": 0.94, "params_total_keras": 1000}
    result = {
        "experiment": "speedrun_94",
        "trainer": "cpu_bf16",
        "overrides": [],
        "device": "cpu (test)",
        "acc_tta": 0.94,
        "acc_tta_std": 0.001,
        "train_seconds": 200.0,
        "seeds": [row],
        "settings": {"epochs": 8, "batch_size": 256, "optimizer": {"lr": 0.2, "nesterov": True}},
    } | changes
    path.write_text(json.dumps(result))
    return path


def test_a_saved_tier_becomes_a_results_row_and_a_bad_file_writes_nothing(tmp_path):
    from benchmarks.speedrun import add_saved_row

    docs = tmp_path / "docs"
    docs.mkdir()
    for bad in ({"device": "cpu\n| forged |"}, {"settings": None}, {"seeds": "x"}):
        with pytest.raises(SystemExit) as refused:
            add_saved_row(_saved_tier(tmp_path / "bad.json", **bad), docs)
        assert str(refused.value).startswith("error:") and not list(docs.iterdir())
    add_saved_row(_saved_tier(tmp_path / "good.json"), docs)
    (row,) = json.loads((docs / "results.json").read_text()).values()
    assert row["epochs"] == 8 and row["test_acc_mean"] == 0.94 and "experiment=speedrun_94" in row["recipe"]
    assert row["full_recipe"]  # the tier as configured, though its 8 epochs are not fmnist/conf/model/speednet.yaml's 4
    assert "speedrun_94" in (docs / "RESULTS.md").read_text()


@pytest.mark.parametrize(
    "bad, more",
    [
        ({"seeds": []}, {}),
        ({"acc_tta": float("nan")}, {}),
        ({"acc_tta": 1.5}, {}),
        ({}, {"seed": 1e999}),
        ({"device": "cpu | x"}, {}),
    ],
)
def test_a_saved_tier_with_impossible_figures_is_refused(tmp_path, bad, more):
    from benchmarks.speedrun import add_saved_row

    path = _saved_tier(tmp_path / "bad.json", **bad)
    if more:
        result = json.loads(path.read_text().replace("NaN", "0"))
        result["seeds"][0].update(more)
        path.write_text(json.dumps(result))
    with pytest.raises(SystemExit) as refused:
        add_saved_row(path, tmp_path)
    assert str(refused.value).startswith("error:") and not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("override", ["model.label_smoothing=1.5", "model.nope=1", "trainer.max_epochs=-3"])
def test_the_harness_refuses_a_bad_override_in_one_line_before_reading_data(override, no_data_access, monkeypatch):
    from benchmarks import speedrun

    monkeypatch.setattr(sys, "argv", ["speedrun.py", "--seeds", "1", "-r", override])
    with pytest.raises(SystemExit) as refused:
        speedrun.main()
    GlobalHydra.instance().clear()
    message = str(refused.value)
    assert message.startswith("error:") and "\n" not in message and override.split("=")[0].split(".")[-1] in message
