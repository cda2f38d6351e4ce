"""Clustering the test set by a trained network's embedding and by raw pixels (the logic of `fmnist.cluster`).

Embeds the test set with the network's penultimate layer (`model.embed`) and, as the baseline,
with raw pixels (PCA-reduced); runs k-means on each; scores the clusters against the true classes
(NMI, ARI, purity); writes `clusters.json`, `clusters.md`, `clusters.png` and a TensorBoard
projector (embedding, sprite of garments, class and cluster as metadata).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.metrics.cluster import contingency_matrix  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from torchmetrics.functional.clustering import adjusted_rand_score, normalized_mutual_info_score  # noqa: E402

from fmnist.analysis.reports import predictions  # noqa: E402
from fmnist.data.idx import CLASS_NAMES  # noqa: E402
from fmnist.models.checkpoint import load_model  # noqa: E402
from fmnist.utils.checks import (
    DATA_RULES,
    SEED_RANGE,
    boolean,
    check_new_files,
    check_output_folder,
    check_values,
    integer,
    pick_device,
    seed_in_range,
    text,
)
from fmnist.utils.errors import FmnistError  # noqa: E402
from fmnist.utils.files import write_figure, write_json, write_text  # noqa: E402

# torchmetrics builds its contingency table as a sparse tensor and torch warns about that each time.
warnings.filterwarnings("ignore", ".*Sparse invariant checks are implicitly disabled.*")

RULES = {
    "ckpt_path": (text, "a file name", None, "a checkpoint file, e.g. outputs/cnn/<run>/checkpoints/last.ckpt", False),
    "k": (integer, "an integer", lambda v: v >= 2, "an integer >= 2", False),
    "pixels_pca": (integer, "an integer", lambda v: v >= 1, "an integer >= 1 (or null: all 784 pixels)", True),
    "projector": (boolean, "true or false", None, "true or false", False),
    "seed": (integer, "an integer", seed_in_range, SEED_RANGE, False),
    "output_dir": (text, "a folder", None, "a folder (or null: beside the checkpoint)", True),
    "overwrite": (boolean, "true or false", None, "true or false", False),
    "device": (text, "a device name", None, "auto, cpu, cuda or cuda:N", False),
    **DATA_RULES,
}
OUTPUTS = ("clusters.json", "clusters.png", "clusters.md")
PROJECTOR = "projector/projector_config.pbtxt"  # with the embedding files beside it, rewritten by each run


def cluster_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """NMI and ARI (torchmetrics) and purity (share of each cluster's majority class)."""
    t_labels, t_clusters = torch.as_tensor(labels), torch.as_tensor(clusters)
    contingency = contingency_matrix(labels, clusters)  # classes x clusters
    return {
        "nmi": float(normalized_mutual_info_score(t_clusters, t_labels)),
        "ari": float(adjusted_rand_score(t_clusters, t_labels)),
        "purity": float(contingency.max(axis=0).sum() / contingency.sum()),
    }


def class_mix(labels: np.ndarray, clusters: np.ndarray, top: int = 3) -> list[dict]:
    """Per cluster: its size and its most common classes with their shares."""
    mix = []
    for c in np.unique(clusters):
        members = labels[clusters == c]
        counts = np.bincount(members, minlength=len(CLASS_NAMES))
        order = counts.argsort()[::-1][:top]
        mix.append(
            {
                "cluster": int(c),
                "size": int(len(members)),
                "classes": {CLASS_NAMES[i]: round(float(counts[i] / len(members)), 3) for i in order if counts[i]},
            }
        )
    return sorted(mix, key=lambda m: -m["size"])


def kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The k-means cluster of each row of `features`: k clusters, 4 seeded restarts."""
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(features)


def map_figure(
    maps: dict[str, np.ndarray],
    clusters: dict[str, np.ndarray],
    scores: dict[str, dict],
    title: str = "k-means clusters of the test set on a 2-D PCA map (colour = cluster, legend: its most common class)",
):
    """2-D PCA maps of each representation, points coloured by their k-means cluster."""
    fig, axes = plt.subplots(1, len(maps), figsize=(7 * len(maps), 6.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], maps.items(), strict=False):
        mix = {m["cluster"]: m for m in scores[name].get("clusters", [])}
        ids = np.unique(clusters[name])
        colours = plt.get_cmap("tab10" if len(ids) <= 10 else "tab20")
        for c in ids:
            inside = clusters[name] == c
            top = next(iter(mix.get(int(c), {}).get("classes", {}).items()), None)
            label = f"{c}: {top[0]} {top[1]:.0%}" if top else str(c)  # the cluster's most common class
            ax.scatter(
                points[inside, 0], points[inside, 1], color=colours(int(c) % colours.N), s=3, alpha=0.6, label=label
            )
        if len(ids) <= 20:
            ax.legend(title="cluster: most common class", fontsize=7, markerscale=3, loc="best")
        s = scores[name]
        ax.set_title(f"{name}: NMI {s['nmi']:.3f}, ARI {s['ari']:.3f}, purity {s['purity']:.3f}")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_projector(
    log_dir: Path, embeddings: torch.Tensor, labels: torch.Tensor, images: torch.Tensor, clusters: np.ndarray
) -> None:
    """TensorBoard projector: embeddings with a garment sprite and class / cluster metadata."""
    metadata = [[CLASS_NAMES[y], str(c)] for y, c in zip(labels.tolist(), clusters.tolist(), strict=False)]
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_embedding(
            embeddings,
            metadata=metadata,
            metadata_header=["class", "cluster"],
            label_img=images.float() / 255,
            tag="test_embedding",
        )


def cluster(cfg: DictConfig) -> dict:
    """Run the whole comparison for `cfg.ckpt_path`; return the contents of clusters.json."""
    check_values(cfg, RULES)
    device = pick_device(cfg.device)
    model = load_model(cfg.ckpt_path)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.ckpt_path).parent / "clusters"
    check_output_folder(output_dir)
    check_new_files([output_dir / name for name in (*OUTPUTS, *([PROJECTOR] if cfg.projector else []))], cfg.overwrite)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    n = len(datamodule.test_set)
    if cfg.k > n:
        raise FmnistError(f"k={cfg.k} is more than the {n:,} test images to cluster: must be at most {n:,}")
    if cfg.pixels_pca and cfg.pixels_pca > min(n, 784):
        raise FmnistError(
            f"pixels_pca={cfg.pixels_pca} is more than PCA can give for {n:,} images of 784 pixels: "
            f"must be at most {min(n, 784)} (or null: all 784 pixels)"
        )
    embeddings, labels, images = predictions(model, datamodule.test_dataloader(), device, embed=True)
    pixels = images.flatten(1).float().numpy() / 255
    if cfg.pixels_pca:
        pixels = PCA(n_components=cfg.pixels_pca, random_state=cfg.seed).fit_transform(pixels)
    representations = {"embedding": embeddings.numpy(), "pixels": pixels}
    y = labels.numpy()
    result, assignments, maps = {}, {}, {}
    for name, features in representations.items():
        assignments[name] = kmeans(features, cfg.k, cfg.seed)
        result[name] = cluster_scores(y, assignments[name]) | {"dims": int(features.shape[1])}
        result[name]["clusters"] = class_mix(y, assignments[name])
        maps[name] = PCA(n_components=2, random_state=cfg.seed).fit_transform(features)
    result["k"] = cfg.k
    result["checkpoint"] = str(cfg.ckpt_path)
    write_json(output_dir / "clusters.json", result)
    fig = map_figure(maps, assignments, result)
    write_figure(fig, output_dir / "clusters.png", dpi=100)
    plt.close(fig)
    text = clusters_markdown(result)
    write_text(output_dir / "clusters.md", text)
    print(text)
    if cfg.projector:
        write_projector(output_dir / "projector", embeddings, labels, images, assignments["embedding"])
    print(f"wrote {output_dir} (projector: tensorboard --logdir {output_dir / 'projector'})")
    return result


def clusters_markdown(result: dict) -> str:
    """The scores side by side, then each embedding cluster's class mix."""
    lines = [
        f"# k-means with k={result['k']} on the test set",
        "",
        "| representation | dims | NMI | ARI | purity |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("embedding", "pixels"):
        r = result[name]
        lines.append(f"| {name} | {r['dims']} | {r['nmi']:.3f} | {r['ari']:.3f} | {r['purity']:.3f} |")
    lines += ["", "Class mix of each cluster of the trained embedding (largest first):", ""]
    lines += [
        f"- cluster {m['cluster']} ({m['size']:,} images): "
        + ", ".join(f"{c} {share:.0%}" for c, share in m["classes"].items())
        for m in result["embedding"]["clusters"]
    ]
    return "\n".join(lines) + "\n"
