"""Print the default model's accuracy on the held-out images its head never saw.

The head card (sxai_plugins/assets/lite0_catdog/head.json) lists the held-out files; this script
scores them afresh with the installed default model rather than trusting the card's number.

    python scripts/eval_default_head.py [--data ../shared/data/dogs-vs-cats/train] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import sxai_plugins as sx
from sxai_plugins.models.inference import score_paths
from sxai_plugins.models.lite0 import ASSETS

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats" / "train")
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    card = json.loads((ASSETS / "head.json").read_text())
    model = sx.create_model()
    paths = [Path(args.data) / rel for rel in card["heldout"]]
    scored = score_paths(model, paths, desc="held-out images")
    truth = [model.class_names.index(p.parent.name) for p in scored.paths]
    predicted = scored.logits.argmax(1).tolist()
    correct = sum(int(a == b) for a, b in zip(truth, predicted))
    per_class = {
        c: sum(1 for t, p in zip(truth, predicted) if t == i and p == i) / max(1, truth.count(i))
        for i, c in enumerate(model.class_names)
    }
    result = {
        "backbone": model.name,
        "heldout_images": len(truth),
        "accuracy": correct / len(truth),
        "per_class_accuracy": per_class,
        "paper_vgg19_accuracy": 0.975,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'backbone':<22}{model.name}")
        print(f"{'held-out images':<22}{len(truth)}")
        print(f"{'accuracy':<22}{result['accuracy']:.4f}  (paper's VGG-19: 0.975)")
        for c, a in per_class.items():
            print(f"{'  ' + c:<22}{a:.4f}")


if __name__ == "__main__":
    main()
