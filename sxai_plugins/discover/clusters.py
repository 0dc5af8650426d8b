"""Clusters of segment embeddings: k-means with k chosen by silhouette, the filters (background,
rare), and the ranking by how much removing a cluster's segments lowers the class score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.superpixels import background
from ..models.trait_model import TraitModel
from .segments import SegmentTable, class_score

KEPT, BACKGROUND, RARE = "kept", "background", "rare"


@dataclass
class Clustering:
    """Each segment's cluster, the cluster centres (in the reduced space) and how k was chosen."""

    assignment: np.ndarray  # N, cluster index
    reduced: np.ndarray  # N×d, the embeddings clustered (L2-normalised, PCA-reduced)
    centres: np.ndarray  # k×d
    k: int
    silhouette: dict[str, float] = field(default_factory=dict)  # "k" or "scale:k" -> score


def reduce(embeddings: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """L2-normalised rows (k-means then compares directions, as cosine similarity does), projected
    on their first ``dims`` principal components."""
    from sklearn.decomposition import PCA

    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    dims = min(dims, x.shape[1], x.shape[0])
    return PCA(n_components=dims, random_state=seed).fit_transform(x).astype(np.float32)


def cluster(
    reduced: np.ndarray,
    ks: Sequence[int],
    seed: int,
    silhouette_sample: int = 4000,
    progress: bool = True,
) -> Clustering:
    """k-means for each k of ``ks`` (those below the number of segments); the k with the highest
    silhouette (scored on a seeded sample of ``silhouette_sample`` segments) wins."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    candidates = [k for k in ks if 2 <= k < len(reduced)]
    if not candidates:
        raise ValueError(
            f"{len(reduced)} segments are too few to cluster into any of k = {list(ks)}"
        )
    scores: dict[int, float] = {}
    fits = {}
    for k in tqdm(candidates, desc="k-means", unit="k", disable=not progress):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(reduced)
        fits[k] = km
        scores[k] = float(
            silhouette_score(
                reduced,
                km.labels_,
                sample_size=min(silhouette_sample, len(reduced)),
                random_state=seed,
            )
        )
    best = max(candidates, key=lambda k: (round(scores[k], 4), -k))
    return Clustering(
        fits[best].labels_.astype(np.int64),
        reduced,
        fits[best].cluster_centers_,
        best,
        {str(k): v for k, v in scores.items()},
    )


def cluster_by_scale(
    reduced: np.ndarray,
    scale: np.ndarray,
    scale_names: Sequence[int],
    ks: Sequence[int],
    seed: int,
    progress: bool = True,
) -> Clustering:
    """:func:`cluster` on the segments of each SLIC scale apart (k chosen per scale), so that a
    cluster holds segments of one size: parts at fine scales, larger regions at coarse ones."""
    assignment = np.zeros(len(reduced), dtype=np.int64)
    centres, silhouette, offset = [], {}, 0
    for s in np.unique(scale):
        rows = np.flatnonzero(scale == s)
        part = cluster(reduced[rows], ks, seed, progress=progress)
        assignment[rows] = part.assignment + offset
        centres.append(part.centres)
        silhouette.update({f"{scale_names[s]}:{k}": v for k, v in part.silhouette.items()})
        offset += part.k
    return Clustering(assignment, reduced, np.concatenate(centres), offset, silhouette)


def within_image_z(values: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``values`` standardised within each image (0 where an image has one segment)."""
    out = np.zeros_like(values, dtype=np.float64)
    for i in np.unique(image):
        rows = image == i
        v = values[rows].astype(np.float64)
        spread = v.std()
        out[rows] = (v - v.mean()) / spread if spread > 0 else 0.0
    return out


@dataclass
class ClusterStats:
    """What the filters and the ranking know of one cluster."""

    index: int  # k-means label
    n_segments: int
    n_images: int
    evidence_z: float  # median within-image z-score of the class evidence of its segments
    border: float  # share of its segments touching the image's edge
    mean_area: float
    status: str = KEPT
    drop: float = float("nan")  # mean fall of the class log-odds when its segments are removed
    drop_sd: float = float("nan")
    n_ranked: int = 0  # images the drop was measured on
    rank: int | None = None


def cluster_stats(
    table: SegmentTable,
    clustering: Clustering,
    evidence: np.ndarray,
    n_images: int,
    min_images: int,
    min_image_fraction: float,
    background_z: float,
) -> list[ClusterStats]:
    """One :class:`ClusterStats` per cluster, with the filters applied: ``rare`` when its segments
    lie in fewer than ``max(min_images, min_image_fraction · n_images)`` images; ``background``
    when the median within-image z-score of its segments' class evidence is below
    ``background_z`` (the model looks elsewhere for the class)."""
    z = within_image_z(evidence, table.image)
    needed = max(min_images, int(np.ceil(min_image_fraction * n_images)))
    out = []
    for c in range(clustering.k):
        rows = clustering.assignment == c
        stats = ClusterStats(
            c,
            int(rows.sum()),
            int(len(np.unique(table.image[rows]))),
            float(np.median(z[rows])) if rows.any() else float("nan"),
            float(table.border[rows].mean()) if rows.any() else float("nan"),
            float(table.area[rows].mean()) if rows.any() else float("nan"),
        )
        if stats.n_images < needed:
            stats.status = RARE
        elif not stats.evidence_z >= background_z:
            stats.status = BACKGROUND
        out.append(stats)
    return out


def cluster_mask(
    labels: np.ndarray, table: SegmentTable, rows: np.ndarray, image: int
) -> np.ndarray:
    """The union of the segments ``rows`` (of the table) that lie in ``image``."""
    mask = np.zeros(labels.shape[2:], dtype=bool)
    for i in rows[table.image[rows] == image]:
        mask |= labels[image, table.scale[i]] == table.label[i]
    return mask


@torch.inference_mode()
def rank_clusters(
    model: TraitModel,
    arrays: Sequence[np.ndarray],
    labels: np.ndarray,
    table: SegmentTable,
    clustering: Clustering,
    stats: list[ClusterStats],
    scores: np.ndarray,
    class_index: int,
    per_cluster: int,
    seed: int,
    batch_size: int = 32,
    progress: bool = True,
) -> None:
    """Fill ``drop`` of every kept cluster: on up to ``per_cluster`` of its images (seeded choice),
    its segments are replaced by the blurred image and the fall of the class log-odds is measured;
    kept clusters are ranked by it (rank 1 = the largest fall)."""
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    jobs: list[tuple[int, int]] = []  # (cluster, image)
    for s in stats:
        if s.status != KEPT:
            continue
        images = np.unique(table.image[clustering.assignment == s.index])
        chosen = np.sort(rng.permutation(images)[:per_cluster])
        jobs.extend((s.index, int(i)) for i in chosen)
    blurred: dict[int, np.ndarray] = {}
    drops: dict[int, list[float]] = {}
    with tqdm(total=len(jobs), desc="ranking clusters", unit="img", disable=not progress) as bar:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            pictures = []
            for c, i in batch:
                if i not in blurred:
                    blurred[i] = background(arrays[i], "blur")
                mask = cluster_mask(labels, table, np.flatnonzero(clustering.assignment == c), i)
                pictures.append(np.where(mask[..., None], blurred[i], arrays[i]))
            x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).to(device)
            after = class_score(
                model(x.contiguous(memory_format=torch.channels_last)).logits, class_index
            )
            for (c, i), value in zip(batch, after.float().cpu().tolist()):
                drops.setdefault(c, []).append(float(scores[i]) - value)
            bar.update(len(batch))
    for s in stats:
        if s.index in drops:
            values = np.asarray(drops[s.index])
            s.drop, s.drop_sd, s.n_ranked = float(values.mean()), float(values.std()), len(values)
    kept = sorted((s for s in stats if s.status == KEPT), key=lambda s: (-s.drop, s.index))
    for rank, s in enumerate(kept, start=1):
        s.rank = rank


def representatives(
    clustering: Clustering, table: SegmentTable, cluster_index: int, limit: int, per_image: int = 1
) -> np.ndarray:
    """Up to ``limit`` segments of a cluster nearest its centre, at most ``per_image`` from one
    image: what its contact sheet shows."""
    rows = np.flatnonzero(clustering.assignment == cluster_index)
    distance = np.linalg.norm(clustering.reduced[rows] - clustering.centres[cluster_index], axis=1)
    chosen, taken = [], {}
    for i in rows[np.argsort(distance, kind="stable")]:
        image = int(table.image[i])
        if taken.get(image, 0) < per_image:
            chosen.append(i)
            taken[image] = taken.get(image, 0) + 1
            if len(chosen) == limit:
                break
    return np.asarray(chosen, dtype=np.int64)


__all__ = [
    "BACKGROUND",
    "KEPT",
    "RARE",
    "ClusterStats",
    "Clustering",
    "cluster",
    "cluster_by_scale",
    "cluster_mask",
    "cluster_stats",
    "rank_clusters",
    "reduce",
    "representatives",
    "within_image_z",
]
