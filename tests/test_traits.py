"""Common traits, their stability, per-layer PCA and the ``sxai traits`` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn

from sxai_plugins import SxaiError, TraitModel
from sxai_plugins._utils.errors import ImageLoadError
from sxai_plugins.cli.main import main
from sxai_plugins.data.images import class_images, load_image, to_tensor
from sxai_plugins.traits.common import common_traits, stability
from sxai_plugins.traits.genetic import GAConfig
from sxai_plugins.traits.layers import layer_information_ratios, select_layers
from sxai_plugins.traits.pca import RowCentredPCA, first_pc, spread
from sxai_plugins.viz.plots import plot_layer_ratios

SIZE = 32
BACKBONE = "tiny_traits_cnn"


pytestmark = pytest.mark.usefixtures("one_thread")


def build_tiny(pretrained: bool = True, weights=None, class_names=None) -> TraitModel:
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
    )
    return TraitModel(
        body, 16, class_names or ["cat", "dog"], name=BACKBONE, input_size=(3, SIZE, SIZE)
    ).eval()


@pytest.fixture(scope="module")
def backbone(backbone_plugin):
    with backbone_plugin(BACKBONE, build_tiny, "a two-conv CNN for the traits tests"):
        yield BACKBONE


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """ImageFolder root: 14 cats (one of them a corrupt file) and 6 dogs, 40×40 colour blobs."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for name, count in (("cat", 13), ("dog", 6)):
        folder = root / name
        folder.mkdir()
        for i in range(count):
            small = (rng.random((5, 5, 3)) * 255).astype(np.uint8)
            Image.fromarray(small).resize((40, 40), Image.BILINEAR).save(
                folder / f"{name}.{i:02d}.png"
            )
    (root / "cat" / "cat.99.jpg").write_bytes(b"this is not a jpeg")
    return root


def cats(data: Path) -> list[Path]:
    return class_images(data, "cat")


def direct_traits(model: TraitModel, paths: list[Path]) -> torch.Tensor:
    images = torch.stack([to_tensor(load_image(p), (SIZE, SIZE)) for p in paths])
    with torch.no_grad():
        return model.traits(images)


# ------------------------------------------------------------------------------------ common traits
def test_common_traits_without_the_search(data):
    model = build_tiny()
    found = common_traits(model, cats(data), "cat", n=8, seed=0, use_ga=False, progress=False)
    assert len(found.paths) == 8 and len(set(found.paths)) == 8
    assert all(p.parent.name == "cat" for p in found.paths)
    torch.testing.assert_close(
        found.traits, direct_traits(model, found.paths), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(found.pca.pc1, first_pc(found.traits), rtol=1e-6)
    assert found.masks.shape == (8, SIZE, SIZE) and found.masks.all()
    with torch.no_grad():
        expected = model.logits(torch.from_numpy(found.images).permute(0, 3, 1, 2)).softmax(1)[:, 0]
    np.testing.assert_allclose(found.fitness, expected.numpy(), rtol=1e-5)
    assert np.cumsum(found.pca.explained_variance_ratio_)[found.pca.n_components_ - 1] >= 0.85


def test_sample_depends_on_the_seed_only(data):
    model = build_tiny()
    a = common_traits(model, cats(data), "cat", n=6, seed=1, use_ga=False, progress=False)
    b = common_traits(model, cats(data), "cat", n=6, seed=1, use_ga=False, progress=False)
    c = common_traits(model, cats(data), "cat", n=6, seed=2, use_ga=False, progress=False)
    assert a.paths == b.paths and torch.equal(a.traits, b.traits)
    assert a.paths != c.paths


def test_a_corrupt_image_is_reported_and_replaced(data):
    model = build_tiny()
    found = common_traits(model, cats(data), "cat", n=13, seed=0, use_ga=False, progress=False)
    assert len(found.paths) == 13  # every readable cat, the corrupt one left out
    assert [p.name for p, _ in found.failures] == ["cat.99.jpg"]
    assert "cat.99.jpg" in found.failures[0][1]


def test_genetic_search_keeps_superpixels_that_raise_the_class(data):
    model = build_tiny()
    config = GAConfig(mode="fast", n_segments=8, generations=4, batch_size=64)
    plain = common_traits(model, cats(data), "cat", n=5, seed=0, use_ga=False, progress=False)
    searched = common_traits(
        model, cats(data), "cat", n=5, seed=0, ga_config=config, progress=False
    )
    assert searched.paths == plain.paths
    assert searched.masks.shape == (5, SIZE, SIZE) and searched.masks.dtype == bool
    # fast mode seeds the population with the whole image and keeps its best: never worse
    assert np.all(searched.fitness >= plain.fitness - 1e-5)
    removed = ~searched.masks
    assert np.all(
        searched.images[removed] == 0.0
    )  # removed superpixels are black (the paper's fill)
    torch.testing.assert_close(
        searched.traits,
        model.traits(torch.from_numpy(searched.images).permute(0, 3, 1, 2)).detach(),
    )


def test_class_not_in_the_model(data):
    model = build_tiny(class_names=["a", "b"])
    with pytest.raises(SxaiError, match="--no-ga"):
        common_traits(model, cats(data), "cat", n=4, progress=False)
    found = common_traits(model, cats(data), "cat", n=4, use_ga=False, progress=False)
    assert np.isnan(found.fitness).all()


def test_class_images_layouts(data, tmp_path):
    assert [p.parent.name for p in class_images(data, "dog")] == ["dog"] * 6
    assert class_images(data / "dog", "dog") == class_images(
        data, "dog"
    )  # a plain folder of images
    with pytest.raises(ImageLoadError, match="cat, dog"):
        class_images(data, "horse")
    with pytest.raises(ImageLoadError):
        class_images(tmp_path, "cat")


# ---------------------------------------------------------------------------------------- stability
def test_stability_spreads_match_an_independent_computation(data):
    model = build_tiny()
    result = stability(
        model, cats(data), "cat", sizes=(4, 8), repeats=3, seed=5, use_ga=False, progress=False
    )
    assert result.sizes == [4, 8]
    for size in (4, 8):
        samples = result.samples[size]
        assert len(samples) == 3 and all(len(s) == size for s in samples)
        pcs = np.stack([first_pc(direct_traits(model, s)) for s in samples])
        np.testing.assert_allclose(result.pc1[size], pcs, rtol=1e-5, atol=1e-6)
        assert result.spreads[size] == pytest.approx(spread(pcs), rel=1e-5)
    assert (
        result.samples[8][0][:4] == result.samples[4][0]
    )  # a repeat's small sample nests in its large one
    assert len({tuple(s) for s in result.samples[8]}) == 3  # repeats draw different images
    assert [p.name for p, _ in result.failures] == ["cat.99.jpg"]


def test_stability_reuses_the_common_traits_search(data):
    model = build_tiny()
    config = GAConfig(n_segments=6, population=6, generations=2)
    found = common_traits(model, cats(data), "cat", n=5, seed=2, ga_config=config, progress=False)
    fresh = stability(
        model, cats(data), "cat", sizes=(3, 5), repeats=2, seed=2, ga_config=config, progress=False
    )
    reused = stability(
        model,
        cats(data),
        "cat",
        sizes=(3, 5),
        repeats=2,
        seed=2,
        ga_config=config,
        progress=False,
        known=found,
    )
    assert reused.samples == fresh.samples
    assert reused.samples[5][0] == found.paths  # repeat 0 starts with the known sample: reused
    for size in (3, 5):
        np.testing.assert_allclose(reused.pc1[size], fresh.pc1[size], rtol=1e-5, atol=1e-6)
        assert reused.spreads[size] == pytest.approx(fresh.spreads[size], rel=1e-5)


def test_stability_rejects_bad_settings(data):
    model = build_tiny()
    with pytest.raises(SxaiError, match="repeats"):
        stability(model, cats(data), "cat", sizes=(4,), repeats=1, use_ga=False, progress=False)
    with pytest.raises(SxaiError, match="larger"):
        stability(model, cats(data), "cat", sizes=(4, 500), use_ga=False, progress=False)


# ---------------------------------------------------------------------------------------- per layer
def reference_ratio(maps: torch.Tensor) -> float:
    """Mean over positions of PC1's information ratio, one RowCentredPCA per position."""
    n, c, h, w = maps.shape
    ratios = []
    for i in range(h):
        for j in range(w):
            x = maps[:, :, i, j].double().numpy()
            if np.allclose(x - x.mean(axis=1, keepdims=True), 0):
                continue
            ratios.append(RowCentredPCA(n_components=1).fit(x).explained_variance_ratio_[0])
    return float(np.mean(ratios))


def test_per_layer_ratios_match_per_position_pca():
    model = build_tiny()
    images = torch.rand(12, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    # 12 images: the first conv (8 channels ≤ 12) takes the C×C path, the second (16 > 12) the N×N one
    results = {
        r.name: r for r in layer_information_ratios(model, images, batch_size=5, progress=False)
    }
    assert list(results) == ["0", "2", "3", "output", "gap"]  # conv, pool, conv, body output, GAP
    with torch.no_grad():
        first = model.body[0]((images - model.mean) / model.std)
        third = model.body[3](model.body[2](model.body[1](first)))
        output = model.feature_map(images)
    assert results["0"].ratio_mean == pytest.approx(reference_ratio(first), rel=1e-6)
    assert results["3"].ratio_mean == pytest.approx(reference_ratio(third), rel=1e-6)
    assert results["output"].ratio_mean == pytest.approx(reference_ratio(output), rel=1e-6)
    gap = RowCentredPCA().fit(output.mean(dim=(2, 3))).explained_variance_ratio_[0]
    assert results["gap"].ratio_mean == pytest.approx(gap, rel=1e-6)
    assert (results["0"].channels, results["0"].height, results["0"].width) == (8, SIZE, SIZE)
    assert results["2"].kind == "MaxPool2d" and results["2"].height == SIZE // 2
    assert all(0 < r.ratio_pooled <= 1 for r in results.values())


class HalfDead(nn.Module):
    """Zeroes the left half of the map: positions where nothing varies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., : x.shape[-1] // 2] = 0
        return x


def test_positions_without_variance_are_left_out():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), HalfDead())
    model = TraitModel(body, 4, ["a", "b"], name="half", input_size=(3, 8, 8)).eval()
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    (output,) = [
        r for r in layer_information_ratios(model, images, progress=False) if r.name == "output"
    ]
    assert output.positions_used == 8 * 4
    with torch.no_grad():
        assert output.ratio_mean == pytest.approx(
            reference_ratio(model.feature_map(images)), rel=1e-6
        )


def test_block_selection_on_timm_models():
    from sxai_plugins import create_model

    model = create_model("test_resnet", pretrained=False, class_names=["cat", "dog"])
    assert select_layers(model) == [f"model.layer{i}.0" for i in range(1, 5)]
    conv = select_layers(model, "conv")
    convs = [name for name, m in model.body.named_modules() if isinstance(m, nn.Conv2d)]
    assert conv[0] == convs[0] and "model.maxpool" in conv
    assert set(convs) <= set(conv)  # every convolution runs once per forward and is kept
    assert select_layers(build_tiny()) == ["0", "2", "3"]  # no blocks: falls back to conv and pool


def test_per_layer_from_files_skips_bad_images(data, tmp_path):
    model = build_tiny()
    results = layer_information_ratios(model, cats(data), layers=["3"], progress=False)
    assert [r.name for r in results] == ["3", "output", "gap"]
    path = plot_layer_ratios(results, tmp_path / "layers.png")
    assert Image.open(path).format == "PNG"
    with pytest.raises(SxaiError, match="no module"):
        layer_information_ratios(model, cats(data), layers=["nope"], progress=False)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end_with_a_timm_model(data, tmp_path, capsys, caplog):
    out = tmp_path / "results"
    code = main(
        [
            "traits",
            "--backbone",
            "test_resnet",
            "--no-pretrained",
            "--data",
            str(data),
            "--class",
            "cat",
            "--n",
            "8",
            "--out",
            str(out),
            "--no-ga",
            "--invert",
            "tv",
            "--inversion-steps",
            "3",
            "--stability",
            "4,6",
            "--per-layer",
            "--json",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["n_used"] == 8 and summary["backbone"] == "test_resnet"
    assert [s["path"] for s in summary["skipped"]] == [str(data / "cat" / "cat.99.jpg")]
    # reported once: the "skipped:" line, not also a logged warning
    assert captured.err.count("cat.99.jpg") == 1
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING and "cat.99.jpg" in r.getMessage()
    ]
    for name in summary["files"]:
        assert (out / name).is_file(), name
    with safe_open(str(out / "traits.safetensors"), "pt") as f:
        traits = f.get_tensor("traits")
        meta = json.loads(f.metadata()["sxai.traits"])
    assert traits.shape == (8, 96)  # test_resnet's traits
    assert len(meta["paths"]) == 8 and meta["class"] == "cat"
    pca = json.loads((out / "pca.json").read_text())
    assert sum(pca["information_ratio"]) == pytest.approx(1.0)
    np.testing.assert_allclose(pca["pcs"][0], first_pc(traits), rtol=1e-4, atol=1e-5)
    assert np.load(out / "masks.npz")["masks"].shape == (8, 160, 160)
    assert Image.open(out / "inversions" / "pc1.png").size == (160, 160)
    assert set(json.loads((out / "stability.json").read_text())["spread_percent"]) == {"4", "6"}
    layers = json.loads((out / "layers.json").read_text())["layers"]
    assert [entry["name"] for entry in layers][-2:] == ["output", "gap"]
    assert layers[-1]["ratio_mean"] == pytest.approx(pca["information_ratio"][0], rel=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_cli_with_the_genetic_search_and_fourier(backbone, data, tmp_path, capsys):
    out = tmp_path / "ga"
    code = main(
        [
            "traits",
            "--backbone",
            backbone,
            "--data",
            str(data),
            "--class",
            "cat",
            "--n",
            "4",
            "--out",
            str(out),
            "--ga-mode",
            "fast",
            "--invert",
            "fourier",
            "--inversion-steps",
            "3",
            "--pcs",
            "2",
        ]
    )
    assert code == 0
    assert "PC1" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["genetic_search"]["mode"] == "fast"
    assert 0 < summary["mean_fitness"] <= 1
    assert sorted(p.name for p in (out / "inversions").iterdir()) == ["pc1.png", "pc2.png"]


def test_cli_refuses_to_overwrite_and_replaces_when_asked(backbone, data, tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = [
        "traits",
        "--backbone",
        backbone,
        "--data",
        str(data),
        "--class",
        "cat",
        "--n",
        "3",
        "--out",
        str(out),
        "--no-ga",
        "--invert",
        "none",
    ]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "old.txt").exists()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "summary.json").is_file()
    assert not (out / "inversions").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_cli_errors_name_the_fix(data, tmp_path, capsys):
    code = main(
        [
            "traits",
            "--backbone",
            "test_resnet",
            "--no-pretrained",
            "--data",
            str(data),
            "--class",
            "cat",
            "--n",
            "3",
            "--out",
            str(tmp_path / "x"),
            "--invert",
            "none",
        ]
    )
    assert code == 2
    assert "--head" in capsys.readouterr().err  # the GA needs a model that knows the class
    code = main(
        [
            "traits",
            "--backbone",
            "test_resnet",
            "--no-pretrained",
            "--data",
            str(data),
            "--class",
            "horse",
            "--n",
            "3",
            "--out",
            str(tmp_path / "y"),
            "--no-ga",
        ]
    )
    assert code == 2
    assert "horse" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
