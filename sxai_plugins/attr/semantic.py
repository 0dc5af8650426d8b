"""Captum attributions of a semantic space's activation, and of the class logit, compared.

:class:`SemanticAttribution` attributes a space's weighted activation ``A_s`` (not a class logit)
to the input pixels, with Captum's own attribution classes on the forward function
``images -> A_s`` (:class:`SpaceActivation`). :class:`ClassAttribution` runs the same methods on
``model.logits`` for a class (the predicted one by default), so both can be compared like with like.

Methods (``method=``), all returning a tensor shaped like the inputs:

- ``"occlusion"``: superpixel occlusion, Captum's ``FeatureAblation`` over SLIC superpixels
  (``feature_mask``, or ``n_segments`` SLIC superpixels per image); removed superpixels take the
  ``fill`` background (``"blur"`` by default: it wipes out a part but keeps the layout).
- ``"window"``: Captum's ``Occlusion`` with a sliding square window (``window`` pixels, default a
  quarter of the shorter side, stride half of it) filled the same way.
- ``"ig"``: ``IntegratedGradients`` from a black image (``n_steps`` 32 by default).
- ``"saliency"``: ``Saliency`` (absolute gradients).
- ``"input_x_gradient"``: ``InputXGradient``.
- ``"gradcam"``: ``LayerGradCam`` on the body's output (the last conv block's map), ReLU applied,
  upsampled with ``LayerAttribution.interpolate`` (bilinear) and spread evenly over the 3 channels
  (so the channel sum is the Grad-CAM map).

The result feeds ``captum.attr.visualization.visualize_image_attr`` after
``attr[i].permute(1, 2, 0).numpy()``.

Comparison metrics on a 2-D map (the channel sum, :func:`attribution_map`) and a concept region:
:func:`mass_in_region` (share of the positive attribution mass inside the region) and
:func:`pointing_hit` (the peak lies in the region); :func:`infidelity_score` and
:func:`sensitivity_score` wrap Captum's ``infidelity`` (normalised) and ``sensitivity_max``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._utils.torch import frozen
from ..data.superpixels import backgrounds, slic_many
from ..models.trait_model import TraitModel
from ..spaces.space import SemanticSpace

__all__ = [
    "METHODS",
    "ClassAttribution",
    "ComparisonReport",
    "MethodScore",
    "SemanticAttribution",
    "SpaceActivation",
    "attribute",
    "attribution_map",
    "compare_attributions",
    "infidelity_score",
    "mass_in_region",
    "pointing_hit",
    "sensitivity_score",
    "superpixel_mask",
]

METHODS: tuple[str, ...] = ("occlusion", "window", "ig", "saliency", "input_x_gradient", "gradcam")
_FILLS = ("black", "mean", "blur")


class SpaceActivation(nn.Module):
    """``images -> A_s``: the forward function whose output the semantic attributions explain.

    A module (not a lambda) so that layer methods such as Grad-CAM can hook the model's body.
    """

    def __init__(self, model: TraitModel, space: SemanticSpace) -> None:
        super().__init__()
        if space.trait_dim != model.trait_dim:
            raise ValueError(
                f"space {space.key} has {space.trait_dim} trait channels, the model {model.trait_dim}")
        self.model = model
        self.space_key = space.key
        self.register_buffer("weights", space.weight_vector())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.traits(images) @ self.weights


def superpixel_mask(inputs: torch.Tensor, n_segments: int = 40) -> torch.Tensor:
    """``B×1×H×W`` long SLIC labels of each image (a Captum ``feature_mask``, broadcast on RGB)."""
    arrays = inputs.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    masks = np.stack(slic_many(arrays, n_segments))
    return torch.from_numpy(masks).long()[:, None].to(inputs.device)


def _fill_baselines(inputs: torch.Tensor, fill: str | float | torch.Tensor) -> torch.Tensor | float:
    if isinstance(fill, str):
        if fill not in _FILLS:
            raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(_FILLS)} or a number")
        # clamped: robustness metrics feed noisy inputs slightly outside [0, 1]
        return backgrounds(inputs.detach().clamp(0, 1), fill)  # type: ignore[arg-type]
    return fill


def _gradcam(forward_func: Callable, inputs: torch.Tensor, target: Any, layer: nn.Module | None,
             relu: bool = True) -> torch.Tensor:
    from captum.attr import LayerAttribution, LayerGradCam

    if layer is None:
        raise ValueError("method 'gradcam' needs a layer (the model's last conv block)")
    cam = LayerGradCam(forward_func, layer).attribute(inputs, target=target, relu_attributions=relu)
    cam = LayerAttribution.interpolate(cam, tuple(inputs.shape[2:]), interpolate_mode="bilinear")
    return (cam / inputs.shape[1]).expand_as(inputs).contiguous()


def _detached(func: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Attributions are results, not part of a graph (Grad-CAM's upsampling would keep one)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        return func(*args, **kwargs).detach()

    return wrapper


@_detached
def attribute(
    forward_func: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    method: str = "occlusion",
    *,
    target: Any = None,
    layer: nn.Module | None = None,
    feature_mask: torch.Tensor | None = None,
    n_segments: int = 40,
    fill: str | float | torch.Tensor = "blur",
    window: int | None = None,
    n_steps: int = 32,
    perturbations_per_eval: int = 8,
    **kwargs: Any,
) -> torch.Tensor:
    """Attribute ``forward_func(inputs)`` (per image a scalar, or the ``target`` column) to ``inputs``.

    Args:
        forward_func: images ``B×3×H×W`` in [0, 1] -> ``B`` or ``B×K`` outputs.
        method: one of :data:`METHODS` (see the module docstring).
        target: Captum's target (class index per image) when the output is ``B×K``.
        layer: the layer Grad-CAM hooks (needed for ``"gradcam"`` only).
        feature_mask: ``B×1×H×W`` or ``B×3×H×W`` groups for ``"occlusion"`` (default: SLIC).
        n_segments: SLIC superpixels per image when ``feature_mask`` is not given.
        fill: what occluded pixels become: ``"black"``, ``"mean"``, ``"blur"``, a number or a tensor.
        window: the sliding window's side in pixels for ``"window"``.
        n_steps: integration steps for ``"ig"``.
        perturbations_per_eval: occlusions evaluated per forward pass (memory vs. speed).
        **kwargs: passed on to the Captum method's ``attribute``.

    Returns:
        A tensor shaped like ``inputs`` (detached).
    """
    from captum.attr import (
        FeatureAblation,
        InputXGradient,
        IntegratedGradients,
        Occlusion,
        Saliency,
    )

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    if feature_mask is not None and method != "occlusion":
        raise ValueError(f"feature_mask only applies to method 'occlusion', not {method!r}")
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be B×3×H×W, got shape {tuple(inputs.shape)}")
    inputs = inputs.detach()
    if method == "occlusion":
        mask = superpixel_mask(inputs, n_segments) if feature_mask is None else feature_mask.long()
        return FeatureAblation(forward_func).attribute(
            inputs, baselines=_fill_baselines(inputs, fill), target=target, feature_mask=mask,
            perturbations_per_eval=perturbations_per_eval, **kwargs)
    if method == "window":
        side = window or max(1, int(np.ceil(min(inputs.shape[2:]) / 4)))
        stride = max(1, side // 2)
        return Occlusion(forward_func).attribute(
            inputs, sliding_window_shapes=(inputs.shape[1], side, side),
            strides=(inputs.shape[1], stride, stride), baselines=_fill_baselines(inputs, fill),
            target=target, perturbations_per_eval=perturbations_per_eval, **kwargs)
    # gradient methods: ask for input gradients up front (Captum warns when it has to)
    inputs = inputs.requires_grad_()
    if method == "ig":
        kwargs.setdefault("internal_batch_size", max(1, n_steps))
        return IntegratedGradients(forward_func).attribute(
            inputs, target=target, n_steps=n_steps, **kwargs)
    if method == "saliency":
        return Saliency(forward_func).attribute(inputs, target=target, **kwargs)
    if method == "input_x_gradient":
        return InputXGradient(forward_func).attribute(inputs, target=target, **kwargs)
    return _gradcam(forward_func, inputs, target, layer, **kwargs)


class _Attribution:
    """Shared by the semantic and the class attribution: a forward function and the Grad-CAM layer."""

    forward_func: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, model: TraitModel, layer: nn.Module | None = None) -> None:
        self.model = model
        # the body's output is the last conv map, what the GAP traits are pooled from
        self.layer = layer if layer is not None else model.body

    def has_convergence_delta(self) -> bool:
        return False

    def _run(self, inputs: torch.Tensor, method: str, target: Any, **kwargs: Any) -> torch.Tensor:
        inputs = inputs.to(next(self.model.parameters()).device)
        with _frozen(self.model):
            return attribute(self.forward_func, inputs, method, target=target, layer=self.layer,
                             **kwargs)


class SemanticAttribution(_Attribution):
    """Captum-style attribution of a semantic space's ``A_s`` to the input pixels.

    >>> attr = SemanticAttribution(model, space).attribute(images, method="occlusion")
    >>> attr.shape == images.shape
    True

    Positive values mark pixels whose presence raises ``A_s`` (evidence for the concept).
    """

    def __init__(self, model: TraitModel, space: SemanticSpace, layer: nn.Module | None = None) -> None:
        super().__init__(model, layer)
        self.space = space
        self.forward_func = SpaceActivation(model, space).to(next(model.parameters()).device)

    def attribute(
        self,
        inputs: torch.Tensor,
        method: str = "occlusion",
        feature_mask: torch.Tensor | None = None,
        n_segments: int = 40,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Attributions of ``A_s`` shaped like ``inputs`` (``B×3×H×W`` in [0, 1]); see :func:`attribute`."""
        return self._run(inputs, method, None, feature_mask=feature_mask, n_segments=n_segments,
                         **kwargs)


class ClassAttribution(_Attribution):
    """The same methods on ``model.logits``: the usual class attribution, for comparison."""

    def __init__(self, model: TraitModel, layer: nn.Module | None = None) -> None:
        super().__init__(model, layer)
        self.forward_func = model.logits

    def predicted(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.logits(inputs.to(next(self.model.parameters()).device)).argmax(1)

    def attribute(
        self,
        inputs: torch.Tensor,
        method: str = "ig",
        target: int | Sequence[int] | torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
        n_segments: int = 40,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Attributions of the ``target`` logit (default: each image's predicted class)."""
        if target is None:
            target = self.predicted(inputs)
        return self._run(inputs, method, target, feature_mask=feature_mask, n_segments=n_segments,
                         **kwargs)


# Weights' gradients off while attributing (only input gradients are needed, and autograd then
# skips every weight-gradient kernel); the model's train/eval mode is left as the caller set it.
_frozen = functools.partial(frozen, eval_mode=False)


# ------------------------------------------------------------------------------------- metrics
def attribution_map(attributions: torch.Tensor) -> np.ndarray:
    """``B×H×W`` (or ``H×W`` for one ``3×H×W``) channel sums, as float64 numpy."""
    a = attributions.detach().float().cpu()
    return a.sum(dim=-3).double().numpy()


def mass_in_region(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of the positive attribution mass that lies inside ``region`` (``H×W`` bool).

    NaN when the map has no positive mass (nothing to share out).
    """
    heat = np.asarray(heat, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if heat.shape != region.shape:
        raise ValueError(f"map {heat.shape} and region {region.shape} differ in shape")
    positive = np.clip(heat, 0.0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else float("nan")


def pointing_hit(heat: np.ndarray, region: np.ndarray) -> bool:
    """The pointing game: does the map's peak lie in ``region``?

    Maps from superpixel occlusion are flat over a superpixel, so the peak may be many pixels;
    it counts as inside when most of the pixels reaching the maximum are inside. A map with no
    positive value points nowhere (a miss).
    """
    heat = np.asarray(heat, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if heat.shape != region.shape:
        raise ValueError(f"map {heat.shape} and region {region.shape} differ in shape")
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
    noise_std: float = 0.003,
    seed: int = 0,
) -> torch.Tensor:
    """Captum's ``infidelity`` under Gaussian pixel noise (σ = ``noise_std``), normalised (so the
    attribution's scale does not matter); one value per image, lower is better. Seeded."""
    from captum.metrics import infidelity

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return infidelity(forward_func, _noise_perturbation(noise_std, generator), inputs.detach(),
                          attributions.detach(), target=target, n_perturb_samples=n_perturb_samples,
                          normalize=True)


def sensitivity_score(
    explain: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    n_perturb_samples: int = 4,
    perturb_radius: float = 0.02,
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
        return sensitivity_max(single, inputs.detach(), perturb_radius=perturb_radius,
                               n_perturb_samples=n_perturb_samples, **kwargs)


# ---------------------------------------------------------------------------------- comparison
@dataclass
class MethodScore:
    """One (target, method) pair over an annotated set (means over the images scored)."""

    target: str  # "class" (the predicted class's logit) or a space key such as "cat.eyes"
    method: str
    n_images: int
    mass_in_region: float  # mean share of the positive mass inside the concept's region
    pointing: float  # share of images whose peak lies in the region
    infidelity: float | None = None  # mean over the robustness subset (lower is better)
    sensitivity: float | None = None  # mean sensitivity_max over the same subset (lower is better)
    n_robustness: int = 0
    seconds_per_image: float = 0.0


@dataclass
class ComparisonReport:
    """Class attributions beside semantic attributions, scored against annotated concept regions."""

    space: str
    concept: str
    region_mode: str
    n_images: int
    region_fraction: float  # mean share of the image the region covers: chance for both metrics
    rows: list[MethodScore]
    skipped: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text (Markdown) table of the rows."""
        def num(value: float | None, fmt: str) -> str:
            return "–" if value is None or value != value else format(value, fmt)

        lines = [
            f"space {self.space}: {self.n_images} annotated images showing {self.concept!r}; region = "
            f"{self.region_mode} (covers {self.region_fraction:.1%} of an image on average = chance)",
            "",
            "| target | method | mass in region | pointing game | infidelity ↓ | sensitivity_max ↓ | s/image |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.target} | {r.method} | {num(r.mass_in_region, '.3f')} | {num(r.pointing, '.3f')} "
                f"| {num(r.infidelity, '.3g')} | {num(r.sensitivity, '.3g')} | {r.seconds_per_image:.2f} |")
        if self.rows and self.rows[0].n_robustness:
            lines.append(f"\ninfidelity and sensitivity_max over the first {self.rows[0].n_robustness} "
                         "image(s) only (costly).")
        return "\n".join(lines)


def _parse_methods(methods: Sequence[str]) -> list[str]:
    methods = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; choose from {', '.join(METHODS)}")
    return methods


def compare_attributions(
    model: TraitModel,
    space: SemanticSpace,
    annotations: Sequence[Any],
    *,
    concept: str | None = None,
    methods: Sequence[str] = ("ig", "occlusion", "gradcam", "saliency"),
    semantic_methods: Sequence[str] = ("occlusion",),
    region_mode: str = "disc",
    robustness_n: int = 2,
    n_perturb_samples: int = 4,
    options: dict[str, Any] | None = None,
    progress: bool = True,
) -> ComparisonReport:
    """Score class and semantic attributions against annotated concept regions.

    For each annotated image (:class:`~sxai_plugins.concepts.ConceptAnnotation` showing
    ``concept``, default the space's) the image is squashed to the model's input size, the region
    comes from :func:`~sxai_plugins.concepts.concept_region` (``region_mode``; ``"disc"``: discs of
    6% of the shorter side around the annotated points, a tolerance like the pointing game's own),
    and every class method (on the predicted class's logit) and semantic method (on ``A_s``) is
    scored with :func:`mass_in_region` and :func:`pointing_hit`. Captum's ``infidelity`` and
    ``sensitivity_max`` run on the first ``robustness_n`` images only (each costs
    ``n_perturb_samples`` more attributions). Unreadable images are skipped and listed.
    ``options`` (``n_steps``, ``n_segments``, ``fill``, ``window``) go to every :func:`attribute`.
    """
    from tqdm.auto import tqdm

    from .._utils.errors import ImageLoadError
    from ..data.concepts import concept_region

    concept = concept or space.concept
    methods, semantic_methods = _parse_methods(methods), _parse_methods(semantic_methods)
    options = dict(options or {})
    size = (model.input_size[1], model.input_size[2])
    device = next(model.parameters()).device
    semantic, klass = SemanticAttribution(model, space), ClassAttribution(model)
    plans = [("class", m, klass) for m in methods] + [(space.key, m, semantic) for m in semantic_methods]
    mass: dict[tuple[str, str], list[float]] = {(t, m): [] for t, m, _ in plans}
    hits = {key: [] for key in mass}
    infid = {key: [] for key in mass}
    sens = {key: [] for key in mass}
    seconds = dict.fromkeys(mass, 0.0)
    fractions: list[float] = []
    skipped: list[str] = []
    for index, ann in enumerate(tqdm(annotations, desc="comparing", unit="img", disable=not progress)):
        try:
            image = ann.load(size)
        except ImageLoadError as exc:
            skipped.append(str(exc))
            continue
        region = concept_region(image, ann.geometry(concept, image.shape[:2]), mode=region_mode)
        if not region.any():
            skipped.append(f"{ann.image_path}: {concept!r} not visible")
            continue
        fractions.append(float(region.mean()))
        x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous().to(device)
        target = klass.predicted(x)
        mask = superpixel_mask(x, options.get("n_segments", 40))
        robust = len(fractions) <= robustness_n
        for name, method, engine in plans:
            # one SLIC per image, shared by every occlusion (class and semantic see the same parts)
            kw = dict(options, feature_mask=mask) if method == "occlusion" else dict(options)
            t = None if engine is semantic else target
            start = time.perf_counter()
            with _frozen(model):
                attr = attribute(engine.forward_func, x, method, target=t, layer=engine.layer, **kw)
            seconds[(name, method)] += time.perf_counter() - start
            heat = attribution_map(attr)[0]
            mass[(name, method)].append(mass_in_region(heat, region))
            hits[(name, method)].append(float(pointing_hit(heat, region)))
            if robust:
                with _frozen(model):
                    infid[(name, method)].append(float(infidelity_score(
                        engine.forward_func, x, attr, target=t, n_perturb_samples=n_perturb_samples,
                        seed=index)[0]))
                    sens[(name, method)].append(float(_sensitivity(
                        engine, x, method, t, mask, kw, n_perturb_samples, index)[0]))
    n = len(fractions)
    rows = [
        MethodScore(
            target=name, method=method, n_images=n,
            mass_in_region=float(np.nanmean(mass[(name, method)])) if n else float("nan"),
            pointing=float(np.mean(hits[(name, method)])) if n else float("nan"),
            infidelity=float(np.mean(infid[(name, method)])) if infid[(name, method)] else None,
            sensitivity=float(np.mean(sens[(name, method)])) if sens[(name, method)] else None,
            n_robustness=len(infid[(name, method)]),
            seconds_per_image=seconds[(name, method)] / n if n else 0.0,
        )
        for name, method, _ in plans
    ]
    settings = {"methods": methods, "semantic_methods": semantic_methods,
                "robustness_n": robustness_n, "n_perturb_samples": n_perturb_samples,
                "infidelity_noise_std": 0.003, "sensitivity_radius": 0.02, **options}
    return ComparisonReport(space.key, concept, region_mode, n,
                            float(np.mean(fractions)) if n else float("nan"), rows, skipped, settings)


def _sensitivity(engine: _Attribution, x: torch.Tensor, method: str, target: Any,
                 mask: torch.Tensor, kw: dict[str, Any], n_perturb_samples: int, seed: int) -> torch.Tensor:
    """sensitivity_max of one method; the superpixels stay those of the clean image, so the score
    measures the model's explanation, not SLIC's own instability."""
    kw = {k: v for k, v in kw.items() if k != "feature_mask"}

    def explain(inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        extra = dict(kw)
        if method == "occlusion":
            extra["feature_mask"] = mask.repeat_interleave(inputs.shape[0] // mask.shape[0], dim=0)
        return attribute(engine.forward_func, inputs, method, target=target, layer=engine.layer, **extra)

    if target is None:
        return sensitivity_score(explain, x, n_perturb_samples=n_perturb_samples, seed=seed)
    return sensitivity_score(explain, x, n_perturb_samples=n_perturb_samples, seed=seed, target=target)
