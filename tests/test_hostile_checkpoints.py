"""Hostile checkpoints that ask for memory: bounds are checked before anything is allocated (issue 12).

A checkpoint's hyperparameters are bounded (each size or count, then the network's parameter count, sized on
the meta device) and its zip entries are checked before `torch.load` reads them; running out of memory anyway
is one `error:` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import fmnist.models.checkpoint as checkpoint_module
from fmnist.models import MODEL_NAMES, MODELS, SimpleRNN
from fmnist.models.checkpoint import MAX_CHECKPOINT_BYTES, load_model
from fmnist.models.trust import MAX_PARAMETERS, MAX_SIZE, checked_hparams, checked_size
from fmnist.utils.errors import FmnistError
from tests.conftest import CONF, assert_error_names, assert_one_error_line, compose_train, run_cli

# Each size or count beyond MAX_SIZE: refused by its value, before any network is built (even on meta).
OVERSIZED = [
    ("StackedLSTM", {"units": [8000, 1, 1]}, ("units", "[8000, 1, 1]")),  # 1.8 GB from a 560 KB file
    ("PatchTransformer", {"depth": 10**8}, ("depth", "100000000")),
    ("PatchTransformer", {"depth": -(10**8)}, ("depth", "-100000000")),
    ("PreActWideResNet", {"depth": 6 * 10**7 + 4}, ("depth", "60000004")),
    ("SpeedNet", {"widths": [10**6, 10**6, 10**6]}, ("widths", "[1000000, 1000000, 1000000]")),
]
# Every size within MAX_SIZE, the network far beyond MAX_PARAMETERS: refused by its size on the meta device.
TOO_LARGE = [
    ("PatchTransformer", {"dim": 1024, "depth": 64, "heads": 1, "mlp_ratio": 4}, ("dim=1024", "depth=64")),
    ("PreActWideResNet", {"depth": 100, "widen": 64}, ("depth=100", "widen=64")),
    # the slowest to size: MAX_SIZE layers, each built on meta
    ("PatchTransformer", {"dim": 1024, "depth": MAX_SIZE, "heads": 1}, ("dim=1024", f"depth={MAX_SIZE}")),
]
ALLOCATOR_ERROR = (
    "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate"
)


def _save(path: Path, hparams: dict, name: str, state_dict: dict | None = None) -> Path:
    """A checkpoint as fmnist.train writes one, of a small file: the hyperparameters are the attack."""
    state_dict = {"features.0.weight": torch.zeros(3)} if state_dict is None else state_dict
    torch.save({"state_dict": state_dict, "hyper_parameters": hparams, "fmnist_model": name}, path)
    return path


def _genuine(path: Path) -> Path:
    """A genuine checkpoint of a small network."""
    model = SimpleRNN()
    return _save(path, dict(model.hparams), "SimpleRNN", model.state_dict())


@pytest.fixture
def built_on_meta_only(monkeypatch):
    """Every torch module built in the test must be built on the meta device: building for real fails at once,
    before a parameter is allocated."""
    original = torch.nn.Module.__init__

    def guarded(self, *args, **kwargs):
        assert torch.get_default_device().type == "meta", "a network from a hostile file was built for real"
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__init__", guarded)


@pytest.fixture
def built_never(monkeypatch):
    """No torch module may be built in the test, not even on the meta device."""

    def refused(self, *args, **kwargs):
        raise AssertionError(f"a {type(self).__name__} was built from a hostile file")

    monkeypatch.setattr(torch.nn.Module, "__init__", refused)


# ---------------------------------------------------------------- sizes and counts


@pytest.mark.parametrize("name, hparams, named", OVERSIZED)
def test_an_oversized_count_is_refused_before_any_network_is_built(tmp_path, built_never, name, hparams, named):
    path = _save(tmp_path / "big.ckpt", hparams, name)
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "refused", name, *named, str(MAX_SIZE))


@pytest.mark.parametrize("name, hparams, named", TOO_LARGE)
def test_a_network_beyond_the_parameter_cap_is_refused_from_its_size_on_meta(
    tmp_path, built_on_meta_only, name, hparams, named
):
    path = _save(tmp_path / "big.ckpt", hparams, name)
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "refused", name, *named, f"{MAX_PARAMETERS:,}")


def test_an_oversized_count_is_one_error_line_of_the_command(tmp_path, built_never):
    _save(tmp_path / "big.ckpt", {"depth": 10**8}, "PatchTransformer")
    result = run_cli("fmnist.evaluate", "ckpt_path=big.ckpt", cwd=tmp_path, timeout=120)
    assert_one_error_line(result, "big.ckpt", "refused", "depth", "100000000")


def _trained_networks() -> list[tuple[str, type, dict]]:
    """Each network fmnist/conf/model/ trains (and the experiments that change one), with its hyperparameters."""
    overrides = [f"model={file.stem}" for file in sorted((CONF / "model").glob("*.yaml"))]
    overrides += [
        f"experiment={file.stem}"
        for file in sorted((CONF / "experiment").glob("*.yaml"))
        if "model" in OmegaConf.load(file)
    ]
    networks = []
    for override in overrides:
        try:
            model = OmegaConf.to_container(compose_train([override, "output_dir=/tmp/x"]).model, resolve=True)
        finally:
            GlobalHydra.instance().clear()
        cls = MODEL_NAMES[model.pop("_target_")]
        networks.append((override, cls, {k: v for k, v in model.items() if k not in ("_convert_", "optimizer")}))
    return networks


def test_every_network_fmnist_trains_is_far_within_the_bounds():
    networks = _trained_networks()
    assert {cls for _, cls, _ in networks} == set(MODELS.values())
    for override, cls, hparams in networks:
        checked_hparams(cls, hparams, override)
        sizes = [v for value in hparams.values() for v in (value if isinstance(value, list) else [value])]
        assert max((v for v in sizes if type(v) is int), default=0) * 4 <= MAX_SIZE, override
        assert checked_size(cls, hparams, override) * 10 < MAX_PARAMETERS, override
    # a large classic still fits: WRN-28-10, 36.5 million parameters
    assert checked_size(MODELS["PreActWideResNet"], {"depth": 28, "widen": 10}, "wrn") < MAX_PARAMETERS


@pytest.mark.parametrize("name", list(MODELS))
def test_a_genuine_checkpoint_of_each_network_still_loads(tmp_path, name):
    model = MODELS[name]()
    path = _save(tmp_path / f"{name}.ckpt", dict(model.hparams), name, model.state_dict())
    loaded = load_model(path)
    assert type(loaded) is MODELS[name]
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())


# ---------------------------------------------------------------- the zip archive


def _deflated(source: Path, target: Path, entry: str = "", mib: int = 0) -> Path:
    """`source` zipped again with deflate; or, if `entry` is given, only the entry ending in it, replaced by `mib`
    MiB of zeros, streamed: a bomb that a few hundred KB unpack to."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            packed = zipfile.ZipInfo(info.filename, info.date_time)
            if not entry:
                packed.compress_type = zipfile.ZIP_DEFLATED
            elif info.filename.endswith(entry):
                packed.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(packed, "w", force_zip64=True) as out:
                    for _ in range(mib):
                        out.write(bytes(2**20))
                continue
            dst.writestr(packed, src.read(info.filename))
    return target


class TorchLoaded(BaseException):
    """torch.load was called: a BaseException, which no `except Exception` of the loader turns into a message."""


@pytest.fixture
def never_torch_loaded(monkeypatch):
    """Fails the test if torch.load reads the checkpoint."""

    def refused(*args, **kwargs):
        raise TorchLoaded("torch.load read a checkpoint that should have been refused")

    monkeypatch.setattr(checkpoint_module.torch, "load", refused)


def test_a_recompressed_checkpoint_is_refused_before_torch_loads_it(tmp_path, never_torch_loaded):
    path = _deflated(_genuine(tmp_path / "genuine.ckpt"), tmp_path / "deflated.ckpt")
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "refused", "compressed", "deflate", "torch.save")


def test_a_deflated_bomb_is_refused_naming_its_entry(tmp_path, never_torch_loaded):
    path = _deflated(_genuine(tmp_path / "genuine.ckpt"), tmp_path / "bomb.ckpt", "/data/0", mib=16)
    assert path.stat().st_size < 2**20
    bomb = next(info for info in zipfile.ZipFile(path).infolist() if info.filename.endswith("/data/0"))
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "refused", repr(bomb.filename), "deflate", f"{16 * 2**20:,}")


def _lying(source: Path, target: Path, claimed: int) -> Path:
    """`source` with its stored tensor entries' central directory records claiming `claimed` bytes each (stored,
    packed and unpacked alike): a small file whose entries declare far more."""
    data = bytearray(source.read_bytes())
    start = data.index(b"PK\x01\x02")  # the central directory: sizes at 20 (packed) and 24 (unpacked)
    while start >= 0:
        name_length = int.from_bytes(data[start + 28 : start + 30], "little")
        name = bytes(data[start + 46 : start + 46 + name_length])
        if b"/data/" in name and not name.endswith(b".pkl"):
            data[start + 20 : start + 28] = claimed.to_bytes(4, "little") * 2
        start = data.find(b"PK\x01\x02", start + 4)
    target.write_bytes(bytes(data))
    return target


def test_entries_declaring_more_than_the_cap_are_refused_before_torch_loads_them(tmp_path, never_torch_loaded):
    path = _lying(_genuine(tmp_path / "genuine.ckpt"), tmp_path / "lying.ckpt", 2**32 - 2)
    declared = sum(info.file_size for info in zipfile.ZipFile(path).infolist())
    assert declared > MAX_CHECKPOINT_BYTES > path.stat().st_size
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "refused", f"{declared:,}", f"{MAX_CHECKPOINT_BYTES:,}")


def test_a_checkpoint_larger_than_the_cap_is_refused_before_torch_loads_it(tmp_path, monkeypatch, never_torch_loaded):
    path = _genuine(tmp_path / "genuine.ckpt")
    monkeypatch.setattr(checkpoint_module, "MAX_CHECKPOINT_BYTES", path.stat().st_size - 1)
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "refused", f"{path.stat().st_size:,}")


def test_the_archive_cap_holds_the_largest_network_with_its_optimizer_and_average():
    # float32 weights, two Adam moments and the two copies of the weights' moving average
    assert MAX_CHECKPOINT_BYTES >= 5 * 4 * MAX_PARAMETERS


# ---------------------------------------------------------------- out of memory


@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError(f"{ALLOCATOR_ERROR} 4000000000 bytes.")])
def test_running_out_of_memory_in_torch_load_is_one_error(tmp_path, monkeypatch, failure):
    path = _genuine(tmp_path / "genuine.ckpt")

    def out_of_memory(*args, **kwargs):
        raise failure

    monkeypatch.setattr(checkpoint_module.torch, "load", out_of_memory)
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "out of memory")


@pytest.mark.parametrize("failure", [MemoryError, lambda: RuntimeError(f"{ALLOCATOR_ERROR} 40 bytes.")])
def test_running_out_of_memory_building_or_filling_the_network_is_one_error(tmp_path, monkeypatch, failure):
    path = _genuine(tmp_path / "genuine.ckpt")
    build = torch.nn.Module.__init__

    def built_for_real_out_of_memory(self, *args, **kwargs):
        if torch.get_default_device().type != "meta":  # sized on meta first, then built for real
            raise failure()
        build(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__init__", built_for_real_out_of_memory)
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "out of memory")
    monkeypatch.setattr(torch.nn.Module, "__init__", build)

    def filled_out_of_memory(*args, **kwargs):
        raise failure()

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", filled_out_of_memory)
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "out of memory")


def test_running_out_of_memory_is_one_error_line_of_the_command(tmp_path, monkeypatch):
    _genuine(tmp_path / "genuine.ckpt")

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(checkpoint_module.torch, "load", out_of_memory)
    result = run_cli("fmnist.evaluate", "ckpt_path=genuine.ckpt", cwd=tmp_path, timeout=120)
    assert_one_error_line(result, "genuine.ckpt", "out of memory")


def test_a_bug_is_no_memory_error(tmp_path, monkeypatch):
    path = _genuine(tmp_path / "genuine.ckpt")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", broken)
    with pytest.raises(FmnistError) as info:  # a RuntimeError of load_state_dict: the file does not match
        load_model(path)
    assert "out of memory" not in str(info.value)


# ---------------------------------------------------------------- in a process with little memory to spare

CHILD = """
import json, resource, sys, time
from fmnist.models.checkpoint import load_model
from fmnist.utils.errors import FmnistError

# 1 GiB of address space to spare: what a hostile file asks for beyond that fails to allocate, not the machine
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (size + 2**30 if hard < 0 else min(size + 2**30, hard), hard))
for path in sys.argv[1:]:
    peak, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    try:
        load_model(path)
        error = None
    except FmnistError as refused:
        error = str(refused)
    except BaseException as other:
        error = "not an FmnistError: " + type(other).__name__
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    print(json.dumps({"path": path, "error": error, "seconds": time.monotonic() - start, "grew_kib": grew}))
"""


@pytest.mark.slow
def test_hostile_checkpoints_fail_fast_and_allocate_nothing_in_a_fresh_process(tmp_path):
    cases = {
        f"{name}-{index}.ckpt": (_save(tmp_path / f"{name}-{index}.ckpt", hparams, name), named)
        for index, (name, hparams, named) in enumerate(OVERSIZED + TOO_LARGE)
    }
    bomb = _deflated(_genuine(tmp_path / "genuine.ckpt"), tmp_path / "bomb.ckpt", "/data/0", mib=256)
    cases["bomb.ckpt"] = (bomb, ("compressed", "deflate"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *(str(path) for path, _ in cases.values())],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loads = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(loads) == len(cases), result.stdout[-3000:]
    for load in loads:
        path, named = cases[Path(load["path"]).name]
        assert load["error"] and not load["error"].startswith("not an FmnistError"), load
        assert_error_names(load["error"], str(path), "refused", *named)
        assert load["seconds"] < 5, load
        assert load["grew_kib"] < 128 * 1024, load  # nothing near what the file asks for was allocated
