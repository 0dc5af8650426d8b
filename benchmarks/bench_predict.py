"""The everyday inference path against the machine's ceiling, side by side in one run.

On ``--n`` shared Dogs-vs-Cats images (default 500) and the default backbone with its bundled
spaces, images/s and the ratio to the ceiling of:

- ``ceiling``: the bare batched forward pass in channels-last on tensors decoded beforehand;
- ``predict``: ``sxai predict``'s path (``score_paths``: decoding prefetched in a thread);
- ``explain``: ``sxai explain``'s path (prediction, every P_s, the detector's verdict, the sentence;
  no radar files);
- ``index``: ``sxai index`` (``index_folder`` into a fresh SQLite file);
- for comparison: the NCHW path every command ran before (decoding in line, NCHW forward), the
  new path without prefetching (``loader=none``) and with ``DataLoader`` worker processes
  (``loader=workers``), and decoding alone.

Target: predict, explain and index each ≥ 0.9 × the ceiling. Prints one JSON object, then a table::

    python benchmarks/bench_predict.py [--n 500] [--batch-size 32] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from sxai_plugins import create_model
from sxai_plugins.data.images import iter_batches, list_images
from sxai_plugins.explain.trust import assess_outputs, load_space_set
from sxai_plugins.models.inference import channels_last, iter_outputs, model_size, score_paths
from sxai_plugins.plugin.manager import get_explanation_template
from sxai_plugins.robust.detection import detector_folder, load_detector
from sxai_plugins.search.index import index_folder

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SXAI_SHARED", ROOT.parent / "shared"))
DEFAULT_DATA = SHARED / "data" / "dogs-vs-cats"
TARGET = 0.9


def pick(folder: Path, n: int) -> list[Path]:
    """``n`` images spread evenly over every image under ``folder`` (cats, dogs, unlabelled)."""
    every = list_images(folder)
    if len(every) < n:
        sys.exit(f"{folder}: only {len(every)} images, asked for {n}")
    return [every[i * len(every) // n] for i in range(n)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="images (default 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved rounds, best of (default 2)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default=None, help="default: the package's default backbone")
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args()

    model = create_model(args.backbone) if args.backbone else create_model()
    paths = pick(args.data, args.n)
    bs = args.batch_size
    spaces = load_space_set(None, model)
    detector = load_detector(detector_folder(None, model.name), spaces, model.class_names)
    template = get_explanation_template("english")
    size = model_size(model)

    # decoding alone, and the decoded tensors the ceiling runs on
    decoded: list[torch.Tensor] = []
    t_decode = timed(lambda: decoded.extend(b.images for b in iter_batches(paths, size, bs, [])))
    n = sum(len(b) for b in decoded)
    score_paths(model, paths[:bs], bs, progress=False)  # warm-up (allocator, threads)

    def ceiling() -> None:
        batches = [b.contiguous(memory_format=torch.channels_last) for b in decoded]
        with channels_last(model), torch.inference_mode():
            for b in batches:
                model(b)

    def nchw() -> None:
        with torch.no_grad():
            for batch in iter_batches(paths, size, bs, []):
                model(batch.images)

    def loader(kind: str, workers: int = 1):
        def run() -> None:
            for _ in iter_outputs(model, paths, bs, [], loader=kind, workers=workers):
                pass

        return run

    def explain() -> None:
        for batch in iter_outputs(model, paths, bs, []):
            for assessment in assess_outputs(
                model, spaces, batch.output, batch.paths, detector=detector
            ):
                template.render(assessment)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, path in enumerate(paths):  # links: the same files, in a folder holding just them
            (folder / f"{i:05d}{path.suffix}").symlink_to(path.resolve())

        def index() -> None:
            report = index_folder(
                model,
                spaces,
                folder,
                Path(tmp) / f"index{time.time_ns()}.sqlite",
                batch_size=bs,
                progress=False,
            )
            assert report.scored == n, report

        runs = {
            "ceiling": ceiling,
            "predict": lambda: score_paths(model, paths, bs, progress=False),
            "explain": explain,
            "index": index,
            "old NCHW path": nchw,
            "predict, loader=none": loader("none"),
            "predict, loader=workers (1)": loader("workers", 1),
            "predict, loader=workers (2)": loader("workers", 2),
        }
        seconds = {name: float("inf") for name in runs}
        for _ in range(args.repeats):  # interleaved rounds, best of each: the machine is shared
            for name, run in runs.items():
                seconds[name] = min(seconds[name], timed(run))

    rate = {name: n / s for name, s in seconds.items()}
    result = {
        "backbone": model.name,
        "images": n,
        "batch_size": bs,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "decode_images_per_second": n / t_decode,
        "images_per_second": rate,
        "ratio_to_ceiling": {name: r / rate["ceiling"] for name, r in rate.items()},
        "target_ratio": TARGET,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        return
    print(
        f"\n{model.name}, {n} images, batch {bs}, best of {args.repeats}, {result['threads']} torch threads; "
        f"decoding alone {result['decode_images_per_second']:.1f} img/s"
    )
    print(f"{'path':<30}{'img/s':>8}{'× ceiling':>11}")
    for name in runs:
        print(f"{name:<30}{rate[name]:>8.1f}{result['ratio_to_ceiling'][name]:>11.2f}")


if __name__ == "__main__":
    main()
