"""Hook specifications for sxai plugins.

A plugin is a plain module (or any object) that implements some of the hooks below with the
``sxai_plugins.hookimpl`` marker and is registered under the ``sxai`` entry-point group::

    # pyproject.toml of a third-party package
    [project.entry-points.sxai]
    my_plugin = "my_package.sxai_plugin"

Installing that package is all it takes: ``sxai_plugins.get_plugin_manager()`` loads every entry
point of the group. The core's own backbones, maskers, inverters and templates are registered the
same way, so a third-party plugin is on equal footing with them.

Four kinds of plugin exist. Each "provider" hook returns a list of named objects; when two plugins
provide the same name, the one registered last wins (pluggy calls later plugins first), which lets a
user override a built-in by installing a package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .manager import BackboneSpec, ExplanationTemplate, FeatureInverter, Masker

PROJECT_NAME = "sxai"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def sxai_backbones() -> list[BackboneSpec]:
    """Backbone adapters this plugin provides, by exact name.

    Each :class:`~sxai_plugins.registry.BackboneSpec` has a ``name`` and a ``build`` callable
    ``build(pretrained: bool, weights: str | None, num_classes: int, class_names: list[str] | None)``
    that returns a :class:`~sxai_plugins.model.TraitModel`: a CNN whose last conv map is globally
    average pooled into a trait vector of width ``C`` before a linear classifier. The model carries
    its preprocessing (input size, mean, std) in ``model.data_config`` and ``C`` in
    ``model.trait_dim``.
    """


@hookspec(firstresult=True)
def sxai_resolve_backbone(name: str) -> BackboneSpec | None:
    """Fallback for a backbone name that no plugin lists in :func:`sxai_backbones`.

    Return a spec if this plugin can build ``name`` (the core's generic adapter accepts any timm
    CNN, e.g. ``resnet50``), else ``None``. The first non-None answer is used.
    """


@hookspec
def sxai_maskers() -> list[Masker]:
    """Concept maskers: objects with a ``name`` and ``mask(image, region) -> image``.

    ``image`` is a float32 ``H×W×3`` array in [0, 1]; ``region`` a boolean ``H×W`` array marking the
    concept (points already grown to regions by the caller). The result has the same shape with the
    concept removed; pixels far from the region should stay as they were.
    """


@hookspec
def sxai_feature_inverters() -> list[FeatureInverter]:
    """Feature inverters: objects with a ``name`` and ``invert(model, targets, **options)``.

    ``targets`` is a ``K×C`` tensor of trait vectors; the result is a ``K×3×H×W`` tensor in [0, 1]
    whose traits under ``model`` approach the targets. All K targets should be optimised together.
    """


@hookspec
def sxai_explanation_templates() -> list[ExplanationTemplate]:
    """Explanation templates: objects with a ``name`` and ``render(assessment) -> str``.

    ``assessment`` is an :class:`~sxai_plugins.trust.Assessment`: the prediction, the class
    probabilities and every loaded semantic space's probability for one image.
    """
