"""The catalogue the web page searches and groups: every item's embedding, image and class, its k-means clusters.

Built once at start-up from the test set or a folder of images (prepared as `fmnist.predict` prepares a
photo), with `fmnist.cluster`'s k-means and scores, and cached beside the checkpoint under a key made of
the checkpoint's and the catalogue files' bytes, so that a restart loads it instead of rebuilding it. A cache
file is read with `torch.load(weights_only=True)` and checked part by part; one that fails is rebuilt; one is
written with `write_atomically` (a temporary file of its own, renamed: no planted link redirects it). A file name
or text read from disk is printed through `printable`: one line stays one line.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.decomposition import PCA
from tqdm import tqdm

from fmnist.analysis.cluster import class_mix, cluster_scores, kmeans
from fmnist.analysis.reports import predictions
from fmnist.data.idx import CLASS_NAMES, RAW_FILES, raw_folder
from fmnist.deploy.predict import list_inputs, load_image
from fmnist.models.gate import embedding_size
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import file_digest, write_atomically

CACHE_FOLDER = "serve_cache"  # beside the checkpoint
CACHE_VERSION = 1  # raised when what a cache file holds changes


def printable(text: object) -> str:
    """`text` on one line: control, format and other unprintable characters written as escapes (\\n, \\x1b, \\u202e)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


@dataclass
class Catalog:
    """N items: unit-length embeddings (N, D), uint8 images (N, 28, 28), classes (N,) (`labelled`: the true
    classes of the test set; else the network's), names, k-means clusters (N,), a 2-D PCA map (N, 2), and the
    clusters' scores against the classes (NMI, ARI, purity) with each cluster's class mix."""

    embeddings: torch.Tensor
    images: torch.Tensor
    classes: torch.Tensor
    names: list[str]
    labelled: bool
    clusters: np.ndarray
    map2d: np.ndarray
    scores: dict

    def nearest(self, embedding: torch.Tensor, n: int) -> list[tuple[int, float]]:
        """The `n` items most similar to one embedding (cosine), best first, with their similarity."""
        query = torch.nn.functional.normalize(embedding.float().flatten(), dim=0)
        similarity = self.embeddings @ query
        top = similarity.topk(min(n, len(similarity)))
        return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))

    def to_state(self) -> dict:
        """Plain tensors and values only: what `torch.load(weights_only=True)` reads back."""
        return {
            "version": CACHE_VERSION,
            "embeddings": self.embeddings,
            "images": self.images,
            "classes": self.classes,
            "names": self.names,
            "labelled": self.labelled,
            "clusters": torch.from_numpy(self.clusters),
            "map2d": torch.from_numpy(self.map2d),
            "scores": self.scores,
        }

    @classmethod
    def from_state(cls, state: dict) -> Catalog:
        return cls(
            embeddings=state["embeddings"],
            images=state["images"],
            classes=state["classes"],
            names=list(state["names"]),
            labelled=bool(state["labelled"]),
            clusters=state["clusters"].numpy(),
            map2d=state["map2d"].numpy(),
            scores=state["scores"],
        )


def _digest(*parts: bytes | str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)  # a name's bytes
        hasher.update(b"\0")
    return hasher.hexdigest()[:20]


def cache_key(ckpt_path: Path, files: list[Path], k: int, seed: int) -> str:
    """The checkpoint's bytes, every catalogue file's name and bytes (the test set: its two IDX files), k, seed."""
    contents = [f"{p.name}\t{file_digest(p)}" for p in files]
    return _digest(file_digest(ckpt_path), *contents, str(k), str(seed), str(CACHE_VERSION))


def _checked_state(state: Any, width: int) -> dict:
    """A cache file's contents, refused (ValueError) unless they are what `to_state` writes for this model."""
    keys = {"version", "embeddings", "images", "classes", "names", "labelled", "clusters", "map2d", "scores"}
    if not isinstance(state, dict) or set(state) != keys or state["version"] != CACHE_VERSION:
        raise ValueError("not a catalogue of this fmnist version")
    tensors = [state[k] for k in ("embeddings", "images", "classes", "clusters", "map2d")]
    if not all(isinstance(t, torch.Tensor) for t in tensors) or not isinstance(state["names"], list):
        raise ValueError("its parts are not tensors")
    n = len(state["names"])
    embeddings, images, classes, clusters, map2d = tensors
    shapes_ok = (
        embeddings.shape == (n, width)
        and images.shape == (n, 28, 28)
        and images.dtype == torch.uint8
        and classes.shape == clusters.shape == (n,)
        and map2d.shape == (n, 2)
        and n >= 1
    )
    if not shapes_ok or not bool(((classes >= 0) & (classes < len(CLASS_NAMES))).all()):
        raise ValueError("its sizes or classes do not match this model and catalogue")
    scores = state["scores"]
    needed = {"nmi", "ari", "purity", "k", "clusters"}
    if not isinstance(scores, dict) or not needed <= set(scores) or not isinstance(scores["clusters"], list):
        raise ValueError("its cluster scores are incomplete")
    return state


@torch.inference_mode()
def _embed_folder(model, files: list[Path], device: torch.device, batch_size: int, max_pixels: int) -> tuple:
    """Embeddings, the network's classes and uint8 images of the files that are images (others are skipped)."""
    embeddings, classes, images, names, skipped = [], [], [], [], []
    model.eval().to(device)
    for start in tqdm(range(0, len(files), batch_size), desc="embedding the catalogue", unit="batch"):
        batch, kept = [], []
        for path in files[start : start + batch_size]:
            try:
                batch.append(load_image(path, max_pixels))
                kept.append(path)
            except Exception as error:  # noqa: BLE001 - one file never stops the catalogue
                skipped.append(f"{path}: {error}")
        if not batch:
            continue
        x = torch.stack(batch).to(device)
        e = model.embed(x)
        embeddings.append(e.float().cpu())
        classes.append(model.classifier(e).argmax(dim=1).cpu())
        images.append((x[:, 0] * 255).round().to(torch.uint8).cpu())
        names += [str(p) for p in kept]
    for line in skipped[:5]:
        print(f"skipped {printable(line)}")
    if len(skipped) > 5:
        print(f"skipped {len(skipped) - 5} more files that are not images")
    if not names:
        raise FmnistError("catalog: none of its files could be read as an image")
    return torch.cat(embeddings), torch.cat(classes), torch.cat(images), names


def _embed_test_set(model, datamodule, device: torch.device) -> tuple:
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    embeddings, labels, images = predictions(
        model, tqdm(loader, desc="embedding the test set", unit="batch"), device, embed=True
    )
    return embeddings, labels, images[:, 0], [f"test image {i}" for i in range(len(labels))]


def build_catalog(model, cfg: DictConfig, device: torch.device) -> Catalog:
    """The catalogue of `cfg.catalog` (a folder; null: the test set) for `model`, from the cache when it holds it."""
    if cfg.catalog is None:
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.prepare_data()  # the IDX files, found or unpacked: what the key reads
        files = [raw_folder(datamodule.root) / name for name in RAW_FILES if name.startswith("t10k")]
    else:
        files = list_inputs(str(cfg.catalog))
    ckpt = Path(cfg.ckpt_path)
    cache = ckpt.parent / CACHE_FOLDER / f"catalog_{cache_key(ckpt, files, cfg.k, cfg.seed)}.pt"
    width = embedding_size(model) if cfg.cache and cache.is_file() else 0
    if width:
        try:
            state = _checked_state(torch.load(cache, map_location="cpu", weights_only=True), width)
            catalog = Catalog.from_state(state)
            print(f"catalogue: {len(catalog.names):,} items from the cache {printable(cache)}")
            return catalog
        except Exception as error:  # noqa: BLE001 - a damaged or foreign cache is rebuilt, never trusted
            reason = f"{type(error).__name__}: {str(error)[:120]}"
            print(f"the cache {printable(cache)} is unreadable ({printable(reason)}): building the catalogue again")
    start = time.perf_counter()
    if cfg.catalog is None:
        embeddings, classes, images, names = _embed_test_set(model, datamodule, device)
    else:
        batch = cfg.data.eval_batch_size or 256
        embeddings, classes, images, names = _embed_folder(model, files, device, batch, cfg.max_pixels)
    features = embeddings.numpy()
    k = min(cfg.k, len(names))
    clusters = kmeans(features, k, cfg.seed) if k >= 2 else np.zeros(len(names), dtype=np.int64)
    labels = classes.numpy()
    scores = cluster_scores(labels, clusters) | {"k": k, "clusters": class_mix(labels, clusters)}
    map2d = (
        PCA(n_components=2, random_state=cfg.seed).fit_transform(features).astype(np.float32)
        if len(names) >= 2 and features.shape[1] >= 2
        else np.zeros((len(names), 2), dtype=np.float32)
    )
    catalog = Catalog(
        embeddings=torch.nn.functional.normalize(embeddings.float(), dim=1),
        images=images.to(torch.uint8),
        classes=classes.long(),
        names=names,
        labelled=cfg.catalog is None,
        clusters=clusters.astype(np.int64),
        map2d=map2d,
        scores=scores,
    )
    print(f"catalogue: {len(names):,} items embedded and clustered in {time.perf_counter() - start:.1f} s")
    if cfg.cache:
        state = io.BytesIO()
        torch.save(catalog.to_state(), state)
        try:  # two servers may build it at once: each writes a temporary file of its own
            write_atomically(cache, state.getbuffer())
            print(f"cached in {printable(cache)}")
        except FmnistError as error:
            print(f"the catalogue is not cached ({printable(error)}); the next start builds it again")
    return catalog


def class_name(index: int) -> str:
    """The class name of `index`, or the index itself as text when it is no class."""
    return CLASS_NAMES[index] if 0 <= index < len(CLASS_NAMES) else str(index)
