"""Speed of concept discovery: segments embedded per second by the two embeddings (the pooled
feature map, one forward pass per image; the segment crop, one pass per segment), against plain
inference (images per second), and the time of a whole discovery. Target: 200 images in under
15 minutes on this project's 2-core CPU.

    python benchmarks/bench_discover.py [--data ../shared/data/dogs-vs-cats/train] [--class cat]
        [--n 20] [--full 0] [--json]

``--n`` images are used for the per-step figures (the crop embedding is timed on
``--crop-segments`` of their segments, 300 by default: it is slow); ``--full N``
also times a whole ``discover`` of N images (e.g. 200), writing into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import sxai_plugins as sx
from sxai_plugins.data.images import class_images
from sxai_plugins.discover.run import DiscoverConfig, _load_arrays, choose_images, discover
from sxai_plugins.discover.segments import crop_embeddings, pooled_embeddings, segment_images

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats" / "train")
    )
    parser.add_argument("--class", dest="class_name", default="cat")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--full", type=int, default=0, help="also time a discovery of N images")
    parser.add_argument(
        "--crop-segments",
        type=int,
        default=300,
        help="segments the crop embedding is timed on (it is slow; 0: all)",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args()
    model = sx.create_model().eval()
    config = DiscoverConfig()
    k = model.class_names.index(args.class_name)
    paths = choose_images(class_images(args.data, args.class_name), args.n, 0)
    paths, arrays, _ = _load_arrays(paths, (224, 224), False)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(images), 16):
            model(images[s : s + 16].contiguous(memory_format=torch.channels_last))
    plain = len(images) / (time.perf_counter() - start)

    start = time.perf_counter()
    labels, table = segment_images(arrays, config.scales, config.min_area, progress=False)
    slic_s = time.perf_counter() - start
    start = time.perf_counter()
    pooled_embeddings(model, images, labels, table, k, config.pool_size, progress=False)
    pooled_s = time.perf_counter() - start
    crop_table = table
    if args.crop_segments and args.crop_segments < len(table):
        picked = np.random.default_rng(0).permutation(len(table))[: args.crop_segments]
        crop_table = table.subset(np.sort(picked))
    start = time.perf_counter()
    crop_embeddings(model, arrays, labels, crop_table, k, progress=False)
    crop_s = time.perf_counter() - start

    result = {
        "images": len(arrays),
        "segments": len(table),
        "segments_per_image": len(table) / len(arrays),
        "plain_inference_images_per_s": plain,
        "slic_images_per_s": len(arrays) / slic_s,
        "pooled_segments_per_s": len(table) / pooled_s,
        "pooled_images_per_s": len(arrays) / pooled_s,
        "crop_segments_per_s": len(crop_table) / crop_s,
        "crop_segments_timed": len(crop_table),
        "pool_size": config.pool_size,
        "torch_threads": torch.get_num_threads(),
    }
    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            found = discover(
                model,
                args.data,
                args.class_name,
                Path(tmp) / "disc",
                DiscoverConfig(n=args.full),
                progress=not args.json,
            )
            result["full"] = {
                "images": len(found.images),
                "segments": found.n_segments,
                "seconds": time.perf_counter() - start,
                "steps": found.timings,
                "target_seconds": 900,
            }
    print(json.dumps(result, indent=2))
    if args.json:
        return
    print(f"\n{'step':<44}{'per second':>12}")
    print(f"{'plain inference (224 px)':<44}{plain:>8.1f} img")
    print(
        f"{'SLIC at ' + ','.join(map(str, config.scales)) + ' segments':<44}{result['slic_images_per_s']:>8.1f} img"
    )
    print(
        f"{f'pooled embedding ({config.pool_size} px pass, masks pooled)':<44}"
        f"{result['pooled_segments_per_s']:>8.1f} seg  ({result['pooled_images_per_s']:.1f} img)"
    )
    print(f"{'crop embedding (one pass per segment)':<44}{result['crop_segments_per_s']:>8.1f} seg")
    if args.full:
        full = result["full"]
        print(
            f"\nwhole discovery of {full['images']} images ({full['segments']} segments): "
            f"{full['seconds']:.0f} s (target < 900 s)"
        )


if __name__ == "__main__":
    main()
