"""sxai: Semantic Explainable AI (S-XAI) for timm CNNs.

>>> import sxai_plugins as sx
>>> model = sx.create_model()                       # the embedded default, offline
>>> out = model(images)                              # images: B×3×224×224 in [0, 1]
>>> out.logits.shape, out.traits.shape               # (B, 2), (B, 1280)
>>> spaces = sx.load_space_set([], model)            # the default model's bundled spaces
>>> sx.get_explanation_template("english").render(sx.assess(model, spaces, images)[0])

The pipeline, one subpackage per step: ``data`` (images, annotations) → ``models`` (traits) →
``traits`` (common traits) → ``spaces`` (semantic spaces, P_s) → ``explain`` (words); around it
``attr``, ``robust``, ``search``, ``viz``, ``cli`` and ``plugin``. See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._utils.errors import (
    BackboneNotFoundError,
    ImageLoadError,
    PluginError,
    PluginNotFoundError,
    SpaceError,
    SxaiError,
    WeightsError,
)
from .plugin.hookspecs import (
    BackboneSpec,
    ExplanationTemplate,
    FeatureInverter,
    Masker,
    hookimpl,
    hookspec,
)
from .plugin.manager import (
    backbone_table,
    get_backbone_spec,
    get_explanation_template,
    get_feature_inverter,
    get_masker,
    get_plugin_manager,
    register_plugin,
    reload_plugins,
)
from .plugin.manager import explanation_templates as list_explanation_templates
from .plugin.manager import feature_inverters as list_feature_inverters
from .plugin.manager import maskers as list_maskers

if TYPE_CHECKING:
    from .models.trait_model import TraitModel, TraitOutput  # noqa: F401

DEFAULT_BACKBONE = "lite0_catdog"

# The model and the rest of the pipeline's entry points, imported on first use so that
# ``import sxai_plugins`` (and ``sxai --help``, ``sxai backbones``) does not pay for torch, timm,
# scikit-image and friends.
_LAZY = {
    "TraitModel": "sxai_plugins.models.trait_model",
    "TraitOutput": "sxai_plugins.models.trait_model",
    "assess": "sxai_plugins.explain.trust",
    "load_space_set": "sxai_plugins.explain.trust",
    "common_traits": "sxai_plugins.traits.common",
    "SemanticSpace": "sxai_plugins.spaces.space",
    "SpaceSet": "sxai_plugins.spaces.space",
    "load_spaces": "sxai_plugins.spaces.space",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sxai_plugins' has no attribute {name!r}")


__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneNotFoundError",
    "BackboneSpec",
    "ExplanationTemplate",
    "FeatureInverter",
    "Masker",
    "ImageLoadError",
    "PluginError",
    "PluginNotFoundError",
    "SpaceError",
    "SxaiError",
    "TraitModel",
    "TraitOutput",
    "SemanticSpace",
    "SpaceSet",
    "WeightsError",
    "assess",
    "common_traits",
    "backbone_table",
    "create_model",
    "get_explanation_template",
    "get_feature_inverter",
    "get_masker",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "list_backbones",
    "list_explanation_templates",
    "list_feature_inverters",
    "list_maskers",
    "load_space_set",
    "load_spaces",
    "register_plugin",
    "reload_plugins",
]


def create_model(
    name: str = DEFAULT_BACKBONE,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    class_names: list[str] | None = None,
    head: str | Path | None = None,
) -> TraitModel:
    """Build a backbone with a GAP trait layer by name, in eval mode.

    Args:
        name: a name from :func:`list_backbones` or any timm CNN (generic adapter).
        pretrained: load the backbone's published weights (needs the model hub unless the plugin
            ships them, as the default does). Offline, pass ``weights`` instead.
        weights: a local backbone state dict (``.safetensors`` or ``.pth``); wins over ``pretrained``.
        class_names: the classifier's classes (a fresh head); default: the backbone's own.
        head: a head file written by ``sxai train-head`` (its card gives the classes).
    """
    spec = get_backbone_spec(name)
    if head is not None:
        from .models.head import load_head_file

        head_state, classes = load_head_file(head)
        model = spec.build(pretrained=pretrained, weights=weights, class_names=classes)
        model.load_head(head_state, str(head))
    else:
        model = spec.build(pretrained=pretrained, weights=weights, class_names=class_names)
    return model.eval()


def list_backbones() -> dict[str, str]:
    """Installed backbone names and the plugin that provides each."""
    return {name: plugin for name, (plugin, _spec) in sorted(backbone_table().items())}
