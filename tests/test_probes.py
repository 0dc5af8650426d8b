"""Concept probes (space format v2): recovery of known channels, calibration, control copies,
files, and the control regions they train on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from sxai_plugins._utils.errors import SpaceError
from sxai_plugins.spaces.probe_data import (
    CONTROL,
    MASKED,
    ORIGINAL,
    LabelledImage,
    Masking,
    ProbeFeatures,
    ProbeRow,
    control_region,
    stable_seed,
)
from sxai_plugins.spaces.probes import ProbeRecipe, build_probe_spaces, fit_probe, training_set
from sxai_plugins.spaces.space import SemanticSpace, SpaceSet, load_spaces
from sxai_plugins.spaces.validity import expected_calibration_error, space_metrics

C = 24
CLASS_CHANNEL = 0  # high for cats
CONCEPT_CHANNELS = (3, 11, 20)  # 20 falls when the concept is there
ARTIFACT_CHANNELS = (5, 6)  # rise whenever anything is masked
RECIPE = ProbeRecipe(
    train_maskings=("superpixel@15", "blur@20"), held_out_maskings=("inpaint@20",), n_ssn=4, folds=4
)


def synthetic_bank(n_images: int, seed: int) -> ProbeFeatures:
    """Cats and dogs whose traits encode the class on channel 0 and the concept on 3, 11 and 20
    (noisy, so that probabilities are not all 0 or 1); every masking adds an artefact on 5 and 6,
    concept masks also remove the concept. Half the images of each class show the concept."""
    rng = np.random.default_rng(seed)
    images, rows, traits = [], [], []
    for i in range(n_images):
        cat = i % 2 == 0
        shows = rng.random() < 0.6
        images.append(
            LabelledImage(
                Path(f"/synthetic/{seed}/{i}.png"), "cat" if cat else "dog", {"eyes": shows}
            )
        )
        base = rng.normal(0.0, 1.0, C)
        base[CLASS_CHANNEL] += 2.5 if cat else -2.5
        strength = rng.normal(1.8, 0.5) if shows else 0.0
        original = base.copy()
        original[list(CONCEPT_CHANNELS)] += np.array([1.0, 1.0, -1.0]) * strength
        rows.append(ProbeRow(i, ORIGINAL))
        traits.append(original)
        if not shows:
            continue
        for masking in RECIPE.train_maskings + RECIPE.held_out_maskings:
            artifact = np.zeros(C)
            artifact[list(ARTIFACT_CHANNELS)] = rng.normal(1.5, 0.3, 2)
            rows.append(ProbeRow(i, MASKED, "eyes", masking, 0.1))
            traits.append(base + artifact + rng.normal(0, 0.1, C))
            rows.append(ProbeRow(i, CONTROL, "eyes", masking, 0.1))
            traits.append(original + artifact + rng.normal(0, 0.1, C))
    return ProbeFeatures(
        images,
        rows,
        torch.tensor(np.array(traits), dtype=torch.float32),
        ("eyes",),
        RECIPE.train_maskings + RECIPE.held_out_maskings,
    )


@pytest.fixture(scope="module")
def fitted():
    bank = synthetic_bank(400, seed=1)
    probe = fit_probe(bank.traits, training_set(bank, "cat", "eyes", RECIPE), RECIPE)
    return bank, probe


def test_probe_recovers_the_concept_channels_as_its_ssns(fitted) -> None:
    _bank, probe = fitted
    indices, weights = probe.ssn(4)
    assert set(indices.tolist()) == {CLASS_CHANNEL, *CONCEPT_CHANNELS}
    sign = dict(zip(indices.tolist(), np.sign(weights).tolist()))
    assert sign[3] == sign[11] == sign[CLASS_CHANNEL] == 1 and sign[20] == -1
    # control copies teach the probe that the masking artefact is not the concept
    top = np.abs(probe.standardised).max()
    assert max(abs(probe.standardised[c]) for c in ARTIFACT_CHANNELS) < 0.25 * top


def test_probe_is_calibrated_on_fresh_samples(fitted) -> None:
    _bank, probe = fitted
    fresh = synthetic_bank(1200, seed=2)
    p = probe.probability(fresh.traits)
    metrics = space_metrics(fresh, "cat", "eyes", p, RECIPE.held_out_maskings)
    assert metrics["ece"] <= 0.05
    assert metrics["auroc"] >= 0.9 and metrics["rival_auroc"] >= 0.9 and metrics["drop"] >= 0.9
    # probabilities spread over the range: a test of calibration, not of a saturated classifier
    originals = fresh.column("kind") == ORIGINAL
    assert 0.1 < np.mean((p[originals] > 0.05) & (p[originals] < 0.95))


def test_control_copies_do_not_change_the_probability(fitted) -> None:
    _bank, probe = fitted
    fresh = synthetic_bank(600, seed=3)
    p = probe.probability(fresh.traits)
    assert space_metrics(fresh, "cat", "eyes", p, RECIPE.held_out_maskings)["control_shift"] <= 0.05


def test_per_masking_auroc_names_the_masking_whose_copies_still_show_the_concept() -> None:
    """Scores where one held-out masking hides the concept and the other leaves it looking intact:
    the pooled AUROC mixes both, the per-masking figures tell them apart."""
    bank = synthetic_bank(200, seed=4)
    hiding, leaky = "inpaint@20", "blur@20"  # the bank's copies of both are scored as held out
    kind, masking = bank.column("kind"), bank.column("masking")
    rng = np.random.default_rng(0)
    p = rng.uniform(0.6, 1.0, len(bank.rows))  # originals, controls and leaky copies alike
    hidden = (kind == MASKED) & (masking == hiding)
    p[hidden] = rng.uniform(0.0, 0.4, hidden.sum())
    metrics = space_metrics(bank, "cat", "eyes", p, (hiding, leaky))
    assert metrics["auroc_by_masking"][hiding] == 1.0
    assert 0.35 < metrics["auroc_by_masking"][leaky] < 0.65
    assert metrics["auroc_by_masking"][leaky] < metrics["auroc"] < 1.0


def test_without_control_copies_the_probe_reads_the_masking_artefact() -> None:
    """The same data without control copies: the artefact channels become evidence of absence
    (this is what the control copies are there to prevent)."""
    bank = synthetic_bank(400, seed=1)
    recipe = ProbeRecipe(**{**RECIPE.__dict__, "control_weight": 0.0})
    probe = fit_probe(bank.traits, training_set(bank, "cat", "eyes", recipe), recipe)
    fresh = synthetic_bank(600, seed=3)
    shift = space_metrics(
        fresh, "cat", "eyes", probe.probability(fresh.traits), recipe.held_out_maskings
    )
    assert shift["control_shift"] > 0.1


def test_training_set_weights_and_rivals() -> None:
    bank = synthetic_bank(40, seed=4)
    data = training_set(bank, "cat", "eyes", RECIPE)
    kinds = bank.column("kind")[data.rows]
    classes = bank.image_column("class_name")[data.rows]
    # dog images showing eyes are negatives of cat.eyes; dog images without eyes are not used
    dogs = classes == "dog"
    assert (data.labels[dogs] == 0).all() and (kinds[dogs] == ORIGINAL).all()
    assert all(bank.images[i].visible["eyes"] for i in data.groups[dogs])
    # each cat image's masked copies weigh 1 together; held-out maskings never train
    masked = kinds == MASKED
    assert set(bank.column("masking")[data.rows][masked]) == set(RECIPE.train_maskings)
    per_image = {}
    for g, w in zip(data.groups[masked], data.weights[masked]):
        per_image[g] = per_image.get(g, 0.0) + w
    assert np.allclose(list(per_image.values()), 1.0)
    # a subset of images keeps only their rows
    subset = training_set(bank, "cat", "eyes", RECIPE, images=np.arange(10))
    assert set(subset.groups.tolist()) <= set(range(10))


def test_v2_spaces_score_in_the_space_set_like_the_probe(fitted) -> None:
    bank, probe = fitted
    from sxai_plugins.spaces.probes import probe_space

    space = probe_space(probe, make_tiny_model(trait_dim=C), "cat", "eyes", RECIPE, 400)
    assert space.format_version == 2 and space.reference is None
    expected = probe.probability(bank.traits[:50])
    got = SpaceSet([space]).probabilities(bank.traits[:50])[:, 0].double().numpy()
    assert np.allclose(got, expected, atol=1e-5)
    # A_s is the probe's logit, differentiable for attributions and attacks
    traits = bank.traits[:3].clone().requires_grad_(True)
    space.activation(traits).sum().backward()
    assert torch.allclose(traits.grad[0], space.probe.weight)


def make_v2(weight=None, slope=2.0, intercept=-0.5, **kw) -> SemanticSpace:
    from sxai_plugins.spaces.space import ProbeHead

    w = torch.linspace(-1, 1, 8) if weight is None else weight
    return SemanticSpace(
        "cat",
        "eyes",
        "tiny",
        "abc",
        8,
        torch.tensor([7, 0]),
        torch.tensor([1.0, -1.0]),
        probe=ProbeHead(w, 0.25, slope, intercept),
        **kw,
    )


def test_v1_and_v2_files_round_trip(tmp_path) -> None:
    from sxai_plugins.spaces.space import Reference

    v2 = make_v2(evaluation={"drop": 0.97, "auroc": float("nan")})
    v1 = SemanticSpace(
        "dog",
        "nose",
        "tiny",
        "abc",
        8,
        torch.tensor([3, 1]),
        torch.tensor([2.0, -1.0]),
        reference=Reference(0.0, 1.0, -3.0, 3.0, 100, 0.99),
    )
    v2.save(tmp_path / "cat.eyes.safetensors")
    v1.save(tmp_path / "dog.nose.safetensors")
    loaded = {s.key: s for s in load_spaces([tmp_path])}
    assert loaded["cat.eyes"].format_version == 2 and loaded["dog.nose"].format_version == 1
    assert torch.equal(loaded["cat.eyes"].probe.weight, v2.probe.weight)
    assert loaded["cat.eyes"].probe.slope == 2.0 and loaded["cat.eyes"].probe.bias == 0.25
    assert loaded["cat.eyes"].evaluation == {"drop": 0.97, "auroc": None}  # NaN is not JSON
    traits = torch.randn(5, 8)
    both = SpaceSet([loaded["cat.eyes"], loaded["dog.nose"]]).probabilities(traits)
    assert torch.allclose(both[:, 0], SpaceSet([v2]).probabilities(traits)[:, 0])
    assert torch.allclose(both[:, 1], SpaceSet([v1]).probabilities(traits)[:, 0])


def _rewrite(path: Path, change) -> None:
    """Edit a space file's metadata (as a hostile repository would, hashes and all)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["sxai.space"])
    change(meta, tensors)
    save_file(tensors, str(path), metadata={"sxai.space": json.dumps(meta)})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, t: m["probe"]["calibration"].update(slope=float("nan")), "calibration slope"),
        (
            lambda m, t: m["probe"]["calibration"].update(intercept=float("inf")),
            "calibration intercept",
        ),
        (lambda m, t: m["probe"]["calibration"].update(slope=-1.0), "slope must be positive"),
        (lambda m, t: m["probe"]["calibration"].update(slope="1"), "calibration slope"),
        (lambda m, t: m["probe"].update(bias=None), "probe bias"),
        (lambda m, t: m["probe"].pop("calibration"), "calibration"),
        (lambda m, t: t.update(weight=torch.full((8,), float("nan"))), "NaN"),
        (lambda m, t: t.update(weight=torch.ones(5)), "5 values for 8"),
        (lambda m, t: t.pop("weight"), "'weight' tensor"),
        (lambda m, t: m.update(format_version=3), "newer"),
        (lambda m, t: m.update(class_name="../../etc"), "not a valid name"),
        (lambda m, t: m.update(concept="/abs/path"), "not a valid name"),
    ],
)
def test_v2_files_with_bad_numbers_or_names_are_refused(tmp_path, change, message) -> None:
    path = make_v2().save(tmp_path / "cat.eyes.safetensors")
    _rewrite(path, change)
    with pytest.raises(SpaceError, match=message) as info:
        SemanticSpace.load(path)
    assert str(path) in str(info.value)


def test_control_region_keeps_clear_of_the_concept_and_matches_its_size() -> None:
    from scipy.ndimage import binary_dilation

    # superpixels as an 8×8 grid of 8-pixel squares: the concept is two squares, another part one
    segments = (np.arange(64)[:, None] // 8) * 8 + np.arange(64)[None, :] // 8
    concept = np.isin(segments, [9, 10])
    other_part = np.isin(segments, [54])
    for seed in range(5):
        region = control_region(
            segments, concept, concept | other_part, np.random.default_rng(seed)
        )
        assert region is not None
        assert not (binary_dilation(concept | other_part, iterations=2) & region).any()
        assert 0.5 * concept.sum() <= region.sum() <= 2.0 * concept.sum()
        # one connected piece
        from scipy.ndimage import label

        assert label(region)[1] == 1
    # different seeds, different places; the same seed, the same place
    regions = [
        control_region(segments, concept, concept, np.random.default_rng(s)) for s in (0, 0, 1)
    ]
    assert np.array_equal(regions[0], regions[1]) and not np.array_equal(regions[0], regions[2])
    # nowhere to go: the concept and its surroundings cover the image
    everything = np.ones((64, 64), bool)
    assert control_region(segments, concept, everything, np.random.default_rng(0)) is None


def test_names_of_maskings_and_stable_seeds() -> None:
    assert Masking.parse("superpixel@25") == Masking("superpixel", 25)
    assert Masking("inpaint", 20).name == "inpaint@20"
    for bad in ("superpixel", "blur@x", "@3", "blur@1"):
        with pytest.raises(SpaceError, match="MASKER@SEGMENTS"):
            Masking.parse(bad)
    assert stable_seed("a", "eyes") == stable_seed("a", "eyes") != stable_seed("eyes", "a")
    with pytest.raises(SpaceError, match="both train"):
        ProbeRecipe(train_maskings=("blur@20",), held_out_maskings=("blur@20",))


def test_expected_calibration_error_of_known_cases() -> None:
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert expected_calibration_error(p, np.array([0, 0, 1, 1])) == pytest.approx(0.1)
    assert expected_calibration_error(
        np.full(10, 0.5), np.r_[np.ones(5), np.zeros(5)]
    ) == pytest.approx(0.0)
    # weights count: one heavy miscalibrated sample dominates
    assert expected_calibration_error(
        np.array([0.9, 0.1]), np.array([0, 0]), np.array([9.0, 1.0])
    ) == pytest.approx(0.82)


def test_build_probe_spaces_refuses_too_little_data(tiny_model) -> None:
    bank = synthetic_bank(8, seed=5)
    with pytest.raises(SpaceError, match="needs at least 8"):
        build_probe_spaces(tiny_model, bank, ["cat"], ["eyes"], RECIPE, progress=False)


# ------------------------------------------------------------------------------------------ CLI
def _synthetic_dataset(root: Path) -> Path:
    """Cats and dogs (grey and brown backgrounds) with a bright 'eye' square in most of them,
    keypoints on it; the images a tiny backbone can tell apart."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(60):
        name = "cat" if i % 2 == 0 else "dog"
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = (90, 90, 90) if name == "cat" else (120, 80, 40)
        pixels = (np.array(colour, np.uint8) + rng.integers(0, 25, (48, 48, 3))).astype(np.uint8)
        visible = i % 6 not in (0, 1)
        x, y = int(rng.integers(8, 30)), int(rng.integers(8, 30))
        if visible:
            pixels[y : y + 10, x : x + 10] = (250, 240, 30)
        Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
        images.append({"id": i, "file_name": f"{name}/{name}{i}.png", "width": 48, "height": 48})
        annotations.append(
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 1 if name == "cat" else 2,
                "keypoints": [x + 5, y + 5, 2 if visible else 0],
            }
        )
    coco = {
        "images": images,
        "annotations": annotations,
        "concepts": {"eyes": ["eye"]},
        "categories": [
            {"id": 1, "name": "cat", "keypoints": ["eye"]},
            {"id": 2, "name": "dog", "keypoints": ["eye"]},
        ],
    }
    (root / "coco.json").write_text(json.dumps(coco))
    return root / "coco.json"


@pytest.fixture
def tiny_backbone(backbone_plugin):
    with backbone_plugin(
        "tiny_probe_net", lambda **_: make_tiny_model(trait_dim=16), "tiny CNN"
    ) as name:
        yield name


@pytest.mark.parametrize("recipe", ["probe", "tuned", "paper"])
def test_sxai_space_builds_every_recipe_and_replaces_the_folder(
    tmp_path, tiny_backbone, recipe, capsys, monkeypatch
) -> None:
    from sxai_plugins.cli.main import main

    monkeypatch.setenv("SXAI_CACHE", str(tmp_path / "cache"))
    coco = _synthetic_dataset(tmp_path / "data")
    out = tmp_path / "spaces"
    out.mkdir()
    (out / "cat.nose.safetensors").write_bytes(b"a space of an earlier build")
    # a small regularisation grid and 2 inner folds keep the test quick; the CLI reads them from TOML
    config = tmp_path / "space.toml"
    config.write_text(
        "[recipe_options]\ncs = [0.01, 0.1]\nfolds = 2\n" if recipe == "probe" else ""
    )
    args = [
        "space",
        "--config",
        str(config),
        "--annotations",
        str(coco),
        "--out",
        str(out),
        "-b",
        tiny_backbone,
        "--recipe",
        recipe,
        "--reference",
        str(tmp_path / "data"),
        "--no-plots",
        "--json",
    ]
    # an untrained tiny model calls everything one class, so the v1 recipes (which fit a
    # reference distribution on the images predicted as the space's class) build cat spaces only
    classes = ["cat", "dog"] if recipe == "probe" else ["cat"]
    args += [arg for c in classes for arg in ("--class", c)]
    if recipe == "probe":
        args += ["--folds", "3", "--seed", "1"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    # the folder holds this build only: the earlier build's file is gone
    expected = sorted([f"{c}.eyes.safetensors" for c in classes] + ["report.json"])
    assert sorted(p.name for p in out.iterdir()) == expected
    spaces = {s.key: s for s in load_spaces([out])}
    assert report["recipe"] == recipe and set(report["spaces"]) == {f"{c}.eyes" for c in classes}
    version = 2 if recipe == "probe" else 1
    assert all(s.format_version == version for s in spaces.values())
    if recipe == "probe":
        figures = report["spaces"]["cat.eyes"]
        assert figures["protocol"].startswith("out-of-fold, 3 folds")
        assert {"drop", "auroc", "control_shift", "rival_auroc", "ece"} <= set(figures)
        assert spaces["cat.eyes"].evaluation["n_positive"] == figures["n_positive"] > 0
        # the same command twice gives the same spaces (seeded folds and control regions)
        first = spaces["cat.eyes"].probe.weight.clone()
        assert main(args) == 0
        capsys.readouterr()
        assert torch.equal(load_spaces([out / "cat.eyes.safetensors"])[0].probe.weight, first)


def test_sxai_space_probe_errors_are_clear(tmp_path, tiny_backbone, capsys, monkeypatch) -> None:
    from sxai_plugins.cli.main import main

    monkeypatch.setenv("SXAI_CACHE", str(tmp_path / "cache"))
    coco = _synthetic_dataset(tmp_path / "data")
    base = ["space", "--annotations", str(coco), "-b", tiny_backbone, "--no-plots"]
    assert main([*base, "--out", str(tmp_path / "o"), "--folds", "1"]) == 2
    assert "--folds must be at least 2" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([*base, "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o"), "--masker", "blur"]) == 2
    assert "belongs to the paper and tuned recipes" in capsys.readouterr().err


# --------------------------------------------------------------------------------- integration
@pytest.mark.integration
def test_bundled_examples_that_the_model_is_sure_of_are_explained_by_their_own_concepts(
    default_model,
) -> None:
    """Each bundled example with P(class) > 0.99 gets a sentence that names at least one concept
    of that class as support (what the v1 spaces failed on: cat_18.jpg was 'not sure')."""
    from sxai_plugins import get_explanation_template
    from sxai_plugins.data.examples import example_images
    from sxai_plugins.data.images import load_image, to_tensor
    from sxai_plugins.explain.templates import judge
    from sxai_plugins.explain.trust import assess, load_space_set

    spaces = load_space_set([], default_model)
    assert {s.format_version for s in spaces} == {2}  # the bundled spaces are probes
    template = get_explanation_template("english")
    paths = example_images()
    assert len(paths) == 6
    images = torch.stack([to_tensor(load_image(p), default_model.input_size[1:]) for p in paths])
    sure = 0
    for path, assessment in zip(paths, assess(default_model, spaces, images, paths)):
        if assessment.class_probabilities[assessment.predicted] <= 0.99:
            continue
        sure += 1
        sentence = template.render(assessment)
        supported = [
            c.concept
            for c in judge(assessment, template.rules).concepts
            if c.mentioned and not c.confusing
        ]
        assert supported, f"{path.name}: {sentence}"
        assert any(concept in sentence for concept in supported), f"{path.name}: {sentence}"
    assert sure >= 4  # the test means something only if most examples are confident


def test_v1_recipes_are_scored_out_of_fold_on_the_same_bank() -> None:
    from sxai_plugins.spaces.validity import V1Material, out_of_fold

    bank = synthetic_bank(120, seed=6)
    originals = np.flatnonzero(bank.column("kind") == ORIGINAL)
    reference = V1Material(
        bank.traits[originals],
        bank.image_column("class_name")[originals],
        [str(p) for p in bank.image_column("path")[originals]],
    )
    for recipe in ("paper", "tuned"):
        qq: dict[str, list[float]] = {}
        p = out_of_fold(
            bank,
            ["cat"],
            ["eyes"],
            recipe,
            RECIPE,
            folds=3,
            reference=reference,
            progress=False,
            qq_r2=qq,
        )["cat.eyes"]
        assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
        assert len(qq["cat.eyes"]) == 3  # one v1 space, with its own reference fit, per fold
    with pytest.raises(SpaceError, match="needs the reference"):
        out_of_fold(bank, ["cat"], ["eyes"], "paper", RECIPE, folds=3)


def test_bank_keeps_its_feature_maps_beside_the_traits(tmp_path: Path) -> None:
    bank = synthetic_bank(6, seed=3)
    maps = torch.randn(len(bank.rows), C, 2, 2)
    bank.maps = maps.half()
    bank.save(tmp_path / "bank")
    loaded = ProbeFeatures.load(tmp_path / "bank", maps=True)
    assert torch.equal(loaded.maps, bank.maps) and torch.equal(loaded.traits, bank.traits)
    assert ProbeFeatures.load(tmp_path / "bank").maps is None
    bank.maps = None
    bank.save(tmp_path / "plain")
    with pytest.raises(SpaceError, match="without feature maps"):
        ProbeFeatures.load(tmp_path / "plain", maps=True)


def test_train_only_images_train_every_fold_and_are_never_scored(monkeypatch) -> None:
    from sxai_plugins.spaces import validity

    bank = synthetic_bank(120, seed=6)
    extra = list(range(90, 120))
    image = bank.column("image")
    alone = validity.out_of_fold(bank, ["cat"], ["eyes"], "probe", RECIPE, folds=3, progress=False)
    trained_on = []

    def recording(bank, class_name, concept, recipe, images=None):
        trained_on.append(set(images.tolist()))
        return training_set(bank, class_name, concept, recipe, images)

    monkeypatch.setattr(validity, "training_set", recording)
    with_extra = validity.out_of_fold(
        bank, ["cat"], ["eyes"], "probe", RECIPE, folds=3, progress=False, train_only=extra
    )["cat.eyes"]
    assert len(trained_on) == 3 and all(set(extra) <= images for images in trained_on)
    assert np.isnan(with_extra[np.isin(image, extra)]).all()
    scored = ~np.isin(image, extra)
    assert np.isfinite(with_extra[scored]).all()
    # more training images change the fold models, so the scored rows' P_s moves
    assert not np.allclose(with_extra[scored], alone["cat.eyes"][scored])


def test_framed_boxes_leave_the_concept_out_and_keep_it_in() -> None:
    from sxai_plugins.spaces.probe_data import framed_boxes

    # legs along the bottom of a 400 x 300 picture (the mask drawn at 100 x 100)
    region = np.zeros((100, 100), dtype=bool)
    region[80:95, 20:60] = True
    eyes = np.zeros((100, 100), dtype=bool)
    eyes[10:20, 5:15] = True
    out, kept = framed_boxes(region, eyes, width=400, height=300, min_side=0.45, clearance=0.03)
    left, top, right, bottom = out
    # a square above the legs, clear of them, pushed towards the eyes (left edge of the picture)
    assert right - left == pytest.approx(bottom - top)
    assert bottom <= 0.80 * 300 - 0.03 * 300 + 1e-6 and left == 0
    assert right - left >= 0.45 * 300
    # the framed-in square is as large and holds the whole region
    k_left, k_top, k_right, k_bottom = kept
    assert k_right - k_left == pytest.approx(right - left)
    assert k_left <= 0.20 * 400 and k_right >= 0.60 * 400
    assert k_top <= 0.80 * 300 and k_bottom >= 0.95 * 300 - 1e-6
    # of the bands with room, the one whose square holds the other parts wins over a larger one
    strip = np.zeros((100, 100), dtype=bool)
    strip[:, 60:65] = True
    face = np.zeros((100, 100), dtype=bool)
    face[40:50, 80:90] = True
    (left, _top, right, _bottom), _kept = framed_boxes(strip, face, 400, 300, min_side=0.3)
    assert left >= 0.65 * 400 and right == 400
    (left, _top, right, _bottom), _kept = framed_boxes(strip, None, 400, 300, min_side=0.3)
    assert right <= 0.60 * 400  # without other parts: the larger band, on the left
    # no room beside a concept that fills the picture, nothing to frame without one
    full = np.ones((100, 100), dtype=bool)
    assert framed_boxes(full, None, 400, 300) is None
    assert framed_boxes(np.zeros((10, 10), dtype=bool), None, 400, 300) is None


def test_framed_crops_show_the_picture_without_the_concept_and_with_it(tmp_path) -> None:
    from sxai_plugins.data.concepts import load_coco
    from sxai_plugins.spaces.probe_data import (
        FRAMED_IN,
        FRAMED_OUT,
        _copies,
        labelled_from_annotations,
    )

    coco = _synthetic_dataset(tmp_path / "data")
    labelled = labelled_from_annotations(load_coco(coco, coco.parent))
    yellow = np.array([250, 240, 30]) / 255
    checked = 0
    for index, item in enumerate(labelled):
        copies = list(_copies(item, index, ["eyes"], [Masking("superpixel", 15)], (48, 48), 0))
        assert not {r.kind for r, _ in copies} & {FRAMED_OUT, FRAMED_IN}  # only on request
        framed = {
            r.kind: a
            for r, a in _copies(
                item, index, ["eyes"], [Masking("superpixel", 15)], (48, 48), 0, True
            )
            if r.kind in (FRAMED_OUT, FRAMED_IN)
        }
        if not item.visible.get("eyes"):
            assert not framed  # nothing to leave out
            continue
        if not framed:
            continue  # no square of the minimum size beside this eye
        # the eye square is nowhere in the framed-out crop, and whole in the framed-in one
        near = {k: (np.abs(a - yellow).max(axis=2) < 0.12).sum() for k, a in framed.items()}
        assert near[FRAMED_OUT] == 0, item.path
        assert near[FRAMED_IN] > 0, item.path
        checked += 1
    assert checked >= 20


def test_framed_crops_train_only_when_weighted() -> None:
    from sxai_plugins.spaces.probe_data import FRAMED_IN, FRAMED_OUT

    bank = synthetic_bank(40, seed=4)
    extra = []
    for i, image in enumerate(bank.images):
        if image.visible["eyes"]:
            extra += [
                ProbeRow(i, FRAMED_OUT, "eyes", "", 0.4),
                ProbeRow(i, FRAMED_IN, "eyes", "", 0.4),
            ]
    bank.rows += extra
    bank.traits = torch.cat([bank.traits, torch.zeros(len(extra), C)])
    kinds = bank.column("kind")
    plain = training_set(bank, "cat", "eyes", RECIPE)
    assert not set(kinds[plain.rows]) & {FRAMED_OUT, FRAMED_IN}
    framed = training_set(
        bank, "cat", "eyes", ProbeRecipe(**{**RECIPE.__dict__, "framed_weight": 0.5})
    )
    chosen = kinds[framed.rows]
    cats = bank.image_column("class_name")[framed.rows] == "cat"
    for kind, label in ((FRAMED_OUT, 0), (FRAMED_IN, 1)):
        rows = chosen == kind
        assert rows.sum() == sum(
            1 for i, im in enumerate(bank.images) if im.class_name == "cat" and im.visible["eyes"]
        )
        assert (framed.labels[rows] == label).all() and (framed.weights[rows] == 0.5).all()
        assert (framed.calibration[rows] == 0).all() and cats[rows].all()


def test_a_bank_is_cached_per_concept_mask_not_only_per_point(tmp_path) -> None:
    """Mask annotations (a discovery's, an edited COCO file's) key the cache like points do: an
    edited mask extracts a new bank, the same masks reuse the cached one."""
    from PIL import Image

    from sxai_plugins.data.concepts import ConceptAnnotation, ConceptGeometry
    from sxai_plugins.spaces.probe_data import cached_probe_features

    rng = np.random.default_rng(0)
    path = tmp_path / "cat.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)

    def labelled(rows: slice) -> list[LabelledImage]:
        mask = np.zeros((32, 32), dtype=bool)
        mask[rows, 4:12] = True
        geometry = ConceptGeometry((32, 32), masks=[mask])
        annotation = ConceptAnnotation(path, 1, "cat", 32, 32, {"eyes": geometry})
        return [LabelledImage(path, "cat", {"eyes": True}, annotation)]

    model = make_tiny_model(size=32)
    maskings = [Masking("superpixel", 15)]
    cache = tmp_path / "cache"

    def extract(rows: slice):
        return cached_probe_features(
            model, labelled(rows), ["eyes"], maskings, progress=False, cache_dir=cache
        )

    first = extract(slice(4, 12))
    assert len(list(cache.glob("*.json"))) == 1
    assert torch.equal(extract(slice(4, 12)).traits, first.traits)  # cached
    assert len(list(cache.glob("*.json"))) == 1
    moved = extract(slice(20, 28))  # the same image, the eyes elsewhere
    assert len(list(cache.glob("*.json"))) == 2
    masked = np.flatnonzero(first.column("kind") == MASKED)
    assert not torch.equal(moved.traits[masked], first.traits[masked])
