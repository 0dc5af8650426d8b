"""Trustworthiness assessment (sxai_plugins.trust) and radar maps (sxai_plugins.radar)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sxai_plugins import SpaceError, SxaiError, TraitModel
from sxai_plugins.explain.trust import (
    assess,
    assessment_from_probabilities,
    default_spaces_dir,
    load_space_set,
)
from sxai_plugins.spaces.space import SemanticSpace, SpaceSet
from sxai_plugins.viz.plots import radar_data, radar_map

TRAITS = 12


def tiny_model(seed: int = 0, classes=("cat", "dog")) -> TraitModel:
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, TRAITS, 3), nn.ReLU()
    )
    return TraitModel(body, TRAITS, list(classes), name="tiny", input_size=(3, 32, 32)).eval()


def tiny_spaces(
    model: TraitModel, keys=("cat.eyes", "cat.nose", "dog.eyes", "dog.nose")
) -> list[SemanticSpace]:
    g = torch.Generator().manual_seed(1)
    reference = model.traits(torch.rand(24, 3, 32, 32, generator=g)).detach()
    spaces = []
    for i, key in enumerate(keys):
        class_name, concept = key.split(".")
        idx = torch.tensor([i % TRAITS, (i + 3) % TRAITS, (i + 7) % TRAITS])
        delta = torch.tensor([1.0, -0.5, 0.8]) * (1 + i)
        space = SemanticSpace(
            class_name, concept, model.name, model.fingerprint(), TRAITS, idx, delta
        )
        spaces.append(space.with_reference(reference @ space.weight_vector()))
    return spaces


@pytest.fixture(scope="module")
def model() -> TraitModel:
    return tiny_model()


@pytest.fixture(scope="module")
def spaces(model) -> SpaceSet:
    return SpaceSet(tiny_spaces(model))


def test_assess_uses_one_forward_pass_and_matches_the_spaces(model, spaces):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = assess(model, spaces, images, [f"img{i}.png" for i in range(5)])
    finally:
        handle.remove()
    assert len(calls) == 1
    assert len(result) == 5
    with torch.no_grad():
        logits, traits = model(images)
    expected_p = spaces.probabilities(traits)
    expected_a = spaces.activations(traits)
    for i, a in enumerate(result):
        assert a.path == f"img{i}.png"
        assert a.predicted == model.class_names[int(logits[i].argmax())]
        assert sum(a.class_probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert [s.key for s in a.spaces] == spaces.keys
        assert [s.probability for s in a.spaces] == pytest.approx(expected_p[i].tolist(), abs=1e-6)
        assert [s.activation for s in a.spaces] == pytest.approx(expected_a[i].tolist(), abs=1e-5)
        own = {s.concept: s.probability for s in a.spaces if s.class_name == a.predicted}
        assert a.p_max == pytest.approx(max(own.values()))
        assert own[a.concept_max] == a.p_max


def test_delta_p_is_against_the_best_other_class_for_the_same_concept():
    a = assessment_from_probabilities(
        "bird",
        {
            "bird.eyes": 0.9,
            "cat.eyes": 0.3,
            "dog.eyes": 0.6,
            "bird.legs": 0.4,
            "cat.legs": 0.5,
            "dog.legs": 0.1,
            "bird.wings": 0.7,  # no other class has wings: compared with 0
            "cat.nose": 0.99,  # the predicted class has no nose space: not a concept of this assessment
        },
    )
    by_concept = {c.concept: c for c in a.concepts}
    assert set(by_concept) == {"eyes", "legs", "wings"}
    assert by_concept["eyes"].delta == pytest.approx(0.3)
    assert by_concept["eyes"].rival == "dog"
    assert by_concept["legs"].delta == pytest.approx(-0.1)
    assert by_concept["legs"].rival == "cat"
    assert by_concept["wings"].delta == pytest.approx(0.7)
    assert by_concept["wings"].rival is None and by_concept["wings"].rival_probability is None
    assert a.delta_max_p == pytest.approx(0.7)
    assert (a.p_max, a.concept_max) == (pytest.approx(0.9), "eyes")


def test_predicted_class_without_spaces_has_no_delta():
    a = assessment_from_probabilities("horse", {"cat.eyes": 0.9, "dog.eyes": 0.1})
    assert a.concepts == [] and a.delta_max_p is None and a.p_max is None and a.concept_max is None


def test_to_dict_is_plain_json(model, spaces):
    [a] = assess(model, spaces, torch.rand(1, 3, 32, 32))
    data = json.loads(json.dumps(a.to_dict()))
    assert data["predicted"] == a.predicted
    assert [s["key"] for s in data["spaces"]] == spaces.keys
    assert {"probability", "activation", "class_name", "concept"} <= set(data["spaces"][0])
    assert data["delta_max_p"] == pytest.approx(a.delta_max_p)


def test_duplicate_spaces_are_refused(model):
    twice = tiny_spaces(model, ("cat.eyes", "cat.eyes"))
    with pytest.raises(SpaceError, match="cat.eyes"):
        assess(model, SpaceSet(twice), torch.rand(1, 3, 32, 32))


def test_bad_space_names_are_refused():
    with pytest.raises(SpaceError, match="class.concept"):
        assessment_from_probabilities("cat", {"eyes": 0.5})


def test_load_space_set_reads_files_and_checks_the_model(tmp_path, model):
    for space in tiny_spaces(model):
        space.save(tmp_path / f"{space.key}.safetensors")
    loaded = load_space_set([tmp_path], model)
    assert loaded.keys == sorted(loaded.keys) and len(loaded) == 4
    other = tiny_model(seed=5)
    with pytest.raises(SpaceError, match="weights"):
        load_space_set([tmp_path], other)
    assert len(load_space_set([str(tmp_path)], other, force=True)) == 4


def test_no_spaces_anywhere_says_how_to_get_some(model):
    assert default_spaces_dir(model.name) is None
    with pytest.raises(SpaceError, match="--spaces"):
        load_space_set(None, model)


def test_hub_sources_go_to_the_hub_module(model, monkeypatch, tmp_path):
    try:
        from spaces_hub import resolve_spaces  # noqa: F401
    except ImportError:  # without it, an hf:// source is a clear error, not "no such file"
        with pytest.raises(SpaceError, match="hf:// space sources need the spaces_hub module"):
            load_space_set(["hf://someone/spaces@main"], model)
        return
    # a closed local port: the hub module answers at once that it cannot reach the Hub, which
    # shows the source went to it (load_spaces would have said "no such space file")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(SxaiError) as info:
        load_space_set(["hf://someone/spaces@main"], model)
    assert "someone/spaces" in str(info.value) and "no such space file" not in str(info.value)


def test_radar_map_writes_a_png_with_one_polygon_per_class(tmp_path, model, spaces):
    [a] = assess(model, spaces, torch.rand(1, 3, 32, 32))
    concepts, series = radar_data(a)
    assert concepts == ["eyes", "nose"]
    assert set(series) == {"cat", "dog"}
    assert series["dog"] == [a.space("dog.eyes").probability, a.space("dog.nose").probability]
    out = radar_map(a, tmp_path / "maps" / "one.png")
    assert out == tmp_path / "maps" / "one.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 100
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0  # something was drawn
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["one.png"]  # no temporary left over


def test_radar_map_fills_a_missing_space_with_zero():
    a = assessment_from_probabilities("cat", {"cat.eyes": 0.8, "cat.nose": 0.6, "dog.eyes": 0.3})
    concepts, series = radar_data(a)
    assert concepts == ["eyes", "nose"]
    assert series == {"cat": [0.8, 0.6], "dog": [0.3, 0.0]}


@pytest.mark.parametrize(
    "n_concepts, kind", [(1, "rectilinear"), (2, "rectilinear"), (3, "polar"), (6, "polar")]
)
def test_radar_legend_stays_inside_the_image_and_few_concepts_get_bars(n_concepts, kind):
    from sxai_plugins.viz.plots import radar_figure

    concepts = ["eyes", "nose", "ears", "legs", "tail", "fur"][:n_concepts]
    probabilities = {
        f"{c}.{k}": 0.1 + 0.1 * i
        for i, (c, k) in enumerate((c, k) for c in ("cat", "dog", "fox") for k in concepts)
    }
    fig = radar_figure(assessment_from_probabilities("cat", probabilities))
    [ax] = fig.axes
    assert ax.name == kind
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    image = fig.bbox
    assert (
        legend.x0 >= image.x0
        and legend.x1 <= image.x1
        and legend.y0 >= image.y0
        and legend.y1 <= image.y1
    )
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "dog", "fox"]
