"""Out-of-fold validity of the default model's eight spaces under the paper, tuned and probe recipes,
side by side on the same folds, with maskings the recipes never trained on.

    python scripts/evaluate_spaces.py [--data ../shared/data/dogs-vs-cats] [--folds 5] [--json F]

The probe recipe is the bundled one (``[recipe_options]`` of ``--config``, default the bundled
``spaces.toml``), so the table describes the spaces users get.

Every annotated image (concepts.coco.json) and every visibility-labelled image (visibility.json) is
scored by spaces built without it. Columns (targets in brackets; see sxai_plugins.space_validity):
drop — P_s(original) > P_s(concept hidden by a held-out masking) [>= 0.95]; AUROC — originals
showing the concept against their held-out-masked copies and same-class images without it [>= 0.9];
nat — the same against natural negatives only (n of them in brackets); ctrl — mean |ΔP_s| under a
control mask of the concept's size elsewhere [<= 0.05]; rival — class-k images with the concept
against other classes' images with it [>= 0.9]; ECE [<= 0.05]; Q-Q R² of v1 reference fits.
The first run extracts traits of ~8,000 originals and masked copies (about 10 minutes on 2 CPU
cores); they are cached, and later runs take a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from pathlib import Path

import numpy as np

import sxai_plugins as sx
from sxai_plugins.data.concepts import load_coco
from sxai_plugins.spaces.build import reference_scores
from sxai_plugins.spaces.from_config import probe_recipe
from sxai_plugins.spaces.probe_data import cached_probe_features, load_labelled
from sxai_plugins.spaces.validity import RECIPES, TARGETS, V1Material, evaluate_recipes, misses

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CONFIG = ROOT / "sxai_plugins" / "assets" / "lite0_catdog" / "spaces.toml"
CONCEPTS = ["eyes", "nose", "ears", "legs"]
COLUMNS = [
    ("drop", "drop"),
    ("auroc", "AUROC"),
    ("auroc_natural", "nat"),
    ("control_shift", "ctrl"),
    ("rival_auroc", "rival"),
    ("ece", "ECE"),
    ("qq_r2", "Q-Q R²"),
]


def _f(value: float | None, digits: int = 2) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def markdown_table(results: dict) -> str:
    """One row per space, recipes side by side in each cell (paper / tuned / probe)."""
    recipes = list(results)
    keys = list(next(iter(results.values())))
    head = "| space | pos / nat / rival | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [f"Each cell: {' / '.join(recipes)}.", "", head, "|" + "---|" * (len(COLUMNS) + 2)]
    for key in keys:
        m0 = results[recipes[0]][key]
        cells = []
        for name, _label in COLUMNS:
            values = [results[r][key][name] for r in recipes]
            digits = 3 if name in ("control_shift", "ece") else 2
            cells.append(" / ".join(_f(v, digits) for v in values))
        counts = f"{m0['n_positive']} / {m0['n_natural']} / {m0['n_rival']}"
        lines.append(f"| {key} | {counts} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: dict) -> list[str]:
    lines = []
    for recipe, spaces in results.items():
        hits = {name: 0 for name in TARGETS}
        for metrics in spaces.values():
            missed = {phrase.split()[0] for phrase in misses(metrics)}
            for name in TARGETS:
                hits[name] += name not in missed
        all_met = sum(not misses(m) for m in spaces.values())
        lines.append(
            f"{recipe}: "
            + ", ".join(f"{name} {hits[name]}/{len(spaces)}" for name in TARGETS)
            + f"; all targets {all_met}/{len(spaces)}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recipes", default=",".join(RECIPES), help="comma list of paper, tuned, probe"
    )
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument(
        "--config", default=str(BUNDLED_CONFIG), help="the probe recipe: its [recipe_options]"
    )
    args = parser.parse_args()
    recipe, _seed = probe_recipe(tomllib.loads(Path(args.config).read_text())["recipe_options"])
    data = Path(args.data)
    model = sx.create_model()
    labelled = load_labelled(
        load_coco(data / "concepts.coco.json", data), data / "visibility.json", data
    )
    bank = cached_probe_features(model, labelled, CONCEPTS, layers=recipe.layers)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    reference = None
    if any(r != "probe" for r in recipes):
        paths, traits, logits = reference_scores(model, data / "train")
        predicted = np.array(model.class_names)[logits.argmax(1).numpy()]
        reference = V1Material(traits, predicted, [str(p) for p in paths])
    results = evaluate_recipes(
        bank,
        model.class_names,
        CONCEPTS,
        recipes,
        recipe,
        folds=args.folds,
        seed=args.seed,
        reference=reference,
    )
    print(markdown_table(results))
    print()
    for line in summary(results):
        print(line)
    for recipe, spaces in results.items():
        for key, metrics in spaces.items():
            missed = misses(metrics)
            if missed:
                print(f"  {recipe} {key} misses: {', '.join(missed)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
