"""The web page of `fmnist.serve` (Gradio): classify an uploaded photo and show its look-alikes; the catalogue grouped.

Tab "Classify": a photo in (any file; it is decoded here, as `fmnist.predict` decodes one), out: the 28x28
image the network saw, the top-3 classes (a bar chart), the nearest catalogue items by the embedding
(cosine) and one line of text; a file that is not a usable image gets one `error: ...` line and nothing else
changes. Requests that wait in Gradio's queue are classified together (`max_batch_size`). Tab "Catalogue
groups": the k-means clusters of the catalogue's embedding on a 2-D map, thumbnails per cluster, NMI/ARI/purity.
The same functions are the app's HTTP API (`/classify`), which `gradio_client` calls.
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo

import atexit  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from PIL import Image  # noqa: E402

from fmnist.analysis.cluster import map_figure  # noqa: E402
from fmnist.deploy.predict import MAX_PIXELS, NOT_A_NUMBER, UNSURE, load_image  # noqa: E402
from fmnist.models.checkpoint import load_model  # noqa: E402
from fmnist.utils.checks import (  # noqa: E402
    DATA_RULES,
    SEED_RANGE,
    boolean,
    check_values,
    integer,
    number,
    pick_device,
    seed_in_range,
    text,
)
from fmnist.utils.errors import FmnistError  # noqa: E402
from fmnist.web.catalog import Catalog, build_catalog, class_name  # noqa: E402


def file_size(value) -> bool:
    """A size Gradio's `max_file_size` takes: a number of bytes, or digits and b, kb, mb or gb."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 1
    return isinstance(value, str) and re.fullmatch(r"\s*[1-9]\d*\s*(b|kb|mb|gb)\s*", value, re.IGNORECASE) is not None


RULES = {
    "ckpt_path": (text, "a file name", None, "a checkpoint file, e.g. outputs/cnn/<run>/checkpoints/last.ckpt", False),
    "catalog": (text, "a folder name", None, "a folder of images (or null: the test set)", True),
    "host": (text, "a host name or address", None, "an address to bind, e.g. 127.0.0.1 or 0.0.0.0", False),
    "port": (integer, "an integer", lambda v: 1 <= v <= 65535, "a port number from 1 to 65535", False),
    "neighbours": (integer, "an integer", lambda v: 1 <= v <= 100, "an integer from 1 to 100", False),
    "k": (integer, "an integer", lambda v: v >= 2, "an integer >= 2", False),
    "seed": (integer, "an integer", seed_in_range, SEED_RANGE, False),
    "min_confidence": (number, "a number", lambda v: 0 <= v <= 1, "a number from 0 to 1", False),
    "max_file_size": (file_size, "a size", None, "a size such as 10mb, 500kb or a number of bytes", False),
    "max_pixels": (integer, "an integer", lambda v: v >= 1, "an integer >= 1 (an upload's pixels)", False),
    "max_batch_size": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "cache": (boolean, "true or false", None, "true or false", False),
    "device": (text, "a device name", None, "auto, cpu, cuda or cuda:N", False),
    **DATA_RULES,
}
THUMBNAIL = 112  # pixels a side for a 28x28 image on the page (4x, nearest: the pixels stay visible)
EXAMPLE_CLASSES = ("Trouser", "Sneaker", "Bag", "Dress", "Ankle boot")
NO_FILE = "error: no file: upload a photo or pick an example"


def thumbnail(image: np.ndarray | torch.Tensor, size: int = THUMBNAIL) -> Image.Image:
    """A uint8 (28, 28) image, enlarged without smoothing."""
    array = image.numpy() if isinstance(image, torch.Tensor) else image
    return Image.fromarray(np.asarray(array, dtype=np.uint8)).resize((size, size), Image.Resampling.NEAREST)


class Thumbnails:
    """PNG files of 28x28 images, each written once (atomically) under a name made of its pixels.

    The page gets file paths, not images: Gradio copies a file into its cache once, atomically, whereas an
    image it encodes itself is rewritten in place for each request, under a name that the same pixels share,
    while another request may be reading it (a broken download under concurrent requests)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, image: torch.Tensor, size: int = THUMBNAIL) -> str:
        pixels = image.to(torch.uint8).contiguous().numpy()
        target = self.folder / f"{hashlib.sha256(pixels.tobytes()).hexdigest()[:24]}_{size}.png"
        if not target.exists():
            partial = target.with_name(f"{target.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
            thumbnail(pixels, size).save(partial, "PNG")
            os.replace(partial, target)
        return str(target)


class Classifier:
    """The model and catalogue, loaded once; `classify` serves a batch of uploads."""

    def __init__(
        self,
        model,
        catalog: Catalog,
        device: torch.device,
        neighbours: int,
        min_confidence: float,
        folder: Path,
        max_pixels: int = MAX_PIXELS,
    ):
        self.model, self.catalog, self.device = model.eval().to(device), catalog, device
        self.neighbours, self.min_confidence, self.max_pixels = neighbours, min_confidence, max_pixels
        self.thumbnails = Thumbnails(folder)

    @torch.inference_mode()
    def classify(self, paths: list[str | None]) -> tuple[list, list, list, list]:
        """For each upload: (the image the network saw, {class: probability} of the top 3, the nearest catalogue
        items as (thumbnail, caption), a line of text). An unusable file keeps the page as it was (`gr.skip`)
        and gets its `error: ...` line."""
        seen, labels, galleries, lines = [], [], [], []
        images, slots = [], []
        for path in paths:
            try:
                if not path:
                    raise ValueError(NO_FILE.removeprefix("error: "))
                images.append(load_image(Path(path), self.max_pixels))
            except Exception as error:  # noqa: BLE001 - one bad upload never fails the others of its batch
                reason = str(error) if isinstance(error, ValueError) else f"unreadable image: {type(error).__name__}"
                seen.append(gr.skip())
                labels.append(gr.skip())
                galleries.append(gr.skip())
                lines.append(f"error: {reason}")
                continue
            slots.append(len(seen))
            seen.append(None)
            labels.append(None)
            galleries.append(None)
            lines.append(None)
        catalog = self.catalog
        if images:
            x = torch.stack(images).to(self.device)
            embeddings = self.model.embed(x)
            probs = self.model.classifier(embeddings).softmax(dim=1).float().cpu()
            for slot, image, embedding, p in zip(slots, x, embeddings, probs, strict=True):
                if not bool(p.isfinite().all()):
                    seen[slot] = labels[slot] = galleries[slot] = gr.skip()
                    lines[slot] = f"error: {NOT_A_NUMBER}"
                    continue
                top = p.topk(3)
                seen[slot] = self.thumbnails.path((image[0] * 255).round().cpu(), 196)
                labels[slot] = {class_name(i): float(v) for v, i in zip(top.values, top.indices, strict=True)}
                galleries[slot] = [
                    (self.thumbnails.path(catalog.images[i]), f"{class_name(int(catalog.classes[i]))} · {sim:.3f}")
                    for i, sim in catalog.nearest(embedding.cpu(), self.neighbours)
                ]
                best, share = class_name(int(top.indices[0])), float(top.values[0])
                lines[slot] = f"**{best}** ({share:.1%})" + (f" ({UNSURE})" if share < self.min_confidence else "")
        return seen, labels, galleries, lines


def groups_markdown(catalog: Catalog) -> str:
    """The clusters' scores against the classes and each cluster's class mix."""
    s = catalog.scores
    of = "true classes" if catalog.labelled else "classes the network gives"
    lines = [
        f"**{len(catalog.names):,} catalogue items, k-means with k={s['k']}** on the embedding, "
        f"scored against the {of}:",
        "",
        "| NMI | ARI | purity |",
        "|---:|---:|---:|",
        f"| {s['nmi']:.3f} | {s['ari']:.3f} | {s['purity']:.3f} |",
    ]
    return "\n".join(lines)


def cluster_gallery(catalog: Catalog, per_cluster: int = 6) -> list[tuple[Image.Image, str]]:
    """A few thumbnails of each cluster, largest cluster first, captioned with its most common class."""
    items = []
    for mix in catalog.scores["clusters"]:
        top = next(iter(mix["classes"].items()), ("?", 0.0))
        members = np.flatnonzero(catalog.clusters == mix["cluster"])[:per_cluster]
        caption = f"cluster {mix['cluster']} ({mix['size']:,}): {top[0]} {top[1]:.0%}"
        items += [(thumbnail(catalog.images[i]), caption) for i in members]
    return items


def write_examples(catalog: Catalog, folder: Path) -> list[str]:
    """Shop-style photos (dark garment on white, 200x300 JPEG) of a few catalogue items, one per class shown."""
    paths = []
    for name in EXAMPLE_CLASSES:
        found = np.flatnonzero(catalog.classes.numpy() == list(map(class_name, range(10))).index(name))
        if len(found):
            path = folder / f"{name.lower().replace(' ', '_')}.jpg"
            image = Image.fromarray(255 - catalog.images[found[0]].numpy()).resize((200, 300)).convert("RGB")
            image.save(path, "JPEG", quality=90)
            paths.append(str(path))
    return paths


def build_app(classifier: Classifier, examples: list[str], max_batch_size: int) -> gr.Blocks:
    """The page: a tab to classify a photo, a tab of the catalogue's groups."""
    catalog = classifier.catalog
    with gr.Blocks(title="fmnist: classify and group garments") as app:
        gr.Markdown(
            "# fmnist: what is this garment, and what looks like it?\n"
            "Upload a photo (PNG, JPEG, WebP, ...; any size, colour or gray, dark-on-light shop photos too). "
            "It is prepared like Fashion-MNIST: grayscale, a light background inverted, cropped to the garment, "
            "fitted into 28x28."
        )
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(
                        value=examples[0] if examples else None, label="photo", file_count="single", type="filepath"
                    )
                    button = gr.Button("Classify", variant="primary")
                    if examples:
                        gr.Examples(examples=[[p] for p in examples], inputs=[upload], label="examples (test set)")
                with gr.Column(scale=1):
                    seen = gr.Image(label="what the network saw (28x28)", type="filepath", interactive=False)
                    line = gr.Markdown()
                with gr.Column(scale=1):
                    label = gr.Label(num_top_classes=3, label="top 3 classes")
            gallery = gr.Gallery(label="nearest catalogue items (class · cosine similarity)", columns=8, height="auto")
            outputs = [seen, label, gallery, line]
            # the page opens with its first example classified; an upload is classified at once
            for event in (button.click, upload.upload, *([app.load] if examples else [])):
                event(
                    classifier.classify,
                    inputs=[upload],
                    outputs=outputs,
                    batch=True,
                    max_batch_size=max_batch_size,
                    concurrency_limit=1,  # one model: requests queue up and are classified together
                    concurrency_id="model",
                    api_name="classify" if event == button.click else False,
                )
        with gr.Tab("Catalogue groups"):
            gr.Markdown(groups_markdown(catalog))
            figure = map_figure(
                {"embedding": catalog.map2d},
                {"embedding": catalog.clusters},
                {"embedding": catalog.scores},
                title=f"{len(catalog.names):,} items: k-means clusters, 2-D PCA map",
            )
            gr.Plot(value=figure, label="the embedding's 2-D PCA map, coloured by cluster")
            plt.close(figure)
            gr.Gallery(value=cluster_gallery(catalog), label="a few items of each cluster", columns=6, height="auto")
    return app


def check_port(host: str, port: int) -> None:
    """One FmnistError when the address can't be bound (in use, or not an address of this machine)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise FmnistError(
            f"cannot serve on {host}:{port} ({error.strerror or error}). Fix: another port=, or host=127.0.0.1"
        ) from None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(cfg: DictConfig, block: bool = True):
    """Load the model, build (or load) the catalogue, and serve the page; returns the app (`block=False`: at once)."""
    check_values(cfg, RULES)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    device = pick_device(cfg.device)
    check_port(cfg.host, cfg.port)
    model = load_model(cfg.ckpt_path)
    if cfg.catalog is not None and not Path(cfg.catalog).is_dir():
        raise FmnistError(f"catalog={cfg.catalog} is not a folder: give a folder of images (or catalog=null)")
    catalog = build_catalog(model, cfg, device)
    folder = Path(tempfile.mkdtemp(prefix="fmnist-serve-"))  # examples, thumbnails, uploads: removed at exit
    atexit.register(shutil.rmtree, folder, True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(folder / "uploads"))  # Gradio's copies of uploads and outputs
    classifier = Classifier(model, catalog, device, cfg.neighbours, cfg.min_confidence, folder, cfg.max_pixels)
    app = build_app(classifier, write_examples(catalog, folder), cfg.max_batch_size)
    try:
        app.queue().launch(
            server_name=cfg.host,
            server_port=cfg.port,
            max_file_size=cfg.max_file_size,
            prevent_thread_lock=True,
            quiet=True,
            footer_links=["api"],
        )
    except OSError as error:  # the port was taken while the catalogue was built
        raise FmnistError(f"cannot serve on {cfg.host}:{cfg.port} ({error}). Fix: another port=") from None
    print(
        f"serving {cfg.ckpt_path} on http://{cfg.host}:{cfg.port} (uploads up to {cfg.max_file_size} and "
        f"{cfg.max_pixels:,} pixels); Ctrl-C stops it"
    )
    if block:  # SIGTERM stops the server as Ctrl-C does: Gradio closes and the temporary folder goes
        signal.signal(signal.SIGTERM, _interrupt)
        app.block_thread()
    return app
