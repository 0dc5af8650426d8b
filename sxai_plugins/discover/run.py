"""``discover``: concepts of a class found without annotation, in the spirit of ACE (Ghorbani et al.
2019): segment each image at several SLIC scales, embed every segment with the model, cluster the
embeddings (k-means, k by silhouette), drop clusters that are background or appear in few images,
rank the rest by how much removing them lowers the class score, and write what a person needs to
name them.

A discovery folder holds:

- ``discovery.json``: the images, the settings, every cluster's figures and status;
- ``segments.npz``: the SLIC labels of every image and scale, the segment table and each segment's
  cluster (what ``sxai space --discovered`` turns into concept masks);
- ``clusters/<id>.png``: a contact sheet per cluster; ``index.html``: all of them on one page;
- ``concepts.toml``: the kept clusters with empty names, for the person to fill in.

A discovery can also look *inside* another one (:mod:`.zoom`): each image cropped to the region of
some of its clusters (a face, say), so that parts too small to get a segment of their own in the
whole image (a cat's nose pad) get one in the crop. ``discovery.json`` then records each image's
box, and the masks ``sxai space --discovered`` makes are put back into the whole image.

Nothing here knows about any class: the class is a name of the model's head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils.errors import SxaiError
from .._utils.io import atomic_folder, atomic_write, write_json
from ..data.images import ImageLoadError, class_images, load_image, to_array
from ..models.trait_model import TraitModel
from .clusters import (
    KEPT,
    ClusterStats,
    cluster,
    cluster_by_scale,
    cluster_stats,
    rank_clusters,
    reduce,
)
from .segments import (
    SegmentTable,
    class_score,
    crop_embeddings,
    pooled_embeddings,
    segment_images,
)

if TYPE_CHECKING:
    from .zoom import Zoom

FORMAT = 1
EMBEDDINGS = ("pooled", "crop")
# a region of an image: (x0, y0, x1, y1) as shares of its width and height (as displayed)
Box = tuple[float, float, float, float]


class DiscoveryError(SxaiError, ValueError):
    """A discovery cannot run, or a discovery folder or its naming file is unusable."""


@dataclass(frozen=True)
class DiscoverConfig:
    """Every setting of a discovery; stored in ``discovery.json``."""

    n: int = 200  # images drawn (seeded) from the class
    scales: tuple[int, ...] = (25, 60, 120)  # SLIC segment counts (120: eye- and nose-sized)
    min_area: float = 0.002  # smaller segments are dropped (share of the image)
    embedding: str = "pooled"  # pooled (one pass per image) or crop (one pass per segment)
    pool_size: int = 448  # pooled: the side the image is fed at (more map cells than the input)
    crop_size: int = 112  # crop: the side each segment crop is fed at
    center: bool = True  # subtract each image's mean segment embedding before clustering
    by_scale: bool = True  # cluster each SLIC scale's segments apart (k chosen per scale)
    pca_dims: int = 64
    ks: tuple[int, ...] = (12, 16, 20)  # per scale when by_scale
    min_images: int = 5  # a cluster in fewer images is rare
    min_image_fraction: float = 0.1  # ... or in fewer than this share of the images
    background_z: float = 0.0  # clusters whose class evidence is below this are background
    rank_images: int = 20  # images per cluster the removal drop is measured on
    sheet_crops: int = 24
    sheet_contexts: int = 8
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise DiscoveryError(
                f"unknown embedding {self.embedding!r}; use one of {', '.join(EMBEDDINGS)}"
            )
        if not self.scales or min(self.scales) < 2:
            raise DiscoveryError(f"scales must be SLIC segment counts >= 2, got {self.scales}")
        if not self.ks or min(self.ks) < 2:
            raise DiscoveryError(f"k values must be >= 2, got {self.ks}")
        if self.n < 2:
            raise DiscoveryError(f"discovery needs at least 2 images, got n = {self.n}")


@dataclass
class Discovery:
    """The result of :func:`discover` (also what :func:`load_discovery` reads back)."""

    class_name: str
    backbone: str
    fingerprint: str
    image_root: Path
    images: list[str]  # paths relative to image_root
    config: dict
    k: int
    silhouette: dict[str, float]
    clusters: dict[str, ClusterStats]  # id -> figures; kept ones first, by rank
    n_segments: int
    timings: dict[str, float] = field(default_factory=dict)
    folder: Path | None = None
    boxes: list[Box] | None = None  # a zoomed discovery: the region of each image it looked at

    def image_path(self, i: int) -> Path:
        return self.image_root / self.images[i]

    def box(self, i: int) -> Box | None:
        """The region of image ``i`` this discovery segmented (None: the whole image)."""
        return None if self.boxes is None else self.boxes[i]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "class": self.class_name,
            "backbone": self.backbone,
            "fingerprint": self.fingerprint,
            "image_root": str(self.image_root),
            "images": self.images,
            "config": self.config,
            "k": self.k,
            "silhouette": dict(self.silhouette),
            "n_segments": self.n_segments,
            "clusters": {cid: asdict(s) for cid, s in self.clusters.items()},
            "timings": self.timings,
            **({} if self.boxes is None else {"boxes": [list(b) for b in self.boxes]}),
        }


def center_per_image(embeddings: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Each segment's embedding minus the mean of its image's segments: what sets a part apart
    from the rest of its image, not what the whole image looks like (without it, clusters gather
    the segments of one image; measured in docs/results/discovered/README.md)."""
    out = embeddings.astype(np.float32, copy=True)
    for i in np.unique(image):
        rows = image == i
        out[rows] -= embeddings[rows].mean(axis=0)
    return out


def excluded_paths(files: Iterable[str | Path]) -> set[Path]:
    """Resolved image paths named by files: a COCO file (its ``images``' ``file_name``, relative
    to the file's folder), a JSON object keyed by image path (as ``visibility.json``), a text
    file of paths, one a line (relative to the file's folder), or an earlier discovery (its folder
    or its ``discovery.json``: the images it drew, so that a second discovery draws others)."""
    out: set[Path] = set()
    for file in files:
        file = Path(file)
        if file.is_dir() or file.name == "discovery.json":
            found = load_discovery(file if file.is_dir() else file.parent)
            out.update(found.image_path(i).resolve() for i in range(len(found.images)))
            continue
        try:
            text = file.read_text()
        except OSError as exc:
            raise DiscoveryError(f"--exclude {file}: cannot read it ({exc})") from exc
        if file.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DiscoveryError(f"--exclude {file}: not valid JSON ({exc})") from exc
            if isinstance(data, dict) and isinstance(data.get("images"), list):
                if not all(isinstance(e, dict) for e in data["images"]):
                    raise DiscoveryError(
                        f"--exclude {file}: 'images' holds entries that are not COCO image "
                        "objects (with a file_name)"
                    )
                names = [str(e.get("file_name", "")) for e in data["images"]]
            elif isinstance(data, dict):
                names = list(data)
            else:
                raise DiscoveryError(
                    f"--exclude {file}: expected a COCO file, an object keyed by image path or "
                    "a discovery folder"
                )
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
        out.update((file.parent / name).resolve() for name in names if name)
    return out


def choose_images(
    paths: Sequence[Path], n: int, seed: int, exclude: set[Path] | None = None
) -> list[Path]:
    """Up to ``n`` of ``paths`` not in ``exclude``, drawn with ``seed``, in path order."""
    pool = [p for p in paths if not exclude or p.resolve() not in exclude]
    if not pool:
        raise DiscoveryError("every image of the class is excluded; nothing to discover from")
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(pool))[:n]
    return sorted(pool[i] for i in picked)


def box_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` in pixels of a ``width``×``height`` image: (left, top, right, bottom), at least one
    pixel wide and high. Cropping for a zoomed discovery and putting its masks back both use it."""
    left = min(int(np.floor(box[0] * width)), width - 1)
    top = min(int(np.floor(box[1] * height)), height - 1)
    right = max(int(np.ceil(box[2] * width)), left + 1)
    bottom = max(int(np.ceil(box[3] * height)), top + 1)
    return left, top, min(right, width), min(bottom, height)


def _load_arrays(
    paths: Sequence[Path],
    size: tuple[int, int],
    progress: bool,
    boxes: Sequence[Box] | None = None,
) -> tuple[list[Path], list[np.ndarray], list[str], list[Box] | None]:
    ok, arrays, failures, ok_boxes = [], [], [], []
    for i, path in enumerate(tqdm(paths, desc="loading images", unit="img", disable=not progress)):
        try:
            if boxes is None:
                image = load_image(path, size)
            else:
                # decoded whole: the crop is resized up to the model's input, not the image
                image = load_image(path)
                image = image.crop(box_pixels(boxes[i], *image.size))
            arrays.append(to_array(image, size))
            ok.append(path)
            if boxes is not None:
                ok_boxes.append(boxes[i])
        except ImageLoadError as exc:
            failures.append(str(exc))
    return ok, arrays, failures, (None if boxes is None else ok_boxes)


def _common_root(paths: Sequence[Path]) -> Path:
    import os

    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))


def discover(
    model: TraitModel,
    data: str | Path,
    class_name: str,
    out: str | Path,
    config: DiscoverConfig | None = None,
    exclude: Iterable[str | Path] = (),
    progress: bool = True,
    zoom: Zoom | None = None,
) -> Discovery:
    """Discover the concepts of ``class_name`` in the images ``data/<class_name>/`` (or directly in
    ``data``) and write the discovery folder ``out`` (replaced whole; see the module docstring).

    ``zoom`` (:func:`.zoom.zoom_into`): discover inside regions of another discovery's images
    instead; ``data`` is then not read (the images are the zoom's)."""
    config = config or DiscoverConfig()
    if class_name not in model.class_names:
        raise DiscoveryError(
            f"class {class_name!r} is not one of the model's classes "
            f"({', '.join(model.class_names)}); discovery ranks segments by the class's score"
        )
    class_index = model.class_names.index(class_name)
    size = (model.input_size[1], model.input_size[2])
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if zoom is not None:
        candidates = sorted(zoom.boxes)
    else:
        try:
            candidates = class_images(data, class_name)
        except ImageLoadError as exc:
            raise DiscoveryError(str(exc)) from exc
    chosen = choose_images(candidates, config.n, config.seed, excluded_paths(exclude))
    paths, arrays, failures, boxes = _load_arrays(
        chosen, size, progress, None if zoom is None else [zoom.boxes[p] for p in chosen]
    )
    if len(arrays) < 2:
        raise DiscoveryError(
            f"only {len(arrays)} readable images of {class_name!r}; discovery needs at least 2"
            + (f" ({failures[0]})" if failures else "")
        )
    timings["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    labels, table = segment_images(arrays, config.scales, config.min_area, progress=progress)
    timings["segment"] = time.perf_counter() - clock
    if len(table) < 2 * min(config.ks):
        raise DiscoveryError(
            f"only {len(table)} segments in {len(arrays)} images: too few to cluster into "
            f"k >= {min(config.ks)} (use more images, more scales or smaller k)"
        )

    clock = time.perf_counter()
    model.eval()
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if config.embedding == "pooled":
        embeddings, evidence, scores = pooled_embeddings(
            model, images, labels, table, class_index, config.pool_size, config.batch_size, progress
        )
    else:
        embeddings, evidence = crop_embeddings(
            model,
            arrays,
            labels,
            table,
            class_index,
            4 * config.batch_size,
            progress,
            config.crop_size,
        )
        with torch.inference_mode():
            device = next(model.parameters()).device
            scores = np.concatenate(
                [
                    class_score(model(images[s : s + 32].to(device)).logits, class_index)
                    .float()
                    .cpu()
                    .numpy()
                    for s in range(0, len(images), 32)
                ]
            )
    timings["embed"] = time.perf_counter() - clock

    clock = time.perf_counter()
    if config.center:
        embeddings = center_per_image(embeddings, table.image)
    reduced = reduce(embeddings, config.pca_dims, config.seed)
    if config.by_scale:
        clustering = cluster_by_scale(
            reduced, table.scale, config.scales, config.ks, config.seed, progress
        )
    else:
        clustering = cluster(reduced, config.ks, config.seed, progress=progress)
    stats = cluster_stats(
        table,
        clustering,
        evidence,
        len(arrays),
        config.min_images,
        config.min_image_fraction,
        config.background_z,
    )
    timings["cluster"] = time.perf_counter() - clock

    clock = time.perf_counter()
    rank_clusters(
        model,
        arrays,
        labels,
        table,
        clustering,
        stats,
        scores,
        class_index,
        config.rank_images,
        config.seed,
        progress=progress,
    )
    timings["rank"] = time.perf_counter() - clock

    kept = sorted((s for s in stats if s.status == KEPT), key=lambda s: s.rank)
    dropped = sorted((s for s in stats if s.status != KEPT), key=lambda s: (-s.n_images, s.index))
    clusters = {f"c{j}": s for j, s in enumerate(kept + dropped)}
    root = _common_root(paths)
    result = Discovery(
        class_name,
        model.name,
        model.fingerprint(),
        root,
        [p.resolve().relative_to(root).as_posix() for p in paths],
        {
            **asdict(config),
            "failures": failures,
            **({} if zoom is None else {"zoom": zoom.describe()}),
        },
        clustering.k,
        clustering.silhouette,
        clusters,
        len(table),
        timings,
        boxes=boxes,
    )
    cluster_id = {s.index: cid for cid, s in clusters.items()}
    assignment = np.array([int(cid[1:]) for cid in map(cluster_id.get, clustering.assignment)])
    # how typical each segment is of its cluster: its distance to the centre as a quantile of its
    # cluster's distances (0 = the most typical); masks keep the core the contact sheet shows
    distance = np.linalg.norm(
        clustering.reduced - clustering.centres[clustering.assignment], axis=1
    )
    typicality = np.zeros(len(distance))
    for c in range(clustering.k):
        rows = np.flatnonzero(clustering.assignment == c)
        if len(rows):
            order = np.argsort(np.argsort(distance[rows], kind="stable"), kind="stable")
            typicality[rows] = order / max(len(rows) - 1, 1)

    clock = time.perf_counter()
    from .outputs import contact_sheet, html_page, naming_file

    out = Path(out)
    with atomic_folder(out) as tmp:
        for cid, s in tqdm(
            clusters.items(), desc="contact sheets", unit="cluster", disable=not progress
        ):
            contact_sheet(
                arrays,
                labels,
                table,
                clustering,
                s,
                cid,
                len(arrays),
                tmp / "clusters" / f"{cid}.png",
                config.sheet_crops,
                config.sheet_contexts,
            )
        _save_segments(tmp / "segments.npz", labels, table, assignment, typicality)
        atomic_write(tmp / "concepts.toml", lambda t: t.write_text(naming_file(result)))
        timings["write"] = time.perf_counter() - clock
        atomic_write(tmp / "index.html", lambda t: t.write_text(html_page(result, tmp)))
        write_json(tmp / "discovery.json", result.to_json())
    result.folder = out
    return result


def _save_segments(
    path: Path,
    labels: np.ndarray,
    table: SegmentTable,
    assignment: np.ndarray,
    typicality: np.ndarray,
) -> None:
    arrays = {f"table_{k}": getattr(table, k) for k in SegmentTable.__dataclass_fields__}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, labels=labels, cluster=assignment, typicality=typicality, **arrays
            )

    atomic_write(path, write)


def load_discovery(folder: str | Path) -> Discovery:
    """The discovery written to ``folder`` (its ``discovery.json``)."""
    folder = Path(folder)
    path = folder / "discovery.json"
    if not path.is_file():
        raise DiscoveryError(
            f"{folder}: not a discovery folder (no discovery.json); "
            "make one with: sxai discover --data DIR --class NAME --out FOLDER"
        )
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise DiscoveryError(
                f"{path}: format {data.get('format')!r}, this sxai reads format {FORMAT}; "
                "run sxai discover again"
            )
        clusters = {cid: ClusterStats(**s) for cid, s in data["clusters"].items()}
        return Discovery(
            data["class"],
            data["backbone"],
            data["fingerprint"],
            Path(data["image_root"]),
            list(data["images"]),
            dict(data["config"]),
            int(data["k"]),
            {str(k): float(v) for k, v in data["silhouette"].items()},
            clusters,
            int(data["n_segments"]),
            dict(data.get("timings", {})),
            folder,
            None if "boxes" not in data else [_box(b) for b in data["boxes"]],
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DiscoveryError):
            raise
        raise DiscoveryError(
            f"{path}: unreadable ({type(exc).__name__}: {exc}); run sxai discover again"
        ) from exc


def _box(value) -> Box:
    box = tuple(float(v) for v in value)
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise ValueError(f"a box is x0 < x1, y0 < y1 within [0, 1], got {value!r}")
    return box


def load_segments(folder: str | Path) -> tuple[np.ndarray, SegmentTable, np.ndarray]:
    """(labels, table, cluster number of each segment) of a discovery folder (see
    :func:`load_typicality` for how typical each segment is of its cluster)."""
    path = Path(folder) / "segments.npz"
    if not path.is_file():
        raise DiscoveryError(f"{path}: missing; run sxai discover again")
    with np.load(path) as data:
        table = SegmentTable(*(data[f"table_{k}"] for k in SegmentTable.__dataclass_fields__))
        return data["labels"], table, data["cluster"]


def load_typicality(folder: str | Path) -> np.ndarray:
    """Per segment, its distance to its cluster's centre as a quantile of the cluster's (0 = the
    most typical segment)."""
    with np.load(Path(folder) / "segments.npz") as data:
        if "typicality" not in data:
            raise DiscoveryError(f"{folder}: made by an older sxai discover; run it again")
        return data["typicality"]


__all__ = [
    "Box",
    "DiscoverConfig",
    "Discovery",
    "DiscoveryError",
    "box_pixels",
    "choose_images",
    "discover",
    "excluded_paths",
    "load_discovery",
    "load_segments",
    "load_typicality",
]
