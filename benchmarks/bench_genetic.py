"""Speed of the genetic superpixel search, side by side in one run on one backbone.

Rows:
- plain: batched inference on whole images (``--batch-size``, default 50): the throughput ceiling;
- naive: one genome per forward pass, no channels-last, for ``--naive-generations`` generations
  of the first image only; its full-run time is extrapolated to the paper's 50 × 50 = 2,500
  evaluations per image that an implementation without a cache spends;
- paper: ``mode="paper"`` batched over all images (the default settings: the paper's), with the
  share of its time spent in the model's forward pass (the rest is GA overhead);
- fast: ``mode="fast"`` on the same images.

Prints one JSON object, then a table. Run from the repository root:

    python benchmarks/bench_genetic.py --images 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sxai_plugins as sx
from sxai_plugins.data.images import list_images, load_image, to_array
from sxai_plugins.traits.genetic import GAConfig, search_best_superpixels

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "dogs-vs-cats" / "train" / "dog"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=4, help="images searched (default 4)")
    parser.add_argument("--backbone", default=sx.DEFAULT_BACKBONE)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of images")
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--population", type=int, default=50)
    parser.add_argument(
        "--naive-generations", type=int, default=2, help="generations the naive run does"
    )
    parser.add_argument(
        "--plain-batches", type=int, default=2, help="batches timed for the plain row"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=50,
        help="images (plain) and genomes (paper, fast) per forward pass; a GPU wants more",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the model runs (default: cuda when available)",
    )
    parser.add_argument(
        "--no-pretrained",
        action="store_true",
        help="random backbone weights (timing only, e.g. vgg19 offline)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def load(folder: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    paths = list_images(folder)[:count]
    if len(paths) < count:
        sys.exit(f"{folder}: only {len(paths)} images, --images asks for {count}")
    return [to_array(load_image(p), size) for p in paths]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_throughput(
    model: sx.TraitModel, images: list[np.ndarray], batches: int, size: int
) -> float:
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.stack([images[i % len(images)] for i in range(size)])).permute(
        0, 3, 1, 2
    )
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model.logits(batch)  # warm-up: the first pass at a new batch shape sets up kernels
        synchronize(device)
        start = time.perf_counter()
        for _ in range(batches):
            # the search reads each batch's scores back to the CPU, so this does too
            model.logits(batch).cpu()
        synchronize(device)
        return size * batches / (time.perf_counter() - start)


class ForwardClock:
    """Seconds spent inside the model body: the share of a run that is real inference does not
    drift with the load of a shared machine the way throughput ratios do. On a GPU it reads CUDA
    events at the end instead of waiting for each pass, which would stop the search from
    breeding the next genomes while the GPU scores (see GAConfig.pipeline)."""

    def __init__(self, model: sx.TraitModel) -> None:
        self.device = next(model.parameters()).device
        self._cpu_seconds = 0.0
        self._start = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._handles = [
            model.body.register_forward_pre_hook(self._begin),
            model.body.register_forward_hook(self._end),
        ]

    def _begin(self, *_args) -> None:
        if self.device.type == "cuda":
            self._events.append(
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            )
            self._events[-1][0].record()
        else:
            self._start = time.perf_counter()

    def _end(self, *_args) -> None:
        if self.device.type == "cuda":
            self._events[-1][1].record()
        else:
            self._cpu_seconds += time.perf_counter() - self._start

    @property
    def seconds(self) -> float:
        if self.device.type != "cuda":
            return self._cpu_seconds
        synchronize(self.device)
        return sum(start.elapsed_time(end) for start, end in self._events) / 1000

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def timed_search(model, images, targets, config, seed):
    clock = ForwardClock(model)
    start = time.perf_counter()
    results = search_best_superpixels(model, images, targets, config, seed=seed, progress=False)
    elapsed = time.perf_counter() - start
    clock.close()
    return results, elapsed, clock.seconds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    model = sx.create_model(
        args.backbone,
        pretrained=not args.no_pretrained,
        class_names=["cat", "dog"] if args.no_pretrained else None,
    ).to(args.device)
    size = (model.input_size[1], model.input_size[2])
    images = load(args.data, args.images, size)
    with torch.inference_mode():
        original = torch.cat(
            [
                model.logits(
                    torch.from_numpy(np.stack(images[i : i + args.batch_size]))
                    .permute(0, 3, 1, 2)
                    .to(args.device)
                )
                .softmax(1)
                .cpu()
                for i in range(0, len(images), args.batch_size)
            ]
        )
    folder_class = args.data.name
    if folder_class in model.class_names:
        targets = [model.class_names.index(folder_class)] * len(images)
    else:  # an unlabelled folder: explain what the model predicts
        targets = original.argmax(1).tolist()
    original_p = [float(original[i, t]) for i, t in enumerate(targets)]

    paper_cfg = GAConfig(
        population=args.population,
        generations=args.generations,
        mode="paper",
        batch_size=args.batch_size,
    )
    fast_cfg = GAConfig(
        population=args.population,
        generations=args.generations,
        mode="fast",
        batch_size=args.batch_size,
    )
    naive_cfg = GAConfig(
        population=args.population,
        generations=args.naive_generations,
        batch_size=1,
        channels_last=False,
    )

    # plain is measured before and after the searches and the faster figure is the baseline:
    # on a shared machine the load changes during a long run, and this keeps the ratio honest
    plain_runs = [plain_throughput(model, images, args.plain_batches, args.batch_size)]
    naive, naive_s, _ = timed_search(model, images[:1], targets[:1], naive_cfg, args.seed)
    paper, paper_s, paper_forward_s = timed_search(model, images, targets, paper_cfg, args.seed)
    fast, fast_s, _ = timed_search(model, images, targets, fast_cfg, args.seed)
    plain_runs.append(plain_throughput(model, images, args.plain_batches, args.batch_size))
    plain = max(plain_runs)

    naive_rate = naive[0].n_evaluations / naive_s
    naive_full_evals = args.population * args.generations
    paper_evals = [r.n_evaluations for r in paper]
    fast_evals = [r.n_evaluations for r in fast]
    paper_rate = sum(paper_evals) / paper_s
    prefix = len(naive[0].history)
    report = {
        "backbone": args.backbone,
        "device": str(next(model.parameters()).device),
        "torch_threads": torch.get_num_threads(),
        "images": len(images),
        "batch_size": args.batch_size,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "population": args.population,
        "generations": args.generations,
        "plain_images_per_s": plain,
        "plain_images_per_s_before_after": plain_runs,
        "naive": {
            "generations_run": args.naive_generations,
            "evaluations": naive[0].n_evaluations,
            "genomes_per_s": naive_rate,
            "extrapolated_s_per_image_2500_evals": naive_full_evals / naive_rate,
            "history_matches_paper_prefix_max_abs_diff": float(
                np.max(np.abs(np.subtract(naive[0].history, paper[0].history[:prefix])))
            ),
        },
        "paper": {
            "seconds": paper_s,
            "s_per_image": paper_s / len(images),
            "evaluations_per_image": paper_evals,
            "genomes_per_s": paper_rate,
            "ratio_to_plain": paper_rate / plain,
            "forward_share_of_time": paper_forward_s / paper_s,
            "median_fitness": statistics.median(r.fitness for r in paper),
            "fitness": [r.fitness for r in paper],
            "kept_superpixels": [int(r.genome.sum()) for r in paper],
            "superpixels": [int(r.genome.size) for r in paper],
        },
        "fast": {
            "seconds": fast_s,
            "s_per_image": fast_s / len(images),
            "evaluations_per_image": fast_evals,
            "fewer_passes_than_paper": statistics.mean(paper_evals) / statistics.mean(fast_evals),
            "median_fitness": statistics.median(r.fitness for r in fast),
            "median_fitness_drop_vs_paper": statistics.median(r.fitness for r in paper)
            - statistics.median(r.fitness for r in fast),
            "fitness": [r.fitness for r in fast],
            "generations_run": [len(r.history) - 1 for r in fast],
        },
        "original_fitness": original_p,
        "speedup_paper_vs_naive_per_image": (naive_full_evals / naive_rate)
        / (paper_s / len(images)),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        from sxai_plugins._utils.io import write_json

        write_json(args.json, report)
    print_table(report)
    return report


def print_table(r: dict) -> None:
    rows = [
        (
            f"plain inference (batch {r['batch_size']})",
            f"{r['plain_images_per_s']:.1f} img/s",
            "",
            "",
            "",
        ),
        (
            f"naive GA (1 genome/pass, {r['naive']['generations_run']} gen, extrapolated)",
            f"{r['naive']['genomes_per_s']:.1f} genomes/s",
            f"{r['population'] * r['generations']} (no cache)",
            f"{r['naive']['extrapolated_s_per_image_2500_evals']:.3g}",
            "",
        ),
        (
            "paper mode, batched",
            f"{r['paper']['genomes_per_s']:.1f} genomes/s ({r['paper']['ratio_to_plain']:.2f}× plain, "
            f"{r['paper']['forward_share_of_time']:.0%} in forward)",
            f"{statistics.mean(r['paper']['evaluations_per_image']):.0f}",
            f"{r['paper']['s_per_image']:.3g}",
            f"{r['paper']['median_fitness']:.5f}",
        ),
        (
            "fast mode",
            "",
            f"{statistics.mean(r['fast']['evaluations_per_image']):.0f} "
            f"({r['fast']['fewer_passes_than_paper']:.1f}× fewer)",
            f"{r['fast']['s_per_image']:.3g}",
            f"{r['fast']['median_fitness']:.5f} ({-r['fast']['median_fitness_drop_vs_paper']:+.5f})",
        ),
    ]
    header = ("run", "throughput", "passes/image", "s/image", "median fitness")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
