"""Experiment: does reading a concept probe *per location* of the last conv map (7×7 for the default
model) instead of on its global average close the AUROC gap of the probe recipe?

    python scripts/experiment_location_probe.py [--data ../shared/data/dogs-vs-cats] [--json F]

Same bank rows, folds (``space_validity.assign_folds``), training rows and weights
(``probes.training_set``), C grid, inner grouped CV, Platt calibration and metrics
(``space_validity.space_metrics``) as ``scripts/evaluate_spaces.py``; held-out maskings and test-fold
images are never used for fitting or selection. Variants (all decided before the first run):

- ``probe``: the current recipe, recomputed with ``space_validity.out_of_fold``;
- ``gap-mean``: this script's own cross-fitting with mean pooling of the location logits, which is
  the GAP probe itself: a check that the machinery reproduces ``probe``;
- ``gap-max`` / ``gap-top3`` / ``gap-lse``: the GAP-trained probe applied at each of the 49 cells
  (standardisation is per-channel affine, so a cell's logit is w·f_xy + b in raw units), pooled by
  max, mean of the top 3, or log-mean-exp; C chosen per pooling by inner-CV AUROC of the pooled
  out-of-fold logit, Platt on it;
- ``mil-max``: a probe trained on cells: positives are the cells holding the concept's annotated
  points (images without points, and every round after the first for all positives: the best cell
  among those), negatives the 3 highest-scoring cells of each negative row; initialised from the GAP
  probe of the same C and re-selected for ``MIL_ROUNDS`` rounds; P_s = Platt(max over cells);
- ``stack-max`` / ``stack-mil``: two-stage: a 2-feature logistic regression on the out-of-fold GAP
  logit and the out-of-fold pooled location logit (gap-max, mil-max), fitted on the training rows
  with the recipe's weights; it is its own calibration.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit, logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import sxai_plugins as sx
from sxai_plugins.data.concepts import load_coco
from sxai_plugins.spaces import probes
from sxai_plugins.spaces.probe_data import (
    CONTROL,
    ORIGINAL,
    ProbeFeatures,
    cached_probe_features,
    load_labelled,
)
from sxai_plugins.spaces.probes import ProbeRecipe, TrainingSet, training_set
from sxai_plugins.spaces.validity import TARGETS, assign_folds, misses, out_of_fold, space_metrics

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ["eyes", "nose", "ears", "legs"]
POOLS = {
    "mean": lambda s: s.mean(1),
    "max": lambda s: s.max(1),
    "top3": lambda s: np.sort(s, axis=1)[:, -3:].mean(1),
    "lse": lambda s: logsumexp(s, axis=1) - math.log(s.shape[1]),
}
NEGATIVE_CELLS = 3  # cells per negative row in the MIL fit: its highest-scoring ones
MIL_ROUNDS = 2
COLUMNS = [
    ("drop", "drop"),
    ("auroc", "AUROC"),
    ("auroc_natural", "nat"),
    ("control_shift", "ctrl"),
    ("rival_auroc", "rival"),
    ("ece", "ECE"),
]


@dataclass
class Linear:
    """A logistic model on standardised features, with the scaler that standardises them."""

    coef: np.ndarray
    intercept: float

    def cell_logits(
        self, cells: torch.Tensor, rows: np.ndarray, scaler: StandardScaler
    ) -> np.ndarray:
        """rows × cells logits: w·(f_xy − μ)/σ + b, computed as f_xy·(w/σ) + (b − Σ w μ/σ)."""
        w = self.coef / scaler.scale_
        b = self.intercept - float((w * scaler.mean_).sum())
        out = cells[torch.as_tensor(rows)] @ torch.as_tensor(w, dtype=torch.float32)
        return out.double().numpy() + b


def _linear(model: LogisticRegression) -> Linear:
    return Linear(model.coef_[0].astype(np.float64), float(model.intercept_[0]))


def concept_cells(bank: ProbeFeatures, concept: str, grid: int, size: int) -> dict[int, np.ndarray]:
    """Per annotated image index, the flat indices of the grid cells that hold the concept's points."""
    out = {}
    for i, image in enumerate(bank.images):
        if image.annotation is None or not image.annotation.has(concept):
            continue
        rows, cols = image.annotation.geometry(concept, (size, size)).point_pixels()
        out[i] = np.unique((rows * grid // size) * grid + cols * grid // size)
    return out


def fit_mil(
    cells: torch.Tensor,
    bank: ProbeFeatures,
    data: TrainingSet,
    subset: np.ndarray,
    scaler: StandardScaler,
    init: Linear,
    c: float,
    positive_cells: dict[int, np.ndarray],
    recipe: ProbeRecipe,
) -> Linear:
    """A multiple-instance logistic probe on cells of the training rows ``subset`` (see the docstring)."""
    rows = data.rows[subset]
    images = bank.column("image")[rows]
    kinds = bank.column("kind")[rows]
    y_rows = data.labels[subset]
    model = init
    for round_ in range(MIL_ROUNDS):
        scores = model.cell_logits(cells, rows, scaler)
        order = np.argsort(-scores, axis=1)
        pick_rows, pick_cells, weights, labels = [], [], [], []
        for j, row in enumerate(rows):
            if y_rows[j] == 1:
                known = (
                    positive_cells.get(int(images[j])) if kinds[j] in (ORIGINAL, CONTROL) else None
                )
                if known is not None and round_ == 0:
                    chosen = known
                elif known is not None:  # the best cell among those holding the concept
                    chosen = known[[int(np.argmax(scores[j, known]))]]
                else:
                    chosen = order[j, :1]
            else:
                chosen = order[j, :NEGATIVE_CELLS]
            pick_rows.append(np.full(len(chosen), row))
            pick_cells.append(chosen)
            weights.append(np.full(len(chosen), data.weights[subset][j] / len(chosen)))
            labels.append(np.full(len(chosen), y_rows[j]))
        r, k = np.concatenate(pick_rows), np.concatenate(pick_cells)
        x = scaler.transform(cells[torch.as_tensor(r), torch.as_tensor(k)].double().numpy())
        fitted = probes._fit_logistic(
            x, np.concatenate(labels), np.concatenate(weights), c, recipe.max_iter
        )
        model = _linear(fitted)
    return model


def _choose(oof: np.ndarray, data: TrainingSet, cs: tuple[float, ...]) -> int:
    """The C of the best calibration-mixture AUROC of out-of-fold scores (smaller C on ties), as
    ``probes.fit_probe`` chooses it."""
    keep = data.calibration > 0
    scores = [
        probes._weighted_auroc(data.labels[keep], o[keep], data.calibration[keep]) for o in oof
    ]
    return max(range(len(cs)), key=lambda i: (round(scores[i], 4), -cs[i]))


def _platt(score: np.ndarray, data: TrainingSet) -> tuple[float, float]:
    keep = data.calibration > 0
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(
        score[keep, None], data.labels[keep], sample_weight=data.calibration[keep]
    )
    return float(platt.coef_[0, 0]), float(platt.intercept_[0])


def fit_variants(
    bank: ProbeFeatures,
    cells: torch.Tensor,
    data: TrainingSet,
    recipe: ProbeRecipe,
    positive_cells: dict[int, np.ndarray],
    test_rows: np.ndarray,
    timing: dict,
) -> dict[str, np.ndarray]:
    """Every variant fitted on ``data`` (one training fold), as P_s of ``test_rows``."""
    x_raw = bank.traits.double().numpy()[data.rows]
    scaler = StandardScaler().fit(x_raw)
    x = scaler.transform(x_raw)
    y, w = data.labels, data.weights
    cs = recipe.cs
    splits = probes._group_splits(data.groups, recipe.folds)
    oof = {name: np.zeros((len(cs), len(y))) for name in [*POOLS, "mil"]}
    for train, test in splits:
        for i, c in enumerate(cs):
            t = time.perf_counter()
            gap = _linear(probes._fit_logistic(x[train], y[train], w[train], c, recipe.max_iter))
            timing["gap_fit_s"] += time.perf_counter() - t
            s = gap.cell_logits(cells, data.rows[test], scaler)
            for name, pool in POOLS.items():
                oof[name][i, test] = pool(s)
            t = time.perf_counter()
            mil = fit_mil(cells, bank, data, train, scaler, gap, c, positive_cells, recipe)
            timing["mil_fit_s"] += time.perf_counter() - t
            oof["mil"][i, test] = mil.cell_logits(cells, data.rows[test], scaler).max(1)

    finals: dict[int, Linear] = {}
    finals_mil: dict[int, Linear] = {}

    def final(i: int) -> Linear:
        if i not in finals:
            finals[i] = _linear(probes._fit_logistic(x, y, w, cs[i], recipe.max_iter))
        return finals[i]

    def final_mil(i: int) -> Linear:
        if i not in finals_mil:
            finals_mil[i] = fit_mil(
                cells,
                bank,
                data,
                np.arange(len(y)),
                scaler,
                final(i),
                cs[i],
                positive_cells,
                recipe,
            )
        return finals_mil[i]

    test_logits, out, best = {}, {}, {}
    for name in [*POOLS, "mil"]:
        best[name] = _choose(oof[name], data, cs)
        model = final_mil(best[name]) if name == "mil" else final(best[name])
        s = model.cell_logits(cells, test_rows, scaler)
        test_logits[name] = s.max(1) if name == "mil" else POOLS[name](s)
        slope, intercept = _platt(oof[name][best[name]], data)
        label = "mil-max" if name == "mil" else f"gap-{name}"
        out[label] = expit(slope * test_logits[name] + intercept)
    for label, other in (("stack-max", "max"), ("stack-mil", "mil")):
        features = np.c_[oof["mean"][best["mean"]], oof[other][best[other]]]
        stack = LogisticRegression(C=1e6, max_iter=1000).fit(features, y, sample_weight=w)
        out[label] = stack.predict_proba(np.c_[test_logits["mean"], test_logits[other]])[:, 1]
    return out


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def table(results: dict) -> str:
    variants = list(results)
    lines = []
    for key in next(iter(results.values())):
        lines += [
            f"\n{key}",
            "| variant | " + " | ".join(label for _, label in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        for v in variants:
            m = results[v][key]
            lines.append(
                f"| {v} | "
                + " | ".join(
                    _f(m[n], 3 if n in ("control_shift", "ece") else 2) for n, _ in COLUMNS
                )
                + " |"
            )
    return "\n".join(lines)


def counts(spaces: dict) -> dict:
    hits = {name: 0 for name in TARGETS}
    for metrics in spaces.values():
        missed = {phrase.split()[0] for phrase in misses(metrics)}
        for name in TARGETS:
            hits[name] += name not in missed
    hits["all"] = sum(not misses(m) for m in spaces.values())
    hits["mean_auroc"] = float(np.mean([m["auroc"] for m in spaces.values()]))
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", default=str(ROOT / "docs" / "results" / "location-probe" / "results.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)
    model = sx.create_model()
    labelled = load_labelled(
        load_coco(data / "concepts.coco.json", data), data / "visibility.json", data
    )
    t = time.perf_counter()
    bank = cached_probe_features(model, labelled, CONCEPTS, maps=True)
    timing = {"bank_load_or_extract_s": time.perf_counter() - t, "gap_fit_s": 0.0, "mil_fit_s": 0.0}
    n, channels, grid, _ = bank.maps.shape
    cells = (
        bank.maps.permute(0, 2, 3, 1).reshape(n, grid * grid, channels).float()
    )  # rows × cells × C
    size = model.input_size[1]
    recipe = ProbeRecipe()
    classes = model.class_names
    print(
        f"{n} rows, maps {tuple(bank.maps.shape)}, load/extract {timing['bank_load_or_extract_s']:.0f}s"
    )

    t = time.perf_counter()
    predictions = {
        "probe": out_of_fold(bank, classes, CONCEPTS, "probe", recipe, args.folds, args.seed)
    }
    timing["baseline_out_of_fold_s"] = time.perf_counter() - t

    t = time.perf_counter()
    fold_of_image = assign_folds(bank, args.folds, args.seed)
    fold_of_row = fold_of_image[bank.column("image")]
    positive_cells = {c: concept_cells(bank, c, grid, size) for c in CONCEPTS}
    with threadpool_limits(limits=1, user_api="blas"):
        for fold in range(args.folds):
            train_images = np.flatnonzero(fold_of_image != fold)
            test_rows = np.flatnonzero(fold_of_row == fold)
            for class_name in classes:
                for concept in CONCEPTS:
                    key = f"{class_name}.{concept}"
                    train = training_set(bank, class_name, concept, recipe, train_images)
                    out = fit_variants(
                        bank, cells, train, recipe, positive_cells[concept], test_rows, timing
                    )
                    for variant, p in out.items():
                        predictions.setdefault(variant, {}).setdefault(key, np.full(n, np.nan))[
                            test_rows
                        ] = p
                    print(f"fold {fold} {key}: {time.perf_counter() - t:.0f}s", flush=True)
    timing["variants_out_of_fold_s"] = time.perf_counter() - t

    results = {
        variant: {
            key: space_metrics(bank, *key.split(".", 1), p, recipe.held_out_maskings)
            for key, p in per_space.items()
        }
        for variant, per_space in predictions.items()
    }
    print(table(results))
    print()
    summary = {variant: counts(spaces) for variant, spaces in results.items()}
    for variant, hits in summary.items():
        print(
            f"{variant}: "
            + ", ".join(f"{name} {hits[name]}/8" for name in TARGETS)
            + f"; all {hits['all']}/8; mean AUROC {hits['mean_auroc']:.3f}"
        )
    print({k: round(v, 1) for k, v in timing.items()})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "results": results,
                "summary": summary,
                "timing_s": timing,
                "variants_tried": list(results),
                "rows": n,
                "mil": {"negative_cells": NEGATIVE_CELLS, "rounds": MIL_ROUNDS},
            },
            indent=2,
            default=float,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
