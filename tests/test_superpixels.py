"""SLIC labels, numpy rebuilds and the vectorised torch composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from sxai_plugins.data.superpixels import (
    BLUR_SIGMA_FRACTION,
    backgrounds,
    compose,
    compose_indexed,
    fill_removed,
    n_superpixels,
    slic_many,
    slic_segments,
)


def smooth_image(seed: int, size: int = 48) -> np.ndarray:
    """Random colour blobs: gives SLIC real boundaries to find."""
    rng = np.random.default_rng(seed)
    noise = rng.random((size, size, 3))
    image = gaussian_filter(noise, sigma=(4, 4, 0))
    image -= image.min()
    return (image / image.max()).astype(np.float32)


def test_slic_labels_are_consecutive_int32_from_zero():
    image = smooth_image(0)
    segments = slic_segments(image, n_segments=20)
    assert segments.dtype == np.int32
    assert segments.shape == image.shape[:2]
    labels = np.unique(segments)
    assert labels.tolist() == list(range(len(labels)))
    assert n_superpixels(segments) == len(labels) > 5


def test_slic_is_deterministic():
    image = smooth_image(1)
    np.testing.assert_array_equal(slic_segments(image), slic_segments(image))


def test_slic_many_on_threads_matches_one_at_a_time():
    images = [smooth_image(seed) for seed in range(6)]
    one_by_one = [slic_segments(im, 12) for im in images]
    for workers in (1, 3):
        for got, expected in zip(slic_many(images, 12, workers=workers), one_by_one, strict=True):
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="divide 8-bit"):  # a worker's error reaches the caller
        slic_many([images[0], images[1] * 255], workers=2)


def test_slic_rejects_8bit_values():
    with pytest.raises(ValueError, match="divide 8-bit"):
        slic_segments(smooth_image(0) * 255)


def test_fill_removed_modes():
    image = smooth_image(2, 32)
    segments = slic_segments(image, n_segments=10)
    count = n_superpixels(segments)
    everything = np.ones(count, dtype=bool)
    np.testing.assert_array_equal(fill_removed(image, segments, everything), image)
    nothing = np.zeros(count, dtype=bool)
    assert not fill_removed(image, segments, nothing, "black").any()
    mean = fill_removed(image, segments, nothing, "mean")
    np.testing.assert_allclose(
        mean, np.broadcast_to(image.mean(axis=(0, 1)), image.shape), atol=1e-6
    )
    keep_first = nothing.copy()
    keep_first[0] = True
    blurred = fill_removed(image, segments, keep_first, "blur")
    inside = segments == 0
    np.testing.assert_array_equal(blurred[inside], image[inside])
    sigma = BLUR_SIGMA_FRACTION * 32
    expected = gaussian_filter(image, sigma=(sigma, sigma, 0))
    np.testing.assert_allclose(blurred[~inside], expected[~inside], atol=1e-6)


def test_fill_removed_needs_a_gene_per_superpixel():
    image = smooth_image(3, 32)
    segments = slic_segments(image, n_segments=10)
    with pytest.raises(ValueError, match="one bool per superpixel"):
        fill_removed(image, segments, np.ones(n_superpixels(segments) - 1, dtype=bool))


@pytest.mark.parametrize("fill", ["black", "mean", "blur"])
def test_compose_matches_a_naive_loop(fill):
    images = [smooth_image(10), smooth_image(11)]
    segments = [slic_segments(im, n_segments=16) for im in images]
    genes = max(n_superpixels(s) for s in segments)
    rng = np.random.default_rng(0)
    genomes = rng.random((2, 7, genes)) < 0.5
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    composed = compose(
        batch, torch.from_numpy(np.stack(segments)).long(), torch.from_numpy(genomes), fill
    )
    assert composed.shape == (14, 3, 48, 48)
    for b in range(2):
        for g in range(7):
            expected = fill_removed(images[b], segments[b], genomes[b, g], fill)
            got = composed[b * 7 + g].permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(got, expected)  # exact: kept pixels untouched


def test_compose_rejects_short_genomes():
    image = smooth_image(4)
    segments = slic_segments(image, n_segments=16)
    batch = torch.from_numpy(image[None]).permute(0, 3, 1, 2)
    short = torch.ones(1, 2, n_superpixels(segments) - 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="genes"):
        compose(batch, torch.from_numpy(segments[None]).long(), short)


@pytest.mark.parametrize("fill", ["mean", "black"])
@pytest.mark.parametrize("vectorised", [False, True])
def test_compose_indexed_with_scattered_owners_matches_fill_removed(fill, vectorised):
    images = [smooth_image(20), smooth_image(21), smooth_image(22)]
    segments = [slic_segments(im, n_segments=12) for im in images]
    genes = max(n_superpixels(s) for s in segments)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    owners = torch.tensor([2, 0, 1, 0, 2, 2, 1])
    genomes = torch.from_numpy(np.random.default_rng(1).random((7, genes)) < 0.5)
    fills = None if fill == "black" else backgrounds(batch, fill)
    composed = compose_indexed(
        batch, torch.from_numpy(np.stack(segments)), fills, owners, genomes, vectorised=vectorised
    )
    assert composed.shape == (7, 3, *images[0].shape[:2])
    for row, owner in enumerate(owners.tolist()):
        expected = fill_removed(images[owner], segments[owner], genomes[row].numpy(), fill)
        np.testing.assert_array_equal(composed[row].permute(1, 2, 0).numpy(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compose_indexed_on_cuda_matches_the_cpu_exactly():
    images = [smooth_image(30), smooth_image(31)]
    segments = torch.from_numpy(np.stack([slic_segments(im, n_segments=12) for im in images]))
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    owners = torch.tensor([1, 0, 1, 1, 0])
    genomes = torch.from_numpy(np.random.default_rng(2).random((5, int(segments.max()) + 1)) < 0.5)
    on_cpu = compose_indexed(batch, segments, None, owners, genomes, vectorised=False)
    on_gpu = compose_indexed(batch.cuda(), segments.cuda(), None, owners.cuda(), genomes.cuda())
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=0)
