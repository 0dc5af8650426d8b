"""Does a semantic space mean its concept on images nobody built it from? Out-of-fold evaluation of
every recipe (``paper``, ``tuned``, ``probe``) on the same folds, with maskings never trained on.

Every labelled image falls in exactly one of ``folds`` folds (seeded, balanced per class); for each
fold, every space is built from the other folds' images alone and scores this fold's images and
their copies. Per space (class k, concept c), on those out-of-fold P_s:

- ``drop``: the share of (class-k image showing c, held-out masking) pairs with P_s(original) >
  P_s(c hidden); also per masking;
- ``auroc``: class-k images showing c against the negatives: their held-out-masked copies (each
  image's copies weigh 1 together) and the class-k images where c is not visible; also per
  masking, against that masking's copies alone (which masking makes the hard negatives);
- ``auroc_natural``: the same against natural negatives only (``n_natural`` of them);
- ``control_shift``: mean |P_s(control copy) − P_s(original)| over held-out maskings;
- ``rival_auroc``: class-k images showing c against other classes' images showing c;
- ``ece``: expected calibration error (10 equal bins) over the natural images (class-k, and other
  classes' showing c) and the held-out-masked copies, each image counting once;
- ``qq_r2``: the normal fit of the reference distribution (v1 recipes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._utils.errors import SpaceError
from .probe_data import CONTROL, MASKED, ORIGINAL, ProbeFeatures
from .probes import ProbeRecipe, fit_probe, training_set

TARGETS = {"drop": 0.95, "auroc": 0.9, "control_shift": 0.05, "rival_auroc": 0.9, "ece": 0.05}
RECIPES = ("paper", "tuned", "probe")


def expected_calibration_error(
    p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, bins: int = 10
) -> float:
    """Σ_bins (bin weight share) · |mean label − mean P| over equal-width bins of P."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    w = np.ones_like(p) if w is None else np.asarray(w, float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total, error = w.sum(), 0.0
    for b in range(bins):
        inside = which == b
        if w[inside].sum() > 0:
            share = w[inside].sum() / total
            error += share * abs(
                np.average(y[inside], weights=w[inside]) - np.average(p[inside], weights=w[inside])
            )
    return float(error)


def weighted_auroc(
    positive: np.ndarray, negative: np.ndarray, w_negative: np.ndarray | None = None
) -> float:
    from sklearn.metrics import roc_auc_score

    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    w_negative = np.ones(len(negative)) if w_negative is None else w_negative
    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(
        roc_auc_score(
            y, np.r_[positive, negative], sample_weight=np.r_[np.ones(len(positive)), w_negative]
        )
    )


def assign_folds(bank: ProbeFeatures, folds: int, seed: int) -> np.ndarray:
    """Fold of each image: a seeded permutation per class, dealt round-robin (balanced classes)."""
    fold = np.zeros(len(bank.images), dtype=int)
    classes = np.array([im.class_name for im in bank.images])
    rng = np.random.default_rng(seed)
    for name in sorted(set(classes)):
        members = rng.permutation(np.flatnonzero(classes == name))
        fold[members] = np.arange(len(members)) % folds
    return fold


@dataclass
class V1Material:
    """What the v1 recipes need beyond the bank: the reference images' traits and predictions."""

    traits: torch.Tensor
    predicted: np.ndarray  # class name predicted for each reference image
    paths: list[str]


def _v1_space(
    mode: str,
    bank: ProbeFeatures,
    class_name: str,
    concept: str,
    train_images: np.ndarray,
    recipe: ProbeRecipe,
    reference: V1Material,
    model_name: str = "eval",
):
    from .build import SpaceRecipe, paper_delta, tuned_scores
    from .space import SemanticSpace, select_ssn

    v1 = SpaceRecipe()  # the v1 recipes' own SSN count and minimum of natural negatives

    kind, image = bank.column("kind"), bank.column("image")
    own = bank.image_column("class_name") == class_name
    inside = np.isin(image, train_images)
    masked = np.flatnonzero(
        inside
        & own
        & (kind == MASKED)
        & (bank.column("concept") == concept)
        & np.isin(bank.column("masking"), recipe.train_maskings)
    )
    original_row = {int(image[i]): i for i in np.flatnonzero(kind == ORIGINAL)}
    unmasked = bank.traits[[original_row[int(image[i])] for i in masked]]
    masked_t = bank.traits[masked]
    natural = np.flatnonzero(inside & own & (kind == ORIGINAL) & (bank.visible(concept) == 0))
    if mode == "paper":
        indices, weights = select_ssn(paper_delta(unmasked, masked_t), v1.n_ssn)
    else:
        score = tuned_scores(
            unmasked,
            masked_t,
            bank.traits[natural] if len(natural) else None,
            v1.min_natural_negatives,
        )
        indices, weights = select_ssn(score, v1.n_ssn)
    space = SemanticSpace(
        class_name,
        concept,
        model_name,
        "",
        bank.traits.shape[1],
        torch.as_tensor(indices),
        torch.as_tensor(weights),
    )
    training = set(train_images.tolist())
    held_out = {str(im.path) for i, im in enumerate(bank.images) if i not in training}
    keep = [
        (p == class_name) and (path not in held_out)
        for p, path in zip(reference.predicted, reference.paths)
    ]
    return space.with_reference(space.activation(reference.traits[torch.as_tensor(keep)]))


def out_of_fold(
    bank: ProbeFeatures,
    classes: Sequence[str],
    concepts: Sequence[str],
    recipe_name: str,
    recipe: ProbeRecipe | None = None,
    folds: int = 5,
    seed: int = 0,
    reference: V1Material | None = None,
    progress: bool = True,
    qq_r2: dict[str, list[float]] | None = None,
    train_only: Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """Per space key, the out-of-fold P_s of every bank row (NaN where no fold model scored it).
    For v1 recipes each fold space's reference Q-Q R² is appended to ``qq_r2[key]`` when given.
    ``train_only``: images (indices into ``bank.images``) that train every fold's space and are
    never scored; the folds of the others are what they would be without them."""
    from tqdm.auto import tqdm

    recipe = recipe or ProbeRecipe()
    if recipe_name not in RECIPES:
        raise SpaceError(f"unknown recipe {recipe_name!r}; use one of {', '.join(RECIPES)}")
    if recipe_name != "probe" and reference is None:
        raise SpaceError(
            f"recipe {recipe_name!r} needs the reference images' traits (reference=...)"
        )
    scored = np.setdiff1d(np.arange(len(bank.images)), np.asarray(train_only, dtype=int))
    fold_of_image = np.full(len(bank.images), -1)  # -1: trains every fold
    fold_of_image[scored] = assign_folds(
        replace(bank, images=[bank.images[i] for i in scored]), folds, seed
    )
    fold_of_row = fold_of_image[bank.column("image")]
    out = {f"{k}.{c}": np.full(len(bank.rows), np.nan) for k in classes for c in concepts}
    features = bank.features(recipe.layers) if recipe_name == "probe" else bank.traits
    jobs = [(f, k, c) for f in range(folds) for k in classes for c in concepts]
    for fold, class_name, concept in tqdm(
        jobs, desc=f"{recipe_name}: out-of-fold", unit="space", disable=not progress
    ):
        train_images = np.flatnonzero(fold_of_image != fold)
        test_rows = np.flatnonzero(fold_of_row == fold)
        key = f"{class_name}.{concept}"
        if recipe_name == "probe":
            data = training_set(bank, class_name, concept, recipe, train_images)
            probe = fit_probe(features, data, recipe, where=f"space {key}, fold {fold}")
            out[key][test_rows] = probe.probability(features[test_rows])
        else:
            space = _v1_space(
                recipe_name, bank, class_name, concept, train_images, recipe, reference
            )
            out[key][test_rows] = space.probability(bank.traits[test_rows]).double().numpy()
            if qq_r2 is not None:
                qq_r2.setdefault(key, []).append(space.reference.qq_r2)
    return out


def space_metrics(
    bank: ProbeFeatures,
    class_name: str,
    concept: str,
    p: np.ndarray,
    held_out_maskings: Sequence[str],
) -> dict:
    """The module docstring's metrics for one space from its out-of-fold P_s of every row."""
    kind, image, masking = bank.column("kind"), bank.column("image"), bank.column("masking")
    row_concept = bank.column("concept")
    own = bank.image_column("class_name") == class_name
    visible = bank.visible(concept)
    original_row = np.full(len(bank.images), -1)
    originals = np.flatnonzero(kind == ORIGINAL)
    original_row[image[originals]] = originals

    positive = np.flatnonzero(own & (kind == ORIGINAL) & (visible == 1))
    natural = np.flatnonzero(own & (kind == ORIGINAL) & (visible == 0))
    rival = np.flatnonzero(~own & (kind == ORIGINAL) & (visible == 1))
    held = np.isin(masking, held_out_maskings) & (row_concept == concept) & own
    masked = np.flatnonzero(held & (kind == MASKED))
    control = np.flatnonzero(held & (kind == CONTROL))
    n_maskings = max(len(held_out_maskings), 1)

    drops = p[original_row[image[masked]]] > p[masked]
    per_masking = {
        m: float(drops[masking[masked] == m].mean())
        for m in held_out_maskings
        if (masking[masked] == m).any()
    }
    # Which masking makes the hard negatives: originals against that masking's copies alone.
    auroc_per_masking = {
        m: weighted_auroc(p[positive], p[masked[masking[masked] == m]]) for m in per_masking
    }
    negatives = np.r_[p[masked], p[natural]]
    w_neg = np.r_[np.full(len(masked), 1.0 / n_maskings), np.ones(len(natural))]
    ece_p = np.r_[p[positive], p[natural], p[rival], p[masked]]
    ece_y = np.r_[np.ones(len(positive)), np.zeros(len(natural) + len(rival) + len(masked))]
    ece_w = np.r_[
        np.ones(len(positive) + len(natural) + len(rival)), np.full(len(masked), 1.0 / n_maskings)
    ]
    shift = np.abs(p[control] - p[original_row[image[control]]])
    return {
        "n_positive": int(len(positive)),
        "n_masked_images": int(len(np.unique(image[masked]))),
        "n_natural": int(len(natural)),
        "n_rival": int(len(rival)),
        "drop": float(drops.mean()) if len(drops) else float("nan"),
        "drop_by_masking": per_masking,
        "auroc_by_masking": auroc_per_masking,
        "auroc": weighted_auroc(p[positive], negatives, w_neg),
        "auroc_natural": weighted_auroc(p[positive], p[natural]),
        "control_shift": float(shift.mean()) if len(shift) else float("nan"),
        "rival_auroc": weighted_auroc(p[positive], p[rival]),
        "ece": expected_calibration_error(ece_p, ece_y, ece_w),
        "mean_p_positive": float(p[positive].mean()) if len(positive) else float("nan"),
        "mean_p_natural": float(p[natural].mean()) if len(natural) else float("nan"),
        "mean_p_rival": float(p[rival].mean()) if len(rival) else float("nan"),
    }


def misses(metrics: dict) -> list[str]:
    """The targets (``TARGETS``) a space's metrics miss, as short phrases."""
    out = []
    for name, target in TARGETS.items():
        value = metrics.get(name)
        if value is None or not np.isfinite(value):
            out.append(f"{name} n/a")
        elif (value > target) if name in ("control_shift", "ece") else (value < target):
            out.append(f"{name} {value:.3f}")
    return out


def evaluate_recipes(
    bank: ProbeFeatures,
    classes: Sequence[str],
    concepts: Sequence[str],
    recipes: Sequence[str] = RECIPES,
    recipe: ProbeRecipe | None = None,
    folds: int = 5,
    seed: int = 0,
    reference: V1Material | None = None,
    progress: bool = True,
) -> dict:
    """``{recipe: {space: metrics}}``, every recipe on the same folds and held-out maskings."""
    recipe = recipe or ProbeRecipe()
    results: dict = {}
    for name in recipes:
        qq: dict[str, list[float]] = {}
        predictions = out_of_fold(
            bank, classes, concepts, name, recipe, folds, seed, reference, progress, qq
        )
        results[name] = {
            key: {
                **space_metrics(bank, *key.split(".", 1), p, recipe.held_out_maskings),
                "qq_r2": float(np.mean(qq[key])) if key in qq else float("nan"),
            }
            for key, p in predictions.items()
        }
    return results


__all__ = [
    "RECIPES",
    "TARGETS",
    "V1Material",
    "assign_folds",
    "evaluate_recipes",
    "expected_calibration_error",
    "misses",
    "out_of_fold",
    "space_metrics",
    "weighted_auroc",
]
