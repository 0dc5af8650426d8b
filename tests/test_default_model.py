"""Integration: the embedded default on real held-out Dogs-vs-Cats images."""

from __future__ import annotations

import json

import pytest

from sxai_plugins.models.inference import score_paths
from sxai_plugins.models.lite0 import ASSETS

pytestmark = pytest.mark.integration


def test_default_model_is_accurate_on_heldout_images(default_model, shared_data) -> None:
    card = json.loads((ASSETS / "head.json").read_text())
    held = card["heldout"][::4]  # 100 of the 400 held-out images keep this under a minute
    scored = score_paths(
        default_model, [shared_data / "train" / rel for rel in held], progress=False
    )
    truth = [default_model.class_names.index(p.parent.name) for p in scored.paths]
    accuracy = sum(int(t == p) for t, p in zip(truth, scored.logits.argmax(1).tolist())) / len(
        truth
    )
    assert len(truth) == 100
    assert accuracy >= 0.95


def test_bundled_examples_are_classified(default_model) -> None:
    from sxai_plugins.data.examples import example_images

    paths = example_images()
    assert len(paths) >= 4
    scored = score_paths(default_model, paths, progress=False)
    predicted = [default_model.class_names[i] for i in scored.logits.argmax(1).tolist()]
    assert predicted == [p.name.split("_")[0] for p in scored.paths]
