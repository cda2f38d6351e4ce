"""The web page of `fmnist.serve` (Gradio): classify an uploaded photo and show its look-alikes; the catalogue grouped.

Tab "Classify": a photo in (any file; it is decoded here, as `fmnist.predict` decodes one), out: a `Result` (the
photo as decoded, the 28x28 image the network saw, the top-3 classes (a bar chart), the nearest catalogue items
by the embedding (cosine) and one line of text); a file that is not a usable image gets one `error: ...` line and
the other outputs empty (None). Requests that wait in Gradio's queue are classified together (`max_batch_size`).
Tab "Catalogue groups": the k-means clusters of the catalogue's embedding on a 2-D map, thumbnails per cluster,
NMI/ARI/purity. The same functions are the app's HTTP API (`/classify`), which `gradio_client` calls.

Bounds: a request body is at most `max_file_size` (and a multipart's few headers; FastAPI's `max_body_size`),
an image at most `max_pixels` (from its header, before decoding); a request whose data Gradio can't prepare gets
its own `error: ...` line; each refusal is one log line, without the request's data or a traceback. Uploads and
thumbnails are kept within `upload_quota` (and `MAX_KEPT_FILES`): after each upload the oldest go.
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo

import atexit  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field, fields  # noqa: E402
from pathlib import Path  # noqa: E402

import anyio  # noqa: E402
import fastapi  # noqa: E402
import gradio as gr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio.exceptions import InvalidPathError  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from fmnist.analysis.cluster import map_figure  # noqa: E402
from fmnist.deploy.predict import (  # noqa: E402
    MAX_PIXELS,
    NOT_A_NUMBER,
    NOT_GARMENT,
    UNSURE,
    checkpoint_gate,
    load_image,
    to_fashion_mnist,
)
from fmnist.models.checkpoint import load_model  # noqa: E402
from fmnist.models.gate import Gate, verdicts  # noqa: E402
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
from fmnist.utils.files import write_atomically  # noqa: E402
from fmnist.web.catalog import Catalog, build_catalog, class_name, printable  # noqa: E402

SIZE = re.compile(r"\s*([1-9]\d*)\s*(b|kb|mb|gb)\s*", re.IGNORECASE)
UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}  # Gradio's own: 10mb is 10 MiB


def file_size(value) -> bool:
    """A size Gradio's `max_file_size` takes: a number of bytes, or digits and b, kb, mb or gb."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 1
    return isinstance(value, str) and SIZE.fullmatch(value) is not None


def size_bytes(value: int | str) -> int:
    """A size that `file_size` accepts, in bytes."""
    if isinstance(value, int):
        return value
    digits, unit = SIZE.fullmatch(value).groups()
    return int(digits) * UNITS[unit.lower()]


RULES = {
    "ckpt_path": (text, "a file name", None, "a checkpoint file, e.g. outputs/cnn/<run>/checkpoints/last.ckpt", False),
    "catalog": (text, "a folder name", None, "a folder of images (or null: the test set)", True),
    "host": (text, "a host name or address", None, "an address to bind, e.g. 127.0.0.1 or 0.0.0.0", False),
    "port": (integer, "an integer", lambda v: 1 <= v <= 65535, "a port number from 1 to 65535", False),
    "neighbours": (integer, "an integer", lambda v: 1 <= v <= 100, "an integer from 1 to 100", False),
    "k": (integer, "an integer", lambda v: v >= 2, "an integer >= 2", False),
    "seed": (integer, "an integer", seed_in_range, SEED_RANGE, False),
    "min_confidence": (number, "a number", lambda v: 0 <= v <= 1, "a number from 0 to 1", False),
    "gate": (boolean, "true or false", None, "true or false", False),
    "max_file_size": (file_size, "a size", None, "a size such as 10mb, 500kb or a number of bytes", False),
    "upload_quota": (file_size, "a size", None, "a size such as 500mb, 2gb or a number of bytes", False),
    "max_pixels": (integer, "an integer", lambda v: v >= 1, "an integer >= 1 (an upload's pixels)", False),
    "max_batch_size": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "cache": (boolean, "true or false", None, "true or false", False),
    "device": (text, "a device name", None, "auto, cpu, cuda or cuda:N", False),
    **DATA_RULES,
}
THUMBNAIL = 112  # pixels a side for a 28x28 image on the page (4x, nearest: the pixels stay visible)
PREVIEW = 256  # pixels on the longer side of the uploaded photo's preview
EXAMPLE_CLASSES = ("Trouser", "Sneaker", "Bag", "Dress", "Ankle boot")
NO_FILE = "error: no file: upload a photo or pick an example"
MULTIPART_ROOM = 64 << 10  # bytes a request body may hold beyond its file: the multipart's boundaries and headers
MAX_KEPT_FILES = 4096  # uploads and thumbnails kept at most, whatever their size


@dataclass
class Result:
    """What the page shows for one upload and what the API `/classify` returns, as a tuple in this order (a new
    output: a field here and its component in `build_app`'s `outputs`, in the same place)."""

    photo: str | None = None  # the upload as decoded (upright, at most PREVIEW pixels a side): a PNG file
    seen: str | None = None  # the 28x28 image the network saw, enlarged: a PNG file
    top: dict[str, float] | None = None  # {class: probability} of the top 3
    nearest: list[tuple[str, str]] | None = None  # the nearest catalogue items: (PNG file, "Class · similarity")
    verdict: dict | None = None  # {"unsure": bool, "not_garment": bool, "garment_score": 0..1} (no gate: unsure only)
    line: str = ""  # "**Class** (97.9%)" or "**Not a garment, ...**", flagged unsure; or "error: ..." (the rest: None)

    @staticmethod
    def columns(results: list[Result]) -> list[list]:
        """A batch of results as Gradio's batched functions return them: one list per output."""
        return [[getattr(result, f.name) for result in results] for f in fields(Result)]


@dataclass(frozen=True)
class Refused:
    """What `classify` gets for a request whose data Gradio could not prepare: the short reason."""

    reason: str


def refusal(error: Exception) -> str:
    """Why Gradio could not prepare a request's data, in a few words and without the data (huge, or hostile)."""
    if isinstance(error, InvalidPathError):
        return "its file was not uploaded to this page: upload it first"
    if isinstance(error, ValidationError):
        return "its data is not a file upload"
    return f"its data is unusable ({type(error).__name__})"


class Page(gr.Blocks):
    """The app's Blocks. A request whose data Gradio refuses before `classify` (a file not uploaded here, data
    that is no file) gets its own error line and one log line, without its data or a traceback, and never fails
    the other requests of its batch; one with the wrong number of values gets one short error and one log line
    (Gradio's queue zips a batch's values before the app sees them: such a request fails its batch)."""

    async def process_api(self, block_fn, inputs, *args, **kwargs):
        fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        columns = inputs if isinstance(inputs, list) else []
        lengths = {len(c) for c in columns if isinstance(c, list | tuple)}
        if fn.batch and (len(columns) != len(fn.inputs) or len(lengths) != 1 or lengths == {0}):
            reason = f"its data is not {len(fn.inputs)} value(s) per request"
            print(f"refused a request: {reason}", flush=True)
            raise gr.Error(reason, print_exception=False)
        return await super().process_api(block_fn, inputs, *args, **kwargs)

    async def preprocess_data(self, block_fn, inputs, *args, **kwargs):
        try:
            return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - Gradio's own errors print a traceback that holds the data
            reason = refusal(error)
            print(f"refused a request: {reason}", flush=True)
            if not block_fn.batch:  # Gradio's own functions (the examples' loader)
                raise gr.Error(reason, print_exception=False) from None
            return [Refused(reason)] * len(block_fn.inputs)  # classify's: the request's own error line


@dataclass
class Quota:
    """The folders of uploads and thumbnails, kept to the newest files within `max_bytes` and `max_files`;
    the files in `keep` (the examples and the page's own images, there at launch) are never removed."""

    folders: list[Path]
    max_bytes: int
    max_files: int = MAX_KEPT_FILES
    keep: set[str] = field(default_factory=set)

    def files(self) -> list[tuple[float, int, str]]:
        """(modification time, size, path) of every regular file in the folders that is not kept."""
        found = []
        for folder in self.folders:
            for root, _, names in os.walk(folder):
                for name in names:
                    path = os.path.join(root, name)
                    with contextlib.suppress(OSError):
                        info = os.lstat(path)
                        if stat.S_ISREG(info.st_mode) and path not in self.keep:
                            found.append((info.st_mtime, info.st_size, path))
        return found

    def prune(self) -> int:
        """Remove the oldest files beyond the quota (and Gradio's folder of each, once empty); returns how many."""
        roots, total, removed = {str(folder) for folder in self.folders}, 0, 0
        for count, (_, size, path) in enumerate(sorted(self.files(), reverse=True), 1):
            total += size
            if count > self.max_files or total > self.max_bytes:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed += 1
                    if os.path.dirname(path) not in roots:
                        os.rmdir(os.path.dirname(path))  # only an empty one goes
        return removed


class Guard:
    """ASGI middleware of the page: one log line per request refused as too large (413), without its data; after
    each upload, the quota's oldest files go."""

    def __init__(self, app, quota: Quota, max_file_size: int):
        self.app, self.quota, self.max_file_size = app, quota, max_file_size

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def logged(message):
            if message["type"] == "http.response.start" and message["status"] == 413:
                path, limit = printable(scope["path"][:100]), f"{self.max_file_size:,}"
                print(f"refused a request to {path}: too large (uploads up to {limit} bytes)", flush=True)
            await send(message)

        try:
            await self.app(scope, receive, logged)
        finally:
            if scope["method"] == "POST" and scope["path"].endswith("/upload"):
                await anyio.to_thread.run_sync(self.quota.prune)


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
        """A (28, 28) image enlarged to `size` pixels a side."""
        pixels = image.to(torch.uint8).contiguous().numpy()
        return self.png(thumbnail(pixels, size), f"{size}")

    def png(self, image: Image.Image, kind: str = "photo") -> str:
        """Any image, as it is."""
        key = hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()[:24]
        target = self.folder / f"{key}_{kind}.png"
        if not os.path.lexists(target):
            data = io.BytesIO()
            image.save(data, "PNG")
            write_atomically(target, data.getbuffer())
        return str(target)


def preview(image: Image.Image) -> Image.Image | None:
    """The decoded upload as the page shows it: upright, at most PREVIEW pixels a side, 8-bit RGB(A); None for
    16-bit or float pixels (the network still sees them, through `to_fashion_mnist`)."""
    if image.mode.startswith("I") or image.mode == "F":
        return None
    small = ImageOps.exif_transpose(ImageOps.contain(image, (PREVIEW, PREVIEW)))
    return small.convert("RGBA" if small.mode in ("RGBA", "LA", "PA") or "transparency" in small.info else "RGB")


def with_preview(image: Image.Image) -> tuple[torch.Tensor, Image.Image | None]:
    """The network's input and the page's preview of one decoded upload."""
    return to_fashion_mnist(image), preview(image)


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
        gate: Gate | None = None,
    ):
        """`gate`: the checkpoint's garment gate (calibrated probabilities and the not_garment flag); None: none."""
        self.model, self.catalog, self.device = model.eval().to(device), catalog, device
        self.neighbours, self.min_confidence, self.max_pixels = neighbours, min_confidence, max_pixels
        self.gate = gate
        self.thumbnails = Thumbnails(folder)

    @torch.inference_mode()
    def classify(self, paths: list[str | Refused | None]) -> list[list]:
        """A `Result` per upload, as Gradio's batched outputs (`Result.columns`). An unusable file or a refused
        request gets its `error: ...` line and no other output; it never fails the others of its batch."""
        results = [Result() for _ in paths]
        images, previews, slots = [], [], []
        for slot, path in enumerate(paths):
            try:
                if isinstance(path, Refused):
                    raise ValueError(path.reason)
                if not path:
                    raise ValueError(NO_FILE.removeprefix("error: "))
                image, photo = load_image(Path(path), self.max_pixels, prepare=with_preview)
            except Exception as error:  # noqa: BLE001 - one bad upload never fails the others of its batch
                reason = str(error) if isinstance(error, ValueError) else f"unreadable image: {type(error).__name__}"
                results[slot].line = f"error: {printable(reason)}"
                continue
            images.append(image)
            previews.append(photo)
            slots.append(slot)
        catalog = self.catalog
        if images:
            x = torch.stack(images).to(self.device)
            embeddings = self.model.embed(x)
            logits = self.model.classifier(embeddings).float().cpu()
            probs, likeness, not_garment = verdicts(self.gate, embeddings.float().cpu(), logits)
            for n, (slot, photo, image, embedding, p) in enumerate(
                zip(slots, previews, x, embeddings, probs, strict=True)
            ):
                result = results[slot]
                if not bool(p.isfinite().all()) or not bool(embedding.isfinite().all()):
                    result.line = f"error: {NOT_A_NUMBER}"
                    continue
                top = p.topk(3)
                result.photo = self.thumbnails.png(photo) if photo is not None else None
                result.seen = self.thumbnails.path((image[0] * 255).round().cpu(), 196)
                result.top = {class_name(i): float(v) for v, i in zip(top.values, top.indices, strict=True)}
                result.nearest = [
                    (self.thumbnails.path(catalog.images[i]), f"{class_name(int(catalog.classes[i]))} · {sim:.3f}")
                    for i, sim in catalog.nearest(embedding.cpu(), self.neighbours)
                ]
                best, share = class_name(int(top.indices[0])), float(top.values[0])
                unsure, odd = share < self.min_confidence, not_garment is not None and bool(not_garment[n])
                result.verdict = {"unsure": unsure}
                if likeness is not None:  # no gate, no verdict on garment or not (as predict's rows)
                    result.verdict |= {"not_garment": odd, "garment_score": round(float(likeness[n]), 4)}
                result.line = (
                    f"**{NOT_GARMENT[0].upper() + NOT_GARMENT[1:]}** (garment score {float(likeness[n]):.3f}): the "
                    f"nearest class is {best} ({share:.1%})"
                    if odd
                    else f"**{best}** ({share:.1%})"
                ) + (f" ({UNSURE})" if unsure else "")
        return Result.columns(results)


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


def cluster_rows(catalog: Catalog, per_cluster: int = 6) -> list[tuple[str, list[Image.Image]]]:
    """(heading, a few thumbnails) of each cluster, largest first; the heading names its size and most common
    class (a line of its own above the thumbnails: a caption under a thumbnail is cut to its width)."""
    rows = []
    for mix in catalog.scores["clusters"]:
        top = next(iter(mix["classes"].items()), ("?", 0.0))
        members = np.flatnonzero(catalog.clusters == mix["cluster"])[:per_cluster]
        heading = f"**cluster {mix['cluster']}**: {mix['size']:,} items, {top[1]:.0%} {top[0]}"
        rows.append((heading, [thumbnail(catalog.images[i]) for i in members]))
    return rows


def write_examples(catalog: Catalog, folder: Path) -> list[str]:
    """Shop-style photos (dark garment on white, 200x300 JPEG) of a few catalogue items, one per class shown."""
    paths = []
    for name in EXAMPLE_CLASSES:
        found = np.flatnonzero(catalog.classes.numpy() == list(map(class_name, range(10))).index(name))
        if len(found):
            path = folder / f"{name.lower().replace(' ', '_')}.jpg"
            image = Image.fromarray(255 - catalog.images[found[0]].numpy()).resize((200, 300)).convert("RGB")
            photo = io.BytesIO()
            image.save(photo, "JPEG", quality=90)
            write_atomically(path, photo.getbuffer())
            paths.append(str(path))
    return paths


def build_app(classifier: Classifier, examples: list[str], max_batch_size: int) -> gr.Blocks:
    """The page: a tab to classify a photo, a tab of the catalogue's groups."""
    catalog = classifier.catalog
    with Page(title="fmnist: classify and group garments") as app:
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
                    photo = gr.Image(label="your photo", type="filepath", interactive=False, height=PREVIEW)
                with gr.Column(scale=1):
                    seen = gr.Image(label="what the network saw (28x28)", type="filepath", interactive=False)
                with gr.Column(scale=1):  # the result
                    line = gr.Markdown()
                    label = gr.Label(num_top_classes=3, label="top 3 classes")
                    verdict = gr.JSON(label="garment or not", height=120)
            gallery = gr.Gallery(label="nearest catalogue items (class · cosine similarity)", columns=8, height="auto")
            outputs = [photo, seen, label, gallery, verdict, line]  # Result's fields, in their order
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
            gr.Markdown("A few items of each cluster:")
            for heading, images in cluster_rows(catalog):
                gr.Markdown(heading)
                gr.Gallery(
                    value=images, show_label=False, columns=6, rows=1, height=2 * THUMBNAIL, object_fit="contain"
                )
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
    max_file_size, upload_quota = size_bytes(cfg.max_file_size), size_bytes(cfg.upload_quota)
    if upload_quota < max_file_size:
        raise FmnistError(
            f"upload_quota={cfg.upload_quota} is out of range: must hold one upload (max_file_size={cfg.max_file_size})"
        )
    if "max_body_size" not in inspect.signature(fastapi.FastAPI).parameters:  # older ones take it silently, unused
        raise FmnistError("this FastAPI cannot cap the size of a request. Fix: pip install -U fastapi")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    device = pick_device(cfg.device)
    check_port(cfg.host, cfg.port)
    model = load_model(cfg.ckpt_path)
    if cfg.catalog is not None and not Path(cfg.catalog).is_dir():
        raise FmnistError(
            f"catalog={printable(cfg.catalog)} is not a folder: give a folder of images (or catalog=null)"
        )
    catalog = build_catalog(model, cfg, device)
    folder = Path(tempfile.mkdtemp(prefix="fmnist-serve-"))  # examples, thumbnails, uploads: removed at exit
    atexit.register(shutil.rmtree, folder, True)
    uploads, thumbnails = folder / "uploads", folder / "thumbnails"
    thumbnails.mkdir()
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)  # Gradio's copies of uploads and outputs: ours, so pruned by ours
    gate = checkpoint_gate(model, cfg) if cfg.gate else None
    classifier = Classifier(
        model, catalog, device, cfg.neighbours, cfg.min_confidence, thumbnails, cfg.max_pixels, gate
    )
    app = build_app(classifier, write_examples(catalog, folder), cfg.max_batch_size)
    quota = Quota([uploads, thumbnails], upload_quota)
    max_body_size = max_file_size + MULTIPART_ROOM
    try:
        app.queue().launch(
            server_name=cfg.host,
            server_port=cfg.port,
            max_file_size=max_file_size,
            app_kwargs={"max_body_size": max_body_size, "middleware": [Middleware(Guard, quota, max_file_size)]},
            prevent_thread_lock=True,
            quiet=True,
            footer_links=["api"],
        )
    except OSError as error:  # the port was taken while the catalogue was built
        raise FmnistError(f"cannot serve on {cfg.host}:{cfg.port} ({error}). Fix: another port=") from None
    quota.keep = {path for _, _, path in quota.files()}  # the examples and the catalogue tab's images
    print(
        f"serving {printable(cfg.ckpt_path)} on http://{cfg.host}:{cfg.port} (uploads up to {cfg.max_file_size} "
        f"and {cfg.max_pixels:,} pixels, {cfg.upload_quota} kept); Ctrl-C stops it"
    )
    if block:  # SIGTERM stops the server as Ctrl-C does: Gradio closes and the temporary folder goes
        signal.signal(signal.SIGTERM, _interrupt)
        app.block_thread()
    return app
