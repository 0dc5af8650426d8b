"""Building semantic spaces from concept annotations, and measuring whether they mean something.

Two recipes, both on the same concept masks (the paper's superpixel masker, 20 SLIC segments):

- ``paper``: the paper's method. Take PC1 of the row-centred PCA of the unmasked and of the
  masked traits, Δ = s_unmask − s_mask, and keep the 5 channels of largest |Δ| as the SSNs with
  weights Δ.
- ``tuned``: this project's improvement. A channel must pass two tests: masking the concept must
  move it consistently *within each image* (the paired effect size mean(d)/std(d) of
  d = traits(original) − traits(masked)), and it must separate the annotated images that show the
  concept from the same class's images that do not (the natural negatives: Welch's t). Channels
  are ranked by the smaller of the two normalised scores where their signs agree; the score is the
  weight. With fewer than ``min_natural_negatives`` negatives only the masking effect is used.
  Masking alone finds channels that react to *any* change in that image region (a "legs" space
  ends up responding to the lower half of full-body shots); natural negatives remove those.

Annotated positives are split once (seeded) into build and evaluation images; both recipes are
scored on the same evaluation images, which neither has seen. Natural negatives are few, so when a
recipe builds with them, their AUROC is cross-validated: each fold's negatives are scored by a
space built without them (scores standardised by that space's evaluation positives, then pooled).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils.errors import SpaceError, SxaiError
from ..data.concepts import AnnotationSet, ConceptAnnotation, concept_region
from ..models.trait_model import TraitModel
from ..plugin.manager import get_masker
from ..traits.pca import first_pc
from .probe_data import stable_seed
from .space import MIN_REFERENCE_IMAGES, SemanticSpace, SpaceSet, select_ssn

log = logging.getLogger("sxai")

MIN_POSITIVES = 6  # annotated images showing the concept a space needs at least
MIN_BUILD, MIN_EVALUATION = 3, 2  # of them, at least this many to build from and to evaluate on


@dataclass
class SpaceRecipe:
    mode: str = "paper"  # "paper" or "tuned"
    masker: str = "superpixel"
    region: str = "superpixel"  # concept region: "superpixel" (paper) or "disc"
    n_segments: int = 20
    n_ssn: int = 5
    min_natural_negatives: int = (
        5  # tuned: fewer than this and only the masking effect ranks channels
    )
    build_fraction: float = 0.75
    folds: int = 4  # tuned: cross-validation folds over the natural negatives
    seed: int = 0

    @classmethod
    def paper(cls, **overrides) -> SpaceRecipe:
        return cls(**overrides)

    @classmethod
    def tuned(cls, **overrides) -> SpaceRecipe:
        return cls(**{"mode": "tuned", **overrides})

    def __post_init__(self) -> None:
        if self.mode not in ("paper", "tuned"):
            raise SpaceError(f"unknown space recipe mode {self.mode!r}; use 'paper' or 'tuned'")


@dataclass
class Split:
    build: list[ConceptAnnotation]
    evaluation: list[ConceptAnnotation]
    negatives: list[ConceptAnnotation]  # same class, concept not visible: never used for building


def split_positives(
    annotations: AnnotationSet, class_name: str, concept: str, recipe: SpaceRecipe
) -> Split:
    positives = annotations.images_with(concept, class_name)
    if len(positives) < MIN_POSITIVES:
        raise SpaceError(
            f"only {len(positives)} annotated {class_name} images show {concept!r}; "
            f"a semantic space needs at least {MIN_POSITIVES} (ideally ~100)"
        )
    # One permutation per (class, concept) from the seed and the names, so splits do not depend on
    # which other spaces are built in the same run.
    order = np.random.default_rng(stable_seed(recipe.seed, class_name, concept)).permutation(
        len(positives)
    )
    n_build = min(
        len(positives) - MIN_EVALUATION,
        max(MIN_BUILD, int(round(len(positives) * recipe.build_fraction))),
    )
    pick = lambda idx: [positives[i] for i in sorted(idx)]  # noqa: E731
    return Split(
        pick(order[:n_build]),
        pick(order[n_build:]),
        annotations.images_without(concept, class_name),
    )


class PairedTraits:
    """Traits of annotated images and of their concept-masked copies, computed once and cached."""

    def __init__(
        self, model: TraitModel, recipe: SpaceRecipe, batch_size: int = 32, progress: bool = True
    ):
        self.model = model
        self.recipe = recipe
        self.batch_size = batch_size
        self.progress = progress
        self.size = (model.input_size[1], model.input_size[2])
        self.masker = get_masker(recipe.masker)
        self._original: dict[Path, torch.Tensor] = {}
        self._masked: dict[tuple[Path, str], torch.Tensor] = {}

    @torch.inference_mode()
    def _traits(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = np.stack(arrays[start : start + self.batch_size]).astype(np.float32)
            x = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(device)
            out.append(self.model.traits(x).float().cpu())
        return torch.cat(out)

    def masked_copy(
        self, annotation: ConceptAnnotation, concept: str, image: np.ndarray
    ) -> np.ndarray:
        geometry = annotation.geometry(concept, self.size)
        region = concept_region(image, geometry, self.recipe.n_segments, mode=self.recipe.region)
        return self.masker.mask(image, region)

    def compute(self, annotations: Sequence[ConceptAnnotation], concept: str | None) -> None:
        todo = [
            a
            for a in annotations
            if a.image_path not in self._original
            or (concept is not None and (a.image_path, concept) not in self._masked)
        ]
        originals, masked, keys = [], [], []
        for annotation in tqdm(
            todo,
            desc=f"masking {concept or 'images'}",
            unit="img",
            disable=not self.progress or not todo,
            leave=False,
        ):
            image = annotation.load(self.size)
            originals.append(image)
            if concept is not None:
                masked.append(self.masked_copy(annotation, concept, image))
            keys.append(annotation.image_path)
        if not keys:
            return
        traits = self._traits(originals + masked)
        for i, path in enumerate(keys):
            self._original[path] = traits[i]
            if concept is not None:
                self._masked[(path, concept)] = traits[len(keys) + i]

    def original(self, annotations: Sequence[ConceptAnnotation]) -> torch.Tensor:
        self.compute(annotations, None)
        return torch.stack([self._original[a.image_path] for a in annotations])

    def pair(
        self, annotations: Sequence[ConceptAnnotation], concept: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.compute(annotations, concept)
        return (
            torch.stack([self._original[a.image_path] for a in annotations]),
            torch.stack([self._masked[(a.image_path, concept)] for a in annotations]),
        )


def paper_delta(unmasked: torch.Tensor, masked: torch.Tensor) -> np.ndarray:
    """Δ = PC1(unmasked) − PC1(masked), the paper's difference of common traits."""
    return first_pc(unmasked) - first_pc(masked)


def paired_effect(unmasked: torch.Tensor, masked: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel paired mean difference and effect size mean(d) / std(d)."""
    d = (unmasked - masked).double().numpy()
    mean = d.mean(axis=0)
    std = d.std(axis=0, ddof=1)
    return mean, mean / (std + 1e-6 * (np.abs(mean).max() + 1e-12))


def welch_t(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-channel Welch t statistic of ``a`` against ``b`` (scipy's ``ttest_ind``). A channel
    constant in both has none: 0; constant in both at different levels: ±the largest float."""
    from scipy.stats import ttest_ind

    with np.errstate(divide="ignore", invalid="ignore"):
        t = ttest_ind(a.double().numpy(), b.double().numpy(), equal_var=False, axis=0).statistic
    big = np.finfo(np.float64).max
    return np.nan_to_num(t, nan=0.0, posinf=big, neginf=-big)


def _unit(x: np.ndarray) -> np.ndarray:
    top = np.abs(x).max()
    return x / top if top > 0 else x


def tuned_scores(
    unmasked: torch.Tensor, masked: torch.Tensor, negatives: torch.Tensor | None, min_negatives: int
) -> np.ndarray:
    """Channel scores of the tuned recipe (signed; larger |score| = more concept-specific)."""
    _mean, effect = paired_effect(unmasked, masked)
    score = _unit(effect)
    if negatives is not None and len(negatives) >= max(min_negatives, 2):
        natural = _unit(welch_t(unmasked, negatives))
        agree = np.sign(score) == np.sign(natural)
        score = np.where(agree, np.sign(score) * np.minimum(np.abs(score), np.abs(natural)), 0.0)
    return score


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    from scipy.stats import mannwhitneyu

    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def _space_from(indices, weights, model, class_name, concept, recipe, n_images) -> SemanticSpace:
    return SemanticSpace(
        class_name=class_name,
        concept=concept,
        backbone=model.name,
        fingerprint=model.fingerprint(),
        trait_dim=model.trait_dim,
        indices=torch.as_tensor(indices),
        delta=torch.as_tensor(weights),
        masker=recipe.masker,
        n_images=n_images,
        recipe=asdict(recipe),
    )


def build_space(
    model: TraitModel,
    annotations: AnnotationSet,
    class_name: str,
    concept: str,
    reference_traits: torch.Tensor,
    recipe: SpaceRecipe | None = None,
    cache: PairedTraits | None = None,
) -> SemanticSpace:
    """One semantic space, with its reference distribution fitted on ``reference_traits``
    (the traits of the images predicted as ``class_name``) and its evaluation figures attached."""
    recipe = recipe or SpaceRecipe()
    cache = cache or PairedTraits(model, recipe)
    split = split_positives(annotations, class_name, concept, recipe)
    unmasked, masked = cache.pair(split.build, concept)
    if not torch.any(unmasked != masked):
        raise SpaceError(
            f"masking {class_name} {concept} changed no trait of the build images: masker "
            f"{recipe.masker!r} on {recipe.region!r} regions leaves them as they were (a region "
            "inside a uniform patch is inpainted with the same colour); use region='superpixel' "
            "or another masker"
        )
    negatives = cache.original(split.negatives) if split.negatives else None
    if recipe.mode == "paper":
        indices, weights = select_ssn(paper_delta(unmasked, masked), recipe.n_ssn)
    else:
        score = tuned_scores(unmasked, masked, negatives, recipe.min_natural_negatives)
        indices, weights = select_ssn(score, recipe.n_ssn)
    space = _space_from(indices, weights, model, class_name, concept, recipe, len(split.build))
    space.with_reference(space.activation(reference_traits))
    space.evaluation = evaluate_space(space, split, cache, concept)
    if (
        recipe.mode == "tuned"
        and negatives is not None
        and len(negatives) >= recipe.min_natural_negatives
    ):
        space.evaluation["auroc_visible_vs_not"] = _cross_validated_auroc(
            unmasked, masked, negatives, cache.pair(split.evaluation, concept)[0], recipe
        )
        space.evaluation["auroc_cross_validated"] = True
    return space


def _cross_validated_auroc(unmasked, masked, negatives, evaluation, recipe: SpaceRecipe) -> float:
    """AUROC of evaluation positives vs natural negatives, each negative scored by a space built
    without its fold. Scores are standardised by the fold space's evaluation positives so that the
    folds can be pooled (AUROC depends on ranks only)."""
    order = np.random.default_rng(recipe.seed).permutation(len(negatives))
    pos_scores, neg_scores = [], []
    for fold in np.array_split(order, min(recipe.folds, len(negatives))):
        train = np.setdiff1d(np.arange(len(negatives)), fold)
        score = tuned_scores(unmasked, masked, negatives[train], recipe.min_natural_negatives)
        indices, weights = select_ssn(score, recipe.n_ssn)
        w = torch.zeros(unmasked.shape[1], dtype=torch.float64)
        w[torch.as_tensor(indices)] = torch.as_tensor(weights)
        a_pos = (evaluation.double() @ w).numpy()
        a_neg = (negatives[fold].double() @ w).numpy()
        centre, scale = a_pos.mean(), a_pos.std() + 1e-12
        pos_scores.append((a_pos - centre) / scale)
        neg_scores.append((a_neg - centre) / scale)
    return auroc(np.concatenate(pos_scores), np.concatenate(neg_scores))


def evaluate_space(space: SemanticSpace, split: Split, cache: PairedTraits, concept: str) -> dict:
    """On evaluation images the space was not built from: how often P_s(original) > P_s(masked),
    and the AUROC of P_s between same-class images with and without the concept visible."""
    unmasked, masked = cache.pair(split.evaluation, concept)
    p_orig = space.probability(unmasked).numpy()
    p_mask = space.probability(masked).numpy()
    result = {
        "n_eval": len(split.evaluation),
        "fraction_original_above_masked": float((p_orig > p_mask).mean()),
        "auroc_original_vs_masked": auroc(p_orig, p_mask),
        "n_natural_negatives": len(split.negatives),
        "auroc_visible_vs_not": float("nan"),
        "qq_r2": space.reference.qq_r2 if space.reference else float("nan"),
    }
    if split.negatives:
        p_neg = space.probability(cache.original(split.negatives)).numpy()
        result["auroc_visible_vs_not"] = auroc(p_orig, p_neg)
    return result


@dataclass
class SpaceBuildReport:
    spaces: list[SemanticSpace]
    shared_channels: dict[int, list[str]] = field(default_factory=dict)


def shared_channels(spaces: Sequence[SemanticSpace]) -> dict[int, list[str]]:
    """Channels that are SSNs of more than one space (the paper found one for cats' eyes and nose)."""
    owners: dict[int, list[str]] = {}
    for space in spaces:
        for index in space.indices.tolist():
            owners.setdefault(int(index), []).append(space.key)
    return {c: keys for c, keys in sorted(owners.items()) if len(keys) > 1}


def reference_traits_for(
    model: TraitModel, traits: torch.Tensor, logits: torch.Tensor, class_name: str
) -> torch.Tensor:
    """Traits of the reference images the model predicts as ``class_name``."""
    index = model.class_names.index(class_name)
    chosen = traits[logits.argmax(1) == index]
    if len(chosen) < MIN_REFERENCE_IMAGES:
        raise SpaceError(
            f"only {len(chosen)} reference images are predicted as {class_name!r}; "
            "give a larger or more varied reference folder"
        )
    return chosen


def build_spaces(
    model: TraitModel,
    annotations: AnnotationSet,
    classes: Sequence[str],
    concepts: Sequence[str],
    reference: tuple[torch.Tensor, torch.Tensor],
    recipe: SpaceRecipe | None = None,
    progress: bool = True,
    cache: PairedTraits | None = None,
) -> SpaceBuildReport:
    """Every (class, concept) space; ``reference`` = (traits, logits) of the reference images.
    Pass the ``cache`` of an earlier call with the same masker to reuse its masked traits."""
    recipe = recipe or SpaceRecipe()
    cache = cache or PairedTraits(model, recipe, progress=progress)
    spaces = []
    pairs = [(c, k) for c in classes for k in concepts]
    for class_name, concept in tqdm(
        pairs, desc="semantic spaces", unit="space", disable=not progress
    ):
        ref = reference_traits_for(model, reference[0], reference[1], class_name)
        spaces.append(build_space(model, annotations, class_name, concept, ref, recipe, cache))
    return SpaceBuildReport(spaces, shared_channels(spaces))


__all__ = [
    "PairedTraits",
    "SpaceBuildReport",
    "SpaceRecipe",
    "SpaceSet",
    "auroc",
    "build_space",
    "build_spaces",
    "evaluate_space",
    "paired_effect",
    "paper_delta",
    "shared_channels",
    "split_positives",
]


def reference_scores(model, folder: str | Path, progress: bool = True, layers: Sequence[str] = ()):
    """Logits and traits of every image under ``folder``, cached in ~/.cache/sxai by model weights,
    head and the folder's file list (paths, sizes, mtimes), so rebuilding spaces costs no rescoring.
    With ``layers``, the "traits" are the features of spaces that read those layers (the traits,
    then the layers' pooled outputs)."""
    from safetensors.torch import load_file

    from .._utils.io import write_safetensors
    from ..data.images import list_images
    from ..models.inference import score_paths

    paths = list_images(folder)
    if not paths:
        raise SxaiError(f"{folder}: no images to use as the reference set")
    digest = hashlib.sha256(model.fingerprint().encode())
    digest.update(model.head.weight.detach().numpy().tobytes())
    if layers:  # keys without layers stay as they were, so existing caches keep serving
        digest.update(json.dumps(list(layers)).encode())
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    cache_dir = Path(os.environ.get("SXAI_CACHE", Path.home() / ".cache" / "sxai"))
    cache = cache_dir / f"reference-{digest.hexdigest()[:20]}.safetensors"
    if cache.is_file():
        tensors = load_file(str(cache))
        kept = json.loads(cache.with_suffix(".json").read_text())
        return [Path(p) for p in kept], tensors["traits"], tensors["logits"]
    with model.pooling(layers):
        scored = score_paths(model, paths, progress=progress, desc="reference images")
    # the JSON (paths) goes first: a cache file without its path list is never read
    from .._utils.io import write_json

    write_json(cache.with_suffix(".json"), [str(p) for p in scored.paths])
    features = scored.features(layers)
    write_safetensors(cache, {"traits": features, "logits": scored.logits})
    return scored.paths, features, scored.logits
