"""Probes that read pooled outputs of earlier layers besides the GAP traits: the model's hooks, the
feature bank, the probe fit, the space file and every place that scores spaces from one pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from sxai_plugins._utils.errors import SpaceError
from sxai_plugins.models.trait_model import pool_map
from sxai_plugins.spaces.probe_data import (
    CONTROL,
    MASKED,
    ORIGINAL,
    LabelledImage,
    ProbeFeatures,
    ProbeRow,
)
from sxai_plugins.spaces.probes import ProbeRecipe, build_probe_spaces
from sxai_plugins.spaces.space import ProbeHead, SemanticSpace, SpaceSet, load_spaces
from sxai_plugins.spaces.validity import evaluate_recipes

LAYER = "1"  # the tiny model's first ReLU: 6 channels at full resolution, so 12 pooled values


def test_pooled_outputs_are_the_mean_and_max_of_the_layer_and_the_hooks_go_away() -> None:
    model = make_tiny_model(trait_dim=8)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad(), model.pooling([LAYER]):
        out = model(x)
        expected = model.body[:2]((x - model.mean) / model.std)
    assert set(out.pooled) == {LAYER} and out.pooled[LAYER].shape == (3, 12)
    assert torch.allclose(out.pooled[LAYER][:, :6], expected.mean(dim=(2, 3)))
    assert torch.allclose(out.pooled[LAYER][:, 6:], expected.amax(dim=(2, 3)))
    assert torch.equal(out.features([LAYER]), torch.cat([out.traits, out.pooled[LAYER]], 1))
    # the hooks and the setting last as long as the block
    assert model.pooled_layers == () and not model.body[1]._forward_hooks
    assert model(x).pooled is None
    with pytest.raises(ValueError, match="did not pool 1"):
        model(x).features([LAYER])
    with pytest.raises(ValueError, match="has no layer 'nope'"):
        model.pool_layers(["nope"])
    with pytest.raises(ValueError, match="B×C×h×w"):
        pool_map(torch.zeros(2, 3))


def layered_bank(n_images: int, seed: int) -> ProbeFeatures:
    """Cats and dogs whose GAP traits hold only noise and the class, while the pooled layer holds
    the concept (channel 2 of 12): a probe must read the layer to find it."""
    rng = np.random.default_rng(seed)
    images, rows, traits, pooled = [], [], [], []
    for i in range(n_images):
        cat = i % 2 == 0
        shows = rng.random() < 0.6
        images.append(LabelledImage(Path(f"/s/{i}.png"), "cat" if cat else "dog", {"eyes": shows}))

        def add(row: ProbeRow, concept_present: bool, cat: bool = cat) -> None:
            t = rng.normal(0, 1, 8)
            t[0] += 2.0 if cat else -2.0
            p = rng.normal(0, 1, 12)
            p[2] += 2.5 if concept_present else 0.0
            rows.append(row)
            traits.append(t)
            pooled.append(p)

        add(ProbeRow(i, ORIGINAL), shows)
        if shows:
            for masking in ("superpixel@15", "inpaint@20"):
                add(ProbeRow(i, MASKED, "eyes", masking, 0.05), False)
                add(ProbeRow(i, CONTROL, "eyes", masking, 0.05), True)
    return ProbeFeatures(
        images,
        rows,
        torch.tensor(np.array(traits), dtype=torch.float32),
        ("eyes",),
        ("superpixel@15", "inpaint@20"),
        pooled=torch.tensor(np.array(pooled), dtype=torch.float32),
        pooled_layers={LAYER: 12},
    )


RECIPE = ProbeRecipe(
    train_maskings=("superpixel@15",), held_out_maskings=("inpaint@20",), cs=(0.1, 1.0), folds=3
)


def test_a_probe_reads_a_concept_that_only_a_pooled_layer_holds(tmp_path) -> None:
    bank = layered_bank(160, seed=0)
    layered = ProbeRecipe(**{**RECIPE.__dict__, "layers": (LAYER,)})
    results = evaluate_recipes(bank, ["cat"], ["eyes"], ["probe"], layered, folds=3, progress=False)
    gap_only = evaluate_recipes(bank, ["cat"], ["eyes"], ["probe"], RECIPE, folds=3, progress=False)
    assert results["probe"]["cat.eyes"]["auroc"] > 0.85
    assert gap_only["probe"]["cat.eyes"]["auroc"] < 0.7  # the traits alone do not show it

    model = make_tiny_model(trait_dim=8)
    (space,) = build_probe_spaces(model, bank, ["cat"], ["eyes"], layered, progress=False)
    assert space.layers == ((LAYER, 12),) and space.feature_dim == 20
    assert space.indices.max() < 8  # the SSNs shown are trait channels
    # the concept's layer channel carries the largest weight of all features
    assert int(space.probe.standardised().abs().argmax()) == 8 + 2
    path = space.save(tmp_path / "cat.eyes.safetensors")
    (loaded,) = load_spaces([path])
    assert loaded.layers == space.layers and torch.equal(loaded.probe.weight, space.probe.weight)
    features = bank.features([LAYER])[:20]
    assert torch.allclose(loaded.probability(features), space.probability(features))


def _spaces() -> tuple[SemanticSpace, SemanticSpace]:
    def make(concept: str, weight: torch.Tensor, layers=()) -> SemanticSpace:
        head = ProbeHead(weight, 0.1, 1.5, -0.2, None, layers)
        return SemanticSpace("cat", concept, "tiny", "x", 8, [0, 1], [1.0, -1.0], probe=head)

    torch.manual_seed(0)
    return make("eyes", torch.randn(8)), make("nose", torch.randn(20), ((LAYER, 12),))


def test_a_space_set_scores_traits_only_and_layered_spaces_from_one_pass() -> None:
    plain, layered = _spaces()
    spaces = SpaceSet([plain, layered])
    assert spaces.layer_names == (LAYER,) and spaces.feature_dim == 20
    model = make_tiny_model(trait_dim=8)
    x = torch.rand(4, 3, 32, 32)
    spaces.prepare(model)
    assert model.pooled_layers == (LAYER,)
    with torch.no_grad():
        out = model(x)
    both = spaces.probabilities(out)
    assert torch.allclose(both[:, 0], plain.probability(out.traits), atol=1e-6)
    assert torch.allclose(both[:, 1], layered.probability(out), atol=1e-6)
    # the differentiable path agrees and has gradients for attacks
    features = out.features([LAYER]).clone().requires_grad_(True)
    a = spaces.differentiable_activations(features)
    assert torch.allclose(a.detach(), spaces.activations(out), atol=1e-5)
    a.sum().backward()
    assert features.grad is not None
    # traits alone are not enough for a layered space, and the error says what to do
    with pytest.raises(SpaceError, match="pool_layers"):
        spaces.probabilities(out.traits)
    model.pool_layers(())
    with torch.no_grad(), pytest.raises(SpaceError, match="did not pool 1"):
        layered.probability(model(x))


def test_assess_and_the_index_pool_what_the_spaces_read(tmp_path) -> None:
    from sxai_plugins.explain.trust import assess
    from sxai_plugins.search.index import index_folder

    plain, layered = _spaces()
    spaces = SpaceSet([plain, layered])
    model = make_tiny_model(trait_dim=8)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assessed = assess(model, spaces, x)
        with model.pooling([LAYER]):
            expected = spaces.probabilities(model(x))
    assert model.pooled_layers == ()
    got = torch.tensor([[s.probability for s in a.spaces] for a in assessed])
    assert torch.allclose(got, expected, atol=1e-6)

    from PIL import Image

    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    report = index_folder(model, spaces, tmp_path, tmp_path / "index.sqlite", progress=False)
    assert report.scored == 3 and model.pooled_layers == ()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, t: m["probe"].update(feature="gap+attention"), "not supported"),
        (lambda m, t: m["probe"].update(layers=[["../x", 12]]), "not a module path"),
        (lambda m, t: m["probe"].update(layers=[["1", 0]]), "width 0"),
        (lambda m, t: m["probe"].update(layers=[["1", 12], ["1", 12]]), "twice"),
        (lambda m, t: m["probe"].update(layers="1"), "pairs"),
        (lambda m, t: m["probe"].update(layers=[["1", 13]]), "21 features"),
    ],
)
def test_layered_space_files_with_bad_layers_are_refused(tmp_path, change, message) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = _spaces()[1].save(tmp_path / "cat.nose.safetensors")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["sxai.space"])
    change(meta, tensors)
    save_file(tensors, str(path), metadata={"sxai.space": json.dumps(meta)})
    with pytest.raises(SpaceError, match=message):
        SemanticSpace.load(path)


def test_sxai_space_builds_probes_that_read_layers_and_explains_with_them(
    tmp_path, backbone_plugin, capsys, monkeypatch
) -> None:
    from test_probes import _synthetic_dataset

    from sxai_plugins.cli.main import main
    from sxai_plugins.explain.trust import assess, load_space_set

    monkeypatch.setenv("SXAI_CACHE", str(tmp_path / "cache"))
    coco = _synthetic_dataset(tmp_path / "data")
    config = tmp_path / "space.toml"
    config.write_text('[recipe_options]\ncs = [0.01, 0.1]\nfolds = 2\nlayers = ["1"]\n')
    with backbone_plugin(
        "tiny_layer_net", lambda **_: make_tiny_model(trait_dim=16), "tiny"
    ) as name:
        base = ["space", "--config", str(config), "--annotations", str(coco), "-b", name]
        args = [*base, "--out", str(tmp_path / "spaces"), "--no-plots", "--json", "--folds", "3"]
        args += ["--reference", str(tmp_path / "data")]
        assert main(args) == 0
        capsys.readouterr()
        spaces = load_spaces([tmp_path / "spaces"])
        assert {s.layers for s in spaces} == {(("1", 12),)}
        model = make_tiny_model(trait_dim=16)
        space_set = load_space_set([tmp_path / "spaces"], model, force=True)
        assert model.pooled_layers == ("1",)
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            p = torch.tensor(
                [[s.probability for s in a.spaces] for a in assess(model, space_set, x)]
            )
        assert torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()

        config.write_text('[recipe_options]\nlayers = ["body.nope"]\n')
        assert main([*base, "--out", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err
        assert "recipe_options.layers" in err and "no layer 'body.nope'" in err
