"""Named clusters become concept masks: ``concepts.toml`` is read and checked, every named
cluster's segments in an image are joined into that image's mask of the concept, and the masks are
written as a COCO file with RLE masks (pycocotools), which any COCO tool can show or edit and
``sxai space --annotations`` can read like hand-made annotations."""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._utils.io import write_json
from .clusters import cluster_mask
from .run import (
    Box,
    Discovery,
    DiscoveryError,
    box_pixels,
    load_discovery,
    load_segments,
    load_typicality,
)

NAMING_FILE = "concepts.toml"
MASKS_FILE = "masks.coco.json"
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
CONCEPT_CATEGORY_OFFSET = 1000  # concept category ids start here, class ids at 1
# A cluster's segments far from its centre are what k-means had to put somewhere: masks keep the
# half nearest the centre (the contact sheet shows the nearest ones).
CORE = 0.5


@dataclass
class Naming:
    """The named clusters of one discovery: concept -> cluster ids."""

    discovery: Discovery
    concepts: dict[str, list[str]]
    path: Path


def read_naming(folder: str | Path, naming: str | Path | None = None) -> Naming:
    """The names given in ``folder/concepts.toml`` (or ``naming``), checked against the discovery:
    every key a cluster id of it, every value a quoted single-word name or "" (ignored), and at
    least one cluster named. Errors name the file, the key and what to write instead."""
    discovery = load_discovery(folder)
    path = Path(naming) if naming is not None else Path(folder) / NAMING_FILE
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DiscoveryError(
            f"{path}: no naming file; sxai discover writes one ({NAMING_FILE}) beside the clusters"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise DiscoveryError(
            f'{path}: not valid TOML ({exc}); a name is written c3 = "eyes" under [names]'
        ) from exc
    unknown = sorted(set(data) - {"names"})
    if unknown:
        raise DiscoveryError(
            f"{path}: unknown key(s) {unknown} at the top level; names go under [names], "
            'e.g. [names] c3 = "eyes"'
        )
    names = data.get("names")
    if not isinstance(names, dict):
        raise DiscoveryError(
            f'{path}: no [names] table; write [names] then lines such as c3 = "eyes"'
        )
    concepts: dict[str, list[str]] = defaultdict(list)
    known = list(discovery.clusters)
    for key, value in names.items():
        if key not in discovery.clusters:
            raise DiscoveryError(
                f"{path}: [names] {key!r} is not a cluster of this discovery "
                f"(its clusters are {known[0]} … {known[-1]}); see clusters/ for their sheets"
            )
        if not isinstance(value, str):
            raise DiscoveryError(
                f"{path}: [names] {key} = {value!r}: a name must be a quoted string, "
                f'e.g. {key} = "eyes" (or "" to leave the cluster unnamed)'
            )
        name = value.strip()
        if not name:
            continue
        if not NAME.match(name):
            raise DiscoveryError(
                f"{path}: [names] {key} = {value!r}: a concept name is one word of letters, "
                "digits, _ and - starting with a letter (it becomes the space's key "
                f'{discovery.class_name}.<name>), e.g. {key} = "eyes" or "front_legs"'
            )
        concepts[name].append(key)
    if not concepts:
        raise DiscoveryError(
            f"{path}: no cluster is named; write a name after each cluster that shows one "
            f'concept, e.g. {known[0]} = "eyes" (look at clusters/{known[0]}.png)'
        )
    return Naming(discovery, dict(concepts), path)


def concept_masks(naming: Naming, core: float = CORE) -> dict[int, dict[str, np.ndarray]]:
    """image index -> concept -> boolean mask at the discovery's resolution (the model's input):
    the union of the image's segments in the clusters named after the concept, keeping each
    cluster's ``core`` most typical share of segments (nearest its centre: what its contact sheet
    shows; 1 keeps them all)."""
    folder = naming.discovery.folder
    labels, table, assignment = load_segments(folder)
    typical = load_typicality(folder) <= core if core < 1 else np.ones(len(table), dtype=bool)
    ids = {cid: int(cid[1:]) for cid in naming.discovery.clusters}
    out: dict[int, dict[str, np.ndarray]] = defaultdict(dict)
    for concept, clusters in naming.concepts.items():
        rows = np.flatnonzero(np.isin(assignment, [ids[c] for c in clusters]) & typical)
        for image in np.unique(table.image[rows]).tolist():
            out[image][concept] = cluster_mask(labels, table, rows, image)
    return dict(out)


def _display_size(path: Path) -> tuple[int, int]:
    from ..data.concepts import _display_size as size

    return size(path)


def _in_image(mask: np.ndarray, box: Box | None, height: int, width: int) -> np.ndarray:
    """A mask at a discovery's resolution as a mask of the whole ``height``×``width`` image: a
    zoomed discovery's masks cover its box of the image, the others the whole image."""
    left, top, right, bottom = (
        (0, 0, width, height) if box is None else box_pixels(box, width, height)
    )
    region = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (right - left, bottom - top), Image.NEAREST
    )
    out = np.zeros((height, width), dtype=bool)
    out[top:bottom, left:right] = np.asarray(region) >= 128
    return out


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def coco_document(namings: list[Naming], core: float = CORE) -> tuple[dict, Path]:
    """A COCO document of every named concept's masks in the original images' pixels (RLE), and
    the folder its ``file_name``s are relative to. Each image carries an annotation of its class
    (its discovery's class) and one per concept found in it; an image in which no named cluster
    occurs carries the class annotation alone."""
    import os

    from pycocotools import mask as coco_mask

    roots = [n.discovery.image_root for n in namings]
    root = Path(os.path.commonpath([str(r) for r in roots]))
    classes = sorted({n.discovery.class_name for n in namings})
    concepts = sorted({c for n in namings for c in n.concepts})
    class_id = {name: i + 1 for i, name in enumerate(classes)}
    concept_id = {name: CONCEPT_CATEGORY_OFFSET + i for i, name in enumerate(concepts)}
    doc: dict = {
        "info": {"description": "concept masks from sxai discover (named clusters of segments)"},
        "categories": [{"id": class_id[c], "name": c, "supercategory": "class"} for c in classes]
        + [{"id": concept_id[c], "name": c, "supercategory": "concept"} for c in concepts],
        "images": [],
        "annotations": [],
    }
    seen: dict[Path, int] = {}
    for naming in namings:
        discovery = naming.discovery
        masks = concept_masks(naming, core)
        for i in range(len(discovery.images)):
            path = discovery.image_path(i).resolve()
            if path in seen:
                raise DiscoveryError(
                    f"{path} is in two discoveries ({discovery.folder} and another); "
                    "give each image to one class only"
                )
            image_id = len(doc["images"]) + 1
            seen[path] = image_id
            h, w = _display_size(path)
            doc["images"].append(
                {
                    "id": image_id,
                    "file_name": path.relative_to(root).as_posix(),
                    "height": h,
                    "width": w,
                }
            )
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": class_id[discovery.class_name],
                    "bbox": [0, 0, w, h],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
            for concept, mask in sorted(masks.get(i, {}).items()):
                rle = _rle(_in_image(mask, discovery.box(i), h, w))
                encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
                doc["annotations"].append(
                    {
                        "id": len(doc["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": concept_id[concept],
                        "segmentation": rle,
                        "area": float(coco_mask.area(encoded)),
                        "bbox": [float(v) for v in coco_mask.toBbox(encoded)],
                        "iscrowd": 0,
                        "clusters": naming.concepts[concept],
                    }
                )
    return doc, root


def write_masks(namings: list[Naming], path: str | Path, core: float = CORE) -> tuple[Path, Path]:
    """:func:`coco_document` written (atomically) to ``path``; returns it and the image root."""
    doc, root = coco_document(namings, core)
    return write_json(path, doc), root


__all__ = [
    "MASKS_FILE",
    "NAMING_FILE",
    "Naming",
    "coco_document",
    "concept_masks",
    "read_naming",
    "write_masks",
]
