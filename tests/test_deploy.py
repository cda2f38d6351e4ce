"""Clustering, prediction on ordinary image files, and export of trained models."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector  # noqa: F401  (the projector plugin must be importable)

from fmnist.analysis.cluster import class_mix, cluster_scores
from fmnist.data.photos import to_fashion_mnist
from tests.conftest import run_cli, shop_photo


def test_cluster_scores_on_a_known_answer():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert cluster_scores(labels, np.array([5, 5, 5, 3, 3, 3, 9, 9, 9])) == pytest.approx(
        {"nmi": 1.0, "ari": 1.0, "purity": 1.0}
    )
    merged = cluster_scores(labels, np.array([0, 0, 0, 0, 0, 0, 1, 1, 1]))
    assert merged["purity"] == pytest.approx(6 / 9)
    assert 0 < merged["nmi"] < 1 and 0 < merged["ari"] < 1
    mix = class_mix(labels, np.array([0, 0, 0, 0, 0, 0, 1, 1, 1]))
    assert mix[0]["size"] == 6 and mix[0]["classes"] == {"T-shirt/top": 0.5, "Trouser": 0.5}


@pytest.mark.slow
def test_cluster_command_writes_scores_map_and_projector(trained_run, tiny_root, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    result = run_cli(
        "fmnist.cluster",
        f"ckpt_path={ckpt}",
        "k=10",
        f"output_dir={tmp_path}",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads((tmp_path / "clusters.json").read_text())
    for name in ("embedding", "pixels"):
        assert {"nmi", "ari", "purity"} <= scores[name].keys()
    assert "| embedding |" in result.stdout and "| pixels |" in result.stdout
    assert (tmp_path / "clusters.png").stat().st_size > 10_000
    from tensorboard.plugins.projector import projector_config_pb2

    config = text_format.Parse(
        (tmp_path / "projector" / "projector_config.pbtxt").read_text(), projector_config_pb2.ProjectorConfig()
    )
    (embedding,) = config.embeddings
    folder = tmp_path / "projector"
    tensors = np.loadtxt(folder / embedding.tensor_path, delimiter="\t")
    metadata = (folder / embedding.metadata_path).read_text().splitlines()
    assert tensors.shape == (120, 16) and metadata[0] == "class\tcluster" and len(metadata) == 121
    sprite = Image.open(folder / embedding.sprite.image_path)
    assert list(embedding.sprite.single_image_dim) == [28, 28] and sprite.size[0] % 28 == 0


@pytest.mark.slow
@pytest.mark.xdist_group("real_bilstm")  # one worker trains it
def test_trained_embedding_groups_better_than_pixels(real_bilstm, tmp_path):
    result = run_cli(
        "fmnist.cluster", f"ckpt_path={real_bilstm}", f"output_dir={tmp_path}", "projector=false", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads((tmp_path / "clusters.json").read_text())
    assert scores["embedding"]["nmi"] > scores["pixels"]["nmi"]
    assert scores["embedding"]["ari"] > scores["pixels"]["ari"]


def test_preprocessing_recovers_a_fashion_mnist_like_image():
    garment = np.zeros((28, 28), np.uint8)
    garment[4:24, 10:18] = 200  # a light bar on black, off-centre
    prepared = to_fashion_mnist(Image.fromarray(255 - garment).resize((140, 140)).convert("RGBA"))
    assert prepared.shape == (1, 28, 28) and prepared.max() > 0.9
    assert prepared[0, 0, 0] == 0  # the white background became black
    rows = prepared[0].amax(dim=1).nonzero().flatten()
    assert rows.min() <= 1 and rows.max() >= 26  # cropped and fitted: the tall bar spans the height


@pytest.mark.slow
@pytest.mark.xdist_group("real_bilstm")  # one worker trains it
def test_predict_shop_photos_and_report_bad_files(real_bilstm, tmp_path):
    from fmnist.data.idx import CLASS_NAMES, ensure_raw_files, load_split

    ensure_raw_files(tmp_path / "data")
    images, labels = load_split(tmp_path / "data", train=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    expected = {}
    for name in ("Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot"):
        index = int((labels == CLASS_NAMES.index(name)).nonzero()[0])
        shop_photo(images[index, 0].numpy()).save(photos / f"{index}.jpg")
        expected[str(photos / f"{index}.jpg")] = name
    (photos / "notes.txt").write_text("not an image")
    (photos / "empty.png").write_bytes(b"")
    result = run_cli(
        "fmnist.predict",
        f"ckpt_path={real_bilstm}",
        f"inputs={photos}",
        "top_k=3",
        f"output_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr[-2000:]  # some files could not be read: said in the last line
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 of 7")
    rows = {r["file"]: r for r in json.loads((tmp_path / "predictions.json").read_text())}
    assert len(rows) == 7
    assert {f: rows[f]["top"][0]["class"] for f in expected} == expected, rows
    for f in expected:
        probs = [t["prob"] for t in rows[f]["top"]]
        assert len(probs) == 3 and all(0 <= p <= 1 for p in probs) and probs == sorted(probs, reverse=True), rows[f]
        assert len({t["class"] for t in rows[f]["top"]}) == 3
    assert "error" in rows[str(photos / "notes.txt")] and "error" in rows[str(photos / "empty.png")]
    assert (tmp_path / "predictions.csv").read_text().count("\n") == 8
    assert "notes.txt" in result.stdout and "error:" in result.stdout
    for f in expected:  # the garment gate's verdict beside the classes
        assert 0 <= rows[f]["garment_score"] <= 1 and isinstance(rows[f]["not_garment"], bool), rows[f]
    (gate_file,) = real_bilstm.parent.glob("*.gate-*.json")  # fitted once, kept beside the checkpoint

    # All ten classes of the same photos: a distribution (each prob rounded to 4 decimals: 10 x 0.5e-4 at most
    # off in the sum) whose first three are what the command printed.
    from fmnist.deploy.predict import predict_files
    from fmnist.models.checkpoint import load_model
    from fmnist.models.gate import checkpoint_digest, embedding_size, read_gate

    model = load_model(real_bilstm)
    gate = read_gate(gate_file, checkpoint_digest(real_bilstm), len(CLASS_NAMES), embedding_size(model))
    full = predict_files(model, [Path(f) for f in expected], top_k=10, gate=gate)
    for row in full:
        probs = [t["prob"] for t in row["top"]]
        assert len(probs) == 10 and {t["class"] for t in row["top"]} == set(CLASS_NAMES)
        assert sum(probs) == pytest.approx(1, abs=5e-4) and probs == sorted(probs, reverse=True)
        assert row["top"][:3] == rows[row["file"]]["top"]


@pytest.mark.slow
def test_predict_fails_only_when_nothing_can_be_read(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    result = run_cli(
        "fmnist.predict",
        f"ckpt_path={ckpt}",
        f"inputs={tmp_path / 'bad'}",
        f"output_dir={tmp_path}",
        "gate=false",
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode != 0 and "none of the 1 input file(s) could be read" in result.stderr
    (tmp_path / "none").mkdir()
    result = run_cli("fmnist.predict", f"ckpt_path={ckpt}", f"inputs={tmp_path / 'none'}", "gate=false", cwd=tmp_path)
    assert result.returncode != 0 and "no files in" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "rnn", "bilstm", "speednet", "lstm", "gru", "attention", "resnet"])
def test_export_round_trip(train_cfg, tmp_path, model):
    pytest.importorskip("onnxruntime")
    from fmnist.deploy.export import export
    from fmnist.training.fit import train

    metrics = train(train_cfg(model, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false"))
    ckpt = str(tmp_path / metrics["best_checkpoint"])
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts.pt")):
        cfg = compose_train_export(ckpt, fmt, tmp_path)
        check = export(cfg)
        assert check["ok"] and check["max_abs_diff"] <= 1e-4 and check["file"].endswith(suffix)
    loaded = torch.jit.load(str(tmp_path / "model.ts.pt"))
    assert loaded(torch.rand(7, 1, 28, 28)).shape == (7, 10)  # any batch size


def compose_train_export(ckpt, fmt, folder):
    from fmnist.utils.config import compose_config

    suffix = ".onnx" if fmt == "onnx" else ".ts.pt"
    return compose_config(
        [
            f"ckpt_path={ckpt}",
            f"format={fmt}",
            f"output={folder}/model{suffix}",
            "data.search_dirs=[]",
            f"data.root={folder}/none",
        ],
        config_name="export",
    )


def test_not_garment_and_unsure_are_two_flags_in_both_files(tmp_path):
    from fmnist.deploy.predict import mark_unsure, write_predictions

    results = [
        {
            "file": "landscape.jpg",
            "top": [{"class": "Sneaker", "prob": 0.45}],
            "garment_score": 0.0,
            "not_garment": True,
        },
        {"file": "sign.jpg", "top": [{"class": "Sandal", "prob": 0.97}], "garment_score": 0.01, "not_garment": True},
        {"file": "bag.png", "top": [{"class": "Bag", "prob": 0.97}], "garment_score": 0.61, "not_garment": False},
        {"file": "broken.png", "error": "not a PNG, JPEG, BMP, GIF, TIFF or WEBP image"},
    ]
    assert mark_unsure(results, 0.5) == 1
    assert [r.get("unsure") for r in results] == [True, False, False, None]
    write_predictions(results, tmp_path, top_k=1)
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows == [
        "file,class1,prob1,garment_score,not_garment,unsure,error",
        "landscape.jpg,Sneaker,0.45,0.0,true,true,",
        "sign.jpg,Sandal,0.97,0.01,true,false,",
        "bag.png,Bag,0.97,0.61,false,false,",
        'broken.png,,,,,,"not a PNG, JPEG, BMP, GIF, TIFF or WEBP image"',
    ]
    assert json.loads((tmp_path / "predictions.json").read_text())[1]["not_garment"] is True
