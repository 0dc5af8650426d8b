"""The core maskers: reachable as plugins, change exactly the region, and do what they say."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import sxai_plugins
import sxai_plugins.spaces.maskers
from sxai_plugins.plugin.hookspecs import Masker
from sxai_plugins.spaces.maskers import BlurMasker, InpaintMasker, MaskerError, SuperpixelMasker

NAMES = ["superpixel", "inpaint", "blur"]


def _textured(h: int = 64, w: int = 64) -> np.ndarray:
    """Smooth colour gradients plus a checker, so every masker has something to remove."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    checker = ((np.arange(h)[:, None] // 4 + np.arange(w)[None] // 4) % 2) * 0.3
    image = np.stack(
        [0.2 + 0.5 * xx + checker, 0.6 - 0.4 * yy + 0.2 * checker, 0.3 + 0.3 * xx * yy], axis=-1
    )
    return np.clip(image, 0, 1).astype(np.float32)


def _disc(h: int = 64, w: int = 64, r: int = 10, centre: tuple[int, int] = (30, 25)) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r**2


@pytest.mark.parametrize("name", NAMES)
def test_masker_changes_exactly_the_region(name):
    masker = sxai_plugins.get_masker(name)
    assert masker.name == name and isinstance(masker, Masker)
    image, region = _textured(), _disc()
    before = image.copy()
    out = masker.mask(image, region)
    np.testing.assert_array_equal(image, before)  # the input is not modified
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out[~region], image[~region])
    changed = np.abs(out - image).max(axis=-1)[region] > 1e-3
    assert changed.mean() > 0.5, f"{name} left most of the region as it was"


@pytest.mark.parametrize("name", NAMES)
def test_empty_region_returns_the_image_unchanged(name):
    image = _textured()
    out = sxai_plugins.get_masker(name).mask(image, np.zeros(image.shape[:2], bool))
    np.testing.assert_array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_is_a_clear_error(name):
    masker = sxai_plugins.get_masker(name)
    with pytest.raises(MaskerError, match="region must be"):
        masker.mask(_textured(), np.ones((10, 10), bool))
    with pytest.raises(MaskerError, match="H×W×3"):
        masker.mask(np.zeros((64, 64)), _disc())


def _quadrant_segments(h: int = 48, w: int = 64) -> np.ndarray:
    """0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right (0 borders 2 over 32 px, 1 over 24)."""
    segments = np.zeros((h, w), np.int64)
    segments[:, w // 2 :] += 1
    segments[h // 2 :] += 2
    return segments


def test_superpixel_fills_with_the_adjacent_superpixel_sharing_most_border():
    image, segments = _textured(48, 64), _quadrant_segments()
    means = [image[segments == k].mean(axis=0) for k in range(4)]
    region = np.zeros((48, 64), bool)
    region[5:15, 5:20] = True  # inside superpixel 0 only
    out = SuperpixelMasker().mask(image, region, segments=segments)
    np.testing.assert_allclose(out[region], np.broadcast_to(means[2], (region.sum(), 3)), atol=1e-5)

    # 0 and 1 touched: each is filled from the outside superpixel below it
    region = segments <= 1
    out = SuperpixelMasker().mask(image, region, segments=segments)
    np.testing.assert_allclose(out[segments == 0][0], means[2], atol=1e-5)
    np.testing.assert_allclose(out[segments == 1][0], means[3], atol=1e-5)

    # only 3 stays outside: superpixel 0 (two hops away) is filled from it too
    region = segments <= 2
    out = SuperpixelMasker().mask(image, region, segments=segments)
    np.testing.assert_allclose(out[region], np.broadcast_to(means[3], (region.sum(), 3)), atol=1e-5)


def test_superpixel_recomputes_slic_with_20_segments_by_default():
    image, region = _textured(), _disc()
    out = SuperpixelMasker().mask(image, region)
    # SLIC superpixels are flat-filled: few distinct colours inside the region
    assert len(np.unique(out[region], axis=0)) <= 5


def test_whole_image_region_falls_back_to_grey():
    image = _textured()
    everything = np.ones(image.shape[:2], bool)
    for masker in (SuperpixelMasker(), InpaintMasker()):
        np.testing.assert_allclose(masker.mask(image, everything), 0.5)


def test_inpaint_continues_a_smooth_gradient():
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    image = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1).astype(np.float32)
    region = _disc()
    out = InpaintMasker().mask(image, region)
    # biharmonic inpainting reproduces a linear ramp; a flat fill would be off by up to ~0.15
    assert np.abs(out[region] - image[region]).max() < 0.01


def test_blur_equals_a_full_image_gaussian_inside_the_region():
    image, region = _textured(), _disc()
    out = BlurMasker(sigma=3.0).mask(image, region)
    reference = gaussian_filter(image, sigma=(3.0, 3.0, 0), mode="reflect")
    np.testing.assert_allclose(out[region], reference[region], atol=1e-6)


def test_maskers_are_registered_through_the_hook():
    assert sxai_plugins.get_plugin_manager().is_registered(sxai_plugins.spaces.maskers)
    assert set(NAMES) <= set(sxai_plugins.list_maskers())
