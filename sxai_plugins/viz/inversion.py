"""Feature inversion: images whose GAP traits approach given trait vectors (e.g. principal components).

Two inverters are registered through the ``sxai_feature_inverters`` hook:

``tv`` — the paper's method (Methods, "Feature visualization"). Gradient descent on

    L(z) = MSE(traits(z), target) + λ · TV_β(z),
    TV_β(z) = mean over k, i, j of ((z[k,i,j+1] − z[k,i,j])² + (z[k,i+1,j] − z[k,i,j])²)^(β/2)

with λ = β = 2, learning rate 0.05 halved every 1,000 steps, 4,000 steps, starting from the image
that is zero after standardisation (the mean colour). As in the paper, ``z`` lives in the model's
standardised space; the paper writes plain gradient descent, we use Adam at the same rate (the raw
gradient of an MSE on traits is far too small for plain steps of 0.05). Two readings are ours and
worth knowing: the TV term is a *mean* over pixels rather than a sum (a sum over 224×224 pixels
times λ = 2 would flatten any image; the mean keeps λ independent of the image size), and after
every step ``z`` is clamped to the box that maps back to [0, 1] pixels, so the result is an image
(projected gradient descent; inside the box the objective is exactly the paper's).

``fourier`` — a modern, Lucent-style parameterisation: the image is a scaled Fourier spectrum with
decorrelated colour, squashed to [0, 1] by a sigmoid, and every step sees a randomly padded,
jittered, scaled and rotated copy. It needs far fewer steps (512 by default) and yields smoother,
more natural images; the random transforms are shared by the batch and drawn from a seeded
generator, so runs repeat exactly.

Both optimise all K targets in one batch. The loss is the *sum* of per-image losses, so each image's
gradient is what it would be alone: batching changes speed, not results (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .._utils.io import atomic_write
from .._utils.torch import frozen as _frozen
from ..models.trait_model import TraitModel

__all__ = ["FourierInverter", "TVInverter", "save_png", "total_variation"]


# ------------------------------------------------------------------------------------------ helpers
def _check_targets(model: TraitModel, targets: torch.Tensor | np.ndarray) -> torch.Tensor:
    targets = torch.as_tensor(
        np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets
    )
    if targets.ndim == 1:
        targets = targets[None]
    if targets.ndim != 2 or targets.shape[1] != model.trait_dim:
        raise ValueError(
            f"targets must be K×{model.trait_dim} trait vectors for {model.name!r}, "
            f"got shape {tuple(targets.shape)}"
        )
    return targets


def _image_size(model: TraitModel, size: int | Sequence[int] | None) -> tuple[int, int]:
    if size is None:
        return int(model.input_size[1]), int(model.input_size[2])
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _per_image_mse(traits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((traits - targets) ** 2).mean(dim=1)


def total_variation(z: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per-image TV_β of a ``K×3×H×W`` batch: the mean over channels and pixels of
    ``(dx² + dy²)^(β/2)`` with forward differences (the last row and column have no neighbour)."""
    dx = z[:, :, :-1, 1:] - z[:, :, :-1, :-1]
    dy = z[:, :, 1:, :-1] - z[:, :, :-1, :-1]
    squared = dx**2 + dy**2
    # β = 2 is the paper's choice; the power is skipped there so the gradient at 0 stays finite
    tv = squared if beta == 2 else (squared + 1e-12) ** (beta / 2)
    return tv.flatten(1).mean(dim=1)


def _model_device_dtype(model: TraitModel) -> tuple[torch.device, torch.dtype]:
    return model.mean.device, model.mean.dtype


# ----------------------------------------------------------------------------------------------- tv
@dataclass
class TVInverter:
    """The paper's TV-regularised inversion (see the module docstring)."""

    name: str = "tv"
    lam: float = 2.0
    beta: float = 2.0
    lr: float = 0.05
    halve_every: int = 1000
    default_steps: int = 4000

    def invert(
        self,
        model: TraitModel,
        targets: torch.Tensor,
        steps: int | None = None,
        size: int | Sequence[int] | None = None,
        seed: int = 0,
        progress: bool = True,
        **opts: Any,
    ) -> torch.Tensor:
        """Images ``K×3×H×W`` in [0, 1] whose traits approach ``targets`` (``K×C``).

        Args:
            model: the network whose GAP traits are matched.
            targets: trait vectors, one per image; all K are optimised in one batch.
            steps: iterations (default 4,000, the paper's).
            size: output size (default: the model's input size).
            seed: unused by this deterministic method (the start is the mean colour); kept so
                every inverter takes the same arguments.
            progress: show a progress bar.
            **opts: ``lam``, ``beta``, ``lr``, ``halve_every`` override the paper's values.
        """
        unknown = set(opts) - {"lam", "beta", "lr", "halve_every"}
        if unknown:
            raise TypeError(f"tv inverter: unknown options {sorted(unknown)}")
        lam = float(opts.get("lam", self.lam))
        beta = float(opts.get("beta", self.beta))
        lr = float(opts.get("lr", self.lr))
        halve_every = int(opts.get("halve_every", self.halve_every))
        steps = self.default_steps if steps is None else int(steps)
        device, dtype = _model_device_dtype(model)
        targets = _check_targets(model, targets).to(device=device, dtype=dtype)
        height, width = _image_size(model, size)
        mean, std = model.mean.to(dtype), model.std.to(dtype)
        low, high = (0 - mean) / std, (1 - mean) / std  # the standardised values of pixels 0 and 1

        z = torch.zeros(
            len(targets), 3, height, width, device=device, dtype=dtype, requires_grad=True
        )
        optimiser = torch.optim.Adam([z], lr=lr)
        schedule = torch.optim.lr_scheduler.StepLR(
            optimiser, step_size=max(halve_every, 1), gamma=0.5
        )
        with _frozen(model), torch.enable_grad():
            bar = tqdm(range(steps), desc="inversion (tv)", unit="step", disable=not progress)
            for step in bar:
                optimiser.zero_grad(set_to_none=True)
                traits = model.traits(z * std + mean)
                loss = _per_image_mse(traits, targets) + lam * total_variation(z, beta)
                loss.sum().backward()
                optimiser.step()
                schedule.step()
                with torch.no_grad():
                    z.copy_(torch.maximum(torch.minimum(z, high), low))
                if progress and step % 50 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach().mean()):.4g}")
        return (z.detach() * std + mean).clamp(0, 1)


# ------------------------------------------------------------------------------------------ fourier
# Lucent's colour correlation (square root of the ImageNet colour covariance, from its SVD)
_COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
_COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / np.max(
    np.linalg.norm(_COLOR_CORRELATION_SVD_SQRT, axis=0)
)


def _rfft2d_freqs(height: int, width: int) -> np.ndarray:
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)
    return np.sqrt(fx * fx + fy * fy)


@dataclass
class FourierInverter:
    """Lucent-style inversion: decorrelated Fourier parameterisation plus random transforms.

    Options (keyword arguments of :meth:`invert`): ``lr`` (0.05), ``decay_power`` (1.0: how fast
    the spectrum's initial and learned amplitude falls with frequency), ``init_sd`` (0.01),
    ``pad`` and ``jitter`` in pixels (default: Lucent's 12 and 8 at 224 px, scaled with the image
    size, so a small image is not shifted by a third of its width), ``scales`` (0.9–1.1),
    ``angles`` (−10…10 degrees).
    """

    name: str = "fourier"
    default_steps: int = 512
    lr: float = 0.05
    decay_power: float = 1.0
    init_sd: float = 0.01
    pad: int | None = None
    jitter: int | None = None
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(range(-10, 11)) + (0,) * 5

    def invert(
        self,
        model: TraitModel,
        targets: torch.Tensor,
        steps: int | None = None,
        size: int | Sequence[int] | None = None,
        seed: int = 0,
        progress: bool = True,
        **opts: Any,
    ) -> torch.Tensor:
        """Images ``K×3×H×W`` in [0, 1] whose traits approach ``targets`` (``K×C``).

        ``seed`` fixes the random initial spectrum and the sequence of transforms.
        """
        known = {"lr", "decay_power", "init_sd", "pad", "jitter", "scales", "angles"}
        unknown = set(opts) - known
        if unknown:
            raise TypeError(f"fourier inverter: unknown options {sorted(unknown)}")
        cfg = {key: opts.get(key, getattr(self, key)) for key in known}
        steps = self.default_steps if steps is None else int(steps)
        device, dtype = _model_device_dtype(model)
        targets = _check_targets(model, targets).to(device=device, dtype=dtype)
        height, width = _image_size(model, size)
        side = max(height, width)
        if cfg["pad"] is None:
            cfg["pad"] = round(12 * side / 224)
        if cfg["jitter"] is None:
            cfg["jitter"] = max(round(8 * side / 224), 1)
        generator = torch.Generator().manual_seed(int(seed))

        freqs = _rfft2d_freqs(height, width)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** float(cfg["decay_power"])
        scale_t = torch.as_tensor(scale, dtype=dtype, device=device)[None, None, ..., None]
        spectrum = torch.randn((len(targets), 3, *freqs.shape, 2), generator=generator, dtype=dtype)
        spectrum = (spectrum * float(cfg["init_sd"])).to(device).requires_grad_(True)
        colour = torch.as_tensor(_COLOR_CORRELATION, dtype=dtype, device=device)

        def render() -> torch.Tensor:
            complex_spectrum = torch.view_as_complex((scale_t * spectrum).contiguous())
            image = torch.fft.irfftn(complex_spectrum, s=(height, width), norm="ortho") / 4.0
            image = torch.einsum("kchw,dc->kdhw", image, colour)
            return torch.sigmoid(image)

        optimiser = torch.optim.Adam([spectrum], lr=float(cfg["lr"]))
        with _frozen(model), torch.enable_grad():
            bar = tqdm(range(steps), desc="inversion (fourier)", unit="step", disable=not progress)
            for step in bar:
                optimiser.zero_grad(set_to_none=True)
                view = _random_transform(render(), generator, cfg)
                loss = _per_image_mse(model.traits(view), targets)
                loss.sum().backward()
                optimiser.step()
                if progress and step % 25 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach().mean()):.4g}")
        with torch.no_grad():
            return render().clamp(0, 1)


def _pick(options: Sequence[Any], generator: torch.Generator) -> Any:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _jitter(image: torch.Tensor, amount: int, generator: torch.Generator) -> torch.Tensor:
    if amount <= 0:
        return image
    dy, dx = (int(v) for v in torch.randint(amount, (2,), generator=generator))
    height, width = image.shape[-2:]
    return image[..., dy : height - amount + dy, dx : width - amount + dx]


def _random_transform(image: torch.Tensor, generator: torch.Generator, cfg: dict) -> torch.Tensor:
    """Lucent's ``standard_transforms``: pad, jitter, scale, rotate, jitter (shared by the batch)."""
    pad = int(cfg["pad"])
    if pad > 0:
        image = F.pad(image, (pad, pad, pad, pad), mode="constant", value=0.5)
    image = _jitter(image, int(cfg["jitter"]), generator)
    factor = float(_pick(cfg["scales"], generator))
    if factor != 1.0:
        height, width = image.shape[-2:]
        image = F.interpolate(
            image,
            size=(max(int(height * factor), 8), max(int(width * factor), 8)),
            mode="bilinear",
            align_corners=False,
        )
    angle = math.radians(float(_pick(cfg["angles"], generator)))
    if angle != 0.0:
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor(
            [[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=image.dtype, device=image.device
        )
        grid = F.affine_grid(theta.expand(len(image), 2, 3), list(image.shape), align_corners=False)
        image = F.grid_sample(image, grid, padding_mode="border", align_corners=False)
    return _jitter(image, max(int(cfg["jitter"]) // 2, 0), generator)


# --------------------------------------------------------------------------------------------- save
def save_png(
    images: torch.Tensor | np.ndarray, folder: str | Path, names: Sequence[str]
) -> list[Path]:
    """Write ``K×3×H×W`` images in [0, 1] as ``folder/<name>.png`` (each atomically).

    ``names`` are file stems (``.png`` is added when missing). Returns the written paths.
    """
    images = torch.as_tensor(images).detach().float().cpu()
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected K×3×H×W images, got shape {tuple(images.shape)}")
    if len(names) != len(images):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    folder = Path(folder)
    written = []
    for image, name in zip(images, names):
        pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        target = folder / (name if name.endswith(".png") else f"{name}.png")
        pil = Image.fromarray(pixels)
        written.append(atomic_write(target, lambda tmp, pil=pil: pil.save(tmp, format="PNG")))
    return written
