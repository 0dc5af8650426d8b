"""Semantic attribution: a space that reads a known image patch must be attributed to that patch."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sxai_plugins.attr.metrics import (
    attribution_map,
    infidelity_score,
    mass_in_region,
    pointing_hit,
    sensitivity_score,
)
from sxai_plugins.attr.semantic import (
    METHODS,
    OCCLUSIONS,
    ClassAttribution,
    PixelAttribution,
    SemanticAttribution,
    SpaceActivation,
    compare_attributions,
)
from sxai_plugins.cli.main import main
from sxai_plugins.data.concepts import ConceptAnnotation, ConceptGeometry
from sxai_plugins.models.trait_model import TraitModel
from sxai_plugins.spaces.space import Reference, SemanticSpace

SIZE = 32
PATCH_A = (slice(4, 12), slice(4, 12))  # what the space reads (rows, cols)
PATCH_B = (slice(20, 28), slice(18, 26))  # what the class logit reads
BACKBONE = "patch_test_cnn"


class PatchBrightness(nn.Module):
    """Three trait maps: the grey level inside patch A and inside patch B (each scaled so that its
    GAP is the patch's mean brightness), and the whole image's grey level."""

    def __init__(self) -> None:
        super().__init__()
        masks = torch.zeros(2, SIZE, SIZE)
        for i, patch in enumerate((PATCH_A, PATCH_B)):
            masks[i][patch] = 1.0
        scale = SIZE * SIZE / masks.sum(dim=(1, 2), keepdim=True)
        self.register_buffer("masks", torch.cat([masks * scale, torch.ones(1, SIZE, SIZE)]))
        self.mix = nn.Conv2d(3, 1, 1, bias=False)  # the grey level: a real conv layer
        with torch.no_grad():
            self.mix.weight.fill_(1 / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x) * self.masks


def patch_model(pretrained: bool = True, weights=None, class_names=None) -> TraitModel:
    model = TraitModel(
        PatchBrightness(),
        3,
        class_names or ["cat", "dog"],
        name=BACKBONE,
        input_size=(3, SIZE, SIZE),
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    with torch.no_grad():  # logit(dog) = brightness of B, logit(cat) = its opposite
        model.head.weight.copy_(torch.tensor([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0]]))
        model.head.bias.zero_()
    return model.eval()


def patch_space(model: TraitModel) -> SemanticSpace:
    return SemanticSpace(
        "cat",
        "eyes",
        BACKBONE,
        model.fingerprint(),
        3,
        torch.tensor([0]),
        torch.tensor([1.0]),
        reference=Reference(0.4, 0.1, 0.2, 0.6, 50, 0.99),
    )


def patch_image(seed: int = 0) -> torch.Tensor:
    """Dim noisy background, both patches bright: 3×H×W in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    image = 0.2 + 0.05 * torch.rand(3, SIZE, SIZE, generator=g)
    for patch in (PATCH_A, PATCH_B):
        image[:, patch[0], patch[1]] = 0.8
    return image


def region(patch) -> np.ndarray:
    out = np.zeros((SIZE, SIZE), dtype=bool)
    out[patch] = True
    return out


@pytest.fixture
def model() -> TraitModel:
    return patch_model()


def black_and_few_steps(method: str) -> dict:
    """The keywords each method takes of: a black baseline for the occlusions, 8 steps for IG."""
    return (
        {"baselines": "black"} if method in OCCLUSIONS else {"n_steps": 8} if method == "ig" else {}
    )


@pytest.mark.parametrize("method", METHODS)
def test_semantic_attribution_peaks_in_the_space_patch(model, method):
    x = patch_image()[None]
    attr = SemanticAttribution(model, patch_space(model), method).attribute(
        x, **black_and_few_steps(method)
    )
    assert attr.shape == x.shape
    heat = attribution_map(attr)[0]
    assert pointing_hit(heat, region(PATCH_A))
    # occlusion credits a whole superpixel, and SLIC on a 32 px image lets some straddle the
    # patch's edge; the sliding window smears the patch over the windows touching it
    floor = {"window": 0.4, "occlusion": 0.6}.get(method, 0.9)
    assert mass_in_region(heat, region(PATCH_A)) > floor
    assert mass_in_region(heat, region(PATCH_B)) < 0.05


def test_occlusion_over_a_given_feature_mask_is_exact(model):
    x = patch_image()[None]
    groups = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.long)
    groups[0, 0][PATCH_A] = 1
    groups[0, 0][PATCH_B] = 2
    attr = SemanticAttribution(model, patch_space(model), "occlusion").attribute(
        x, baselines="black", feature_mask=groups
    )
    heat = attribution_map(attr)[0]
    assert mass_in_region(heat, region(PATCH_A)) == pytest.approx(1.0)
    # blacking out patch A drops A_s from 0.8 to 0; Captum gives every element of a group the
    # group's whole drop, so each pixel's 3 channels sum to 3 × 0.8
    np.testing.assert_allclose(heat[PATCH_A], 2.4, rtol=1e-4)


@pytest.mark.parametrize("method", ["occlusion", "ig", "gradcam", "saliency"])
def test_class_attribution_follows_the_logit_not_the_space(model, method):
    x = patch_image()[None]
    engine = ClassAttribution(model, method)
    assert engine.predicted(x).tolist() == [1]  # dog: patch B is bright
    heat = attribution_map(engine.attribute(x, **black_and_few_steps(method)))[0]
    assert pointing_hit(heat, region(PATCH_B))
    assert mass_in_region(heat, region(PATCH_A)) < 0.05


def test_attribution_is_shaped_like_a_batch_and_matches_captum_directly(model):
    from captum.attr import IntegratedGradients

    x = torch.stack([patch_image(0), patch_image(1)])
    space = patch_space(model)
    ours = SemanticAttribution(model, space, "ig").attribute(x, n_steps=8)
    theirs = IntegratedGradients(SpaceActivation(model, space)).attribute(x, n_steps=8)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, theirs)
    # IG's completeness: the attributions add up to A_s(x) − A_s(black)
    a = SpaceActivation(model, space)
    with torch.no_grad():
        gap = a(x) - a(torch.zeros_like(x))
    torch.testing.assert_close(ours.sum(dim=(1, 2, 3)), gap, rtol=1e-3, atol=1e-4)


def test_captum_conventions_baselines_classes_and_convergence_delta(model):
    from captum.attr import Attribution, IntegratedGradients, Saliency

    x = torch.stack([patch_image(0), patch_image(1)])
    space = patch_space(model)
    ig = SemanticAttribution(model, space, "ig")
    assert isinstance(ig, Attribution) and ig.has_convergence_delta() and ig.multiplies_by_inputs
    assert not SemanticAttribution(model, space, "occlusion").has_convergence_delta()
    # Captum's baselines: a number, a tensor, or a named fill (black is Captum's zeros)
    black = ig.attribute(x, n_steps=8)
    torch.testing.assert_close(ig.attribute(x, baselines=0.0, n_steps=8), black)
    torch.testing.assert_close(ig.attribute(x, baselines=torch.zeros_like(x), n_steps=8), black)
    torch.testing.assert_close(ig.attribute(x, baselines="black", n_steps=8), black)
    attr, delta = ig.attribute(x, n_steps=8, return_convergence_delta=True)
    torch.testing.assert_close(attr, black)
    assert delta.shape == (2,) and float(delta.abs().max()) < 1e-3  # completeness holds
    torch.testing.assert_close(
        ig.compute_convergence_delta(attr, torch.zeros_like(x), x), delta, rtol=1e-4, atol=1e-5
    )
    with pytest.raises(NotImplementedError, match="no convergence delta"):
        SemanticAttribution(model, space, "saliency").compute_convergence_delta(attr, 0.0, x)
    with pytest.raises(ValueError, match="takes no baselines"):
        SemanticAttribution(model, space, "saliency").attribute(x, baselines=0.0)
    # any Captum class, its keywords unchanged
    by_class = SemanticAttribution(model, space, IntegratedGradients).attribute(
        x, baselines="black", n_steps=8, internal_batch_size=8
    )
    torch.testing.assert_close(by_class, black)
    torch.testing.assert_close(
        SemanticAttribution(model, space, Saliency).attribute(x, abs=True),
        SemanticAttribution(model, space, "saliency").attribute(x),
    )
    with pytest.raises(TypeError, match="Captum attribution class"):
        SemanticAttribution(model, space, object)


def test_model_weights_keep_their_requires_grad(model):
    flags = [p.requires_grad for p in model.parameters()]
    SemanticAttribution(model, patch_space(model), "saliency").attribute(patch_image()[None])
    assert [p.requires_grad for p in model.parameters()] == flags == [True] * len(flags)


def test_bad_arguments_are_refused(model):
    x = patch_image()[None]
    space = patch_space(model)
    with pytest.raises(ValueError, match="unknown attribution method"):
        SemanticAttribution(model, space, "lime").attribute(x)
    with pytest.raises(ValueError, match="feature_mask only applies"):
        SemanticAttribution(model, space, "ig").attribute(
            x, feature_mask=torch.zeros(1, 1, SIZE, SIZE, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="unknown fill"):
        SemanticAttribution(model, space, "occlusion").attribute(x, baselines="pink")
    with pytest.raises(ValueError, match="needs a layer"):
        PixelAttribution(model.logits, "gradcam").attribute(x, target=0)


def test_renders_with_captums_visualize_image_attr(model):
    from captum.attr import visualization as viz
    from matplotlib.figure import Figure

    x = patch_image()[None]
    attr = SemanticAttribution(model, patch_space(model), "occlusion").attribute(
        x, baselines="black"
    )
    fig = Figure()
    ax = fig.add_subplot()
    out_fig, out_ax = viz.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(),
        x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="positive",
        plt_fig_axis=(fig, ax),
        use_pyplot=False,
    )
    assert out_fig is fig and out_ax is ax and len(ax.images) == 2  # the image and the heat map
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_region_metrics_by_hand():
    heat = np.zeros((4, 4))
    heat[0, 0], heat[3, 3], heat[1, 1] = 3.0, 1.0, -5.0
    inside = np.zeros((4, 4), dtype=bool)
    inside[:2, :2] = True
    assert mass_in_region(heat, inside) == pytest.approx(0.75)  # negatives do not count
    assert pointing_hit(heat, inside) and not pointing_hit(heat, ~inside)
    assert math.isnan(mass_in_region(-np.ones((4, 4)), inside))
    assert not pointing_hit(np.zeros((4, 4)), inside)  # a flat zero map points nowhere
    plateau = np.zeros((4, 4))
    plateau[0, :3] = 1.0  # peak over 3 pixels, 2 of them inside
    assert pointing_hit(plateau, inside)
    plateau[0, 1] = 0.0
    plateau[1, 3] = 1.0  # now 1 of 3 inside
    assert not pointing_hit(plateau, inside)
    with pytest.raises(ValueError, match="differ in shape"):
        mass_in_region(np.zeros((3, 3)), inside)


def test_infidelity_and_sensitivity_are_finite_and_seeded(model):
    x = patch_image()[None]
    forward = SpaceActivation(model, patch_space(model))
    attr = PixelAttribution(forward, "saliency").attribute(x)
    a = infidelity_score(forward, x, attr, n_perturb_samples=3, seed=1)
    b = infidelity_score(forward, x, attr, n_perturb_samples=3, seed=1)
    assert a.shape == (1,) and torch.isfinite(a).all() and torch.equal(a, b)

    def explain(inputs):
        return PixelAttribution(forward, "saliency").attribute(inputs)

    s1 = sensitivity_score(explain, x, n_perturb_samples=3, seed=2)
    s2 = sensitivity_score(explain, x, n_perturb_samples=3, seed=2)
    # the space is linear in the pixels, so its gradient does not move under noise
    assert torch.equal(s1, s2) and float(s1[0]) == pytest.approx(0.0, abs=1e-6)


def annotated_set(tmp_path: Path, n: int = 2) -> list[ConceptAnnotation]:
    out = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        pixels = (patch_image(i).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(path)
        box = (PATCH_A[1].start, PATCH_A[0].start, 8.0, 8.0)  # COCO (x, y, w, h): patch A
        geometry = ConceptGeometry((SIZE, SIZE), boxes=[box])
        out.append(ConceptAnnotation(path, i, "cat", SIZE, SIZE, {"eyes": geometry}))
    return out


def test_compare_scores_the_semantic_attribution_inside_the_concept(model, tmp_path):
    anns = annotated_set(tmp_path)
    report = compare_attributions(
        model,
        patch_space(model),
        anns,
        methods=["saliency", "gradcam"],
        semantic_methods=["occlusion", "saliency"],
        robustness_n=1,
        n_perturb_samples=2,
        options={"fill": "black"},
        progress=False,
    )
    rows = {(r.target, r.method): r for r in report.rows}
    assert report.n_images == 2 and report.region_fraction == pytest.approx(64 / SIZE**2)
    for method in ("occlusion", "saliency"):
        row = rows[("cat.eyes", method)]
        assert row.pointing == 1.0
        assert row.mass_in_region > (0.6 if method == "occlusion" else 0.9)  # SLIC edges, as above
        assert (
            row.n_robustness == 1 and row.infidelity is not None and math.isfinite(row.sensitivity)
        )
    for method in ("saliency", "gradcam"):  # the class logit reads patch B, outside the region
        assert rows[("class", method)].pointing == 0.0
    table = report.table()
    assert "| cat.eyes | saliency | 1.000 | 1.000 |" in table and "pointing game" in table


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture
def backbone(backbone_plugin):
    with backbone_plugin(BACKBONE, patch_model, "patch-brightness traits for tests"):
        yield BACKBONE


def test_cli_help_names_the_methods(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--annotations" in text and "pointing game" in text and "sliding-window" in text


def test_cli_compare_one_image_and_an_annotated_set(backbone, tmp_path, capsys):
    model = patch_model()
    space_file = patch_space(model).save(tmp_path / "cat.eyes.safetensors")
    anns = annotated_set(tmp_path)
    figure = tmp_path / "fig.png"
    code = main(
        [
            "compare",
            str(anns[0].image_path),
            "--space",
            "cat.eyes",
            "-b",
            backbone,
            "--spaces",
            str(space_file),
            "--methods",
            "saliency,gradcam",
            "--semantic-methods",
            "occlusion",
            "--fill",
            "black",
            "--out",
            str(figure),
            "--json",
        ]
    )
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["predicted"] == "dog" and record["space"] == "cat.eyes"
    assert record["activation"] == pytest.approx(0.8, abs=1e-5)  # patch A's brightness
    assert len(record["methods"]) == 3 and Image.open(figure).size[0] > 300

    coco = {
        "images": [
            {"id": i, "file_name": a.image_path.name, "width": SIZE, "height": SIZE}
            for i, a in enumerate(anns)
        ],
        "categories": [
            {"id": 1, "name": "cat"},
            {"id": 2, "name": "eyes", "supercategory": "concept"},
        ],
        "annotations": [
            x
            for i in range(len(anns))
            for x in (
                {"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [0, 0, SIZE, SIZE]},
                {"id": 20 + i, "image_id": i, "category_id": 2, "bbox": [4, 4, 8, 8]},
            )
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    code = main(
        [
            "compare",
            "--annotations",
            str(tmp_path / "coco.json"),
            "--space",
            "cat.eyes",
            "-b",
            backbone,
            "--spaces",
            str(space_file),
            "--methods",
            "saliency",
            "--semantic-methods",
            "saliency",
            "--robustness-n",
            "1",
            "--perturbations",
            "2",
            "--limit",
            "1",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "1 annotated images" in text
    assert (
        "| cat.eyes | saliency | 1.000 | 1.000 |" in text
        and "| class | saliency | 0.000 | 0.000 |" in text
    )


def test_cli_compare_refuses_an_unknown_space(backbone, tmp_path, capsys):
    model = patch_model()
    space_file = patch_space(model).save(tmp_path / "cat.eyes.safetensors")
    (tmp_path / "x.png").write_bytes(b"")
    code = main(
        [
            "compare",
            str(tmp_path / "x.png"),
            "--space",
            "dog.nose",
            "-b",
            backbone,
            "--spaces",
            str(space_file),
        ]
    )
    assert code == 2 and "no space 'dog.nose'" in capsys.readouterr().err


@pytest.mark.integration
def test_default_model_semantic_gradcam_on_a_real_cat(default_model, shared_data):
    from sxai_plugins.data.images import load_image, to_tensor
    from sxai_plugins.explain.trust import default_spaces_dir, load_space_set

    if default_spaces_dir(default_model.name) is None:
        pytest.skip("the default model's spaces are not bundled in this checkout")
    space = next(s for s in load_space_set(None, default_model) if s.key == "cat.eyes")
    x = to_tensor(load_image(shared_data / "train" / "cat" / "cat.1.jpg"), (224, 224))[None]
    attr = SemanticAttribution(default_model, space, "gradcam").attribute(x)
    assert attr.shape == x.shape and torch.isfinite(attr).all() and float(attr.max()) > 0
