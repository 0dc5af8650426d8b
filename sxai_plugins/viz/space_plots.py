"""Pictures of a semantic space: its distribution (histogram + fitted normal, Q-Q plot), the
reference images at both ends, and the inversion of its target vector."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._utils.io import atomic_write
from ..spaces.space import SemanticSpace

INVERSION_PEAK = 30.0  # the paper scales the largest SSN of the visualisation target to 30


def distribution_plot(space: SemanticSpace, activations: np.ndarray, path: str | Path) -> Path:
    """Histogram of A_s over the reference set with the fitted normal, and the Q-Q plot with R²."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    a = np.asarray(activations, dtype=float)
    ref = space.reference
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.hist(a, bins=40, density=True, color="#9ecae1", edgecolor="white")
    xs = np.linspace(a.min(), a.max(), 200)
    left.plot(xs, stats.norm.pdf(xs, ref.mu, ref.sigma), color="#d62728", lw=2,
              label=f"N({ref.mu:.3g}, {ref.sigma:.3g}²)")
    left.set(title=f"{space.key}: A_s over {ref.n} reference images", xlabel="A_s", ylabel="density")
    left.legend(fontsize=8)
    (osm, osr), (slope, intercept, _r) = stats.probplot(a, dist="norm")
    right.scatter(osm, osr, s=6, color="#3182bd")
    right.plot(osm, slope * osm + intercept, color="#d62728", lw=1.5)
    right.set(title=f"Q-Q plot, R² = {ref.qq_r2:.3f}", xlabel="normal quantiles", ylabel="A_s")
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return out


def extreme_sheets(
    space: SemanticSpace,
    paths: Sequence[Path],
    probabilities: np.ndarray,
    folder: str | Path,
    low: float = 0.1,
    high: float = 0.9,
    limit: int = 24,
) -> list[Path]:
    """Contact sheets of the reference images with P_s < ``low`` and P_s > ``high``."""
    from ..search.index import Match, contact_sheet

    folder = Path(folder)
    written = []
    order = np.argsort(probabilities)
    for name, picked in (("low", [i for i in order if probabilities[i] < low][:limit]),
                         ("high", [i for i in order[::-1] if probabilities[i] > high][:limit])):
        if not picked:
            continue
        matches = [Match(str(paths[i]), space.class_name, {}, {space.key: float(probabilities[i])})
                   for i in picked]
        written.append(contact_sheet(matches, folder / f"{space.key}.{name}.png", spaces=[space.key]))
    return written


def inversion_target(space: SemanticSpace) -> torch.Tensor:
    """The traits that show the space most. v1: zero except the SSNs, in their proportions, the
    largest scaled to 30 (the paper's target). v2: the probe direction on standardised traits, its
    positive part (GAP traits cannot go below zero; negative weights mean "absent"), scaled alike."""
    if space.probe is not None:
        direction = space.probe.standardised().clamp(min=0)
        return direction / direction.max().clamp(min=1e-12) * INVERSION_PEAK
    target = torch.zeros(space.trait_dim)
    target[space.indices] = space.delta / space.delta.abs().max() * INVERSION_PEAK
    return target


def invert_spaces(model, spaces: Sequence[SemanticSpace], folder: str | Path, inverter: str = "fourier",
                  steps: int | None = None, progress: bool = True) -> list[Path]:
    """One PNG per space: the chosen inverter run on all the spaces' targets in one batch."""
    from ..plugin.manager import get_feature_inverter
    from .inversion import save_png

    targets = torch.stack([inversion_target(s) for s in spaces])
    images = get_feature_inverter(inverter).invert(model, targets, steps=steps, progress=progress)
    return save_png(images, folder, [f"{s.key}.inversion" for s in spaces])
