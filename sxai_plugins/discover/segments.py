"""Segments of images at several SLIC scales, and one embedding per segment from the model.

Two embeddings (``DiscoverConfig.embedding``):

- ``"pooled"`` (default): one forward pass per image, at ``pool_size`` pixels (larger than the
  model's input, so the last conv map has more cells), and each segment's embedding is the last
  conv map averaged over the segment (each cell weighted by the share of it the segment covers).
  The class evidence of a segment is the class's activation map (the head's weights on each cell)
  averaged the same way.
- ``"crop"``: one forward pass per segment, the segment alone on a neutral grey background, cropped
  to its bounding box and resized to the model's input (ACE's recipe); the embedding is the GAP
  traits, the evidence the class logit.

Both are batched; :mod:`benchmarks.bench_discover` measures them against plain inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.superpixels import slic_many
from ..models.trait_model import TraitModel

NEUTRAL = 0.5  # the grey a cropped segment sits on


@dataclass
class SegmentTable:
    """Every kept segment: which image, which scale, which SLIC label, and its geometry."""

    image: np.ndarray  # N, index into the image list
    scale: np.ndarray  # N, index into the scales
    label: np.ndarray  # N, SLIC label at that scale
    area: np.ndarray  # N, share of the image
    bbox: np.ndarray  # N×4, (row0, col0, row1, col1), end exclusive
    border: np.ndarray  # N, True when the segment touches the image's edge

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, rows: np.ndarray) -> SegmentTable:
        return SegmentTable(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def mask(self, labels: np.ndarray, i: int) -> np.ndarray:
        """Boolean ``H×W`` mask of segment ``i`` (``labels``: n_images × n_scales × H × W)."""
        return labels[self.image[i], self.scale[i]] == self.label[i]


def segment_images(
    arrays: Sequence[np.ndarray],
    scales: Sequence[int],
    min_area: float,
    compactness: float = 10.0,
    progress: bool = True,
) -> tuple[np.ndarray, SegmentTable]:
    """SLIC labels of every image at every scale (``n × len(scales) × H × W`` int16) and the
    table of segments covering at least ``min_area`` of their image."""
    n = len(arrays)
    h, w = arrays[0].shape[:2]
    labels = np.zeros((n, len(scales), h, w), dtype=np.int16)
    chunk = 16
    with tqdm(total=n, desc="segmenting (SLIC)", unit="img", disable=not progress) as bar:
        for start in range(0, n, chunk):
            part = arrays[start : start + chunk]
            for s, count in enumerate(scales):
                for j, lab in enumerate(slic_many(part, count, compactness)):
                    labels[start + j, s] = lab
            bar.update(len(part))
    columns: dict[str, list] = {k: [] for k in SegmentTable.__dataclass_fields__}
    edge = np.zeros((h, w), dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    rows_index = np.arange(h)
    cols_index = np.arange(w)
    for i in range(n):
        for s in range(len(scales)):
            lab = labels[i, s]
            count = int(lab.max()) + 1
            sizes = np.bincount(lab.ravel(), minlength=count)
            touching = np.zeros(count, dtype=bool)
            touching[np.unique(lab[edge])] = True
            for label in np.flatnonzero(sizes >= min_area * h * w):
                inside = lab == label
                rr = rows_index[inside.any(axis=1)]
                cc = cols_index[inside.any(axis=0)]
                columns["image"].append(i)
                columns["scale"].append(s)
                columns["label"].append(int(label))
                columns["area"].append(float(sizes[label]) / (h * w))
                columns["bbox"].append((rr[0], cc[0], rr[-1] + 1, cc[-1] + 1))
                columns["border"].append(bool(touching[label]))
    table = SegmentTable(
        np.asarray(columns["image"], dtype=np.int64),
        np.asarray(columns["scale"], dtype=np.int64),
        np.asarray(columns["label"], dtype=np.int64),
        np.asarray(columns["area"], dtype=np.float64),
        np.asarray(columns["bbox"], dtype=np.int64).reshape(-1, 4),
        np.asarray(columns["border"], dtype=bool),
    )
    return labels, table


def class_score(logits: torch.Tensor, class_index: int) -> torch.Tensor:
    """The class's log-odds, ``logit_k − logsumexp(other logits)``: it keeps falling where the
    probability has long saturated at 1 (a single-output model: its logit)."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    others = torch.cat([logits[:, :class_index], logits[:, class_index + 1 :]], dim=1)
    return logits[:, class_index] - torch.logsumexp(others, dim=1)


def _cell_weights(lab: np.ndarray, count: int, grid: tuple[int, int]) -> np.ndarray:
    """``count × (gh·gw)``: the share of each map cell each label covers."""
    h, w = lab.shape
    gh, gw = grid
    cell_r = np.minimum((np.arange(h) * gh) // h, gh - 1)
    cell_c = np.minimum((np.arange(w) * gw) // w, gw - 1)
    cell = (cell_r[:, None] * gw + cell_c[None, :]).ravel()
    counts = np.bincount(lab.ravel().astype(np.int64) * gh * gw + cell, minlength=count * gh * gw)
    cell_area = np.bincount(cell, minlength=gh * gw)
    return counts.reshape(count, gh * gw) / np.maximum(cell_area, 1)[None, :]


@torch.inference_mode()
def pooled_embeddings(
    model: TraitModel,
    images: torch.Tensor,
    labels: np.ndarray,
    table: SegmentTable,
    class_index: int,
    pool_size: int,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings N×C, class evidence N, image scores n): the last conv map of each image at
    ``pool_size`` pixels, averaged over each segment; the class activation map likewise."""
    device = next(model.parameters()).device
    weight = model.head.weight[class_index].detach()
    n = len(images)
    out = np.zeros((len(table), model.trait_dim), dtype=np.float32)
    evidence = np.zeros(len(table), dtype=np.float32)
    scores = np.zeros(n, dtype=np.float32)
    by_image = [np.flatnonzero(table.image == i) for i in range(n)]
    with tqdm(total=n, desc="embedding segments", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            x = images[start : start + batch_size].to(device)
            scores[start : start + len(x)] = class_score(model(x).logits, class_index).cpu()
            if pool_size != x.shape[-1]:
                x = F.interpolate(
                    x, size=(pool_size, pool_size), mode="bilinear", align_corners=False
                )
            fmap = model.feature_map(x.contiguous(memory_format=torch.channels_last)).float()
            grid = tuple(fmap.shape[2:])
            cells = fmap.flatten(2).cpu()  # B × C × cells
            cam = torch.einsum("c,bcn->bn", weight.float().cpu(), cells)
            for b in range(len(x)):
                i = start + b
                rows = by_image[i]
                if not len(rows):
                    continue
                for s in np.unique(table.scale[rows]):
                    lab = labels[i, s]
                    at = rows[table.scale[rows] == s]
                    cw = torch.from_numpy(_cell_weights(lab, int(lab.max()) + 1, grid)).float()
                    cw = cw[torch.from_numpy(table.label[at])]
                    cw = cw / cw.sum(1, keepdim=True).clamp_min(1e-12)
                    out[at] = (cw @ cells[b].T).numpy()
                    evidence[at] = (cw @ cam[b]).numpy()
            bar.update(len(x))
    return out, evidence, scores


def segment_crop(
    image: np.ndarray, mask: np.ndarray, bbox: Sequence[int], size: int, pad: float = 0.1
) -> np.ndarray:
    """The segment alone on neutral grey, cropped to its box (plus ``pad`` of its size) and resized
    to ``size``×``size``: ``3×size×size`` float32."""
    r0, c0, r1, c1 = (int(v) for v in bbox)
    h, w = mask.shape
    dr, dc = int(pad * (r1 - r0)) + 1, int(pad * (c1 - c0)) + 1
    r0, c0, r1, c1 = max(r0 - dr, 0), max(c0 - dc, 0), min(r1 + dr, h), min(c1 + dc, w)
    crop = np.where(mask[r0:r1, c0:c1, None], image[r0:r1, c0:c1], NEUTRAL).astype(np.float32)
    tensor = torch.from_numpy(crop).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


@torch.inference_mode()
def crop_embeddings(
    model: TraitModel,
    arrays: Sequence[np.ndarray],
    labels: np.ndarray,
    table: SegmentTable,
    class_index: int,
    batch_size: int = 64,
    progress: bool = True,
    crop_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings N×C, class evidence N): one forward pass per segment crop (``crop_size``
    pixels, default the model's input), batched."""
    device = next(model.parameters()).device
    size = crop_size or model.input_size[1]
    out = np.zeros((len(table), model.trait_dim), dtype=np.float32)
    evidence = np.zeros(len(table), dtype=np.float32)
    with tqdm(total=len(table), desc="embedding crops", unit="seg", disable=not progress) as bar:
        for start in range(0, len(table), batch_size):
            rows = range(start, min(start + batch_size, len(table)))
            batch = np.stack(
                [
                    segment_crop(arrays[table.image[i]], table.mask(labels, i), table.bbox[i], size)
                    for i in rows
                ]
            )
            x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
            result = model(x)
            out[start : start + len(batch)] = result.traits.float().cpu().numpy()
            evidence[start : start + len(batch)] = (
                class_score(result.logits, class_index).float().cpu().numpy()
            )
            bar.update(len(batch))
    return out, evidence


__all__ = [
    "NEUTRAL",
    "SegmentTable",
    "class_score",
    "crop_embeddings",
    "pooled_embeddings",
    "segment_crop",
    "segment_images",
]
