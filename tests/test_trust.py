"""Hostile checkpoints and run folders: no command builds a class outside fmnist's registry (issue 12, part 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from fmnist.models import CNN, MODEL_NAMES, MODELS, BiLSTM, SimpleRNN, SpeedNet
from fmnist.models.base import optimizer_factory
from fmnist.models.checkpoint import load_model
from fmnist.models.trust import OPTIMIZERS, checked_hparams
from fmnist.training.fit import train
from fmnist.utils.errors import FmnistError
from tests.conftest import assert_error_names, assert_one_error_line, compose_train, run_cli

# Class paths that reach code through module attributes, each spelled past an `fmnist.models.` prefix.
GADGETS = [
    "fmnist.models.graphed.torch._dynamo.convert_frame.subprocess.Popen",
    "fmnist.models.cnn.torch.nn.modules.module.torch.os.system",
    "fmnist.models.base.L.pytorch.trainer.trainer.os.system",
    "fmnist.models.CNN.__init__.__globals__",
    "fmnist.models.cnn.CNN.__class__",
    "fmnist.models.",
    "subprocess.Popen",
    "builtins.exec",
    "CNN ",
]


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pwned"


def _popen(marker: Path) -> dict:
    """Hyperparameters that make `subprocess.Popen(**them)` create `marker`."""
    return {"args": ["sh", "-c", f"touch '{marker}'"]}


def _save(path: Path, checkpoint: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def _genuine(trained_run: Path) -> dict:
    return torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- the registry and its tables


def test_the_registry_holds_every_model_under_every_name_their_files_carry():
    from fmnist.models import PatchTransformer, PreActWideResNet, StackedGRU, StackedLSTM

    assert MODELS == {
        "CNN": CNN,
        "SimpleRNN": SimpleRNN,
        "BiLSTM": BiLSTM,
        "SpeedNet": SpeedNet,
        "StackedLSTM": StackedLSTM,
        "StackedGRU": StackedGRU,
        "PatchTransformer": PatchTransformer,
        "PreActWideResNet": PreActWideResNet,
    }
    for cls in MODELS.values():
        for name in (cls.__name__, f"fmnist.models.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}"):
            assert MODEL_NAMES[name] is cls
    assert set(OPTIMIZERS) >= {
        "torch.optim.SGD",
        "torch.optim.sgd.SGD",
        "torch.optim.Adam",
        "torch.optim.adam.Adam",
        "fmnist.models.optim.KerasAdam",
        "fmnist.models.optim.KerasRMSprop",
    }


@pytest.mark.parametrize("cls", [CNN, SimpleRNN, BiLSTM])
def test_every_hyperparameter_a_model_saves_can_be_checked(cls):
    hparams = dict(cls().hparams)
    assert checked_hparams(cls, hparams, "x.ckpt") == hparams


def _targets(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "hydra" and not path:
                continue  # Hydra's own settings: never part of a run's .hydra/config.yaml
            if key == "_target_":
                yield f"{path}._target_", value
            yield from _targets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for item in node:
            yield from _targets(item, path)


# ---------------------------------------------------------------- hostile checkpoints


@pytest.mark.parametrize("gadget", GADGETS)
def test_a_gadget_class_path_in_a_checkpoint_is_refused(tmp_path, marker, gadget):
    path = _save(tmp_path / "evil.ckpt", {"state_dict": {}, "hyper_parameters": _popen(marker), "fmnist_model": gadget})
    with pytest.raises(FmnistError) as info:
        load_model(path)
    # the file, the name it gives, and the models fmnist builds
    assert_error_names(str(info.value), str(path), "refused", "fmnist_model", repr(gadget), *MODELS)
    assert not marker.exists()


@pytest.mark.parametrize("name", [123, ["fmnist.models.CNN"], None, {"_target_": "os.system"}])
def test_a_model_name_that_is_no_string_is_refused(tmp_path, name):
    path = _save(tmp_path / "evil.ckpt", {"state_dict": {}, "hyper_parameters": {}, "fmnist_model": name})
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "refused", "fmnist_model", repr(name), *MODELS)


@pytest.mark.parametrize(
    "edit, named",
    [
        (
            lambda h, m: h.update(evil=1),
            ("CNN", "hyper_parameters.evil", "optimizer", "conv_dropout", "dense_dropout", "tta"),
        ),
        (lambda h, m: h.update(_target_="os.system"), ("CNN", "hyper_parameters._target_")),
        (lambda h, m: h.update(args=_popen(m)["args"]), ("CNN", "hyper_parameters.args")),
        (lambda h, m: h.update(conv_dropout=[0.2]), ("hyper_parameters.conv_dropout", "[0.2]", "3 numbers")),
        (
            lambda h, m: h.update(conv_dropout={"_target_": "subprocess.Popen", **_popen(m)}),
            ("hyper_parameters.conv_dropout", "{'_target_': 'subprocess.Popen'", "3 numbers"),
        ),
        (
            lambda h, m: h.update(conv_dropout=[0.2, 0.3, {"_target_": "os.system"}]),
            ("hyper_parameters.conv_dropout", "'os.system'", "3 numbers"),
        ),
        (lambda h, m: h.update(dense_dropout="0.5"), ("hyper_parameters.dense_dropout", "'0.5'", "a number")),
        (lambda h, m: h.update(dense_dropout=float("nan")), ("hyper_parameters.dense_dropout", "nan", "a number")),
        (lambda h, m: h.update(dense_dropout=torch.tensor(0.5)), ("hyper_parameters.dense_dropout", "tensor")),
        (lambda h, m: h.update(dense_dropout=7.0), ("CNN", "dropout", "7.0")),
        (lambda h, m: h.update(dense_dropout=10**400), ("CNN", "dropout", str(10**400)[:30])),
        (lambda h, m: h.update({"a\nb": 1}), ("CNN", r"hyper_parameters.'a\nb'")),
        (lambda h, m: h.update(channels_last=1), ("hyper_parameters.channels_last", "true or false", "not 1")),
        (lambda h, m: h.update(fast_step="yes"), ("hyper_parameters.fast_step", "true or false", "'yes'")),
        (
            lambda h, m: h.update(optimizer={"_target_": "subprocess.Popen", **_popen(m)}),
            (
                "refused",
                "hyper_parameters.optimizer._target_",
                "'subprocess.Popen'",
                "torch.optim.SGD",
                "fmnist.models.optim.KerasRMSprop",
            ),
        ),
        (
            lambda h, m: h.update(optimizer={"_target_": "fmnist.optim.torch.optim.adam.os.system", "command": "id"}),
            ("refused", "hyper_parameters.optimizer._target_", "'fmnist.optim.torch.optim.adam.os.system'"),
        ),
        (
            lambda h, m: h["optimizer"].update(lr={"_target_": "subprocess.Popen", **_popen(m)}),
            ("hyper_parameters.optimizer.lr", "{'_target_': 'subprocess.Popen'"),
        ),
        (
            lambda h, m: h["optimizer"].update(_args_=[{"_target_": "builtins.exec"}]),
            ("hyper_parameters.optimizer._args_", "fmnist.models.optim.KerasRMSprop"),
        ),
        (lambda h, m: h["optimizer"].update(_partial_=False), ("hyper_parameters.optimizer._partial_",)),
        (
            lambda h, m: h.update(optimizer="torch.optim.SGD"),
            ("hyper_parameters.optimizer", "_target_", "'torch.optim.SGD'"),
        ),
    ],
)
def test_edited_hyperparameters_are_refused_before_the_constructor_sees_them(
    trained_run, tmp_path, marker, edit, named
):
    checkpoint = _genuine(trained_run)
    edit(checkpoint["hyper_parameters"], marker)
    path = _save(tmp_path / "edited.ckpt", checkpoint)
    with pytest.raises(FmnistError) as error:
        load_model(path)
    assert str(error.value).startswith(str(path))
    assert_error_names(str(error.value), *named)
    assert not marker.exists()


def test_hyperparameters_that_are_no_mapping_are_refused(trained_run, tmp_path):
    checkpoint = _genuine(trained_run)
    checkpoint["hyper_parameters"] = [1, 2]
    with pytest.raises(FmnistError) as info:
        load_model(_save(tmp_path / "edited.ckpt", checkpoint))
    assert_error_names(str(info.value), "CNN", "hyper_parameters", "[1, 2]")


def _legacy_run(trained_run: Path, folder: Path, target: str) -> Path:
    """A run folder whose checkpoint names no class (as before `fmnist_model`), with `model._target_` in its config."""
    checkpoint = _genuine(trained_run)
    del checkpoint["fmnist_model"]
    path = _save(folder / "checkpoints" / "old.ckpt", checkpoint)
    (folder / ".hydra").mkdir()
    OmegaConf.save(
        OmegaConf.create({"model": {"_target_": target, "conv_dropout": [0.2, 0.3, 0.4]}}),
        folder / ".hydra" / "config.yaml",
    )
    return path


@pytest.mark.parametrize(
    "target", ["os.system", "fmnist.models.graphed.torch._dynamo.convert_frame.subprocess.Popen", "${oc.env:HOME}"]
)
def test_a_gadget_in_the_run_config_of_a_checkpoint_without_class_is_refused(trained_run, tmp_path, target):
    path = _legacy_run(trained_run, tmp_path / "run", target)
    config = tmp_path / "run" / ".hydra" / "config.yaml"
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(config), "refused", "model._target_", *MODELS)


def test_a_genuine_checkpoint_and_those_of_the_previous_version_still_load(trained_run, tmp_path):
    checkpoint = _genuine(trained_run)
    assert checkpoint["fmnist_model"] == "CNN"  # the registry name, from now on
    model = load_model(trained_run / "checkpoints" / "last.ckpt")
    assert type(model) is CNN and not model.training
    weights = {k: v for k, v in model.state_dict().items()}
    for name in ("fmnist.models.cnn.CNN", "fmnist.models.CNN"):  # what earlier versions wrote
        checkpoint["fmnist_model"] = name
        old = load_model(_save(tmp_path / f"{name}.ckpt", checkpoint))
        assert type(old) is CNN and all(torch.equal(v, old.state_dict()[k]) for k, v in weights.items())
    assert type(load_model(_legacy_run(trained_run, tmp_path / "run", "fmnist.models.cnn.CNN"))) is CNN


def test_the_optimizer_comes_from_the_table_only():
    sgd = optimizer_factory({"_target_": "torch.optim.sgd.SGD", "lr": 0.1, "momentum": 0.0})
    assert sgd.func is torch.optim.SGD and sgd.keywords == {"lr": 0.1, "momentum": 0.0}
    with pytest.raises(FmnistError) as info:
        optimizer_factory({"_target_": "torch.optim.NAdam"})
    assert_error_names(str(info.value), "model.optimizer._target_", "'torch.optim.NAdam'", "torch.optim.SGD")


@pytest.mark.parametrize(
    "running",
    [
        {"update": torch.tensor(0.0)},
        {"val_acc_best": {"__class__": torch.tensor(0.0)}},
        {"train_seen": "7"},
        ["train_seen"],
    ],
)
def test_a_checkpoint_never_picks_which_attribute_a_resume_sets(running):
    with pytest.raises(FmnistError) as info:
        SimpleRNN().on_load_checkpoint({"fmnist_running": running})
    assert_error_names(str(info.value), "fmnist_running", "not an fmnist checkpoint")


# ---------------------------------------------------------------- hostile run folders given to resume=


def _run_folder(run: Path, tiny_root: Path, edit) -> Path:
    """A resumable run folder with the real composed config, edited by `edit(config_dict, marker)`."""
    overrides = [
        "model=cnn",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]
    try:
        config = OmegaConf.to_container(compose_train([*overrides, f"output_dir={run}"]), resolve=True)
    finally:
        GlobalHydra.instance().clear()
    edit(config, run / "pwned")
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
    _save(run / "checkpoints" / "last.ckpt", {})
    return run


def _system(marker: Path) -> dict:
    return {"_target_": "os.system", "_args_": [f"touch '{marker}'"]}


# Hydra 1.3.8 blocks os.system, subprocess.Popen and exec itself, but not these: a file written with
# chosen text (a .pth file in site-packages runs at the next Python start).
def _open(marker: Path) -> dict:
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


def _savetxt(marker: Path) -> dict:
    return {
        "_target_": "numpy.savetxt",
        "fname": str(marker),
        "X": [],
        "comments": "",
        "header": "import os; os.system('id')",
    }


# (the key the refusal names, the edit): a resume re-composes the run and compares the file, naming the first key
# where it differs; a key that fmnist/conf/ does not have (callbacks.evil) is never read at all.
HOSTILE_CONFIGS = [
    ("model._target_", lambda c, m: c.update(model=_system(m))),
    ("model.optimizer._target_", lambda c, m: c["model"].update(optimizer=_open(m))),
    ("trainer._target_", lambda c, m: c.update(trainer={"_target_": "builtins.exec", "_args_": [f"open('{m}', 'w')"]})),
    (
        "logger.tensorboard._target_",
        lambda c, m: c["logger"]["tensorboard"].update(
            _target_="fmnist.models.graphed.torch._dynamo.convert_frame.subprocess.Popen", **_popen(m)
        ),
    ),
    ("data.search_dirs", lambda c, m: c["data"].update(search_dirs=[_savetxt(m)])),
    ("trainer.plugins", lambda c, m: c["trainer"].update(plugins=[None, _open(m)])),
    (
        "callbacks.model_checkpoint._target_",
        lambda c, m: c["callbacks"].update(
            model_checkpoint={"_target_": "shutil.copyfile", "src": __file__, "dst": str(m)}
        ),
    ),
    (None, lambda c, m: c["callbacks"].update(evil={"_target_": "subprocess.Popen", **_popen(m)})),
]


@pytest.mark.parametrize("key, edit", HOSTILE_CONFIGS, ids=[str(key) for key, _ in HOSTILE_CONFIGS])
def test_a_resume_builds_nothing_that_a_run_config_names(tiny_root, tmp_path, key, edit):
    run = _run_folder(tmp_path / "run", tiny_root, edit)
    config = run / ".hydra" / "config.yaml"
    try:
        with pytest.raises(FmnistError) as info:
            train(compose_train([f"resume={run}"]))
    finally:
        GlobalHydra.instance().clear()
    if key is None:  # the file's extra callback is not even read: the run's fake last.ckpt is what stops it
        assert_error_names(str(info.value), "last.ckpt", "not a training checkpoint")
    else:
        assert_error_names(str(info.value), str(config), "refused", key, "differs")
    assert not (run / "pwned").exists()


# ---------------------------------------------------------------- the same, through the real commands


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, args",
    [
        ("fmnist.predict", ["inputs=garment.png"]),
        ("fmnist.evaluate", []),
        ("fmnist.cluster", []),
        ("fmnist.export", ["format=torchscript"]),
    ],
)
def test_the_commands_refuse_a_gadget_checkpoint_with_one_line(tmp_path, marker, command, args):
    _save(tmp_path / "evil.ckpt", {"state_dict": {}, "hyper_parameters": _popen(marker), "fmnist_model": GADGETS[0]})
    Image.new("L", (28, 28)).save(tmp_path / "garment.png")
    result = run_cli(command, "ckpt_path=evil.ckpt", *args, cwd=tmp_path, timeout=120)
    assert_one_error_line(result, "evil.ckpt", "refused", "fmnist_model", repr(GADGETS[0]))
    assert not marker.exists()


@pytest.mark.slow
def test_train_resume_refuses_a_gadget_run_folder_with_one_line(tiny_root, tmp_path):
    key, edit = next((key, edit) for key, edit in HOSTILE_CONFIGS if key and key.startswith("data."))
    run = _run_folder(tmp_path / "run", tiny_root, edit)
    result = run_cli("fmnist.train", f"resume={run}", cwd=tmp_path, timeout=120)
    assert_one_error_line(result, "refused", key, "differs")
    assert not (run / "pwned").exists()
