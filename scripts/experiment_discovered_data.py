"""Do images with discovered concept masks help the annotated spaces? The bundled recipe scored
out of fold over the 440 labelled images (the protocol of ``scripts/evaluate_spaces.py``: 5 folds
grouped by image, held-out maskings inpaint@20 and superpixel@35), trained on the other folds
alone and on the other folds plus every image of named discoveries (never evaluated: the
discoveries are checked to hold none of the 440 images).

    python scripts/experiment_discovered_data.py --discovered disc-cat --discovered disc-dog \\
        --discovered disc-dog-672 [--out docs/results/discovered-data]

A discovered concept adds, for its class, originals showing it and copies with its cluster's
segments hidden (the training maskings), and for the other class rival negatives; a discovered
concept without an annotated namesake (muzzle) is left out. An image where discovery found no
cluster of a concept is unknown there, not a negative. A third configuration gives the discovered
images framed crops (weight 1, the discovered spaces' recipe): they have no natural negatives, and a
crop that leaves the concept out of the picture stands in for one. Writes ``results.json`` (every
metric of every space per configuration) and ``summary.md``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import sxai_plugins as sx
from sxai_plugins.data.concepts import load_coco
from sxai_plugins.discover.naming import read_naming
from sxai_plugins.discover.spaces import discovered_annotations, discovered_labelled
from sxai_plugins.spaces.probe_data import (
    Masking,
    ProbeFeatures,
    cached_probe_features,
    load_labelled,
)
from sxai_plugins.spaces.validity import TARGETS, out_of_fold, space_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from experiment_probe_recipes import BUNDLED as RECIPE  # noqa: E402
from experiment_probe_recipes import CONCEPTS, summary_line, write_results  # noqa: E402

FOLDS, SEED = 5, 0


def merged_bank(bank: ProbeFeatures, extra: ProbeFeatures) -> ProbeFeatures:
    """``bank``'s rows, then ``extra``'s rows of the concepts ``bank`` knows."""
    keep = np.flatnonzero([r.concept in ("", *bank.concepts) for r in extra.rows])
    offset = len(bank.images)
    images = [
        replace(im, visible={c: v for c, v in im.visible.items() if c in bank.concepts})
        for im in extra.images
    ]
    return ProbeFeatures(
        images=[*bank.images, *images],
        rows=[
            *bank.rows,
            *(replace(extra.rows[i], image=extra.rows[i].image + offset) for i in keep),
        ],
        traits=torch.cat([bank.traits, extra.traits[keep]]),
        concepts=bank.concepts,
        maskings=tuple(dict.fromkeys((*bank.maskings, *extra.maskings))),
        pooled=torch.cat([bank.pooled, extra.pooled[keep]]),
        pooled_layers=bank.pooled_layers,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discovered", action="append", required=True, help="discovery folders")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "discovered-data"))
    args = parser.parse_args()
    data = Path(args.data)
    model = sx.create_model()
    labelled = load_labelled(
        load_coco(data / "concepts.coco.json", data), data / "visibility.json", data
    )
    names = (*RECIPE.train_maskings, *RECIPE.held_out_maskings)
    bank = cached_probe_features(
        model, labelled, CONCEPTS, [Masking.parse(m) for m in names], layers=RECIPE.layers
    )
    namings = [read_naming(folder) for folder in args.discovered]
    annotations = discovered_annotations(namings)
    extra_images = discovered_labelled(annotations)
    overlap = {im.path.resolve() for im in extra_images} & {im.path.resolve() for im in labelled}
    if overlap:
        raise SystemExit(f"{len(overlap)} discovered images are evaluation images")
    extra = cached_probe_features(
        model,
        extra_images,
        list(annotations.concepts),
        [Masking.parse(m) for m in RECIPE.train_maskings],
        layers=RECIPE.layers,
        framing=True,  # framed rows count only where the recipe weighs them
    )
    merged = merged_bank(bank, extra)
    n_rows, n_images = len(bank.rows), len(bank.images)
    results, lines = {}, []
    head = "| training images | mean AUROC | " + " | ".join(f"{t} met" for t in TARGETS)
    lines += [head + " | misses |", "|" + "---|" * (len(TARGETS) + 3)]
    configurations = (
        ("annotated (other folds)", False, RECIPE),
        ("+ discovered", True, RECIPE),
        ("+ discovered, framed crops (weight 1)", True, replace(RECIPE, framed_weight=1.0)),
    )
    for name, with_extra, recipe in configurations:
        print(name, flush=True)
        # the discovered images train every fold's probes (never scored), or are left out
        scored_on, train_only = (
            (merged, range(n_images, len(merged.images))) if with_extra else (bank, ())
        )
        predictions = out_of_fold(
            scored_on,
            model.class_names,
            CONCEPTS,
            "probe",
            recipe,
            FOLDS,
            SEED,
            train_only=train_only,
        )
        metrics = {
            key: space_metrics(bank, *key.split(".", 1), p[:n_rows], RECIPE.held_out_maskings)
            for key, p in predictions.items()
        }
        results[name] = metrics
        lines.append(summary_line(name, metrics))
        print(lines[-1], flush=True)
    write_results(Path(args.out), results, lines)


if __name__ == "__main__":
    main()
