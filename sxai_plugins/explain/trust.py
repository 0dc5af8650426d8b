"""Trustworthiness assessment: what the semantic spaces say about one prediction.

For an image z the network predicts a class c. For every loaded space s we have the weighted
activation A_s(z) and the semantic probability P_s(z). Following the paper (section
"Trustworthiness assessment"):

- ``P_max`` is the largest P_s over the predicted class's spaces, ``concept_max`` its concept;
- for each concept k of the predicted class, ``ΔP_k = P(c.k) − max over classes c' ≠ c of P(c'.k)``
  (when no other class has a space for k, the maximum over the empty set is taken as 0, so
  ``ΔP_k = P(c.k)``);
- ``ΔmaxP`` is the largest ΔP_k, or ``None`` when the predicted class has no space at all.

Everything comes from ONE forward pass (logits and traits together): the spaces are a matrix
product on the pooled traits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._utils.assets import ASSETS
from .._utils.errors import SpaceError
from ..models.trait_model import TraitModel, TraitOutput
from ..spaces.space import SpaceSet, load_spaces


@dataclass
class SpaceScore:
    """One space's reading of one image."""

    key: str  # "class.concept"
    class_name: str
    concept: str
    activation: float  # A_s
    probability: float  # P_s in [0, 1]


@dataclass
class ConceptEvidence:
    """One concept of the predicted class, against the same concept of the other classes."""

    concept: str
    probability: float  # P of the predicted class's space for this concept
    delta: float  # ΔP
    rival: str | None  # the other class with the highest P for this concept (None: no other class)
    rival_probability: float | None


@dataclass
class Assessment:
    """The S-XAI assessment of one image (see the module docstring for the definitions)."""

    predicted: str
    class_probabilities: dict[str, float]
    spaces: list[SpaceScore]
    concepts: list[ConceptEvidence] = field(default_factory=list)
    p_max: float | None = None
    concept_max: str | None = None
    delta_max_p: float | None = None
    path: str | None = None
    # the calibrated detector's verdict {"flag", "score", "threshold", "fpr"}; None without one
    detection: dict[str, Any] | None = None

    def space(self, key: str) -> SpaceScore:
        for score in self.spaces:
            if score.key == key:
                return score
        raise KeyError(
            f"no space {key!r} in this assessment; spaces: {[s.key for s in self.spaces]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: every field, spaces and concepts as lists of dicts."""
        return asdict(self)


def _evidence(
    predicted: str, scores: list[SpaceScore]
) -> tuple[list[ConceptEvidence], float | None, str | None, float | None]:
    own = [s for s in scores if s.class_name == predicted]
    concepts: list[ConceptEvidence] = []
    for score in own:
        others = [s for s in scores if s.concept == score.concept and s.class_name != predicted]
        rival = max(others, key=lambda s: s.probability, default=None)
        rival_p = rival.probability if rival is not None else None
        concepts.append(
            ConceptEvidence(
                concept=score.concept,
                probability=score.probability,
                delta=score.probability - (rival_p if rival_p is not None else 0.0),
                rival=rival.class_name if rival is not None else None,
                rival_probability=rival_p,
            )
        )
    if not own:
        return concepts, None, None, None
    best = max(own, key=lambda s: s.probability)
    return concepts, best.probability, best.concept, max(c.delta for c in concepts)


def _check_unique(spaces: SpaceSet) -> None:
    seen: set[str] = set()
    for key in spaces.keys:
        if key in seen:
            raise SpaceError(f"two semantic spaces for {key!r} were loaded; pass each space once")
        seen.add(key)


@torch.inference_mode()
def assess(
    model: TraitModel,
    spaces: SpaceSet,
    images: torch.Tensor,
    paths: Sequence[str | Path] | None = None,
    detector: Any = None,
) -> list[Assessment]:
    """Assess a batch of images (``B×3×H×W`` in [0, 1]) with one forward pass.

    With a calibrated ``detector`` (:class:`sxai_plugins.robust.detection.Detector`), each assessment
    carries its verdict in ``detection``, scored from the same pass's logits and P_s.

    The caller checks that the spaces fit the model (``spaces.check_compatible(model)``); this
    function does not, because hashing the weights for every batch would cost more than the pass.
    """
    if paths is not None and len(paths) != len(images):
        raise ValueError(f"{len(paths)} paths for {len(images)} images")
    device = next(model.parameters()).device
    with spaces.pooling(model):
        out = model(images.to(device))
    return assess_outputs(model, spaces, out, paths, detector)


def assess_outputs(
    model: TraitModel,
    spaces: SpaceSet,
    out: TraitOutput,
    paths: Sequence[str | Path] | None = None,
    detector: Any = None,
) -> list[Assessment]:
    """:func:`assess` from a forward pass already made (``model(images)``, or a batch of
    :func:`sxai_plugins.models.inference.iter_outputs`)."""
    _check_unique(spaces)
    if paths is not None and len(paths) != len(out.logits):
        raise ValueError(f"{len(paths)} paths for {len(out.logits)} outputs")
    class_p = out.logits.float().softmax(dim=1).cpu()
    activations = spaces.activations(out).cpu()
    probabilities = spaces.probabilities_from_activations(activations)
    scores = (
        detector.scores(out.logits.float(), probabilities, spaces, model.class_names)
        if detector is not None
        else None
    )
    assessments = [
        _assessment(
            model.class_names,
            spaces,
            class_p[i],
            activations[i],
            probabilities[i],
            str(paths[i]) if paths is not None else None,
        )
        for i in range(len(class_p))
    ]
    if scores is not None:
        for assessment, score in zip(assessments, scores.tolist()):
            assessment.detection = detector.verdict(score)
    return assessments


def _assessment(
    class_names: Sequence[str],
    spaces: SpaceSet,
    class_p: torch.Tensor,
    activations: torch.Tensor,
    probabilities: torch.Tensor,
    path: str | None,
) -> Assessment:
    predicted = class_names[int(class_p.argmax())]
    scores = [
        SpaceScore(s.key, s.class_name, s.concept, float(a), float(p))
        for s, a, p in zip(spaces, activations.tolist(), probabilities.tolist())
    ]
    concepts, p_max, concept_max, delta_max = _evidence(predicted, scores)
    return Assessment(
        predicted=predicted,
        class_probabilities={c: float(p) for c, p in zip(class_names, class_p.tolist())},
        spaces=scores,
        concepts=concepts,
        p_max=p_max,
        concept_max=concept_max,
        delta_max_p=delta_max,
        path=path,
    )


def assessment_from_probabilities(
    predicted: str,
    space_probabilities: dict[str, float],
    class_probabilities: dict[str, float] | None = None,
) -> Assessment:
    """An assessment from given P_s values (``{"cat.eyes": 0.8, ...}``), without a model.

    Handy to render explanations for numbers computed elsewhere, and to test templates.
    """
    scores = []
    for key, p in space_probabilities.items():
        class_name, sep, concept = key.partition(".")
        if not sep or not class_name or not concept:
            raise SpaceError(f"space name {key!r} is not of the form class.concept")
        scores.append(SpaceScore(key, class_name, concept, float("nan"), float(p)))
    concepts, p_max, concept_max, delta_max = _evidence(predicted, scores)
    return Assessment(
        predicted,
        dict(class_probabilities or {predicted: 1.0}),
        scores,
        concepts,
        p_max,
        concept_max,
        delta_max,
    )


def default_spaces_dir(model_name: str) -> Path | None:
    """The folder of spaces bundled for ``model_name``, or None when none is bundled."""
    folder = ASSETS / model_name / "spaces"
    if folder.is_dir() and any(folder.glob("*.safetensors")):
        return folder
    return None


def _load_source(source: str, model: TraitModel, force: bool) -> list:
    """One ``--spaces`` source: whatever a plugin resolves (``hf://`` by spaces_hub), else local."""
    from ..plugin.manager import get_plugin_manager

    resolved = get_plugin_manager().hook.sxai_resolve_spaces(
        source=source, model=model, force=force
    )
    if resolved is not None:
        return list(resolved)
    if "://" in source:
        raise SpaceError(
            f"{source}: no installed plugin resolves {source.split('://')[0]}:// space sources "
            "(hf:// needs spaces_hub, part of a full sxai install); download the files and pass "
            "their local paths instead"
        )
    local = load_spaces([source])
    for space in local:
        space.check_compatible(model, force=force)
    return local


def load_space_set(
    sources: Iterable[str | Path] | None,
    model: TraitModel,
    force: bool = False,
) -> SpaceSet:
    """Spaces from files, folders or ``hf://owner/name@rev`` sources, checked against ``model``,
    which from then on also pools the layers the spaces read (``SpaceSet.prepare``).

    With no sources, the spaces bundled for ``model.name`` are used when they exist.
    """
    sources = [str(s) for s in (sources or [])]
    if not sources:
        folder = default_spaces_dir(model.name)
        if folder is None:
            raise SpaceError(
                f"no semantic spaces given and none are bundled for backbone {model.name!r}; "
                "build spaces for it (see `sxai --help`, or sxai_plugins.spaces in Python) and pass "
                "--spaces FILE_OR_FOLDER (repeatable), or pass shared ones as --spaces hf://owner/name@rev"
            )
        sources = [str(folder)]
    space_set = SpaceSet(
        [space for source in sources for space in _load_source(source, model, force)]
    )
    _check_unique(space_set)
    space_set.prepare(model)
    return space_set
