"""Scores of an attribution: against a concept region (:func:`mass_in_region`,
:func:`pointing_hit` on the 2-D map of :func:`attribution_map`), and Captum's ``infidelity``
(normalised) and ``sensitivity_max`` (:func:`infidelity_score`, :func:`sensitivity_score`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "INFIDELITY_NOISE_STD",
    "SENSITIVITY_RADIUS",
    "attribution_map",
    "infidelity_score",
    "mass_in_region",
    "pointing_hit",
    "sensitivity_score",
]

INFIDELITY_NOISE_STD = 0.003  # σ of the Gaussian pixel noise infidelity perturbs with
SENSITIVITY_RADIUS = 0.02  # L∞ radius of the uniform noise sensitivity_max perturbs with


def attribution_map(attributions: torch.Tensor) -> np.ndarray:
    """``B×H×W`` (or ``H×W`` for one ``3×H×W``) channel sums, as float64 numpy."""
    a = attributions.detach().float().cpu()
    return a.sum(dim=-3).double().numpy()


def _check_shapes(heat: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heat = np.asarray(heat, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if heat.shape != region.shape:
        raise ValueError(f"map {heat.shape} and region {region.shape} differ in shape")
    return heat, region


def mass_in_region(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of the positive attribution mass that lies inside ``region`` (``H×W`` bool).

    NaN when the map has no positive mass (nothing to share out).
    """
    heat, region = _check_shapes(heat, region)
    positive = np.clip(heat, 0.0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else float("nan")


def pointing_hit(heat: np.ndarray, region: np.ndarray) -> bool:
    """The pointing game: does the map's peak lie in ``region``?

    Maps from superpixel occlusion are flat over a superpixel, so the peak may be many pixels;
    it counts as inside when most of the pixels reaching the maximum are inside. A map with no
    positive value points nowhere (a miss).
    """
    heat, region = _check_shapes(heat, region)
    peak = heat.max()
    if not peak > 0:
        return False
    at_peak = heat >= peak
    return bool(region[at_peak].mean() > 0.5)


def _noise_perturbation(std: float, generator: torch.Generator) -> Callable:
    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype) * std
        noise = noise.to(inputs.device)
        return noise, inputs - noise

    return perturb


def infidelity_score(
    forward_func: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: Any = None,
    n_perturb_samples: int = 4,
    noise_std: float = INFIDELITY_NOISE_STD,
    seed: int = 0,
) -> torch.Tensor:
    """Captum's ``infidelity`` under Gaussian pixel noise (σ = ``noise_std``), normalised (so the
    attribution's scale does not matter); one value per image, lower is better. Seeded."""
    from captum.metrics import infidelity

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return infidelity(
            forward_func,
            _noise_perturbation(noise_std, generator),
            inputs.detach(),
            attributions.detach(),
            target=target,
            n_perturb_samples=n_perturb_samples,
            normalize=True,
        )


def sensitivity_score(
    explain: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    n_perturb_samples: int = 4,
    perturb_radius: float = SENSITIVITY_RADIUS,
    seed: int = 0,
    **kwargs: Any,
) -> torch.Tensor:
    """Captum's ``sensitivity_max``: the largest relative change of the explanation under uniform
    L∞ noise of ``perturb_radius``; one value per image, lower is better. Seeded.

    ``explain(inputs, **kwargs)`` must accept the inputs repeated ``n_perturb_samples`` times
    (Captum repeats ``target`` in ``kwargs`` to match).
    """
    from captum.metrics import sensitivity_max

    # Captum's default perturbation draws from the global RNG: fork it to stay deterministic
    # without disturbing the caller's random state.
    def single(x: torch.Tensor | tuple[torch.Tensor, ...], **kw: Any) -> Any:
        # Captum passes the clean inputs as a 1-tuple and expects a tuple back, the perturbed
        # ones as a bare tensor
        if isinstance(x, tuple):
            return (explain(x[0], **kw),)
        return explain(x, **kw)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return sensitivity_max(
            single,
            inputs.detach(),
            perturb_radius=perturb_radius,
            n_perturb_samples=n_perturb_samples,
            **kwargs,
        )
