"""The web page (`fmnist.serve`): the catalogue and its cache, the classify function, and the real server
driven by gradio_client and headless Chromium."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from fmnist.utils.config import compose_config
from tests.conftest import free_port, shop_photo

gradio = pytest.importorskip("gradio", reason="the web page needs pip install -e '.[web]'")
from gradio_client import Client, handle_file  # noqa: E402

from fmnist.web.app import PREVIEW, Classifier, build_app, check_port, cluster_rows, write_examples  # noqa: E402
from fmnist.web.catalog import build_catalog  # noqa: E402

# A 193-byte PNG whose damaged chunk makes Pillow raise SyntaxError while decoding (found by fuzzing the page).
BROKEN_CHUNK_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d494844520000003c0000005a08020000006b33a2620000009049444154789ceddbb10d80"
    "300c00418cd87fe5b00105128722fdb72e7272e32ab3d63a76ebfc1bf0a6d0aad0aad0aad0aaeb793c33dfbdfdfa186f"
    "b9e9d0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aa"
    "d0aad0aad0aad0aad0aad0aad0aad0aad0aad0aad0aa2dd1d3274a43971da355682e963cd51a6909af150385a9000060"
    "82"
)


def serve_cfg(ckpt: Path, *extra: str):
    cfg = compose_config([f"ckpt_path={ckpt}", *extra], config_name="serve")
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="module")
def tiny_ckpt(trained_run) -> Path:
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.fixture
def tiny_cfg(tiny_ckpt, tiny_root, tmp_path):
    """The serve config on the tiny test set, its checkpoint copied so that each test has its own cache."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(tiny_ckpt, ckpt)
    return serve_cfg(ckpt, f"data.root={tiny_root}", "data.search_dirs=[]", "k=4")


def test_the_catalogue_is_the_test_set_embedded_clustered_and_cached(tiny_cfg, capsys):
    from fmnist.models.checkpoint import load_model

    model = load_model(tiny_cfg.ckpt_path)
    catalog = build_catalog(model, tiny_cfg, torch.device("cpu"))
    assert "embedded and clustered" in capsys.readouterr().out
    n = 120  # the tiny test set
    assert catalog.embeddings.shape[0] == catalog.images.shape[0] == len(catalog.names) == n
    assert catalog.images.dtype == torch.uint8 and catalog.images.shape[1:] == (28, 28)
    assert torch.allclose(catalog.embeddings.norm(dim=1), torch.ones(n), atol=1e-5)
    assert catalog.labelled and set(np.unique(catalog.clusters)) <= set(range(4))
    assert {"nmi", "ari", "purity"} <= catalog.scores.keys() and catalog.map2d.shape == (n, 2)
    # an item is its own nearest neighbour, with similarity 1
    (first, similarity), *_ = catalog.nearest(catalog.embeddings[7] * 3.0, 8)
    assert first == 7 and similarity == pytest.approx(1.0, abs=1e-5)

    cached = list((Path(tiny_cfg.ckpt_path).parent / "serve_cache").glob("catalog_*.pt"))
    assert len(cached) == 1
    again = build_catalog(model, tiny_cfg, torch.device("cpu"))  # a restart: read from the cache
    assert "from the cache" in capsys.readouterr().out
    assert torch.equal(again.embeddings, catalog.embeddings) and again.names == catalog.names
    assert np.array_equal(again.clusters, catalog.clusters)

    cached[0].write_bytes(b"damaged")  # never trusted: rebuilt
    rebuilt = build_catalog(model, tiny_cfg, torch.device("cpu"))
    assert "unreadable" in capsys.readouterr().out and torch.equal(rebuilt.embeddings, catalog.embeddings)
    for key, wrong in (("images", catalog.images[:5]), ("classes", catalog.classes - 20), ("scores", {})):
        torch.save({**catalog.to_state(), key: wrong}, cached[0])  # plain tensors, but not this catalogue's
        assert torch.equal(build_catalog(model, tiny_cfg, torch.device("cpu")).classes, catalog.classes)
        assert "unreadable" in capsys.readouterr().out, key

    other = Path(tiny_cfg.data.root) / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    original = other.read_bytes()
    try:  # other test data (same sizes): another key, not the old cache
        other.write_bytes(original[:8] + bytes(reversed(original[8:])))
        build_catalog(model, tiny_cfg, torch.device("cpu"))
        assert "embedded and clustered" in capsys.readouterr().out
    finally:
        other.write_bytes(original)


def test_a_folder_catalogue_skips_files_that_are_not_images_and_keys_the_cache_by_its_files(tiny_cfg, tmp_path, capsys):
    from fmnist.models.checkpoint import load_model

    folder = tmp_path / "catalog"
    folder.mkdir()

    def band(i: int) -> Image.Image:
        image = np.zeros((28, 28), dtype=np.uint8)
        image[2 * i + 2 : 2 * i + 6, 4:24] = 255
        return Image.fromarray(image)

    for i in range(5):
        band(i).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    cfg = serve_cfg(Path(tiny_cfg.ckpt_path), f"catalog={folder}", "k=2")
    model = load_model(cfg.ckpt_path)
    catalog = build_catalog(model, cfg, torch.device("cpu"))
    assert "notes.txt" in capsys.readouterr().out
    assert len(catalog.names) == 5 and not catalog.labelled
    band(5).save(folder / "5.png")  # another catalogue
    assert len(build_catalog(model, cfg, torch.device("cpu")).names) == 6
    assert len(list((Path(cfg.ckpt_path).parent / "serve_cache").glob("catalog_*.pt"))) == 2


def test_classify_gives_top3_neighbours_and_one_error_line_per_bad_file(tiny_cfg, tmp_path, tiny_root):
    from fmnist.data.idx import load_split
    from fmnist.models.checkpoint import load_model

    model = load_model(tiny_cfg.ckpt_path)
    catalog = build_catalog(model, tiny_cfg, torch.device("cpu"))
    classifier = Classifier(model, catalog, torch.device("cpu"), neighbours=8, min_confidence=0.5, folder=tmp_path)
    images, _ = load_split(tiny_root, train=False)
    photo = tmp_path / "photo.jpg"
    shop_photo(images[0, 0].numpy()).save(photo)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes((tmp_path / "photo.jpg").read_bytes()[:200])
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 million pixels in a small file
    (tmp_path / "chunk.png").write_bytes(BROKEN_CHUNK_PNG)

    files = [photo, tmp_path / "notes.txt", tmp_path / "empty.png", tmp_path / "cut.png", bomb, None, photo]
    files.append(tmp_path / "chunk.png")  # in the same batch as good photos: only its own row is an error
    photos, seen, labels, galleries, verdicts, lines = classifier.classify([str(f) if f else None for f in files])
    assert len(photos) == len(seen) == len(labels) == len(galleries) == len(lines) == len(verdicts) == len(files)
    for i in (0, 6):  # the same photo twice in one batch: the same answer
        assert Image.open(seen[i]).size == (196, 196) and len(labels[i]) == 3
        assert max(Image.open(photos[i]).size) == PREVIEW  # the upload itself, shrunk to a preview
        assert sum(labels[i].values()) <= 1 + 1e-6 and lines[i].startswith(f"**{max(labels[i], key=labels[i].get)}**")
        assert len(galleries[i]) == 8
        similarities = [float(caption.rsplit(" · ", 1)[1]) for _, caption in galleries[i]]
        assert similarities == sorted(similarities, reverse=True)
    assert labels[0] == labels[6]
    assert lines[1] == "error: not a PNG, JPEG, BMP, GIF, TIFF or WEBP image"
    assert lines[2].startswith("error: ") and lines[3].startswith("error: unreadable image")
    assert "decompression bomb" in lines[4] and lines[5] == "error: no file: upload a photo or pick an example"
    assert lines[7] == "error: unreadable image: broken PNG file (chunk b'')"
    for i in (1, 2, 3, 4, 5, 7):  # an error line and nothing else: no result of an earlier photo beside it
        assert photos[i] is seen[i] is labels[i] is galleries[i] is verdicts[i] is None
    assert verdicts[0] == {"unsure": verdicts[0]["unsure"]}  # no gate: no garment score, no not_garment claimed

    # With a gate, the line and the verdict say "not a garment" apart from "unsure"; here two gates whose every
    # validation garment scored far above, or far below, anything a network gives.
    from fmnist.models.gate import LEVELS, Gate

    width = catalog.embeddings.shape[1]
    means, precision = torch.zeros(10, width, dtype=torch.float64), torch.eye(width, dtype=torch.float64)
    for offset, flagged in ((1e9, True), (-1e9, False)):
        gate = Gate(means, precision, LEVELS + offset, 1.0, 0.0, 0.0)
        classifier.gate = gate
        *_, verdicts, lines = classifier.classify([str(photo)])
        assert verdicts[0]["not_garment"] is flagged and 0 <= verdicts[0]["garment_score"] <= 1, verdicts
        assert lines[0].startswith("**Not a garment") is flagged, lines

    rows = cluster_rows(catalog)
    assert len(rows) == 4 and all(
        heading.startswith("**cluster ") and 1 <= len(images) <= 6 for heading, images in rows
    )
    assert len(write_examples(catalog, tmp_path)) >= 1
    app = build_app(classifier, [], 4)
    assert isinstance(app, gradio.Blocks)


def test_bad_settings_stop_with_one_line(tiny_cfg):
    from fmnist.utils.errors import FmnistError
    from fmnist.web.app import serve

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(FmnistError, match=f"cannot serve on 127.0.0.1:{port}"):
            check_port("127.0.0.1", port)
    for override, message in (
        ("port=0", "port=0 is out of range"),
        ("neighbours=abc", "neighbours=abc is not an integer"),
        ("catalog=/nonexistent", "catalog=/nonexistent is not a folder"),
        ("max_file_size=banana", "max_file_size=banana is not a size"),
        ("max_file_size=1.5mb", "max_file_size=1.5mb is not a size"),
    ):
        cfg = serve_cfg(Path(tiny_cfg.ckpt_path), override)
        with pytest.raises(FmnistError, match=message):
            serve(cfg, block=False)

    # a catalogue folder needs no Fashion-MNIST, the garment gate does: the error names the way out
    catalog = Path(tiny_cfg.ckpt_path).parent / "shop"
    catalog.mkdir()
    Image.new("L", (30, 30), 255).save(catalog / "blank.png")
    Image.effect_noise((30, 30), 60).save(catalog / "noise.png")
    no_data = ("data.root=/nonexistent", "data.search_dirs=[]", f"catalog={catalog}", "k=2", f"port={free_port()}")
    with pytest.raises(FmnistError, match="gate=false"):
        serve(serve_cfg(Path(tiny_cfg.ckpt_path), *no_data), block=False)


@contextlib.contextmanager
def served(ckpt: Path, cwd: Path, *extra: str):
    """`python -m fmnist.serve` on a free local port; yields its URL; the server is stopped whatever happens."""
    port = free_port()
    log = open(cwd / "serve.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist.serve", f"ckpt_path={ckpt}", f"port={port}", *extra],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, (cwd / "serve.log").read_text()[-3000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.xdist_group("real_bilstm")  # one worker trains it
def test_the_real_server_classifies_a_shop_photo_groups_and_survives_bad_files(real_bilstm, tmp_path):
    from fmnist.data.idx import CLASS_NAMES, ensure_raw_files, load_split

    data = tmp_path / "data"
    ensure_raw_files(data)
    images, labels = load_split(data, train=False)
    trouser = tmp_path / "trouser.jpg"
    shop_photo(images[int((labels == CLASS_NAMES.index("Trouser")).nonzero()[0]), 0].numpy()).save(trouser)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)

    with served(real_bilstm, tmp_path, f"data.root={data}") as url:
        client = Client(url, verbose=False)
        photo, seen, label, gallery, verdict, line = client.predict(handle_file(str(trouser)), api_name="/classify")
        assert label["label"] == "Trouser" and "Trouser" in line, (label, line)
        assert set(verdict) == {"not_garment", "unsure", "garment_score"}, verdict
        assert len(label["confidences"]) == 3 and Path(seen).is_file() and Path(photo).is_file()
        assert len(gallery) == 8 and all(item["caption"].split(" · ")[0] in CLASS_NAMES for item in gallery)
        assert sum(item["caption"].startswith("Trouser") for item in gallery) >= 6  # look-alikes of a trouser
        for bad, message in (("notes.txt", "not a PNG"), ("empty.png", "error: "), ("bomb.png", "decompression bomb")):
            result = client.predict(handle_file(str(tmp_path / bad)), api_name="/classify")
            assert message in result[-1] and result[:-1] == (None, None, {}, [], None), result  # README: the API
        again = client.predict(handle_file(str(trouser)), api_name="/classify")  # it still serves
        assert again[2]["label"] == "Trouser"

        from benchmarks.serve_load import run_load

        load = run_load(url, str(trouser), requests=200, clients=8)
        assert load["requests"] == 200 and load["errors"] == 0, load

        chromium = shutil.which("chromium")
        if chromium:  # .ci/run installs Debian's chromium: the page, drawn by its JavaScript, shows the result
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
                )
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.goto(url)
                page.get_by_text("Trouser · ").first.wait_for(timeout=60_000)  # the opening example's neighbours
                shot = tmp_path / "page.png"
                page.screenshot(path=shot)
                browser.close()
            pixels = np.asarray(Image.open(shot).convert("L"))
            assert pixels.std() > 10 and (pixels < 128).mean() > 0.005, "a blank page"  # text and images drawn
    log = (tmp_path / "serve.log").read_text()
    assert "embedding the test set" in log and "serving" in log and "Traceback" not in log

    # a restart reads the catalogue from the cache beside the checkpoint
    with served(real_bilstm, tmp_path, f"data.root={data}"):
        pass
    assert "from the cache" in (tmp_path / "serve.log").read_text()
    if not chromium:
        pytest.skip("the browser check needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
