"""The genetic search on tiny hand-built models whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from sxai_plugins.data.superpixels import fill_removed
from sxai_plugins.models.trait_model import TraitModel
from sxai_plugins.traits.genetic import GAConfig, GeneticSearchError, search_best_superpixels

SIZE = 32
BLOCK = 8  # a 4×4 grid of 8×8 blocks = 16 superpixels
GOOD = [1, 4, 6, 9, 11, 15]  # the blocks whose brightness raises the target class


class SpatialWeight(nn.Module):
    """Multiplies the map by a fixed per-pixel weight: position-dependent evidence."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def grid_segments() -> np.ndarray:
    rows, cols = np.indices((SIZE, SIZE)) // BLOCK
    return (rows * (SIZE // BLOCK) + cols).astype(np.int32)


def brightness_model() -> TraitModel:
    """Target logit margin ∝ brightness of the GOOD blocks minus brightness of the others, so
    the best subset is exactly GOOD (removed blocks are black, i.e. zero brightness)."""
    segments = grid_segments()
    weight = np.where(np.isin(segments, GOOD), 1.0, -1.0).astype(np.float32)
    brightness = nn.Conv2d(3, 1, kernel_size=1, bias=False)
    with torch.no_grad():
        brightness.weight.fill_(1.0)
    body = nn.Sequential(brightness, SpatialWeight(torch.from_numpy(weight)[None, None]))
    model = TraitModel(
        body,
        1,
        ["other", "target"],
        name="toy",
        input_size=(3, SIZE, SIZE),
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    with torch.no_grad():
        # the optimum's logit margin is ≈4 (p≈0.98): far from float32 saturation, so every
        # block changes the fitness
        model.head.weight.copy_(torch.tensor([[-3.5], [3.5]]))
        model.head.bias.zero_()
    return model.eval()


def block_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.2, 0.8, size=(16, 3)).astype(np.float32)  # never black
    return colours[grid_segments()]


def random_conv_model() -> TraitModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2))
    return TraitModel(body, 6, ["a", "b", "c"], name="tiny", input_size=(3, SIZE, SIZE)).eval()


def smooth_image(seed: int) -> np.ndarray:
    image = gaussian_filter(np.random.default_rng(seed).random((SIZE, SIZE, 3)), sigma=(3, 3, 0))
    image -= image.min()
    return (image / image.max()).astype(np.float32)


def small(**changes) -> GAConfig:
    settings = dict(population=16, generations=8, n_segments=12)
    settings.update(changes)
    return GAConfig(**settings)


def same_results(first, second, exact: bool = True) -> None:
    """Same genomes, images and evaluation counts; the same fitness bitwise when ``exact``, else
    to float32 rounding (conv kernels round differently for other batch sizes)."""
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.genome, b.genome)
        np.testing.assert_array_equal(a.segments, b.segments)
        np.testing.assert_array_equal(a.image, b.image)
        assert a.n_evaluations == b.n_evaluations
        if exact:
            assert a.fitness == b.fitness
            assert a.history == b.history
        else:
            assert a.fitness == pytest.approx(b.fitness, rel=1e-5)
            assert a.history == pytest.approx(b.history, rel=1e-5)


def test_finds_the_known_best_subset():
    model = brightness_model()
    images = [block_image(1), block_image(2)]
    results = search_best_superpixels(
        model, images, [1, 1], GAConfig(), seed=0, progress=False, segments=[grid_segments()] * 2
    )
    for image, result in zip(images, results):
        assert sorted(np.flatnonzero(result.genome).tolist()) == GOOD
        np.testing.assert_array_equal(result.kept_mask, np.isin(grid_segments(), GOOD))
        np.testing.assert_array_equal(
            result.image, fill_removed(image, grid_segments(), result.genome)
        )
        with torch.no_grad():
            rescored = model(torch.from_numpy(result.image).permute(2, 0, 1)[None]).logits.softmax(
                1
            )
        assert result.fitness == pytest.approx(float(rescored[0, 1]), abs=1e-6)
        # elitism: the best fitness never goes down
        assert all(b >= a for a, b in zip(result.history, result.history[1:]))
        assert len(result.history) == GAConfig().generations + 1


def test_same_seed_same_results_and_other_seed_differs():
    model = random_conv_model()
    images = [smooth_image(0), smooth_image(1)]
    first = search_best_superpixels(model, images, [0, 2], small(), seed=3, progress=False)
    same_results(
        first, search_best_superpixels(model, images, [0, 2], small(), seed=3, progress=False)
    )
    other = search_best_superpixels(model, images, [0, 2], small(), seed=4, progress=False)
    assert any(a.history != b.history for a, b in zip(first, other))


@pytest.mark.parametrize("mode", ["paper", "fast"])
def test_pipelined_groups_give_the_same_answers(mode):
    model = random_conv_model()
    images = [smooth_image(seed) for seed in range(8, 13)]
    targets = [0, 1, 2, 0, 1]
    plain = search_best_superpixels(
        model, images, targets, small(mode=mode, pipeline=False), seed=2, progress=False
    )
    piped = search_best_superpixels(
        model, images, targets, small(mode=mode, pipeline=True), seed=2, progress=False
    )
    same_results(plain, piped, exact=False)
    if mode == "paper":
        assert all(len(r.history) == 9 for r in piped)  # the start and 8 generations


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_asynchronous_scoring_gives_the_same_answers():
    model = random_conv_model().cuda()
    images = [smooth_image(seed) for seed in range(8, 13)]
    targets = [0, 1, 2, 0, 1]
    plain = search_best_superpixels(
        model, images, targets, small(pipeline=False, batch_size=7), seed=2, progress=False
    )
    piped = search_best_superpixels(
        model, images, targets, small(pipeline=True, batch_size=7), seed=2, progress=False
    )
    same_results(plain, piped, exact=False)


def test_a_tail_searched_alone_with_first_index_matches_the_whole_call():
    model = random_conv_model()
    images = [smooth_image(5), smooth_image(6), smooth_image(7)]
    whole = search_best_superpixels(model, images, [0, 1, 2], small(), seed=9, progress=False)
    tail = search_best_superpixels(
        model, images[1:], [1, 2], small(), seed=9, progress=False, first_index=1
    )
    same_results(whole[1:], tail, exact=False)
    # without the offset the tail images draw other random numbers
    shifted = search_best_superpixels(model, images[1:], [1, 2], small(), seed=9, progress=False)
    assert any(a.history != b.history for a, b in zip(whole[1:], shifted))


@pytest.mark.parametrize("scope", ["genome", "bit"])
def test_batched_and_one_at_a_time_give_the_same_answers(scope):
    model = random_conv_model()
    images = [smooth_image(2), smooth_image(3), smooth_image(4)]
    batched = search_best_superpixels(
        model, images, [1, 0, 2], small(batch_size=64, mutation_scope=scope), seed=5, progress=False
    )
    single = search_best_superpixels(
        model, images, [1, 0, 2], small(batch_size=1, mutation_scope=scope), seed=5, progress=False
    )
    same_results(batched, single, exact=False)


def test_cache_never_scores_a_genome_twice():
    model = random_conv_model()
    seen: list[bytes] = []

    def record(_module, inputs):
        seen.extend(sample.contiguous().numpy().tobytes() for sample in inputs[0])

    handle = model.body.register_forward_pre_hook(record)
    try:
        results = search_best_superpixels(
            model,
            [smooth_image(6), smooth_image(7)],
            [0, 1],
            small(generations=12),
            seed=0,
            progress=False,
        )
    finally:
        handle.remove()
    assert len(seen) == len(set(seen)), "the same rebuilt image went through the model twice"
    assert sum(r.n_evaluations for r in results) == len(seen)
    # survivors are never re-scored, so far fewer than population × (generations + 1)
    assert all(r.n_evaluations < 16 * 13 for r in results)


def test_fast_mode_uses_fewer_evaluations_for_a_near_equal_fitness():
    model = brightness_model()
    images = [block_image(3), block_image(4)]
    segments = [grid_segments()] * 2
    paper = search_best_superpixels(
        model, images, [1, 1], GAConfig(), seed=0, progress=False, segments=segments
    )
    fast = search_best_superpixels(
        model, images, [1, 1], GAConfig(mode="fast"), seed=0, progress=False, segments=segments
    )
    for p, f in zip(paper, fast):
        assert f.n_evaluations * 3 < p.n_evaluations
        assert f.fitness >= p.fitness - 0.01
        assert len(f.history) < GAConfig().generations + 1  # stopped early


def test_fast_mode_stops_after_patience_without_improvement():
    model = brightness_model()
    result = search_best_superpixels(
        model,
        [block_image(5)],
        [1],
        GAConfig(mode="fast", patience=3, generations=500),
        seed=1,
        progress=False,
        segments=[grid_segments()],
    )[0]
    tail = result.history[-4:]
    assert len(result.history) < 501
    assert tail[-1] < tail[0] + 1e-4  # the last `patience` generations brought nothing


def test_model_mode_is_restored():
    model = random_conv_model().train()
    search_best_superpixels(model, [smooth_image(8)], [0], small(generations=1), progress=False)
    assert model.training


def test_clear_errors():
    model = random_conv_model()
    with pytest.raises(GeneticSearchError, match="the model needs 32×32×3"):
        search_best_superpixels(model, [np.zeros((16, 16, 3))], [0], progress=False)
    with pytest.raises(GeneticSearchError, match="not a class index"):
        search_best_superpixels(model, [smooth_image(0)], [3], progress=False)
    with pytest.raises(GeneticSearchError, match="2 targets"):
        search_best_superpixels(model, [smooth_image(0)], [0, 1], progress=False)
    with pytest.raises(GeneticSearchError, match="mode must be"):
        GAConfig(mode="quick")
