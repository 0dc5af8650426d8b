"""Cost of the adversarial detection score on top of prediction: the score (issue 12) is computed
from the logits and the semantic probabilities the prediction pass already gives, so it should
cost nothing beyond it. Times, interleaved and best of ``--repeats``, on the default backbone:
prediction alone (forward pass + softmax), prediction + P_s of the bundled spaces (what
``sxai explain`` computes), and the same + the detection score; and the score alone per batch.
Target: the score adds at most 1% to prediction.

    python benchmarks/bench_detector.py [--batch 32] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import sxai_plugins as sx
from sxai_plugins.explain.trust import load_space_set
from sxai_plugins.robust.detection import Detector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spaces import run  # noqa: E402  (one timing loop for both benchmarks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = sx.create_model()
    spaces = load_space_set(None, model)
    # the score's cost does not depend on the fitted numbers
    detector = Detector(score="gap", threshold=3.0, beta=4.0, intercept=5.0)
    images = torch.rand(args.batch, 3, *model.input_size[1:])
    runs = {
        "prediction": (None, None),
        "+ P_s": (spaces, None),
        "+ P_s + score": (spaces, detector),
    }
    run(model, images, spaces, detector)  # warm-up
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, (s, d) in runs.items():  # interleaved, so load changes hit all alike
            best[name] = min(best[name], run(model, images, s, d))
    with torch.inference_mode():
        out = model(images)
        p_s = spaces.probabilities(out)
        start = time.perf_counter()
        for _ in range(100):
            detector.scores(out.logits, p_s, spaces, model.class_names)
        score_ms = (time.perf_counter() - start) * 10
    base = best["prediction"]
    result = {
        "backbone": model.name,
        "batch": args.batch,
        "repeats": args.repeats,
        "spaces": len(spaces),
        "images_per_second": {k: args.batch / v for k, v in best.items()},
        "overhead_vs_prediction": {k: v / base - 1 for k, v in best.items() if k != "prediction"},
        "score_ms_per_batch": score_ms,
        "score_share_of_prediction": score_ms / 1000 / base,
        "target_score_share": 0.01,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        return
    print(f"\n{'run':<16}{'images/s':>10}{'overhead':>10}")
    for name in runs:
        overhead = "" if name == "prediction" else f"{result['overhead_vs_prediction'][name]:+.2%}"
        print(f"{name:<16}{result['images_per_second'][name]:>10.1f}{overhead:>10}")
    print(
        f"detection score alone: {score_ms:.3f} ms per batch of {args.batch} = "
        f"{result['score_share_of_prediction']:.4%} of the batch's prediction time (target ≤ 1%)"
    )


if __name__ == "__main__":
    main()
