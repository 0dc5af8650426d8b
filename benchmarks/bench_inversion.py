"""Feature inversion: time per target when K targets share a batch versus one at a time.

Both rows run the same inverter, the same number of steps and the same targets (row-centred PCs of
the traits of random images, so they have the scale of real PCs); only the batching differs. The
tv inverter gives the same images either way (the loss is a sum of per-image losses), so the ratio
is pure speed. Prints one JSON object, then a table. Run from the repository root:

    python benchmarks/bench_inversion.py                   # default backbone, 8 targets, 10 steps
    python benchmarks/bench_inversion.py --inverter fourier --steps 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sxai_plugins as sx
from sxai_plugins.plugin.manager import get_feature_inverter
from sxai_plugins.traits.pca import RowCentredPCA


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default=sx.DEFAULT_BACKBONE)
    parser.add_argument("--inverter", default="tv", help="tv, fourier or both (default tv)")
    parser.add_argument("--targets", type=int, default=8, help="targets K (default 8)")
    parser.add_argument(
        "--steps", type=int, default=10, help="optimisation steps per run (default 10)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def pc_targets(model: sx.TraitModel, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(max(k + 1, 16), *model.input_size, generator=g).to(model.mean.device)
    with torch.inference_mode():
        traits = model.traits(images).cpu()
    return torch.from_numpy(RowCentredPCA(n_components=k).fit(traits).components_).float()


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(model: sx.TraitModel, name: str, targets: torch.Tensor, steps: int) -> dict:
    inverter = get_feature_inverter(name)
    inverter.invert(model, targets[:1], steps=2, progress=False)  # warm-up: allocator, kernels
    batched = timed(lambda: inverter.invert(model, targets, steps=steps, progress=False))
    single = timed(
        lambda: [inverter.invert(model, t[None], steps=steps, progress=False) for t in targets]
    )
    k = len(targets)
    return {
        "inverter": name,
        "targets": k,
        "steps": steps,
        "batched_s_per_target": batched / k,
        "single_s_per_target": single / k,
        "batched_ms_per_target_step": 1000 * batched / k / steps,
        "single_ms_per_target_step": 1000 * single / k / steps,
        "speedup": single / batched,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = sx.create_model(args.backbone).to(args.device)
    targets = pc_targets(model, args.targets, args.seed)
    names = ["tv", "fourier"] if args.inverter == "both" else [args.inverter]
    rows = [bench(model, name, targets, args.steps) for name in names]
    report = {
        "backbone": args.backbone,
        "input_size": list(model.input_size),
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "rows": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print()
    print(
        f"{report['backbone']} {tuple(report['input_size'])} on {report['device']}, {args.steps} steps"
    )
    print(
        f"{'inverter':<9} {'K':>3} {'batched s/target':>17} {'one-at-a-time s/target':>23} {'speed-up':>9}"
    )
    for r in rows:
        print(
            f"{r['inverter']:<9} {r['targets']:>3} {r['batched_s_per_target']:>17.3f} "
            f"{r['single_s_per_target']:>23.3f} {r['speedup']:>8.2f}×"
        )


if __name__ == "__main__":
    main()
