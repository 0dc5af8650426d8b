"""Pictures of a space: the paper's inversion target, the distribution plot, the contact sheets."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sxai_plugins.spaces.space import Reference, SemanticSpace
from sxai_plugins.viz.plots import distribution_plot, extreme_sheets
from sxai_plugins.viz.space_inversion import INVERSION_PEAK, inversion_target, invert_spaces


def space(trait_dim: int = 8) -> SemanticSpace:
    s = SemanticSpace(
        "cat", "eyes", "tiny", "f", trait_dim, torch.tensor([5, 2]), torch.tensor([-0.5, 2.0])
    )
    s.reference = Reference(0.0, 1.0, -2.0, 2.5, 200, 0.99)
    return s


def test_inversion_target_is_zero_but_the_ssns_largest_scaled_to_30() -> None:
    target = inversion_target(space())
    assert target[2] == INVERSION_PEAK == 30.0
    assert target[5] == -7.5  # keeps Δ's proportion and sign
    assert torch.count_nonzero(target) == 2


def test_distribution_plot_and_sheets_are_written(tmp_path, rng) -> None:
    s = space()
    path = distribution_plot(s, rng.normal(0, 1, 200), tmp_path / "d.png")
    assert Image.open(path).size[0] > 400
    images = []
    for i in range(6):
        Image.new("RGB", (40, 30), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")
    written = extreme_sheets(
        s, images, np.array([0.01, 0.05, 0.5, 0.6, 0.95, 0.99]), tmp_path / "sheets"
    )
    assert sorted(p.name for p in written) == ["cat.eyes.high.png", "cat.eyes.low.png"]
    assert not list((tmp_path / "sheets").glob("*.tmp"))


def test_invert_spaces_moves_traits_toward_the_target(tmp_path, tiny_model) -> None:
    s = space(tiny_model.trait_dim)
    (path,) = invert_spaces(tiny_model, [s], tmp_path, "tv", steps=60, progress=False)
    assert path.name == "cat.eyes.inversion.png"
    image = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)[
        None
    ]
    target = inversion_target(s)
    with torch.no_grad():
        before = (tiny_model.traits(torch.full_like(image, 0.5)) - target).norm()
        after = (tiny_model.traits(image) - target).norm()
    assert after < before
