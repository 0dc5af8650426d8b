"""Zoomed discovery: discover again inside the regions an earlier discovery's clusters cover.

A part much smaller than the image (a cat's nose pad: a few cells of the model's last map even at
448 px) rarely gets a segment and a cluster of its own; in a crop around the face it is large, and
does. :func:`zoom_into` turns some clusters of a discovery (the face: its eyes and muzzle clusters,
say) into one square box per image that shows them, widened by a margin; ``discover(...,
zoom=...)`` then segments, embeds and clusters those crops, and records each image's box, so that
the masks of its named clusters are put back into the whole image (:mod:`.naming`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..spaces.probe_data import pixel_extent
from .clusters import cluster_mask
from .naming import CORE
from .run import Box, DiscoveryError, load_discovery, load_segments, load_typicality

AROUND = ("all", "typical")


@dataclass(frozen=True)
class Zoom:
    """Where a zoomed discovery looks: a box per image, from ``clusters`` of the discovery in
    ``parent``."""

    parent: Path
    clusters: tuple[str, ...]
    margin: float
    boxes: dict[Path, Box]
    around: str = "all"

    def describe(self) -> dict:
        """What ``discovery.json`` records of the zoom (the boxes themselves go beside the
        images)."""
        return {
            "parent": str(self.parent),
            "clusters": list(self.clusters),
            "margin": self.margin,
            "around": self.around,
            "regions": len(self.boxes),
        }


def parse_zoom(text: str) -> tuple[Path, tuple[str, ...]]:
    """``FOLDER:c4,c5`` -> (FOLDER, ("c4", "c5"))."""
    folder, sep, ids = text.rpartition(":")
    clusters = tuple(c.strip() for c in ids.split(",") if c.strip())
    if not sep or not folder or not clusters:
        raise DiscoveryError(
            f"--zoom {text!r}: write a discovery folder and the clusters whose region to zoom "
            "into, e.g. --zoom disc-cat:c4,c5,c6"
        )
    return Path(folder), clusters


def square_box(
    mask: np.ndarray, height: int, width: int, margin: float, min_side: float
) -> Box | None:
    """The square (in the image's own pixels, ``height``×``width``) around ``mask`` (drawn at
    any resolution over the whole image), its side the mask's longer extent times ``1 + 2 *
    margin`` and at least ``min_side`` of the image's shorter side, shifted to lie inside the
    image where it fits; as shares of the width and height. None for an empty mask."""
    extent = pixel_extent(mask, width, height)
    if extent is None:
        return None
    x0, y0, x1, y1 = extent
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    side = min(max(side, min_side * min(height, width)), max(height, width))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = float(np.clip(cx - side / 2, 0, max(width - side, 0)))
    top = float(np.clip(cy - side / 2, 0, max(height - side, 0)))
    return (
        left / width,
        top / height,
        float(min(left + side, width) / width),
        float(min(top + side, height) / height),
    )


def _within(outer: Box | None, inner: Box) -> Box:
    """``inner`` (shares of the region ``outer``) as shares of the whole image."""
    if outer is None:
        return inner
    w, h = outer[2] - outer[0], outer[3] - outer[1]
    return (
        outer[0] + inner[0] * w,
        outer[1] + inner[1] * h,
        outer[0] + inner[2] * w,
        outer[1] + inner[3] * h,
    )


def zoom_into(
    parent: str | Path,
    clusters: tuple[str, ...] | list[str],
    margin: float = 0.25,
    core: float = CORE,
    min_side: float = 0.2,
    around: str = "all",
) -> Zoom:
    """One box per image of the discovery in ``parent`` in which any of ``clusters`` occurs:
    the square around the union of those clusters' ``core`` most typical segments (the part the
    contact sheets show; ``around="all"``), or around the image's single most typical one of them
    (``around="typical"``: a tight box, where a cluster has stray segments elsewhere in the image),
    widened by ``margin`` of its side on each side."""
    from ..data.concepts import _display_size

    if not 0 <= margin <= 2:
        raise DiscoveryError(f"zoom margin must be within [0, 2], got {margin}")
    if around not in AROUND:
        raise DiscoveryError(f"zoom around {around!r}: use one of {', '.join(AROUND)}")
    parent = Path(parent)
    discovery = load_discovery(parent)
    unknown = [c for c in clusters if c not in discovery.clusters]
    if unknown or not clusters:
        known = list(discovery.clusters)
        raise DiscoveryError(
            f"--zoom {parent}: {', '.join(unknown) or 'no cluster'} is not a cluster of that "
            f"discovery (its clusters are {known[0]} … {known[-1]}; see {parent}/clusters/)"
        )
    labels, table, assignment = load_segments(parent)
    typicality = load_typicality(parent)
    typical = typicality <= core if core < 1 else np.ones(len(table), dtype=bool)
    rows = np.flatnonzero(np.isin(assignment, [int(c[1:]) for c in clusters]) & typical)
    boxes: dict[Path, Box] = {}
    for image in np.unique(table.image[rows]).tolist():
        path = discovery.image_path(image)
        outer = discovery.box(image)
        height, width = _display_size(path)
        if outer is not None:
            # the parent segmented a crop: measure the square in the crop's own pixels
            left, top = outer[0] * width, outer[1] * height
            width, height = (outer[2] * width - left), (outer[3] * height - top)
        if around == "typical":
            own = rows[table.image[rows] == image]
            mask = table.mask(labels, int(own[np.argmin(typicality[own])]))
        else:
            mask = cluster_mask(labels, table, rows, image)
        box = square_box(mask, height, width, margin, min_side)
        if box is not None:
            boxes[path] = _within(outer, box)
    if len(boxes) < 2:
        raise DiscoveryError(
            f"--zoom {parent}:{','.join(clusters)}: those clusters occur in {len(boxes)} "
            "image(s); a discovery needs at least 2"
        )
    return Zoom(parent, tuple(clusters), margin, boxes, around)


__all__ = ["Zoom", "parse_zoom", "square_box", "zoom_into"]
