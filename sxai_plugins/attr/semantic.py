"""Captum attributions of a semantic space's activation, and of the class logit, compared.

:class:`PixelAttribution` is a Captum :class:`~captum.attr.Attribution`: a forward function
``images -> outputs`` with an attribution method, one of :data:`METHODS` by name or any Captum
attribution class, called as Captum's own: ``attribute(inputs, baselines=None, target=None, ...)``.
:class:`SemanticAttribution` attributes a space's weighted activation ``A_s`` (not a class logit)
to the input pixels (the forward function ``images -> A_s``, :class:`SpaceActivation`);
:class:`ClassAttribution` attributes ``model.logits`` for a class (the predicted one by default),
so both can be compared like with like.

Named methods, all returning a tensor shaped like the inputs:

- ``"occlusion"``: superpixel occlusion, Captum's ``FeatureAblation`` over SLIC superpixels
  (``feature_mask``, or ``n_segments`` SLIC superpixels per image).
- ``"window"``: Captum's ``Occlusion`` with a sliding square window (``window`` pixels, default a
  quarter of the shorter side, stride half of it).
- ``"ig"``: ``IntegratedGradients`` (``n_steps`` 32 by default; Captum's black baseline).
- ``"saliency"``: ``Saliency`` (absolute gradients).
- ``"input_x_gradient"``: ``InputXGradient``.
- ``"gradcam"``: ``LayerGradCam`` on the body's output (the last conv block's map), ReLU applied,
  upsampled with ``LayerAttribution.interpolate`` (bilinear) and spread evenly over the 3 channels
  (so the channel sum is the Grad-CAM map).

``baselines`` are Captum's (a number, or a tensor broadcastable to the inputs) for the methods
that take them (both occlusions and ``"ig"``); a name of
:data:`~sxai_plugins.data.superpixels.FILLS` is a convenience: ``"black"``, ``"mean"`` (each
image's mean colour) or ``"blur"`` (the image blurred), made from the inputs. The occlusions'
default is ``"blur"``: it wipes out a part but keeps the layout. Other keywords go on to the
Captum method's ``attribute`` (``return_convergence_delta=True`` with ``"ig"``, the one named
method whose :meth:`~PixelAttribution.has_convergence_delta` is True).

The result feeds ``captum.attr.visualization.visualize_image_attr`` after
``attr[i].permute(1, 2, 0).numpy()``; :mod:`sxai_plugins.attr.metrics` scores it.
:func:`compare_attributions` scores class and semantic attributions against annotated concept
regions.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from captum.attr import (
    Attribution,
    FeatureAblation,
    GradientAttribution,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NeuronAttribution,
    Occlusion,
    Saliency,
)
from torch import nn

from .._utils.torch import frozen
from ..data.superpixels import backgrounds, slic_many
from ..models.trait_model import TraitModel
from ..spaces.space import SemanticSpace
from . import METHODS
from .metrics import (
    INFIDELITY_NOISE_STD,
    SENSITIVITY_RADIUS,
    attribution_map,
    infidelity_score,
    mass_in_region,
    pointing_hit,
    sensitivity_score,
)

__all__ = [
    "METHODS",
    "ClassAttribution",
    "ComparisonReport",
    "MethodScore",
    "PixelAttribution",
    "SemanticAttribution",
    "SpaceActivation",
    "compare_attributions",
    "comparison_options",
    "predicted_class",
    "superpixel_mask",
]

N_SEGMENTS = 40  # SLIC superpixels per image for "occlusion"
IG_STEPS = 32  # integration steps of "ig"
PERTURBATIONS_PER_EVAL = 8  # occlusions evaluated per forward pass (memory vs. speed)
OCCLUSIONS = ("occlusion", "window")  # the named methods that occlude (baselines "blur" by default)

_CAPTUM: dict[str, type[Attribution]] = {
    "occlusion": FeatureAblation,
    "window": Occlusion,
    "ig": IntegratedGradients,
    "saliency": Saliency,
    "input_x_gradient": InputXGradient,
    "gradcam": LayerGradCam,
}
# sxai's own keywords of the named methods, and the methods that take them
_OPTIONS: dict[str, tuple[str, ...]] = {
    "feature_mask": ("occlusion",),
    "n_segments": ("occlusion",),
    "window": ("window",),
    "n_steps": ("ig",),
}
_WITH_BASELINES = (*OCCLUSIONS, "ig")


class SpaceActivation(nn.Module):
    """``images -> A_s``: the forward function whose output the semantic attributions explain.

    A module (not a lambda) so that layer methods such as Grad-CAM can hook the model's body.
    """

    def __init__(self, model: TraitModel, space: SemanticSpace) -> None:
        super().__init__()
        if space.trait_dim != model.trait_dim:
            raise ValueError(
                f"space {space.key} has {space.trait_dim} trait channels, the model {model.trait_dim}"
            )
        self.model = model
        self.space_key = space.key
        self.layers = tuple(name for name, _ in space.layers)
        self.register_buffer("weights", space.weight_vector())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.layers:
            return self.model.traits(images) @ self.weights
        with self.model.pooling(self.layers):
            features = self.model(images).features(self.layers)
        return features @ self.weights


def superpixel_mask(inputs: torch.Tensor, n_segments: int = N_SEGMENTS) -> torch.Tensor:
    """``B×1×H×W`` long SLIC labels of each image (a Captum ``feature_mask``, broadcast on RGB)."""
    arrays = inputs.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    masks = np.stack(slic_many(arrays, n_segments))
    return torch.from_numpy(masks).long()[:, None].to(inputs.device)


def _baselines(inputs: torch.Tensor, baselines: Any) -> Any:
    """Captum's ``baselines``, with a named fill (:data:`~sxai_plugins.data.superpixels.FILLS`)
    made from the inputs."""
    if isinstance(baselines, str):
        # clamped: robustness metrics feed noisy inputs slightly outside [0, 1]
        return backgrounds(inputs.detach().clamp(0, 1), baselines)  # type: ignore[arg-type]
    return baselines


def _owner(forward_func: Callable) -> nn.Module | None:
    """The module whose weights a forward function runs (the function itself, or a bound method's)."""
    owner = getattr(forward_func, "__self__", forward_func)
    return owner if isinstance(owner, nn.Module) else None


def _device(module: nn.Module | None) -> torch.device | None:
    first = next(module.parameters(), None) if module is not None else None
    return first.device if first is not None else None


def predicted_class(model: TraitModel, inputs: torch.Tensor) -> torch.Tensor:
    """Each image's predicted class index."""
    with torch.no_grad():
        return model.logits(inputs.to(_device(model))).argmax(1)


def _captum_method(
    method: str | type[Attribution], forward_func: Callable, layer: nn.Module | None
) -> Attribution:
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(
                f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}"
            )
        cls = _CAPTUM[method]
    elif isinstance(method, type) and issubclass(method, Attribution):
        cls = method
    else:
        raise TypeError(
            f"method must be one of {', '.join(METHODS)} or a Captum attribution class, "
            f"got {method!r}"
        )
    if issubclass(cls, (LayerAttribution, NeuronAttribution)):
        if layer is None:
            raise ValueError(
                f"method {method if isinstance(method, str) else cls.__name__!r} needs a "
                "layer (the model's last conv block)"
            )
        return cls(forward_func, layer)
    return cls(forward_func)


def _detached(result: Any) -> Any:
    """Attributions (and a convergence delta) are results, not part of a graph (Grad-CAM's
    upsampling would keep one)."""
    if isinstance(result, tuple):
        return tuple(_detached(r) for r in result)
    return result.detach() if isinstance(result, torch.Tensor) else result


class PixelAttribution(Attribution):
    """A forward function ``images B×3×H×W in [0, 1] -> B or B×K outputs`` attributed to the pixels.

    ``method`` is one of :data:`METHODS` (see the module docstring) or a Captum attribution class
    (``LayerAttribution`` and ``NeuronAttribution`` classes get ``layer``), which then takes its
    own keywords unchanged. The weights of the module behind ``forward_func`` are frozen while
    attributing (only input gradients are needed), and inputs move to its device.

    >>> attr = PixelAttribution(forward, "occlusion").attribute(images, baselines="mean")
    >>> attr.shape == images.shape
    True
    """

    def __init__(
        self,
        forward_func: Callable[[torch.Tensor], torch.Tensor],
        method: str | type[Attribution] = "occlusion",
        layer: nn.Module | None = None,
    ) -> None:
        super().__init__(forward_func)
        self.method = method
        self.layer = layer
        self.captum = _captum_method(method, forward_func, layer)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.captum.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.captum.has_convergence_delta()

    def compute_convergence_delta(
        self, attributions: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The wrapped Captum method's convergence delta (where :meth:`has_convergence_delta`)."""
        if not self.has_convergence_delta():
            raise NotImplementedError(f"{type(self.captum).__name__} gives no convergence delta")
        return self.captum.compute_convergence_delta(attributions, *args, **kwargs)

    def attribute(
        self, inputs: torch.Tensor, baselines: Any = None, target: Any = None, **kwargs: Any
    ) -> Any:
        """Attributions shaped like ``inputs`` (detached), as Captum's ``attribute``.

        Args:
            inputs: ``B×3×H×W`` images in [0, 1].
            baselines: Captum's baselines, or a named fill (see the module docstring); only for the
                methods that take them (default: ``"blur"`` for the occlusions, Captum's for others).
            target: Captum's target (class index per image) when the output is ``B×K``.
            **kwargs: for ``"occlusion"`` ``feature_mask`` (``B×1×H×W`` or ``B×3×H×W`` groups,
                default SLIC) or ``n_segments``; ``window`` for ``"window"``; ``n_steps`` for
                ``"ig"``; anything else goes to the Captum method's ``attribute``.
        """
        if inputs.ndim != 4:
            raise ValueError(f"inputs must be B×3×H×W, got shape {tuple(inputs.shape)}")
        if isinstance(self.method, str):
            self._check(baselines, kwargs)
        owner = _owner(self.forward_func)
        inputs = inputs.detach().to(_device(owner) or inputs.device)
        if isinstance(self.captum, GradientAttribution):
            inputs = (
                inputs.requires_grad_()
            )  # ask for input gradients up front (Captum warns when it has to)
        with _frozen(owner) if owner is not None else nullcontext():
            if self.method == "gradcam":
                return _detached(self._gradcam(inputs, target, **kwargs))
            return _detached(
                self.captum.attribute(inputs, **self._arguments(inputs, baselines, target, kwargs))
            )

    def _check(self, baselines: Any, kwargs: Mapping[str, Any]) -> None:
        for name, methods in _OPTIONS.items():
            if name in kwargs and self.method not in methods:
                raise ValueError(
                    f"{name} only applies to method {' or '.join(map(repr, methods))}, "
                    f"not {self.method!r}"
                )
        if baselines is not None and self.method not in _WITH_BASELINES:
            raise ValueError(f"method {self.method!r} takes no baselines")

    def _arguments(
        self, inputs: torch.Tensor, baselines: Any, target: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The Captum method's keywords, with sxai's defaults and conveniences resolved."""
        kw = dict(kwargs, target=target)
        if self.method in OCCLUSIONS:
            kw["baselines"] = _baselines(inputs, "blur" if baselines is None else baselines)
            kw.setdefault("perturbations_per_eval", PERTURBATIONS_PER_EVAL)
        elif baselines is not None:
            kw["baselines"] = _baselines(inputs, baselines)
        if self.method == "occlusion":
            mask, n_segments = kw.pop("feature_mask", None), kw.pop("n_segments", N_SEGMENTS)
            kw["feature_mask"] = (
                superpixel_mask(inputs, n_segments) if mask is None else mask.long()
            )
        elif self.method == "window":
            side = kw.pop("window", None) or max(1, int(np.ceil(min(inputs.shape[2:]) / 4)))
            stride = max(1, side // 2)
            kw.setdefault("sliding_window_shapes", (inputs.shape[1], side, side))
            kw.setdefault("strides", (inputs.shape[1], stride, stride))
        elif self.method == "ig":
            kw.setdefault("n_steps", IG_STEPS)
            kw.setdefault("internal_batch_size", max(1, kw["n_steps"]))
        return kw

    def _gradcam(
        self, inputs: torch.Tensor, target: Any, relu_attributions: bool = True, **kwargs: Any
    ) -> torch.Tensor:
        cam = self.captum.attribute(
            inputs, target=target, relu_attributions=relu_attributions, **kwargs
        )
        cam = LayerAttribution.interpolate(
            cam, tuple(inputs.shape[2:]), interpolate_mode="bilinear"
        )
        return (cam / inputs.shape[1]).expand_as(inputs).contiguous()


class SemanticAttribution(PixelAttribution):
    """Captum attribution of a semantic space's ``A_s`` to the input pixels.

    >>> attr = SemanticAttribution(model, space, "occlusion").attribute(images)
    >>> attr.shape == images.shape
    True

    Positive values mark pixels whose presence raises ``A_s`` (evidence for the concept).
    ``layer`` (for Grad-CAM) defaults to the model's body, the last conv map the traits are
    pooled from.
    """

    def __init__(
        self,
        model: TraitModel,
        space: SemanticSpace,
        method: str | type[Attribution] = "occlusion",
        layer: nn.Module | None = None,
    ) -> None:
        forward = SpaceActivation(model, space).to(_device(model))
        super().__init__(forward, method, layer if layer is not None else model.body)
        self.model = model
        self.space = space


class ClassAttribution(PixelAttribution):
    """The same methods on ``model.logits``: the usual class attribution, for comparison."""

    def __init__(
        self,
        model: TraitModel,
        method: str | type[Attribution] = "ig",
        layer: nn.Module | None = None,
    ) -> None:
        super().__init__(model.logits, method, layer if layer is not None else model.body)
        self.model = model

    def predicted(self, inputs: torch.Tensor) -> torch.Tensor:
        return predicted_class(self.model, inputs)

    def attribute(
        self,
        inputs: torch.Tensor,
        baselines: Any = None,
        target: int | Sequence[int] | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Attributions of the ``target`` logit (default: each image's predicted class)."""
        if target is None:
            target = self.predicted(inputs)
        return super().attribute(inputs, baselines, target, **kwargs)


# Weights' gradients off while attributing (only input gradients are needed, and autograd then
# skips every weight-gradient kernel); the model's train/eval mode is left as the caller set it.
_frozen = functools.partial(frozen, eval_mode=False)


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
                f"| {num(r.infidelity, '.3g')} | {num(r.sensitivity, '.3g')} | {r.seconds_per_image:.2f} |"
            )
        if self.rows and self.rows[0].n_robustness:
            lines.append(
                f"\ninfidelity and sensitivity_max over the first {self.rows[0].n_robustness} "
                "image(s) only (costly)."
            )
        return "\n".join(lines)


def _parse_methods(methods: Sequence[str]) -> list[str]:
    methods = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(
            f"unknown attribution method(s) {unknown}; choose from {', '.join(METHODS)}"
        )
    return methods


def comparison_options(
    method: str, options: Mapping[str, Any], mask: torch.Tensor | None = None
) -> dict[str, Any]:
    """The keywords a named ``method`` takes from a comparison's shared ``options``: ``fill`` is
    the occlusions' baseline (IG keeps Captum's black one); ``n_segments``, ``window`` and
    ``n_steps`` go to the method they belong to. ``mask``, the image's superpixels, becomes the
    occlusion's ``feature_mask`` (one SLIC per image: class and semantic see the same parts)."""
    unknown = set(options) - {"n_steps", "n_segments", "window", "fill"}
    if unknown:
        raise ValueError(
            f"unknown comparison option(s) {sorted(unknown)}; use n_steps, n_segments, fill, window"
        )
    kw = {k: v for k, v in options.items() if method in _OPTIONS.get(k, ())}
    if method in OCCLUSIONS and "fill" in options:
        kw["baselines"] = options["fill"]
    if method == "occlusion" and mask is not None:
        kw["feature_mask"] = mask
    return kw


@dataclass
class _Tally:
    """One (target, method)'s scores, image by image."""

    target: str
    method: str
    engine: PixelAttribution
    mass: list[float] = field(default_factory=list)
    hits: list[float] = field(default_factory=list)
    infidelity: list[float] = field(default_factory=list)
    sensitivity: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(
        self,
        x: torch.Tensor,
        region: np.ndarray,
        target: torch.Tensor,
        kw: dict[str, Any],
        n_perturb_samples: int | None,
        seed: int,
    ) -> None:
        """Score one image; with ``n_perturb_samples``, its infidelity and sensitivity_max too."""
        t = target if isinstance(self.engine, ClassAttribution) else None
        start = time.perf_counter()
        attr = self.engine.attribute(x, target=t, **kw)
        self.seconds += time.perf_counter() - start
        heat = attribution_map(attr)[0]
        self.mass.append(mass_in_region(heat, region))
        self.hits.append(float(pointing_hit(heat, region)))
        if n_perturb_samples is not None:
            self.infidelity.append(
                float(
                    infidelity_score(
                        self.engine.forward_func,
                        x,
                        attr,
                        target=t,
                        n_perturb_samples=n_perturb_samples,
                        seed=seed,
                    )[0]
                )
            )
            self.sensitivity.append(
                float(_sensitivity(self.engine, x, t, kw, n_perturb_samples, seed)[0])
            )

    def row(self, n: int) -> MethodScore:
        return MethodScore(
            target=self.target,
            method=self.method,
            n_images=n,
            mass_in_region=float(np.nanmean(self.mass)) if n else float("nan"),
            pointing=float(np.mean(self.hits)) if n else float("nan"),
            infidelity=float(np.mean(self.infidelity)) if self.infidelity else None,
            sensitivity=float(np.mean(self.sensitivity)) if self.sensitivity else None,
            n_robustness=len(self.infidelity),
            seconds_per_image=self.seconds / n if n else 0.0,
        )


def _sensitivity(
    engine: PixelAttribution,
    x: torch.Tensor,
    target: Any,
    kw: dict[str, Any],
    n_perturb_samples: int,
    seed: int,
) -> torch.Tensor:
    """sensitivity_max of one method; the superpixels stay those of the clean image, so the score
    measures the model's explanation, not SLIC's own instability."""
    mask = kw.get("feature_mask")
    rest = {k: v for k, v in kw.items() if k != "feature_mask"}

    def explain(inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        extra = dict(rest)
        if mask is not None:
            extra["feature_mask"] = mask.repeat_interleave(inputs.shape[0] // mask.shape[0], dim=0)
        return engine.attribute(inputs, target=target, **extra)

    targets = {} if target is None else {"target": target}
    return sensitivity_score(explain, x, n_perturb_samples=n_perturb_samples, seed=seed, **targets)


def _annotated_example(
    ann: Any, concept: str, size: tuple[int, int], region_mode: str, skipped: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The image squashed to ``size`` and the concept's region in it; None (and why, in
    ``skipped``) when the image is unreadable or does not show the concept."""
    from .._utils.errors import ImageLoadError
    from ..data.concepts import concept_region

    try:
        image = ann.load(size)
    except ImageLoadError as exc:
        skipped.append(str(exc))
        return None
    region = concept_region(image, ann.geometry(concept, image.shape[:2]), mode=region_mode)
    if not region.any():
        skipped.append(f"{ann.image_path}: {concept!r} not visible")
        return None
    return image, region


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

    For each annotated image (:class:`~sxai_plugins.data.concepts.ConceptAnnotation` showing
    ``concept``, default the space's) the image is squashed to the model's input size, the region
    comes from :func:`~sxai_plugins.data.concepts.concept_region` (``region_mode``; ``"disc"``:
    discs of 6% of the shorter side around the annotated points, a tolerance like the pointing
    game's own), and every class method (on the predicted class's logit) and semantic method (on
    ``A_s``) is scored with :func:`~.metrics.mass_in_region` and :func:`~.metrics.pointing_hit`.
    Captum's ``infidelity`` and ``sensitivity_max`` run on the first ``robustness_n`` images only
    (each costs ``n_perturb_samples`` more attributions). Unreadable images are skipped and
    listed. ``options`` (``n_steps``, ``n_segments``, ``fill``, ``window``) go to the methods that
    take them (:func:`comparison_options`).
    """
    from tqdm.auto import tqdm

    from ..data.images import to_tensor

    concept = concept or space.concept
    methods, semantic_methods = _parse_methods(methods), _parse_methods(semantic_methods)
    options = dict(options or {})
    comparison_options("occlusion", options)  # refuse unknown options before any work
    size = (model.input_size[1], model.input_size[2])
    tallies = [_Tally("class", m, ClassAttribution(model, m)) for m in methods] + [
        _Tally(space.key, m, SemanticAttribution(model, space, m)) for m in semantic_methods
    ]
    fractions: list[float] = []
    skipped: list[str] = []
    for index, ann in enumerate(
        tqdm(annotations, desc="comparing", unit="img", disable=not progress)
    ):
        example = _annotated_example(ann, concept, size, region_mode, skipped)
        if example is None:
            continue
        image, region = example
        fractions.append(float(region.mean()))
        x = to_tensor(image)[None].contiguous().to(_device(model))
        target = predicted_class(model, x)
        mask = superpixel_mask(x, options.get("n_segments", N_SEGMENTS))
        robust = n_perturb_samples if len(fractions) <= robustness_n else None
        for tally in tallies:
            tally.add(
                x, region, target, comparison_options(tally.method, options, mask), robust, index
            )
    n = len(fractions)
    settings = {
        "methods": methods,
        "semantic_methods": semantic_methods,
        "robustness_n": robustness_n,
        "n_perturb_samples": n_perturb_samples,
        "infidelity_noise_std": INFIDELITY_NOISE_STD,
        "sensitivity_radius": SENSITIVITY_RADIUS,
        **options,
    }
    return ComparisonReport(
        space.key,
        concept,
        region_mode,
        n,
        float(np.mean(fractions)) if n else float("nan"),
        [t.row(n) for t in tallies],
        skipped,
        settings,
    )
