"""Semantic spaces: SSN extraction, semantic probability, files, and building from annotations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from sxai_plugins._utils.errors import SpaceError
from sxai_plugins.data.concepts import load_coco
from sxai_plugins.spaces.build import (
    SpaceRecipe,
    auroc,
    build_spaces,
    paired_effect,
    paper_delta,
    shared_channels,
)
from sxai_plugins.spaces.space import Reference, SemanticSpace, SpaceSet, load_spaces, select_ssn


def make_space(
    indices=(3, 1), delta=(2.0, -1.0), trait_dim=8, reference=None, **kw
) -> SemanticSpace:
    space = SemanticSpace(
        "cat", "eyes", "tiny", "abc123", trait_dim, torch.tensor(indices), torch.tensor(delta), **kw
    )
    if reference is not None:
        space.reference = reference
    return space


def test_ssn_extraction_finds_the_known_sensitive_channels(rng) -> None:
    """Channels 2, 5 and 7 respond to the concept (5 negatively); PC1 difference must find them."""
    n, c = 60, 16
    base = rng.gamma(2.0, 1.0, size=(n, c)) + 3.0
    masked = base + rng.normal(0, 0.05, size=(n, c))
    unmasked = masked.copy()
    unmasked[:, 2] += 4.0
    unmasked[:, 7] += 3.0
    unmasked[:, 5] -= 3.5
    delta = paper_delta(torch.tensor(unmasked), torch.tensor(masked))
    indices, weights = select_ssn(delta, 3)
    assert sorted(indices.tolist()) == [2, 5, 7]
    assert np.sign(weights[indices.tolist().index(5)]) == -1
    assert weights[indices.tolist().index(2)] > weights[indices.tolist().index(7)] > 0
    mean, effect = paired_effect(torch.tensor(unmasked), torch.tensor(masked))
    assert sorted(np.argsort(-np.abs(effect))[:3].tolist()) == [2, 5, 7]
    assert mean[2] == pytest.approx(4.0, abs=0.05)


def test_select_ssn_keeps_indices_and_signs_apart() -> None:
    indices, weights = select_ssn(np.array([0.1, -5.0, 3.0, -0.2]), 2)
    assert indices.tolist() == [1, 2] and weights.tolist() == [-5.0, 3.0]
    assert indices.dtype == np.int64 and (indices >= 0).all()
    with pytest.raises(ValueError):
        select_ssn(np.zeros(3), 4)


def test_semantic_probability_on_a_known_normal() -> None:
    mu, sigma, a_min, a_max = 1.0, 0.5, 0.0, 2.5
    space = make_space(
        indices=(0,),
        delta=(1.0,),
        trait_dim=2,
        reference=Reference(mu, sigma, a_min, a_max, 100, 0.99),
    )
    a = torch.tensor([[0.0, 9.0], [1.0, 9.0], [2.5, 9.0], [4.0, 9.0], [-1.0, 0.0]])
    expected = (stats.norm.cdf(a[:, 0].numpy(), mu, sigma) - stats.norm.cdf(a_min, mu, sigma)) / (
        stats.norm.cdf(a_max, mu, sigma) - stats.norm.cdf(a_min, mu, sigma)
    )
    raw = space.probability(a, clip=False).numpy()
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-6)
    clipped = space.probability(a).numpy()
    assert (
        clipped[0] == 0.0
        and clipped[2] == pytest.approx(1.0)
        and clipped[3] == 1.0
        and clipped[4] == 0.0
    )
    assert raw[3] > 1.0 and raw[4] < 0.0  # kept unclipped for diagnosis
    assert 0 < clipped[1] < 1


def test_activation_is_the_weighted_mean_over_ssns() -> None:
    space = make_space(indices=(3, 1), delta=(2.0, -1.0))
    traits = torch.arange(16, dtype=torch.float32).view(2, 8)
    expected = (2.0 * traits[:, 3] - 1.0 * traits[:, 1]) / 2
    torch.testing.assert_close(space.activation(traits), expected)


def test_reference_fit_reports_qq_r2(rng) -> None:
    ref = Reference.fit(rng.normal(3.0, 2.0, 2000))
    assert ref.mu == pytest.approx(3.0, abs=0.15) and ref.sigma == pytest.approx(2.0, abs=0.15)
    assert ref.qq_r2 > 0.99 and ref.n == 2000
    assert Reference.fit(rng.exponential(1.0, 2000) ** 3).qq_r2 < 0.9
    with pytest.raises(SpaceError, match="equal"):
        Reference.fit(np.ones(10))


def test_many_spaces_score_in_one_matrix_product(rng) -> None:
    spaces = [
        make_space(
            indices=rng.choice(8, 3, replace=False),
            delta=rng.normal(size=3),
            reference=Reference(0.0, 1.0, -2.0, 2.0, 50, 0.98),
        )
        for _ in range(5)
    ]
    traits = torch.tensor(rng.normal(size=(7, 8)), dtype=torch.float32)
    together = SpaceSet(spaces).probabilities(traits)
    alone = torch.stack([s.probability(traits) for s in spaces], dim=1)
    torch.testing.assert_close(together, alone)
    assert together.shape == (7, 5)


def test_save_load_round_trip(tmp_path) -> None:
    space = make_space(
        reference=Reference(0.5, 0.2, 0.0, 1.0, 30, 0.98),
        masker="superpixel",
        n_images=70,
        recipe={"mode": "paper"},
        evaluation={"auroc_visible_vs_not": 0.9},
    )
    path = space.save(tmp_path / "cat.eyes.safetensors")
    loaded = SemanticSpace.load(path)
    assert loaded.indices.equal(space.indices) and loaded.delta.equal(space.delta)
    assert loaded.metadata() == space.metadata()
    assert [s.key for s in load_spaces([tmp_path])] == ["cat.eyes"]
    raw = path.read_bytes()
    assert b"pickle" not in raw and raw[8:9] == b"{"  # a safetensors JSON header, no pickle


def test_corrupted_and_foreign_files_are_clear_errors(tmp_path) -> None:
    path = make_space(reference=Reference(0.5, 0.2, 0.0, 1.0, 30, 0.98)).save(
        tmp_path / "s.safetensors"
    )
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(SpaceError, match="broken.safetensors"):
        SemanticSpace.load(broken)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SpaceError, match="not an sxai semantic space"):
        SemanticSpace.load(tmp_path / "other.safetensors")
    meta = make_space().metadata()
    meta["format_version"] = 99
    save_file(
        {"indices": torch.tensor([1]), "delta": torch.tensor([1.0])},
        str(tmp_path / "new.safetensors"),
        metadata={"sxai.space": json.dumps(meta)},
    )
    with pytest.raises(SpaceError, match="newer"):
        SemanticSpace.load(tmp_path / "new.safetensors")
    with pytest.raises(SpaceError, match="indices must lie"):
        make_space(indices=(-1, 2))
    with pytest.raises(SpaceError, match="duplicate"):
        make_space(indices=(2, 2))


def test_wrong_backbone_is_refused(tiny_model) -> None:
    space = make_space(trait_dim=tiny_model.trait_dim)
    with pytest.raises(SpaceError, match="weights abc123"):
        space.check_compatible(tiny_model)
    space.check_compatible(tiny_model, force=True)
    wide = make_space(trait_dim=tiny_model.trait_dim + 1)
    with pytest.raises(SpaceError, match="trait channels"):
        wide.check_compatible(tiny_model, force=True)


def test_auroc_and_shared_channels() -> None:
    assert auroc(np.array([3, 4]), np.array([1, 2])) == 1.0
    assert auroc(np.array([1, 2]), np.array([3, 4])) == 0.0
    assert math.isnan(auroc(np.array([1.0]), np.array([])))
    a, b = make_space(indices=(1, 2)), make_space(indices=(2, 5))
    b.concept = "nose"
    assert shared_channels([a, b]) == {2: ["cat.eyes", "cat.nose"]}


def write_synthetic_coco(root, n=16):
    """Grey images with a bright square 'eye' in most of them; keypoints at the square."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    (root / "cat").mkdir(parents=True)
    for i in range(n):
        pixels = np.full((48, 48, 3), 90, np.uint8) + rng.integers(0, 20, (48, 48, 3)).astype(
            np.uint8
        )
        visible = i % 5 != 0
        if visible:
            pixels[10:20, 26:36] = (250, 240, 30)
        Image.fromarray(pixels).save(root / "cat" / f"c{i}.png")
        images.append({"id": i, "file_name": f"cat/c{i}.png", "width": 48, "height": 48})
        annotations.append(
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 1,
                "keypoints": [31, 15, 2 if visible else 0],
            }
        )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cat", "keypoints": ["eye"]}],
        "concepts": {"eyes": ["eye"]},
    }
    (root / "coco.json").write_text(json.dumps(coco))
    return root / "coco.json"


@pytest.mark.parametrize("recipe", [SpaceRecipe.paper(n_ssn=3), SpaceRecipe.tuned(n_ssn=3)])
def test_build_spaces_end_to_end(tmp_path, tiny_model, recipe) -> None:
    annotations = load_coco(write_synthetic_coco(tmp_path), tmp_path)
    reference = torch.rand(40, tiny_model.trait_dim), torch.randn(40, 2)
    report = build_spaces(
        tiny_model, annotations, ["cat"], ["eyes"], reference, recipe, progress=False
    )
    (space,) = report.spaces
    assert space.key == "cat.eyes" and space.backbone == "tiny" and space.reference is not None
    assert space.fingerprint == tiny_model.fingerprint()
    assert space.n_ssn == 3
    e = space.evaluation
    assert e["n_eval"] >= 2 and e["n_natural_negatives"] == 4
    assert 0.0 <= e["fraction_original_above_masked"] <= 1.0
    assert space.recipe["mode"] == recipe.mode
    # 4 natural negatives (< 5) mean the tuned recipe ranks by the masking effect alone
    assert "auroc_cross_validated" not in e


def test_a_masker_that_changes_nothing_is_a_clear_error(tmp_path, tiny_model) -> None:
    annotations = load_coco(write_synthetic_coco(tmp_path), tmp_path)
    reference = torch.rand(40, tiny_model.trait_dim), torch.randn(40, 2)
    # a 2-pixel disc inside a uniform square is inpainted with the square's own colour
    with pytest.raises(SpaceError, match="changed no trait"):
        build_spaces(
            tiny_model,
            annotations,
            ["cat"],
            ["eyes"],
            reference,
            SpaceRecipe.tuned(region="disc", masker="inpaint"),
            progress=False,
        )


def test_welch_t_from_scipy_selects_the_same_channels_as_the_hand_written_one(rng) -> None:
    """scipy's ttest_ind replaced a hand-written Welch t: same statistics, same SSNs on random
    traits (the old formula is kept here as the reference); channels constant in both groups
    score 0 rather than NaN."""
    from sxai_plugins.spaces.build import tuned_scores, welch_t

    def hand_written(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        a, b = a.double().numpy(), b.double().numpy()
        spread = np.sqrt(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b))
        return (a.mean(axis=0) - b.mean(axis=0)) / (spread + 1e-12)

    for trial in range(5):
        n, c = 30 + trial, 64
        unmasked = torch.tensor(rng.gamma(2.0, 1.0, (n, c)))
        masked = unmasked - torch.tensor(rng.normal(0.3, 0.5, (n, c)))
        negatives = torch.tensor(rng.gamma(2.0, 0.9, (12, c)))
        np.testing.assert_allclose(
            welch_t(unmasked, negatives), hand_written(unmasked, negatives), rtol=1e-9
        )
        score = tuned_scores(unmasked, masked, negatives, min_negatives=5)
        natural = hand_written(unmasked, negatives)
        _mean, effect = paired_effect(unmasked, masked)
        unit = lambda x: x / np.abs(x).max()  # noqa: E731
        old = np.where(
            np.sign(effect) == np.sign(natural),
            np.sign(effect) * np.minimum(np.abs(unit(effect)), np.abs(unit(natural))),
            0.0,
        )
        assert select_ssn(score, 5)[0].tolist() == select_ssn(old, 5)[0].tolist()
    dead = torch.zeros(10, 3)
    dead[:, 0] = torch.arange(10.0)
    assert welch_t(dead, torch.zeros(6, 3)).tolist()[1:] == [0.0, 0.0]


def test_tuned_scores_drop_channels_that_natural_negatives_contradict(rng) -> None:
    """Channel 1 reacts to masking but is as high in images without the concept (a region effect,
    not the concept); channel 4 reacts to masking and is low in natural negatives: only 4 is kept."""
    from sxai_plugins.spaces.build import tuned_scores

    n, c = 40, 6
    masked = torch.tensor(rng.normal(5, 0.3, (n, c)))
    unmasked = masked.clone()
    unmasked[:, 1] += 2.0
    unmasked[:, 4] += 1.0
    negatives = torch.tensor(rng.normal(5, 0.3, (12, c)))
    negatives[:, 1] += 2.0
    with_negatives = tuned_scores(unmasked, masked, negatives, min_negatives=5)
    assert np.argmax(np.abs(with_negatives)) == 4 and with_negatives[1] == pytest.approx(
        0.0, abs=0.05
    )
    masking_only = tuned_scores(unmasked, masked, negatives[:3], min_negatives=5)
    assert set(np.argsort(-np.abs(masking_only))[:2].tolist()) == {1, 4}
