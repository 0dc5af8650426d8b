"""Cost of semantic probabilities on top of prediction: images/s of prediction alone versus
prediction plus P_s for 8 and for 100 spaces of both formats (v1: 5 SSNs and a reference normal;
v2: a calibrated probe over every channel; v2 + layers: a probe that also reads the pooled outputs of
the bundled spaces' layers, hooked in the same pass), measured side by side in one run (interleaved
repeats, best of each) on the default backbone. Target: 100 spaces cost under 5% over prediction.

    python benchmarks/bench_spaces.py [--batch 32] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import sxai_plugins as sx
from sxai_plugins.spaces.space import ProbeHead, Reference, SemanticSpace, SpaceSet


def synthetic_spaces(
    model, count: int, version: int = 1, seed: int = 0, layers: tuple = ()
) -> SpaceSet:
    """``count`` spaces of format ``version`` with random weights (the cost does not depend on them);
    v2 spaces read ``layers`` ((name, width) pairs) besides the traits."""
    rng = np.random.default_rng(seed)
    spaces = []
    dim = model.trait_dim + sum(width for _, width in layers)
    for i in range(count):
        probe = None
        if version == 2:
            probe = ProbeHead(
                torch.as_tensor(rng.normal(size=dim), dtype=torch.float32),
                0.1,
                1.0,
                0.0,
                torch.ones(dim),
                layers,
            )
        space = SemanticSpace(
            f"c{i % 2}",
            f"concept{i}",
            model.name,
            model.fingerprint(),
            model.trait_dim,
            torch.as_tensor(rng.choice(model.trait_dim, 5, replace=False)),
            torch.as_tensor(rng.normal(size=5)),
            probe=probe,
        )
        if version == 1:
            space.reference = Reference(0.0, 1.0, -3.0, 3.0, 100, 0.99)
        spaces.append(space)
    return SpaceSet(spaces)


@torch.inference_mode()
def run(model, images: torch.Tensor, spaces: SpaceSet | None, detector=None) -> float:
    """Seconds for one prediction pass, plus P_s of ``spaces`` and the ``detector``'s score when given."""
    start = time.perf_counter()
    with model.pooling(spaces.layer_names if spaces is not None else ()):
        out = model(images)
    probs = out.logits.softmax(1)
    if spaces is not None:
        p_s = spaces.probabilities(out)
        if detector is not None:
            detector.scores(out.logits, p_s, spaces, model.class_names).sum()
        float(p_s.sum())
    float(probs.sum())
    return time.perf_counter() - start


def bundled_layers() -> tuple[str, ...]:
    """The layers the default model's bundled spaces read (none for traits-only probes)."""
    from sxai_plugins.explain.trust import default_spaces_dir

    folder = default_spaces_dir(sx.DEFAULT_BACKBONE)
    spaces = SpaceSet(sx.load_spaces([folder])) if folder is not None else None
    layers = spaces.layer_names if spaces is not None else ()
    return layers or ("model.blocks.4", "model.blocks.5", "model.blocks.6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = sx.create_model()
    images = torch.rand(args.batch, 3, *model.input_size[1:])
    with model.pooling(bundled_layers()), torch.inference_mode():
        pooled = model(images[:1]).pooled or {}
    layers = tuple((name, values.shape[1]) for name, values in pooled.items())
    sets = {
        "prediction": None,
        "+8 v1 spaces": synthetic_spaces(model, 8, 1),
        "+100 v1 spaces": synthetic_spaces(model, 100, 1),
        "+8 v2 spaces": synthetic_spaces(model, 8, 2),
        "+100 v2 spaces": synthetic_spaces(model, 100, 2),
        "+8 v2 spaces, layers": synthetic_spaces(model, 8, 2, layers=layers),
        "+100 v2 spaces, layers": synthetic_spaces(model, 100, 2, layers=layers),
    }
    run(model, images, None)  # warm-up
    best = {name: float("inf") for name in sets}
    for _ in range(args.repeats):
        for name, spaces in sets.items():  # interleaved, so load changes hit all three alike
            best[name] = min(best[name], run(model, images, spaces))
    base = best["prediction"]
    result = {
        "backbone": model.name,
        "batch": args.batch,
        "repeats": args.repeats,
        "images_per_second": {k: args.batch / v for k, v in best.items()},
        "overhead_vs_prediction": {k: v / base - 1 for k, v in best.items() if k != "prediction"},
        "target_overhead_100_spaces": 0.05,
        "layers": [name for name, _ in layers],
    }
    # the scoring itself, timed alone: what the forward pass's noise can hide; and the same cost as
    # a share of a forward pass, robust where end-to-end timings are noisy
    alone = {"v1": "+100 v1 spaces", "v2": "+100 v2 spaces", "v2_layers": "+100 v2 spaces, layers"}
    for version, name in alone.items():
        scorer = sets[name]
        features = torch.rand(args.batch, scorer.feature_dim)
        start = time.perf_counter()
        for _ in range(100):
            scorer.probabilities(features)
        ms = (time.perf_counter() - start) * 10
        result[f"scoring_100_{version}_spaces_ms_per_batch"] = ms
        result[f"scoring_100_{version}_spaces_share_of_prediction"] = ms / 1000 / base
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(json.dumps(result, indent=2))
    print(f"\n{'run':<24}{'images/s':>10}{'overhead':>10}")
    for name in sets:
        overhead = "" if name == "prediction" else f"{result['overhead_vs_prediction'][name]:+.2%}"
        print(f"{name:<24}{result['images_per_second'][name]:>10.1f}{overhead:>10}")
    for version, name in alone.items():
        print(
            f"scoring {name[1:]} alone: {result[f'scoring_100_{version}_spaces_ms_per_batch']:.3f} ms "
            f"per batch of {args.batch} = {result[f'scoring_100_{version}_spaces_share_of_prediction']:.4%} "
            "of the batch's prediction time"
        )


if __name__ == "__main__":
    main()
