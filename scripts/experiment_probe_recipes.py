"""Experiments on the default model's probe recipe, scored out of fold by the protocol of
``scripts/evaluate_spaces.py`` (5 folds grouped by image, held-out maskings inpaint@20 and
superpixel@35), every configuration of an experiment on one feature bank.

    python scripts/experiment_probe_recipes.py layers          [--data DIR] [--out DIR]
    python scripts/experiment_probe_recipes.py train-maskings  [--data DIR] [--out DIR]
    python scripts/experiment_probe_recipes.py framing         [--data DIR] [--out DIR]

- ``layers``: which features should the probes read? The GAP traits alone and with the mean- and
  max-pooled outputs of earlier stages of the body, at several control-copy weights (out:
  docs/results/layer-probe; the bank holds blocks 2–6, about 15 minutes to extract on 2 busy CPU
  cores, cached).
- ``train-maskings``: does training on tighter concept regions (regions grown from finer
  superpixels, 45 segments) help the probes rank originals above the held-out masked copies? The
  per-masking AUROC of the bundled spaces rises with the region's coarseness (superpixel@15 >
  @25 > @35), so the finest held-out masking is the hardest negative (out:
  docs/results/train-maskings; the bank adds superpixel@45 and blur@45 copies, about 20 minutes).
- ``framing``: do crops that leave the concept out of the picture (a close-up of the face leaves
  out the legs) teach the probes what masked copies cannot: natural images without the concept?
  The bundled recipe against the same with framed crops at several weights (out:
  docs/results/framing; the bank adds a framed-out and a framed-in crop per concept and image).

Writes ``results.json`` (every metric of every space per configuration) and ``summary.md`` into
``--out``. Every configuration is scored on the same evaluation, so picking the best of them is
mildly optimistic.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import sxai_plugins as sx
from sxai_plugins._utils.io import write_json
from sxai_plugins.data.concepts import load_coco
from sxai_plugins.spaces.probe_data import Masking, cached_probe_features, load_labelled
from sxai_plugins.spaces.probes import ProbeRecipe
from sxai_plugins.spaces.validity import TARGETS, evaluate_recipes, misses

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ["eyes", "nose", "ears", "legs"]


def blocks(*numbers: int) -> tuple[str, ...]:
    return tuple(f"model.blocks.{n}" for n in numbers)


@dataclass
class Experiment:
    out: str  # folder under docs/results
    configurations: dict[str, ProbeRecipe]
    # what the shared bank must hold: every configuration's layers and maskings
    layers: tuple[str, ...] = ()
    extra_maskings: tuple[str, ...] = field(default=())
    framing: bool = False  # the bank holds framed crops


BUNDLED = ProbeRecipe(layers=blocks(4, 5, 6), control_weight=1.0)
BASE_MASKINGS = BUNDLED.train_maskings

EXPERIMENTS = {
    "layers": Experiment(
        "layer-probe",
        {
            "traits": ProbeRecipe(),
            "traits + blocks 4-6": ProbeRecipe(layers=blocks(4, 5, 6)),
            "traits + blocks 4-6, control weight 1": BUNDLED,
            "traits + blocks 4-6, control weight 2": replace(BUNDLED, control_weight=2.0),
            "traits + blocks 5-6, control weight 1": replace(BUNDLED, layers=blocks(5, 6)),
            "traits + blocks 2-6, control weight 1": replace(BUNDLED, layers=blocks(2, 3, 4, 5, 6)),
        },
        layers=blocks(2, 3, 4, 5, 6),
    ),
    "train-maskings": Experiment(
        "train-maskings",
        {
            "bundled (superpixel@15, @25, blur@20)": BUNDLED,
            "+ superpixel@45": replace(BUNDLED, train_maskings=(*BASE_MASKINGS, "superpixel@45")),
            "+ blur@45": replace(BUNDLED, train_maskings=(*BASE_MASKINGS, "blur@45")),
            "+ superpixel@45 + blur@45": replace(
                BUNDLED, train_maskings=(*BASE_MASKINGS, "superpixel@45", "blur@45")
            ),
        },
        layers=blocks(4, 5, 6),
        extra_maskings=("superpixel@45", "blur@45"),
    ),
    "framing": Experiment(
        "framing",
        {
            "bundled (no framed crops)": BUNDLED,
            "framed crops, weight 0.5": replace(BUNDLED, framed_weight=0.5),
            "framed crops, weight 1": replace(BUNDLED, framed_weight=1.0),
            "framed crops, weight 2": replace(BUNDLED, framed_weight=2.0),
        },
        layers=blocks(4, 5, 6),
        framing=True,
    ),
}


def summary_line(name: str, metrics: dict) -> str:
    """A configuration's row of ``summary.md``: mean AUROC, how many spaces meet each target, and
    every miss."""
    met = {
        t: sum(t not in {m.split()[0] for m in misses(v)} for v in metrics.values())
        for t in TARGETS
    }
    missed = "; ".join(f"{key}: {', '.join(misses(v))}" for key, v in metrics.items() if misses(v))
    mean_auroc = np.mean([v["auroc"] for v in metrics.values()])
    counts = " | ".join(f"{met[t]}/{len(metrics)}" for t in TARGETS)
    return f"| {name} | {mean_auroc:.3f} | {counts} | {missed} |"


def write_results(out: Path, results: dict, lines: list[str]) -> None:
    """``results.json`` and ``summary.md`` into ``out``; every space's AUROC printed as JSON."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(
        json.dumps({k: {s: round(v["auroc"], 4) for s, v in m.items()} for k, m in results.items()})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"))
    parser.add_argument("--out", help="default: docs/results/<the experiment's folder>")
    args = parser.parse_args()
    experiment = EXPERIMENTS[args.experiment]
    data = Path(args.data)
    out = Path(args.out or ROOT / "docs" / "results" / experiment.out)
    model = sx.create_model()
    labelled = load_labelled(
        load_coco(data / "concepts.coco.json", data), data / "visibility.json", data
    )
    names = (*BASE_MASKINGS, *experiment.extra_maskings, *BUNDLED.held_out_maskings)
    maskings = [Masking.parse(name) for name in names]
    bank = cached_probe_features(
        model, labelled, CONCEPTS, maskings, layers=experiment.layers, framing=experiment.framing
    )
    results, lines = {}, []
    head = "| recipe | mean AUROC | " + " | ".join(f"{t} met" for t in TARGETS) + " | misses |"
    lines += [head, "|" + "---|" * (len(TARGETS) + 3)]
    for name, recipe in experiment.configurations.items():
        metrics = evaluate_recipes(bank, model.class_names, CONCEPTS, ["probe"], recipe)["probe"]
        results[name] = metrics
        lines.append(summary_line(name, metrics))
        print(lines[-1], flush=True)
    write_results(out, results, lines)


if __name__ == "__main__":
    main()
