"""Which features should the default model's probes read? Out-of-fold validity (the protocol of
``scripts/evaluate_spaces.py``: 5 folds grouped by image, held-out maskings) of the probe recipe on
the GAP traits alone and with the mean- and max-pooled outputs of earlier stages of the body, at
several control-copy weights, all on one feature bank.

    python scripts/experiment_layer_probe.py [--data ../shared/data/dogs-vs-cats] [--out DIR]

Writes ``results.json`` (every metric of every space per configuration) and ``summary.md`` into
``--out`` (default docs/results/layer-probe). The first run extracts the bank with the pooled
outputs of blocks 2–6 (about 15 minutes on 2 busy CPU cores; cached, and the bundled spaces' build
reuses it). Every configuration is scored on the same evaluation, so picking the best of them is
mildly optimistic; the gain of the stages over the traits alone holds in every configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import sxai_plugins as sx
from sxai_plugins._utils.io import write_json
from sxai_plugins.data.concepts import load_coco
from sxai_plugins.spaces.probe_data import cached_probe_features, load_labelled
from sxai_plugins.spaces.probes import ProbeRecipe
from sxai_plugins.spaces.validity import TARGETS, evaluate_recipes, misses

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ["eyes", "nose", "ears", "legs"]


def blocks(*numbers: int) -> tuple[str, ...]:
    return tuple(f"model.blocks.{n}" for n in numbers)


CONFIGURATIONS = {
    "traits": ProbeRecipe(),
    "traits + blocks 4-6": ProbeRecipe(layers=blocks(4, 5, 6)),
    "traits + blocks 4-6, control weight 1": ProbeRecipe(
        layers=blocks(4, 5, 6), control_weight=1.0
    ),
    "traits + blocks 4-6, control weight 2": ProbeRecipe(
        layers=blocks(4, 5, 6), control_weight=2.0
    ),
    "traits + blocks 5-6, control weight 1": ProbeRecipe(layers=blocks(5, 6), control_weight=1.0),
    "traits + blocks 2-6, control weight 1": ProbeRecipe(
        layers=blocks(2, 3, 4, 5, 6), control_weight=1.0
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "layer-probe"))
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    model = sx.create_model()
    labelled = load_labelled(
        load_coco(data / "concepts.coco.json", data), data / "visibility.json", data
    )
    bank = cached_probe_features(model, labelled, CONCEPTS, layers=blocks(2, 3, 4, 5, 6))
    results, lines = {}, []
    head = "| features | mean AUROC | " + " | ".join(f"{t} met" for t in TARGETS) + " | misses |"
    lines += [head, "|" + "---|" * (len(TARGETS) + 3)]
    for name, recipe in CONFIGURATIONS.items():
        metrics = evaluate_recipes(bank, model.class_names, CONCEPTS, ["probe"], recipe)["probe"]
        results[name] = metrics
        met = {
            t: sum(t not in {m.split()[0] for m in misses(v)} for v in metrics.values())
            for t in TARGETS
        }
        missed = "; ".join(
            f"{key}: {', '.join(misses(v))}" for key, v in metrics.items() if misses(v)
        )
        mean_auroc = np.mean([v["auroc"] for v in metrics.values()])
        lines.append(
            f"| {name} | {mean_auroc:.3f} | "
            + " | ".join(f"{met[t]}/8" for t in TARGETS)
            + f" | {missed} |"
        )
        print(lines[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(
        json.dumps({k: {s: round(v["auroc"], 4) for s, v in m.items()} for k, m in results.items()})
    )


if __name__ == "__main__":
    main()
