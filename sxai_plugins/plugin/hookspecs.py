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

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from ..explain.trust import Assessment
    from ..models.trait_model import TraitModel
    from ..spaces.space import SemanticSpace

PROJECT_NAME = "sxai"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ------------------------------------------------------------------------- contract types
class BackboneBuilder(Protocol):
    """Builds a backbone's :class:`~sxai_plugins.models.trait_model.TraitModel`.

    ``pretrained``: load the published weights (from the model hub unless the plugin ships them);
    ``weights``: a local state dict file that wins over ``pretrained``; ``class_names``: a fresh
    classifier for these classes (``None``: the backbone's own classes).
    """

    def __call__(
        self, *, pretrained: bool, weights: str | Path | None, class_names: Sequence[str] | None
    ) -> TraitModel: ...


@dataclass(frozen=True)
class BackboneSpec:
    """One named backbone: how to build it, and what to tell the user about it."""

    name: str
    build: BackboneBuilder
    description: str = ""
    pretrained_source: str = ""


@runtime_checkable
class Masker(Protocol):
    """Hides a concept region of an image (see :func:`sxai_maskers`)."""

    name: str

    def mask(self, image: np.ndarray, region: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class FeatureInverter(Protocol):
    """Turns trait vectors into images (see :func:`sxai_feature_inverters`)."""

    name: str

    def invert(self, model: TraitModel, targets: torch.Tensor, **options: Any) -> torch.Tensor: ...


@runtime_checkable
class ExplanationTemplate(Protocol):
    """Words for an assessment (see :func:`sxai_explanation_templates`)."""

    name: str

    def render(self, assessment: Assessment) -> str: ...


# ------------------------------------------------------------------------------- the hooks


@hookspec
def sxai_backbones() -> list[BackboneSpec]:
    """Backbone adapters this plugin provides, by exact name.

    Each :class:`BackboneSpec` has a ``name`` and a ``build`` callable (:class:`BackboneBuilder`:
    ``build(*, pretrained, weights, class_names)``) that returns a
    :class:`~sxai_plugins.models.trait_model.TraitModel`: a CNN whose last conv map is globally
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

    ``assessment`` is an :class:`~sxai_plugins.explain.trust.Assessment`: the prediction, the class
    probabilities and every loaded semantic space's probability for one image.
    """


@hookspec
def sxai_add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``sxai`` command line.

    Call ``subparsers.add_parser(name, help=...)`` and give the parser a handler with
    ``parser.set_defaults(handler=run)``, where ``run(args) -> int`` returns the exit status. Raise
    :class:`~sxai_plugins.SxaiError` for a user error: the command line prints it as one line. The
    core's commands come first; a name that is already taken is an error naming both.
    """


@hookspec(firstresult=True)
def sxai_resolve_spaces(
    source: str, model: TraitModel | None, force: bool
) -> list[SemanticSpace] | None:
    """Load the semantic spaces a source string names, when this plugin understands it.

    Return ``None`` for a source this plugin does not handle (a local path, another scheme); the
    core then loads it as a file or folder. ``spaces_hub`` answers ``hf://owner/name[@revision]``.
    With ``model``, check every space against it (unless ``force``) as
    :meth:`~sxai_plugins.spaces.space.SemanticSpace.check_compatible` does.
    """
