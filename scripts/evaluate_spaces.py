"""Build the default model's eight spaces with the paper's recipe and with the tuned one, and print
how well each means its concept, side by side, on annotated images neither recipe was built from.

    python scripts/evaluate_spaces.py [--data ../shared/data/dogs-vs-cats] [--json]

Columns: P(orig)>P(mask) — the fraction of evaluation images showing the concept whose P_s drops
when the concept is masked (target >= 0.90); AUROC vis/not — P_s of those images against the same
species' annotated images where the concept is not visible (target >= 0.80; cross-validated when
the recipe builds with those negatives; with 1-5 negatives it is mostly noise); Q-Q R² of the
reference distribution (the paper saw > 0.97).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import sxai_plugins as sx
from sxai_plugins.build_spaces import PairedTraits, SpaceRecipe, build_spaces
from sxai_plugins.concepts import load_coco
from sxai_plugins.spaces_cli import reference_scores

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ["eyes", "nose", "ears", "legs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = Path(args.data)
    model = sx.create_model()
    annotations = load_coco(data / "concepts.coco.json", data)
    _paths, traits, logits = reference_scores(model, data / "train")
    paper, tuned = SpaceRecipe.paper(), SpaceRecipe.tuned()
    cache = PairedTraits(model, paper)  # both recipes mask with the same superpixel masker
    results = {}
    for name, recipe in (("paper", paper), ("tuned", tuned)):
        report = build_spaces(model, annotations, model.class_names, CONCEPTS, (traits, logits), recipe, cache=cache)
        results[name] = {s.key: s.evaluation for s in report.spaces}
    if args.json:
        print(json.dumps(results, indent=2))
        return

    def f(v):
        return "  n/a" if v is None or math.isnan(v) else f"{v:.2f}"

    print(f"{'space':<10}{'neg':>4} | {'P(orig)>P(mask)':^17} | {'AUROC vis/not':^15} | {'Q-Q R²':^13}")
    print(f"{'':<14}| {'paper':>7} {'tuned':>7}  | {'paper':>6} {'tuned':>6}  | {'paper':>5} {'tuned':>5}")
    for key, p in results["paper"].items():
        t = results["tuned"][key]
        print(f"{key:<10}{p['n_natural_negatives']:>4} | {f(p['fraction_original_above_masked']):>7} "
              f"{f(t['fraction_original_above_masked']):>7}  | {f(p['auroc_visible_vs_not']):>6} "
              f"{f(t['auroc_visible_vs_not']):>6}  | {f(p['qq_r2']):>5} {f(t['qq_r2']):>5}")
    for name in ("paper", "tuned"):
        r = results[name].values()
        hits_f = sum(e["fraction_original_above_masked"] >= 0.9 for e in r)
        hits_a = sum((e["auroc_visible_vs_not"] or 0) >= 0.8 for e in r)
        print(f"{name}: {hits_f}/8 spaces reach P(orig)>P(mask) >= 0.90, {hits_a}/8 reach AUROC >= 0.80")


if __name__ == "__main__":
    main()
