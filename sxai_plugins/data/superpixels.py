"""SLIC superpixels and images rebuilt from a subset of them.

A *genome* is one boolean per superpixel (True = kept). :func:`fill_removed` rebuilds one image
from one genome in numpy; :func:`compose` rebuilds many genomes of many images in one vectorised
torch operation (a gather of each pixel's gene), which is what the genetic search feeds the model.

Fill modes for removed superpixels:

- ``"black"``: zeros (as in the paper's code, which multiplies the image by the mask);
- ``"mean"``: the image's mean colour, per channel;
- ``"blur"``: the image blurred by a Gaussian of ``BLUR_SIGMA_FRACTION × max(H, W)`` pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage.segmentation import slic

Fill = Literal["black", "mean", "blur"]
FILLS: tuple[str, ...] = ("black", "mean", "blur")
BLUR_SIGMA_FRACTION = 0.05  # ≈11 px at 224 px: wipes out parts (eyes, ears) but keeps the layout


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {image.shape}")
    if image.size and (float(image.min()) < 0.0 or float(image.max()) > 1.0):
        raise ValueError(
            f"expected pixel values in [0, 1], got [{image.min():.3g}, {image.max():.3g}]; "
            "divide 8-bit images by 255 (sxai_plugins.data.images.to_array does)"
        )
    return image


def _check_fill(fill: str) -> None:
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")


def slic_segments(
    image: np.ndarray, n_segments: int = 40, compactness: float = 10.0, sigma: float = 1.0
) -> np.ndarray:
    """SLIC superpixels of an ``H×W×3`` image in [0, 1].

    SLIC is deterministic, so the same image always gives the same segments. Labels are
    consecutive from 0 (``0 … S-1``, every label used), whatever scikit-image's own numbering;
    ``S`` is near ``n_segments`` but not always equal to it.

    Returns:
        ``int32`` array ``H×W``.
    """
    image = _check_image(image)
    if n_segments < 1:
        raise ValueError(f"n_segments must be at least 1, got {n_segments}")
    labels = slic(
        image.astype(np.float64),
        n_segments=n_segments,
        compactness=compactness,
        sigma=sigma,
        start_label=0,
        channel_axis=-1,
    )
    # np.unique's inverse maps whatever labels slic used onto 0..S-1 in sorted order
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.int32)


def slic_many(
    images: Sequence[np.ndarray],
    n_segments: int = 40,
    compactness: float = 10.0,
    sigma: float = 1.0,
    workers: int | None = None,
) -> list[np.ndarray]:
    """:func:`slic_segments` of each image, on ``workers`` threads (default: one per CPU core, at
    most 16). scikit-image's SLIC releases the GIL for most of its work, so threads scale;
    the labels are the same as one at a time."""
    workers = min(16, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if workers == 1 or len(images) < 2:
        return [slic_segments(im, n_segments, compactness, sigma) for im in images]
    with ThreadPoolExecutor(min(workers, len(images))) as pool:
        return list(pool.map(lambda im: slic_segments(im, n_segments, compactness, sigma), images))


def n_superpixels(segments: np.ndarray) -> int:
    """``S`` for consecutive labels ``0 … S-1``."""
    return int(segments.max()) + 1 if segments.size else 0


def blur_sigma(height: int, width: int) -> float:
    return BLUR_SIGMA_FRACTION * max(height, width)


def background(image: np.ndarray, fill: Fill = "black") -> np.ndarray:
    """What removed superpixels are replaced with: an ``H×W×3`` float32 array."""
    image = _check_image(image).astype(np.float32)
    _check_fill(fill)
    if fill == "black":
        return np.zeros_like(image)
    if fill == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1), dtype=np.float64), image.shape).astype(
            np.float32
        )
    sigma = blur_sigma(image.shape[0], image.shape[1])
    return gaussian_filter(image, sigma=(sigma, sigma, 0), mode="reflect").astype(np.float32)


def fill_removed(
    image: np.ndarray, segments: np.ndarray, keep: np.ndarray, fill: Fill = "black"
) -> np.ndarray:
    """``image`` with the superpixels whose ``keep`` entry is False replaced by ``fill``.

    Args:
        image: ``H×W×3`` in [0, 1].
        segments: ``H×W`` consecutive labels from :func:`slic_segments`.
        keep: one bool per superpixel (length ``S``, or longer: extra entries are ignored).
    """
    keep = np.asarray(keep, dtype=bool)
    if segments.shape != image.shape[:2]:
        raise ValueError(f"segments {segments.shape} do not match image {image.shape[:2]}")
    if keep.ndim != 1 or keep.shape[0] < n_superpixels(segments):
        raise ValueError(
            f"keep needs one bool per superpixel ({n_superpixels(segments)}), got shape {keep.shape}"
        )
    kept = keep[segments][..., None]
    return np.where(kept, image.astype(np.float32), background(image, fill))


def backgrounds(images: torch.Tensor, fill: Fill = "black") -> torch.Tensor:
    """:func:`background` of each image of a ``B×3×H×W`` batch, on the batch's device."""
    _check_fill(fill)
    if fill == "black":
        return torch.zeros_like(images)
    arrays = images.detach().permute(0, 2, 3, 1).cpu().numpy()
    filled = np.stack([background(a, fill) for a in arrays])
    return torch.from_numpy(filled).permute(0, 3, 1, 2).to(images.device, images.dtype)


def compose_indexed(
    images: torch.Tensor,
    segments: torch.Tensor,
    fills: torch.Tensor | None,
    owners: torch.Tensor,
    genomes: torch.Tensor,
    *,
    vectorised: bool | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Rebuild ``N`` genomes, each of its own image: ``N×3×H×W`` in channels-last memory.

    Args:
        images: ``B×3×H×W`` (channels-last memory saves a copy).
        segments: ``B×H×W`` integer labels.
        fills: ``B×3×H×W`` backgrounds (see :func:`backgrounds`), or None for black.
        owners: ``N`` image indices, one per genome.
        genomes: ``N×S`` bool, ``S`` at least the largest label + 1 (pad with False).
        vectorised: one gather over all ``N`` rows (default on a GPU: no host round trip, so
            the work queues behind earlier work) instead of one step per image (default on the
            CPU, where it stays in cache). Both give bit-identical images.
        validate: check the labels against the genome width (reads a value back from the
            device); a caller that checked once may skip it.
    """
    batch, channels, height, width = images.shape
    if genomes.ndim != 2 or owners.shape != genomes.shape[:1]:
        raise ValueError(f"genomes must be N×S with N owners, got {tuple(genomes.shape)}")
    labels = segments.reshape(batch, height * width).long()
    if validate and labels.numel() and int(labels.max()) >= genomes.shape[1]:
        raise ValueError(
            f"segments use label {int(labels.max())} but genomes have only {genomes.shape[1]} genes"
        )
    # N×H×W×3 work: the result is already the channels-last layout CPU convs run fastest on
    pixels = images.permute(0, 2, 3, 1).contiguous()
    backdrop = None if fills is None else fills.permute(0, 2, 3, 1).contiguous()
    # 0/1 floats: index_select on floats is the fastest gather, and x·1 + fill·0 is exactly x,
    # so kept pixels stay bit-identical
    genes = genomes.to(images.dtype)
    if vectorised is None:
        vectorised = images.device.type != "cpu"
    if vectorised:
        index = owners.long()
        kept = genes.gather(1, labels.index_select(0, index)).view(-1, height, width, 1)
        chosen = pixels.index_select(0, index)
        if backdrop is None:
            return torch.mul(kept, chosen).permute(0, 3, 1, 2)
        removed = torch.mul(1.0 - kept, backdrop.index_select(0, index))
        return torch.addcmul(removed, kept, chosen).permute(0, 3, 1, 2)
    out = torch.empty(
        (len(owners), height, width, channels), dtype=images.dtype, device=images.device
    )
    # one vectorised step per image (never per genome): each pixel takes its superpixel's gene
    for b in torch.unique(owners).tolist():
        rows = torch.nonzero(owners == b).flatten()
        kept = genes.index_select(0, rows).index_select(1, labels[b]).view(-1, height, width, 1)
        first, last = int(rows[0]), int(rows[-1])
        target = out[first : last + 1] if last - first + 1 == len(rows) else None
        if backdrop is None:
            block = torch.mul(kept, pixels[b], out=target)
        else:
            removed = torch.mul(1.0 - kept, backdrop[b])
            block = torch.addcmul(removed, kept, pixels[b], out=target)
        if target is None:  # this image's rows are scattered: copy them into place
            out.index_copy_(0, rows, block)
    return out.permute(0, 3, 1, 2)


def compose(
    images: torch.Tensor,
    segments: torch.Tensor,
    genomes: torch.Tensor,
    fill: Fill | torch.Tensor = "black",
) -> torch.Tensor:
    """Every genome of every image rebuilt at once.

    Args:
        images: ``B×3×H×W`` in [0, 1].
        segments: ``B×H×W`` labels (long).
        genomes: ``B×G×S`` bool: ``G`` genomes per image.
        fill: a fill mode, or precomputed ``B×3×H×W`` backgrounds.

    Returns:
        ``(B·G)×3×H×W`` in channels-last memory; row ``b·G + g`` is genome ``g`` of image ``b``.
    """
    if images.ndim != 4 or segments.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"images must be B×3×H×W and segments B×H×W, got {tuple(images.shape)} and "
            f"{tuple(segments.shape)}"
        )
    if genomes.ndim != 3 or genomes.shape[0] != images.shape[0]:
        raise ValueError(f"genomes must be B×G×S, got {tuple(genomes.shape)}")
    if isinstance(fill, str):
        fills = None if fill == "black" else backgrounds(images, fill)
    else:
        fills = fill
    batch, per_image, length = genomes.shape
    owners = torch.arange(batch, device=images.device).repeat_interleave(per_image)
    return compose_indexed(
        images, segments, fills, owners, genomes.reshape(batch * per_image, length)
    )
