"""The core's concept maskers: ``superpixel`` (the paper's), ``inpaint`` and ``blur``.

Each masker is reached through :func:`sxai_plugins.get_masker` and has ``mask(image, region)``:
``image`` an ``H×W×3`` float array in [0, 1], ``region`` a boolean ``H×W`` array. The result is a
new float32 array in which only the region's pixels differ from ``image``; an empty region gives an
unchanged copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._utils.errors import SxaiError
from ..plugin.hookspecs import hookimpl


class MaskerError(SxaiError, ValueError):
    """The image or region handed to a masker has the wrong shape."""


def _prepare(image: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image, dtype=np.float32)
    region = np.asarray(region)
    if image.ndim != 3 or image.shape[2] != 3:
        raise MaskerError(f"image must be H×W×3 (RGB, [0, 1]); got shape {image.shape}")
    if region.shape != image.shape[:2]:
        raise MaskerError(
            f"region must be H×W = {image.shape[:2]} like the image; got {region.shape}"
        )
    return image, region != 0


def _bounding_box(region: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows, cols = np.nonzero(region)
    h, w = region.shape
    return (
        slice(max(rows.min() - margin, 0), min(rows.max() + margin + 1, h)),
        slice(max(cols.min() - margin, 0), min(cols.max() + margin + 1, w)),
    )


def _fallback_colour(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean colour outside the region; mid grey when the region is the whole image."""
    outside = image[~region]
    return outside.mean(axis=0) if len(outside) else np.full(3, 0.5, dtype=np.float32)


@dataclass(frozen=True)
class SuperpixelMasker:
    """The paper's masking: each superpixel the region touches has its region pixels filled with
    the mean colour of a nearby superpixel that lies wholly outside the region.

    Superpixels are ``segments`` when passed to :meth:`mask`, else recomputed by SLIC with
    ``n_segments`` (20, as in the paper) on the image. The filling superpixel is the nearest one in
    the superpixel adjacency graph (an adjacent one whenever possible); among equally near ones,
    the one sharing the longest border with the concept's superpixels.
    """

    name: str = "superpixel"
    n_segments: int = 20
    compactness: float = 10.0

    def mask(
        self, image: np.ndarray, region: np.ndarray, segments: np.ndarray | None = None
    ) -> np.ndarray:
        """``image`` with the region's superpixels filled with a neighbour's mean colour."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import shortest_path

        image, region = _prepare(image, region)
        out = image.copy()
        if not region.any():
            return out
        if segments is None:
            from ..data.concepts import superpixels  # scikit-image loads when a masker runs

            segments = superpixels(image, self.n_segments, self.compactness)
        segments = np.asarray(segments)
        if segments.shape != region.shape:
            raise MaskerError(f"segments are {segments.shape}, the image is {region.shape}")
        n = int(segments.max()) + 1
        sizes = np.bincount(segments.ravel(), minlength=n)
        touched = np.unique(segments[region])
        inside_counts = np.bincount(segments[region], minlength=n)
        outside = np.flatnonzero((sizes > 0) & (inside_counts == 0))
        if len(outside) == 0:
            out[region] = _fallback_colour(image, region)
            return out

        # Border lengths between 4-adjacent superpixels, counted in both directions.
        pairs = [(segments[:, :-1], segments[:, 1:]), (segments[:-1], segments[1:])]
        a = np.concatenate([p[0][p[0] != p[1]] for p in pairs])
        b = np.concatenate([p[1][p[0] != p[1]] for p in pairs])
        border = coo_matrix(
            (np.ones(2 * len(a)), (np.r_[a, b], np.r_[b, a])), shape=(n, n)
        ).toarray()
        hops = shortest_path(border > 0, unweighted=True, indices=touched)
        hug = border[touched].sum(axis=0)  # how much each superpixel borders the concept

        means = (
            np.stack(
                [
                    np.bincount(segments.ravel(), weights=image[..., c].ravel(), minlength=n)
                    for c in range(3)
                ],
                axis=1,
            )
            / np.maximum(sizes, 1)[:, None]
        )
        for row, label in enumerate(touched):
            target = region & (segments == label)
            distance = hops[row, outside]
            if not np.isfinite(distance).any():
                out[target] = _fallback_colour(image, region)
                continue
            nearest = outside[distance == distance.min()]
            out[target] = means[nearest[np.argmax(hug[nearest])]]
        return out


@dataclass(frozen=True)
class InpaintMasker:
    """Biharmonic inpainting of the region (scikit-image), solved on the region's bounding box
    plus ``margin`` pixels only, which keeps a 224×224 image well under a second."""

    name: str = "inpaint"
    margin: int = 10

    def mask(self, image: np.ndarray, region: np.ndarray) -> np.ndarray:
        """``image`` with the region filled smoothly from its surroundings."""
        from skimage.restoration import inpaint_biharmonic

        image, region = _prepare(image, region)
        out = image.copy()
        if not region.any():
            return out
        rows, cols = _bounding_box(region, self.margin)
        crop_region = region[rows, cols]
        if crop_region.all():
            out[region] = _fallback_colour(image, region)
            return out
        filled = inpaint_biharmonic(
            image[rows, cols].astype(np.float64), crop_region, channel_axis=-1
        )
        out[rows, cols][crop_region] = np.clip(filled[crop_region], 0.0, 1.0)
        return out


@dataclass(frozen=True)
class BlurMasker:
    """Gaussian blur inside the region. ``sigma`` in pixels; by default 4% of the image's shorter
    side (about 9 px at 224×224), enough to wipe out an eye or a nose."""

    name: str = "blur"
    sigma: float | None = None

    def mask(self, image: np.ndarray, region: np.ndarray) -> np.ndarray:
        """``image`` whose region pixels are replaced by the blurred image's."""
        from scipy.ndimage import gaussian_filter

        image, region = _prepare(image, region)
        out = image.copy()
        if not region.any():
            return out
        sigma = max(0.04 * min(region.shape), 1.0) if self.sigma is None else float(self.sigma)
        # The kernel reaches int(4σ + 0.5) pixels, so blurring this crop is exact inside the box.
        rows, cols = _bounding_box(region, int(4 * sigma + 0.5) + 1)
        blurred = gaussian_filter(image[rows, cols], sigma=(sigma, sigma, 0), mode="reflect")
        crop_region = region[rows, cols]
        out[rows, cols][crop_region] = blurred[crop_region]
        return out


@hookimpl
def sxai_maskers() -> list[object]:
    """The core's maskers."""
    return [SuperpixelMasker(), InpaintMasker(), BlurMasker()]
