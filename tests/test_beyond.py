"""The networks beyond the study (lstm, gru, attention, resnet): shapes, counts, learning, config, EMA, errors."""

from __future__ import annotations

import json
import re

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from fmnist.models import MODELS, PatchTransformer, PreActWideResNet, StackedGRU, StackedLSTM
from fmnist.models.checkpoint import load_model
from fmnist.models.summary import keras_param_counts, keras_summary_markdown
from fmnist.training.fit import train
from fmnist.utils.errors import FmnistError
from tests.conftest import compose_train, run_cli, tiny_split

# (class, config name, Keras total, trainable, embedding width), counted by hand in the comments
BEYOND = [
    # LSTM: 4 gates x (in x units + units^2 + units): 291,840 + 197,120 + 49,408; BN 64: 256; Dense 650
    (StackedLSTM, "lstm", 539_274, 539_146, 64),
    # GRU: 3 gates, one bias: 218,880 + 147,840 + 37,056; BN 256; Dense 650
    (StackedGRU, "gru", 404_682, 404_554, 64),
    # 4x4 patches: conv 16x96 + 96, cls 96, positions 50x96; 4 layers of 74,784; LayerNorm 192; Dense 970
    (PatchTransformer, "attention", 306_826, 306_826, 96),
    # WRN-16-4: the convolutions, 3,616 BatchNorm statistics (non-trainable in Keras's count) and Dense 2,570
    (PreActWideResNet, "resnet", 2_752_218, 2_748_602, 256),
]


@pytest.mark.parametrize("cls, _name, total, trainable, width", BEYOND)
def test_shapes_and_parameter_counts(cls, _name, total, trainable, width):
    model = cls().eval()
    counts = keras_param_counts(model)
    assert (counts["total"], counts["trainable"]) == (total, trainable)
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10) and model.embed(x).shape == (5, width)
    assert f"Total params: {total:,}" in keras_summary_markdown(model)
    assert MODELS[cls.__name__] is cls  # in the registry: checkpoints name it


def test_summary_names_the_gated_cells():
    assert "(GRU) | (None, 28, 256) | 218,880 |" in keras_summary_markdown(StackedGRU())
    assert "(LSTM) | (None, 64) | 49,408 |" in keras_summary_markdown(StackedLSTM())


def test_resnet_depth_and_width_follow_the_wrn_formula():
    # WRN-10-1: one block per group; WRN-28-2: four blocks per group, widths 32/64/128
    small, deep = PreActWideResNet(depth=10, widen=1), PreActWideResNet(depth=28, widen=2)
    assert sum(1 for m in small.modules() if type(m).__name__ == "PreActBlock") == 3
    assert sum(1 for m in deep.modules() if type(m).__name__ == "PreActBlock") == 12
    assert deep.embed(torch.rand(2, 1, 28, 28)).shape == (2, 128)


def test_a_convolution_stem_feeds_the_patches_and_keeps_the_tokens():
    plain = PatchTransformer(patch=(7, 7), dim=32, depth=1, heads=2)
    stemmed = PatchTransformer(patch=(7, 7), dim=32, depth=1, heads=2, stem=8).eval()
    assert stemmed.features[0].positions.shape == (1, 17, 32)  # 16 patches and the class token, as without a stem
    assert stemmed(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # a 3x3 convolution of 8 channels (no bias), its BatchNorm, and a patch embedding reading 8 channels
    extra = 9 * 8 + 2 * 8 + (8 - 1) * 49 * 32
    assert sum(p.numel() for p in stemmed.parameters()) == sum(p.numel() for p in plain.parameters()) + extra


def test_training_on_the_cpu_uses_the_math_kernel_and_computes_what_the_default_one_does():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import profile

    torch.manual_seed(0)
    model, x = PatchTransformer(patch=(7, 7), dim=32, depth=2, heads=2, dropout=0.0).train(), torch.rand(4, 1, 28, 28)
    tokens, encoder, rest = model.features[0], model.features[1], model.features[2:]
    with profile() as trace:
        ours = model(x)
    kernels = {event.name for event in trace.events() if "scaled_dot_product" in event.name}
    assert kernels and not any("flash" in name for name in kernels), kernels
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        default = model.classifier(rest(torch.nn.TransformerEncoder.forward(encoder, tokens(x))))
    torch.testing.assert_close(ours, default, rtol=1e-4, atol=1e-5)


def test_rows_as_tokens():
    model = PatchTransformer(patch=(1, 28), dim=32, depth=1, heads=2).eval()
    assert model.features[0].positions.shape == (1, 29, 32)  # 28 rows and the class token
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize(
    "cls, options, words",
    [
        (PreActWideResNet, {"depth": 15}, "depth must be 6n + 4"),
        (PreActWideResNet, {"widen": 0}, "widen must be >= 1"),
        (PatchTransformer, {"patch": (3, 3)}, "patch must be [height, width], each dividing 28"),
        (PatchTransformer, {"dim": 90, "heads": 4}, "dim=90 must be a multiple of heads=4"),
        (PatchTransformer, {"stem": -1}, "stem must be an integer >= 0"),
        (StackedLSTM, {"units": (256, 128)}, "units must be a list of 3 positive integers"),
    ],
)
def test_constructors_refuse_settings_a_checkpoint_could_carry(cls, options, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        cls(**options)


# The smallest network of each class that shows the property runs in the unit tier; the recipe's size in the slow one.
SMALL = {
    StackedLSTM: {"units": (32, 16, 8)},
    StackedGRU: {"units": (32, 16, 8)},
    PatchTransformer: {"dim": 64, "depth": 1, "heads": 2},
    PreActWideResNet: {"depth": 10, "widen": 1},
}


@pytest.mark.parametrize("size", ["small", pytest.param("recipe", marks=pytest.mark.slow)])
@pytest.mark.parametrize("cls, name, _total, _trainable, _width", BEYOND)
def test_two_batches_of_training_lower_the_loss(cls, name, _total, _trainable, _width, size):
    torch.manual_seed(0)
    images, labels = tiny_split(64, seed=3)
    batches = [
        (
            torch.from_numpy(images[i : i + 32]).float().div(255).unsqueeze(1),
            torch.from_numpy(labels[i : i + 32]).long(),
        )
        for i in (0, 32)
    ]
    options = {"dropout": 0.0} if cls in (PatchTransformer, PreActWideResNet) else {}
    model = cls(**options, **(SMALL[cls] if size == "small" else {})).train()
    optimizer = model.configure_optimizers()  # the class's default optimizer (the recipe's lives in its config)

    def loss() -> float:
        with torch.no_grad():
            return sum(float(model.training_loss(x, y)) for x, y in batches)

    before = loss()
    for _ in range(10 if cls is PatchTransformer else 3):  # a Transformer from scratch starts slowly
        for x, y in batches:
            optimizer.zero_grad()
            model.training_loss(x, y).backward()
            optimizer.step()
    assert loss() < 0.9 * before, name


@pytest.mark.parametrize("name, _cls", [(n, c) for c, n, *_ in BEYOND])
def test_each_recipe_composes_with_its_own_model_and_optimizer(name, _cls):
    cfg = compose_train([f"model={name}"])
    GlobalHydra.instance().clear()
    assert cfg.model._target_ == f"fmnist.models.{_cls.__name__}"
    assert cfg.name == name
    if name == "resnet":
        assert cfg.model.optimizer._target_ == "torch.optim.SGD" and cfg.model.optimizer.nesterov
        assert cfg.model.lr_schedule and cfg.model.label_smoothing == 0.1 and cfg.model.tta
        assert cfg.callbacks.ema._target_ == "fmnist.training.callbacks.TestedEMA"
        assert cfg.data.augment.erasing == 0.5 and cfg.data.augment.crop_padding == 2  # augment=strong
    if name == "attention":
        assert cfg.model.optimizer._target_ == "torch.optim.AdamW" and cfg.data.augment.flip == 0.5
    if name in ("lstm", "gru"):
        assert cfg.data.augment.flip == 0 and "ema" not in cfg.callbacks  # the study's kind of recipe
    # a recipe's augmentation gives way to the command line's
    cfg = compose_train([f"model={name}", "augment=none"])
    GlobalHydra.instance().clear()
    assert cfg.data.augment.flip == 0 and cfg.data.augment.erasing == 0


def test_gpu_bf16_trainer_is_the_default_loop_in_bf16():
    cfg = compose_train(["model=resnet", "trainer=gpu_bf16"])
    GlobalHydra.instance().clear()
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.data.device_resident and not cfg.model.fast_step and cfg.data.batches_per_step == 1


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model=resnet", "model.depth=15"], "model: depth must be 6n + 4 with n >= 1"),
        (["model=resnet", "model.widen=0"], "model.widen=0 is out of range: must be an integer >= 1"),
        (["model=resnet", "trainer=cpu_fast"], "callbacks.ema does not apply to the fast path"),
        (["model=attention", "model.patch=[3,3]"], "model.patch=[3, 3] is out of range: must be [height, width]"),
        (["model=attention", "model.dim=90"], "model: dim=90 must be a multiple of heads=4"),
        (["model=attention", "model.heads=two"], "model.heads=two is not an integer"),
        (["model=lstm", "model.units=[64]"], "model.units=[64] is not a list of 3 integers"),
        (["model=resnet", "data.batches_per_step=2"], "data.batches_per_step=2 needs the fast path's training step"),
        (["model=rnn", "data.batches_per_step=x"], "data.batches_per_step=x is not an integer"),
    ],
)
def test_bad_settings_are_one_error_before_any_data_is_read(tmp_path, no_data_access, overrides, words):
    cfg = compose_train([*overrides, f"output_dir={tmp_path}"])
    with pytest.raises(FmnistError, match=re.escape(words)):
        train(cfg)
    GlobalHydra.instance().clear()


# ---------------------------------------------------------------- through fmnist.train


def _tiny(tiny_root, folder, *extra):
    return [
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        "debug=tiny",
        f"output_dir={folder}",
        "data.batch_size=50",
        *extra,
    ]


@pytest.mark.slow
def test_resnet_recipe_checkpoints_and_tests_the_averaged_weights(tiny_root, tmp_path):
    small = ["model.depth=10", "model.widen=1", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
    cfg = compose_train(["model=resnet", *_tiny(tiny_root, tmp_path, *small, "callbacks.ema.decay=0.5")])
    tested = {}

    class WeightsAtTest(L.Callback):
        def on_test_start(self, trainer, pl_module):
            tested.update({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    metrics = train(cfg, callbacks=[WeightsAtTest()])
    GlobalHydra.instance().clear()
    assert metrics["steps"] == 6 and 0 <= metrics["test/acc_tta"] <= 1
    checkpoint = torch.load(tmp_path / metrics["best_checkpoint"], weights_only=True)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert not torch.equal(averaged["classifier.weight"], current["classifier.weight"])
    # evaluate/predict/export read the averaged weights: the ones validated and tested
    model = load_model(tmp_path / metrics["best_checkpoint"])
    torch.testing.assert_close(model.state_dict()["classifier.weight"], averaged["classifier.weight"])
    # the run's own test evaluated them too (Lightning's callback would have put the raw weights back)
    torch.testing.assert_close(tested["classifier.weight"], averaged["classifier.weight"], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "gru", "attention"])
def test_each_new_recipe_trains_and_tests_through_fmnist_train(tiny_root, tmp_path, name):
    cfg = compose_train([f"model={name}", *_tiny(tiny_root, tmp_path, "trainer.limit_train_batches=2")])
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    assert metrics["model"] == name and metrics["steps"] == 2 and 0 <= metrics["test/acc"] <= 1
    assert metrics["params_total_keras"] == next(total for _, n, total, *_ in BEYOND if n == name)
    assert type(load_model(tmp_path / metrics["best_checkpoint"])).__name__ == cfg.model._target_.rsplit(".", 1)[1]


@pytest.mark.slow
def test_compare_experiment_includes_the_new_models_named_on_the_command_line(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    data = [f"data.root={tiny_root}", "data.search_dirs=[]", "debug=tiny", "trainer.limit_train_batches=2"]
    result = run_cli(
        "fmnist.train", "experiment=compare", "model=rnn,gru", "seed=1", *data, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-1500:]
    report = (sweep / "comparison.md").read_text()
    assert "| gru |" in report and "| rnn |" in report
    assert "| study: cnn |" in report and "| study: bilstm |" in report  # the study's networks as the yardstick


def test_results_rows_accumulate_and_label_a_new_models_reduced_run(tmp_path):
    from fmnist.analysis.results import write_results

    def row(model, epochs, acc, recipe="KerasAdam lr=0.001, batch 64"):
        return {
            "model": model,
            "recipe": recipe,
            "test_acc_mean": acc,
            "test_acc_std": 0.001,
            "macro_f1_mean": acc,
            "seeds": [1, 2, 3],
            "epochs": epochs,
            "train_seconds_mean": 60.0,
            "device": "cpu",
            "batch_size": 64,
            "optimizer": {},
            "params_total_keras": 539_274,
        }

    write_results([row("rnn", 25, 0.88, "SGD lr=0.01, batch 65")], tmp_path)
    write_results([row("lstm", 2, 0.85)], tmp_path)
    write_results([row("lstm", 2, 0.86), row("lstm", 20, 0.91)], tmp_path)  # a re-measurement replaces its row
    write_results([row("lstm", 2, 0.87, "SGD lr=0.1, batch 64")], tmp_path)  # another recipe is another row
    # recipe B measured alone, then again beside recipe A (keyed "lstm@2ep (B)" then): still one row of B
    write_results([row("lstm", 2, 0.84, "SGD lr=0.1, batch 64"), row("lstm", 2, 0.86)], tmp_path)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["recipe"] for r in rows.values() if r["model"] == "lstm" and r["epochs"] == 2) == [
        "KerasAdam lr=0.001, batch 64",
        "SGD lr=0.1, batch 64",
    ]
    assert len(rows) == 4 and list(rows)[-2:] == ["lstm", "rnn"]  # by model, then epochs
    adam = next(r for r in rows.values() if r["epochs"] == 2 and r["recipe"].startswith("KerasAdam"))
    assert adam["test_acc_mean"] == 0.86 and rows["lstm"]["full_recipe"]  # fmnist/conf/model/lstm.yaml: 20
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| lstm | KerasAdam lr=0.001, batch 64 | 2 of 20 (reduced) | 3 | 0.8600 ± 0.0010 |" in table
    assert "| rnn | SGD lr=0.01, batch 65 | 25 | 3 | 0.8800" in table and "(beyond the study)" in table
    (tmp_path / "results.json").write_text("{")
    with pytest.raises(FmnistError, match="results.json"):
        write_results([row("lstm", 2, 0.86)], tmp_path)


def test_the_last_lines_give_the_tta_figure_next_to_the_plain_one(tmp_path):
    from fmnist.training.report import next_steps

    metrics = {"test/acc": 0.9, "best_checkpoint": "checkpoints/epoch_001.ckpt"}
    assert "test accuracy: 0.9000 (best checkpoint" in next_steps(tmp_path, metrics)
    text = next_steps(tmp_path, {**metrics, "test/acc_tta": 0.91})
    assert "test accuracy: 0.9000, 0.9100 with flip TTA (best checkpoint on validation" in text
