"""Concept probes: the ``probe`` space recipe (format v2), a calibrated linear read-out of a concept
from the GAP traits.

For a space (class k, concept c) an L2 logistic regression on the standardised traits separates

- **positives**: class-k images showing c (weight 1), and control-masked copies of them, where a
  region of about the concept's size that does not touch it is hidden (weight ``control_weight``,
  split over the maskings): the probe must not read "something was masked" as "c is gone";
- **negatives**: the same images with c hidden by each training masking (weight 1 split over the
  maskings, so each image counts once), class-k images where c is not visible (weight
  ``natural_weight``), and images of other classes showing c (weight ``rival_weight``), so that
  P(dog.ears) on a cat is low and the rival comparisons of the explanations mean something;
- with ``framed_weight`` > 0, crops of the class-k images that leave c out of the picture
  (negatives) and crops of the same size that keep it (positives), each at that weight: natural-
  looking images without c, which masked copies are not (:mod:`.probe_data`).

The regularisation C is chosen by cross-validated AUROC, grouped by image (all copies of an image in one
fold). A Platt sigmoid fitted on cross-fitted out-of-fold scores turns the probe's logit into P_s,
a probability whose bands (0.2, 0.5) mean what they say. The channels with the largest standardised
weights are the space's semantically sensitive neurons (SSNs), the S-XAI reading of the probe.

This is the CAV idea of TCAV (Kim et al. 2018) turned into S-XAI's semantic probability; P_s stays
one matrix product on the traits that the prediction pass already computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.special import expit

from .._utils.errors import SpaceError
from .probe_data import (
    CONTROL,
    FRAMED_IN,
    FRAMED_OUT,
    HELD_OUT_MASKINGS,
    MASKED,
    ORIGINAL,
    TRAIN_MASKINGS,
    ProbeFeatures,
)

# Fewer positives than this and a probe over ~1,000 channels is noise.
MIN_POSITIVES = 8
MIN_NEGATIVES = 8


@dataclass(frozen=True)
class ProbeRecipe:
    """Everything that decides a probe; stored in each space file's metadata."""

    train_maskings: tuple[str, ...] = tuple(m.name for m in TRAIN_MASKINGS)
    held_out_maskings: tuple[str, ...] = tuple(m.name for m in HELD_OUT_MASKINGS)
    control_weight: float = 0.5
    natural_weight: float = 2.0
    rival_weight: float = 1.0
    # framed crops (out: c cropped away, in: kept) at this weight; 0 leaves them out
    framed_weight: float = 0.0
    cs: tuple[float, ...] = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
    folds: int = 5
    n_ssn: int = 5
    max_iter: int = 2000
    # Modules of the model's body whose mean- and max-pooled outputs join the GAP traits as the
    # probe's features ("model.blocks.4"); empty: the GAP traits alone.
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if set(self.train_maskings) & set(self.held_out_maskings):
            raise SpaceError(
                "a masking cannot both train probes and be held out for their evaluation: "
                f"{sorted(set(self.train_maskings) & set(self.held_out_maskings))}"
            )
        if not self.train_maskings:
            raise SpaceError("a probe needs at least one training masking")
        if len(set(self.layers)) != len(self.layers):
            raise SpaceError(f"probe layers must not repeat: {list(self.layers)}")
        if self.folds < 2 or not self.cs or min(self.cs) <= 0:
            raise SpaceError("a probe needs folds >= 2 and positive regularisation values cs")

    def to_dict(self) -> dict:
        return {"mode": "probe", **asdict(self)}


@dataclass
class TrainingSet:
    """Rows of a feature bank with labels and weights for one space."""

    rows: np.ndarray  # indices into the bank
    labels: np.ndarray  # 1 concept present, 0 absent
    weights: np.ndarray  # fitting weights (see the module docstring)
    calibration: np.ndarray  # weights of the calibration mixture: each image counts once
    groups: np.ndarray  # image index of each row

    def __len__(self) -> int:
        return len(self.rows)


def training_set(
    bank: ProbeFeatures,
    class_name: str,
    concept: str,
    recipe: ProbeRecipe,
    images: np.ndarray | None = None,
) -> TrainingSet:
    """The rows that train space ``class_name.concept``, from the images ``images`` (indices into
    ``bank.images``; default all)."""
    kind = bank.column("kind")
    row_concept = bank.column("concept")
    masking = bank.column("masking")
    image = bank.column("image")
    own = bank.image_column("class_name") == class_name
    visible = bank.visible(concept)
    allowed = np.ones(len(bank.rows), dtype=bool) if images is None else np.isin(image, images)
    n_maskings = len(recipe.train_maskings)
    trains = np.isin(masking, recipe.train_maskings) & (row_concept == concept)

    parts = [  # (selection, label, fitting weight, calibration weight)
        (own & (kind == ORIGINAL) & (visible == 1), 1, 1.0, 1.0),
        (own & (kind == CONTROL) & trains, 1, recipe.control_weight / n_maskings, 0.0),
        (own & (kind == MASKED) & trains, 0, 1.0 / n_maskings, 1.0 / n_maskings),
        (own & (kind == ORIGINAL) & (visible == 0), 0, recipe.natural_weight, 1.0),
        (~own & (kind == ORIGINAL) & (visible == 1), 0, recipe.rival_weight, 1.0),
    ]
    if recipe.framed_weight > 0:
        framed = own & (row_concept == concept)
        parts += [
            (framed & (kind == FRAMED_IN), 1, recipe.framed_weight, 0.0),
            (framed & (kind == FRAMED_OUT), 0, recipe.framed_weight, 0.0),
        ]
    rows, labels, weights, calibration = [], [], [], []
    for selected, label, weight, calib in parts:
        index = np.flatnonzero(selected & allowed)
        rows.append(index)
        labels.append(np.full(len(index), label))
        weights.append(np.full(len(index), weight))
        calibration.append(np.full(len(index), calib))
    rows_ = np.concatenate(rows)
    return TrainingSet(
        rows_,
        np.concatenate(labels),
        np.concatenate(weights),
        np.concatenate(calibration),
        image[rows_],
    )


@dataclass
class Probe:
    """A fitted probe in the traits' own units: ``logit = traits @ weight + bias`` and
    ``P_s = sigmoid(slope · logit + intercept)``."""

    weight: np.ndarray  # C, on raw traits
    bias: float
    slope: float
    intercept: float
    standardised: np.ndarray  # C, the weights on standardised traits (their size ranks the SSNs)
    scale: np.ndarray  # C, the traits' standard deviations (standardised = weight · scale)
    report: dict = field(default_factory=dict)

    def logit(self, traits: np.ndarray | torch.Tensor) -> np.ndarray:
        t = (
            traits.detach().double().cpu().numpy()
            if isinstance(traits, torch.Tensor)
            else np.asarray(traits, float)
        )
        return t @ self.weight + self.bias

    def probability(self, traits: np.ndarray | torch.Tensor) -> np.ndarray:
        return expit(self.slope * self.logit(traits) + self.intercept)

    def ssn(self, n: int, channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` channels of largest standardised |weight| (ties: lower index) among the first
        ``channels`` features (the traits, when pooled layer outputs follow them), and their weights."""
        weights = self.standardised[:channels]
        order = np.lexsort((np.arange(weights.size), -np.abs(weights)))[:n]
        return order.astype(np.int64), weights[order]


def _group_splits(groups: np.ndarray, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    n = min(folds, len(np.unique(groups)))
    if n < 2:
        raise SpaceError("a probe needs images from at least two groups to cross-validate")
    dummy = np.zeros(len(groups))
    return list(GroupKFold(n_splits=n).split(dummy, dummy, groups))


def _fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter).fit(x, y, sample_weight=w)


def _weighted_auroc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score, sample_weight=w))


def _weighted_log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())


def fit_probe(
    traits: torch.Tensor | np.ndarray, data: TrainingSet, recipe: ProbeRecipe, where: str = "probe"
) -> Probe:
    """Standardise, pick C by grouped cross-validation, fit, calibrate on out-of-fold logits."""
    from threadpoolctl import threadpool_limits

    # These are ~1,000 × 1,280 problems: a multi-threaded BLAS spends more time waking its threads
    # than computing (measured 16× slower per fit on this project's 2-core machine under load).
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_probe(traits, data, recipe, where)


def _fit_probe(
    traits: torch.Tensor | np.ndarray, data: TrainingSet, recipe: ProbeRecipe, where: str
) -> Probe:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y = data.labels
    n_positive, n_negative = (len(np.unique(data.groups[y == label])) for label in (1, 0))
    if n_positive < MIN_POSITIVES or n_negative < MIN_NEGATIVES:
        raise SpaceError(
            f"{where}: {n_positive} images give positives and {n_negative} give negatives; "
            f"a probe needs at least {MIN_POSITIVES} of each (annotate more images "
            "showing the concept, and some without it)"
        )
    x_raw = (
        traits.double().numpy() if isinstance(traits, torch.Tensor) else np.asarray(traits, float)
    )[data.rows]
    scaler = StandardScaler().fit(x_raw)
    x = scaler.transform(x_raw)
    splits = _group_splits(data.groups, recipe.folds)

    # Out-of-fold logits for every C at once: the choice of C and the calibration both use them.
    oof = np.zeros((len(recipe.cs), len(y)))
    for train, test in splits:
        for i, c in enumerate(recipe.cs):
            model = _fit_logistic(x[train], y[train], data.weights[train], c, recipe.max_iter)
            oof[i, test] = model.decision_function(x[test])
    # C by what a space must do: rank images showing the concept above those without it (AUROC of
    # the calibration mixture; the smaller C on ties). Log-loss would pick a smaller C here and
    # rank worse; the Platt step below takes care of the probabilities.
    keep = data.calibration > 0
    scores = [_weighted_auroc(y[keep], o[keep], data.calibration[keep]) for o in oof]
    losses = [_weighted_log_loss(y, expit(o), data.weights) for o in oof]
    best = max(range(len(recipe.cs)), key=lambda i: (round(scores[i], 4), -recipe.cs[i]))
    c = recipe.cs[best]

    # Platt: a 1-D logistic regression of the label on the out-of-fold logit, over the calibration
    # mixture (natural images and masked copies, each image once).
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(
        oof[best][keep, None], y[keep], sample_weight=data.calibration[keep]
    )
    slope, intercept = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    if not slope > 0:
        raise SpaceError(
            f"{where}: the probe's out-of-fold scores do not rise with the concept "
            f"(Platt slope {slope:.3g}); the concept cannot be read from these traits"
        )

    final = _fit_logistic(x, y, data.weights, c, recipe.max_iter)
    standardised = final.coef_[0].astype(np.float64)
    weight = standardised / scaler.scale_
    bias = float(final.intercept_[0] - (standardised * scaler.mean_ / scaler.scale_).sum())
    report = {
        "c": c,
        "cv_auroc": {str(cc): round(a, 5) for cc, a in zip(recipe.cs, scores)},
        "cv_log_loss": {str(cc): round(loss, 5) for cc, loss in zip(recipe.cs, losses)},
        "n_rows": int(len(y)),
        "n_positive_rows": int((y == 1).sum()),
        "n_images": int(len(np.unique(data.groups))),
        "platt": [slope, intercept],
    }
    return Probe(weight, bias, slope, intercept, standardised, scaler.scale_.copy(), report)


def probe_space(
    probe: Probe,
    model,
    class_name: str,
    concept: str,
    recipe: ProbeRecipe,
    n_images: int,
    layer_widths: Sequence[int] = (),
):
    """A :class:`~sxai_plugins.spaces.SemanticSpace` (format v2) holding ``probe``; ``layer_widths``
    are the widths of ``recipe.layers``' pooled outputs in its features."""
    from .space import ProbeHead, SemanticSpace

    indices, weights = probe.ssn(recipe.n_ssn, channels=model.trait_dim)
    return SemanticSpace(
        class_name=class_name,
        concept=concept,
        backbone=model.name,
        fingerprint=model.fingerprint(),
        trait_dim=model.trait_dim,
        indices=torch.as_tensor(indices),
        delta=torch.as_tensor(weights),
        masker="+".join(recipe.train_maskings),
        n_images=n_images,
        recipe=recipe.to_dict(),
        probe=ProbeHead(
            torch.as_tensor(probe.weight, dtype=torch.float32),
            probe.bias,
            probe.slope,
            probe.intercept,
            torch.as_tensor(probe.scale, dtype=torch.float32),
            tuple(zip(recipe.layers, layer_widths)),
        ),
    )


def build_probe_spaces(
    model,
    bank: ProbeFeatures,
    classes: Sequence[str],
    concepts: Sequence[str],
    recipe: ProbeRecipe | None = None,
    progress: bool = True,
) -> list:
    """One v2 space per (class, concept), trained on every image of the bank."""
    from tqdm.auto import tqdm

    recipe = recipe or ProbeRecipe()
    spaces = []
    features = bank.features(recipe.layers)
    pairs = [(k, c) for k in classes for c in concepts]
    for class_name, concept in tqdm(
        pairs, desc="concept probes", unit="space", disable=not progress
    ):
        data = training_set(bank, class_name, concept, recipe)
        probe = fit_probe(features, data, recipe, where=f"space {class_name}.{concept}")
        space = probe_space(
            probe,
            model,
            class_name,
            concept,
            recipe,
            probe.report["n_images"],
            [bank.pooled_layers[name] for name in recipe.layers],
        )
        space.recipe["fit"] = probe.report
        spaces.append(space)
    return spaces


__all__ = [
    "Probe",
    "ProbeRecipe",
    "TrainingSet",
    "build_probe_spaces",
    "fit_probe",
    "probe_space",
    "training_set",
]
