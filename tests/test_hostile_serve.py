"""The web page (`fmnist.serve`) against hostile input: request sizes, bad requests, the upload quota, the cache
file's write, and file names that carry control characters. A stand-in network and catalogue: nothing trains."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from PIL import Image

from fmnist.utils.config import compose_config
from fmnist.utils.errors import FmnistError
from tests.conftest import free_port

pytest.importorskip("gradio", reason="the web page needs pip install -e '.[web]'")
httpx = pytest.importorskip("httpx")

import fmnist.web.app as web  # noqa: E402
from fmnist.deploy.predict import list_inputs  # noqa: E402
from fmnist.web.catalog import Catalog, build_catalog, cache_key  # noqa: E402

MAX_FILE = 256 << 10  # max_file_size=256kb
QUOTA = 1 << 20  # upload_quota=1mb
SECRET = "SECRET-PAYLOAD-7f3a"  # must never reach the log


class StandIn(torch.nn.Module):
    """What the page needs of a network: `embed` and `classifier`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Linear(784, 8)
        self.classifier = torch.nn.Linear(8, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.flatten(1))


def stand_in_catalog(n: int = 12) -> Catalog:
    generator = torch.Generator().manual_seed(0)
    return Catalog(
        embeddings=torch.nn.functional.normalize(torch.randn(n, 8, generator=generator), dim=1),
        images=torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator),
        classes=torch.arange(n) % 10,
        names=[f"item {i}" for i in range(n)],
        labelled=True,
        clusters=np.arange(n) % 2,
        map2d=np.zeros((n, 2), dtype=np.float32),
        scores={"nmi": 0.5, "ari": 0.5, "purity": 0.5, "k": 2, "clusters": []},
    )


def garment(i: int) -> Image.Image:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[2 * i + 2 : 2 * i + 8, 4:24] = 255
    return Image.fromarray(image)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def serve_cfg(*overrides: str, **values):
    cfg = compose_config(list(overrides), config_name="serve")
    GlobalHydra.instance().clear()
    with open_dict(cfg):  # keys that may be new: set, not overridden
        for key, value in values.items():
            cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`serve` in this process on a free port, with the stand-ins; yields (API URL, the uploads folder)."""
    ckpt = tmp_path_factory.mktemp("run") / "last.ckpt"
    ckpt.write_bytes(b"stand-in")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(web, "load_model", lambda path: StandIn())
        patch.setattr(web, "build_catalog", lambda model, cfg, device: stand_in_catalog())
        patch.delenv("GRADIO_TEMP_DIR", raising=False)  # serve sets it: put back afterwards
        cfg = serve_cfg(
            f"ckpt_path={ckpt}", f"port={free_port()}", f"max_file_size={MAX_FILE}", "device=cpu", upload_quota=QUOTA
        )
        app = web.serve(cfg, block=False)
        try:
            yield f"http://127.0.0.1:{cfg.port}/gradio_api", Path(os.environ["GRADIO_TEMP_DIR"])
        finally:
            app.close()


def result(client: httpx.Client, url: str, data: list) -> dict | list:
    """The outcome of one `/classify` call through the queue: the outputs, or the error's payload."""
    started = client.post(f"{url}/call/classify", json={"data": data})
    assert started.status_code == 200, started.text[:300]
    events = client.get(f"{url}/call/classify/{started.json()['event_id']}").text
    kind, payload = "", None
    for line in events.splitlines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind in ("complete", "error"):
            payload = json.loads(line.removeprefix("data: "))
    return payload


def upload(client: httpx.Client, url: str, name: str, data: bytes) -> str:
    answer = client.post(f"{url}/upload", files={"files": (name, data)})
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()[0]


def log_of(capsys) -> list[str]:
    captured = capsys.readouterr()
    return (captured.out + captured.err).splitlines()


def test_a_request_body_beyond_max_file_size_is_refused_with_one_log_line(server, capsys):
    url, _ = server
    capsys.readouterr()
    big = json.dumps({"data": [SECRET * (4 * MAX_FILE // len(SECRET))]}).encode()
    with httpx.Client(timeout=60) as client:
        for path, body in (
            ("/call/classify", big),  # JSON: Gradio's max_file_size covers file uploads only
            ("/queue/join", iter([big[i : i + 65536] for i in range(0, len(big), 65536)])),  # chunked: no length
            ("/upload", b"--b\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n\r\n" + big),
        ):
            headers = {"content-type": "multipart/form-data; boundary=b" if path == "/upload" else "application/json"}
            answer = client.post(url + path, content=body, headers=headers)
            assert answer.status_code == 413, (path, answer.status_code, answer.text[:200])
            assert len(answer.text) < 200 and SECRET not in answer.text
            lines = log_of(capsys)
            assert len(lines) == 1 and path in lines[0] and SECRET not in lines[0], lines
        # a file within the limit is still taken
        assert upload(client, url, "photo.png", b"x" * (MAX_FILE - 1000))


def test_a_bad_request_gets_one_short_error_and_one_log_line_without_its_data_or_a_traceback(server, capsys):
    url, _ = server
    capsys.readouterr()
    file_data = {"meta": {"_type": "gradio.FileData"}}
    bad = (
        [{"path": f"/etc/passwd-{SECRET}", **file_data}],  # not uploaded here
        [SECRET * 20],  # not a file at all
        [{"nested": [SECRET] * 50}],
        [],  # no value
        [None, SECRET],  # one too many
    )
    with httpx.Client(timeout=60) as client:
        for data in bad:
            outcome = result(client, url, data)
            message = outcome[-1] if isinstance(outcome, list) else (outcome or {}).get("error")
            assert isinstance(message, str) and 0 < len(message) < 200 and SECRET not in message, (data, outcome)
            lines = log_of(capsys)
            assert len(lines) == 1 and SECRET not in lines[0] and "Traceback" not in lines[0], (data, lines)
        # the page still classifies a good photo, in the same way
        path = upload(client, url, "garment.png", png(garment(3)))
        outcome = result(client, url, [{"path": path, **file_data}])
        assert outcome[-1].startswith("**"), outcome
        bomb = upload(client, url, "bomb.png", png(Image.new("1", (20000, 20000))))  # refused from its header
        assert "too large" in result(client, url, [{"path": bomb, **file_data}])[-1]
    assert not [line for line in log_of(capsys) if "Traceback" in line]


def test_uploads_are_kept_within_the_quota_newest_first(server):
    url, uploads = server
    kept_at_launch = {p for p in uploads.rglob("*") if p.is_file()}  # the examples' copies, and earlier tests'
    with httpx.Client(timeout=60) as client:
        paths = [upload(client, url, f"noise{i}.bin", os.urandom(MAX_FILE - 4096) + bytes([i])) for i in range(8)]
        newest = upload(client, url, "garment.png", png(garment(2)))

        def used() -> int:
            return sum(p.stat().st_size for p in uploads.rglob("*") if p.is_file() and p not in kept_at_launch)

        deadline = time.monotonic() + 20  # Gradio moves an upload in place after its reply; the quota follows
        while used() > QUOTA and time.monotonic() < deadline:
            time.sleep(0.2)
        assert used() <= QUOTA, used()
        assert not Path(paths[0]).exists() and Path(newest).exists()  # the oldest went, the newest stays
        outcome = result(client, url, [{"path": newest, "meta": {"_type": "gradio.FileData"}}])
        assert outcome[-1].startswith("**"), outcome
        gone = result(client, url, [{"path": paths[0], "meta": {"_type": "gradio.FileData"}}])
        assert gone[-1].startswith("error: "), gone


def test_an_upload_quota_that_cannot_hold_one_upload_stops_with_one_line(tmp_path):
    for value, message in (("1kb", "upload_quota=1kb is out of range"), ("pi", "upload_quota=pi is not a size")):
        cfg = serve_cfg(f"ckpt_path={tmp_path / 'none.ckpt'}", "max_file_size=10mb", upload_quota=value)
        with pytest.raises(FmnistError, match=message):
            web.serve(cfg, block=False)


def folder_cfg(tmp_path: Path, ckpt_folder: str = "run"):
    """A catalogue folder of 4 garments; the serve config for it, beside a stand-in checkpoint file."""
    folder = tmp_path / "catalog"
    folder.mkdir()
    for i in range(4):
        garment(i).save(folder / f"{i}.png")
    ckpt = tmp_path / ckpt_folder / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"stand-in")
    cfg = serve_cfg(f"catalog={folder}", "k=2", "ckpt_path=placeholder")
    cfg.ckpt_path = str(ckpt)  # set, not parsed: any characters
    return cfg, folder, ckpt


def test_the_cache_file_is_written_whole_through_no_planted_link(tmp_path, capsys):
    cfg, folder, ckpt = folder_cfg(tmp_path)
    key = cache_key(ckpt, list_inputs(str(folder)), cfg.k, cfg.seed)
    cache_folder = ckpt.parent / "serve_cache"
    cache_folder.mkdir()
    victims = {}
    for name in (f"catalog_{key}.{os.getpid()}.tmp", f"catalog_{key}.pt"):  # the old temporary name, the file
        victims[name] = tmp_path / f"victim-{len(victims)}"
        victims[name].write_bytes(b"someone else's file")
        (cache_folder / name).symlink_to(victims[name])
    build_catalog(StandIn(), cfg, torch.device("cpu"))
    assert all(victim.read_bytes() == b"someone else's file" for victim in victims.values())
    cache = cache_folder / f"catalog_{key}.pt"
    assert cache.is_file() and not cache.is_symlink()
    assert len(torch.load(cache, weights_only=True)["names"]) == 4
    assert "cached in" in capsys.readouterr().out
    build_catalog(StandIn(), cfg, torch.device("cpu"))  # a restart reads it
    assert "from the cache" in capsys.readouterr().out


def test_file_names_with_control_characters_are_printed_on_one_line(tmp_path, capsys):
    hostile = "notes\nerror: forged line \x1b[31mred\x1b[0m \u202etxt.exe"
    cfg, folder, _ = folder_cfg(tmp_path, ckpt_folder="run\nerror: forged by the checkpoint's folder \x1b[2J")
    (folder / hostile).write_text("not an image")
    (folder / os.fsdecode(b"latin-1 \xe9.txt")).write_text("not an image")  # not UTF-8: a surrogate in Python
    build_catalog(StandIn(), cfg, torch.device("cpu"))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert not [line for line in out.splitlines() if line.startswith("error:")], out
    assert len([line for line in out.splitlines() if line.startswith("skipped")]) == 2, out
    assert "notes\\nerror: forged line \\x1b[31m" in out  # escaped, still recognisable
