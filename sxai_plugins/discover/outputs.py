"""What ``sxai discover`` writes for a person to look at: a contact sheet per cluster, one HTML page
of all clusters (the report's style), and the naming file ``concepts.toml``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from .._utils.io import atomic_write
from .clusters import KEPT, Clustering, ClusterStats, representatives
from .segments import SegmentTable, segment_crop

if TYPE_CHECKING:
    from .run import Discovery

CROP = 80  # pixels of a segment crop on a sheet
CONTEXT = 160  # pixels of an image with the segment outlined
COLUMNS = 8
OUTLINE = (255, 215, 0)


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))


def _outlined(image: np.ndarray, mask: np.ndarray, size: int) -> Image.Image:
    """The image with the mask's edge drawn (2 px) and the outside dimmed a little."""
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    edge = binary_dilation(find_boundaries(mask, mode="outer"), iterations=1)
    picture = np.where(mask[..., None], image, 0.55 * image)
    picture[edge] = np.asarray(OUTLINE) / 255.0
    return _to_pil(picture).resize((size, size), Image.BILINEAR)


def contact_sheet(
    arrays: Sequence[np.ndarray],
    labels: np.ndarray,
    table: SegmentTable,
    clustering: Clustering,
    stats: ClusterStats,
    cluster_id: str,
    n_images: int,
    path: Path,
    crops: int = 24,
    contexts: int = 8,
) -> Path:
    """One PNG: a title line, the ``crops`` segments nearest the cluster's centre (one per image,
    alone on grey), then ``contexts`` of them outlined in their images."""
    chosen = representatives(clustering, table, stats.index, max(crops, contexts))
    crop_rows = int(np.ceil(min(crops, len(chosen)) / COLUMNS))
    context_columns = COLUMNS * CROP // CONTEXT
    context_rows = int(np.ceil(min(contexts, len(chosen)) / context_columns))
    title_h = 34
    width = COLUMNS * (CROP + 4) + 4
    height = title_h + crop_rows * (CROP + 4) + 8 + context_rows * (CONTEXT + 4) + 4
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (6, 4),
        f"{cluster_id}: {stats.n_segments} segments in {stats.n_images}/{n_images} images, "
        f"status {stats.status}",
        fill="black",
    )
    draw.text(
        (6, 18),
        f"removal drop {stats.drop:.2f} (rank {stats.rank or '-'}), class evidence z "
        f"{stats.evidence_z:.2f}, mean area {100 * stats.mean_area:.1f}%",
        fill="black",
    )
    for j, i in enumerate(chosen[:crops]):
        crop = segment_crop(arrays[table.image[i]], table.mask(labels, i), table.bbox[i], CROP)
        x = 4 + (j % COLUMNS) * (CROP + 4)
        y = title_h + (j // COLUMNS) * (CROP + 4)
        sheet.paste(_to_pil(crop.transpose(1, 2, 0)), (x, y))
    top = title_h + crop_rows * (CROP + 4) + 8
    for j, i in enumerate(chosen[:contexts]):
        x = 4 + (j % context_columns) * (CONTEXT + 4)
        y = top + (j // context_columns) * (CONTEXT + 4)
        sheet.paste(_outlined(arrays[table.image[i]], table.mask(labels, i), CONTEXT), (x, y))
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def naming_file(result: Discovery) -> str:
    """``concepts.toml``: every kept cluster with an empty name, most important first, each with
    a comment of its figures; the dropped clusters listed as comments."""
    lines = [
        f"# Concepts discovered for class {json.dumps(result.class_name)} by `sxai discover`",
        f"# (backbone {result.backbone}, weights {result.fingerprint}, {len(result.images)} images).",
        "# Look at clusters/<id>.png (or index.html) and name the clusters that show one concept:",
        '#   c3 = "eyes"',
        '# Several clusters may share a name; clusters left "" are ignored. Names are single',
        "# words (letters, digits, _ and -). Then: sxai space --discovered <this folder> --out OUT",
        "",
        "[names]",
    ]
    for cid, s in result.clusters.items():
        if s.status == KEPT:
            lines.append(
                f'{cid} = ""  # rank {s.rank}: removal drop {s.drop:.2f}, '
                f"{s.n_images}/{len(result.images)} images, {s.n_segments} segments"
            )
    dropped = [(cid, s) for cid, s in result.clusters.items() if s.status != KEPT]
    if dropped:
        lines += ["", "# Dropped by the filters (they may still be named above if you disagree):"]
        lines += [
            f"#   {cid}: {s.status}, {s.n_images}/{len(result.images)} images, "
            f"class evidence z {s.evidence_z:.2f}"
            for cid, s in dropped
        ]
    return "\n".join(lines) + "\n"


def html_page(result: Discovery, folder: Path) -> str:
    """The page of all clusters, with the contact sheets inside it (data URIs)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    from ..viz.report import file_data_uri

    env = Environment(
        loader=PackageLoader("sxai_plugins.viz", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    clusters: list[dict[str, Any]] = []
    for cid, s in result.clusters.items():
        clusters.append(
            {
                "id": cid,
                "status": s.status,
                "rank": s.rank if s.rank is not None else "",
                "n_images": s.n_images,
                "n_segments": s.n_segments,
                "drop": "" if np.isnan(s.drop) else f"{s.drop:.2f}",
                "drop_sd": "" if np.isnan(s.drop_sd) else f"{s.drop_sd:.2f}",
                "evidence_z": f"{s.evidence_z:.2f}",
                "border": f"{100 * s.border:.0f}%",
                "area": f"{100 * s.mean_area:.1f}%",
                "sheet": file_data_uri(folder / "clusters" / f"{cid}.png"),
            }
        )
    return env.get_template("discover.html.j2").render(
        class_name=result.class_name,
        backbone=result.backbone,
        fingerprint=result.fingerprint,
        n_images=len(result.images),
        n_segments=result.n_segments,
        k=result.k,
        silhouette=[(k, f"{v:.3f}") for k, v in result.silhouette.items()],
        config=result.config,
        clusters=clusters,
        timings={k: f"{v:.1f} s" for k, v in result.timings.items()},
    )


__all__ = ["contact_sheet", "html_page", "naming_file"]
