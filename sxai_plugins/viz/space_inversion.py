"""The inversion of a semantic space: the traits that show it most, and the picture an inverter
makes of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..spaces.space import SemanticSpace

INVERSION_PEAK = 30.0  # the paper scales the largest SSN of the visualisation target to 30


def inversion_target(space: SemanticSpace) -> torch.Tensor:
    """The traits that show the space most. v1: zero except the SSNs, in their proportions, the
    largest scaled to 30 (the paper's target). v2: the probe direction on standardised traits, its
    positive part (GAP traits cannot go below zero; negative weights mean "absent"), scaled alike.
    A probe that also reads pooled layer outputs is inverted through its weights on the traits."""
    if space.probe is not None:
        direction = space.probe.standardised()[: space.trait_dim].clamp(min=0)
        return direction / direction.max().clamp(min=1e-12) * INVERSION_PEAK
    target = torch.zeros(space.trait_dim)
    target[space.indices] = space.delta / space.delta.abs().max() * INVERSION_PEAK
    return target


def invert_spaces(
    model,
    spaces: Sequence[SemanticSpace],
    folder: str | Path,
    inverter: str = "fourier",
    steps: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """One PNG per space: the chosen inverter run on all the spaces' targets in one batch."""
    from ..plugin.manager import get_feature_inverter
    from .inversion import save_png

    targets = torch.stack([inversion_target(s) for s in spaces])
    images = get_feature_inverter(inverter).invert(model, targets, steps=steps, progress=progress)
    return save_png(images, folder, [f"{s.key}.inversion" for s in spaces])
