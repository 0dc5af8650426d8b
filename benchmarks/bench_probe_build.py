"""Time to build the default model's eight v2 (probe) spaces: feature extraction of originals,
concept-masked and control-masked copies (batched; cached after the first run), then the probes
themselves from the cached features, with the bundled recipe (spaces.toml: the traits and the pooled
outputs of three stages). Target: the probes from cached features in under 2 minutes.

    python benchmarks/bench_probe_build.py [--data ../shared/data/dogs-vs-cats] [--json]

Needs the shared data. The first run extracts the features (about 10 minutes on 2 CPU cores) into
$SXAI_CACHE (default ~/.cache/sxai); the figure for that step is printed only when it ran.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import sxai_plugins as sx
from sxai_plugins.data.concepts import load_coco
from sxai_plugins.spaces.from_config import probe_recipe
from sxai_plugins.spaces.probe_data import cached_probe_features, load_labelled
from sxai_plugins.spaces.probes import build_probe_spaces

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ["eyes", "nose", "ears", "legs"]
CONFIG = ROOT / "sxai_plugins" / "assets" / "lite0_catdog" / "spaces.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"))
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args()
    data = Path(args.data)
    model = sx.create_model()
    labelled = load_labelled(
        load_coco(data / "concepts.coco.json", data), data / "visibility.json", data
    )
    recipe, _seed = probe_recipe(tomllib.loads(CONFIG.read_text())["recipe_options"])
    start = time.perf_counter()
    bank = cached_probe_features(
        model, labelled, CONCEPTS, progress=not args.json, layers=recipe.layers
    )
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    spaces = build_probe_spaces(model, bank, model.class_names, CONCEPTS, recipe, progress=False)
    build_s = time.perf_counter() - start
    result = {
        "images": len(bank.images),
        "rows": len(bank.rows),
        "spaces": len(spaces),
        "features_seconds": features_s,
        "features_from_cache": features_s < 30,
        "build_seconds": build_s,
        "build_seconds_per_space": build_s / len(spaces),
        "target_build_seconds": 120,
        "features": bank.features(recipe.layers).shape[1],
    }
    print(json.dumps(result, indent=2))
    if not args.json:
        print(f"\n{'step':<34}{'seconds':>10}")
        label = "features (cache read)" if result["features_from_cache"] else "features (extracted)"
        print(f"{label:<34}{features_s:>10.1f}")
        print(f"{'8 probes from cached features':<34}{build_s:>10.1f}   target < 120")


if __name__ == "__main__":
    main()
