"""``sxai traits``: the common traits of a class (genetic search, PCA, stability, inversion)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._utils.errors import SxaiError
from ._args import (
    add_engine_args,
    add_model_args,
    check_engine_args,
    model_from_args,
    positive_int,
    positive_list,
)


def _traits(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "traits",
        help="common traits of a class: row-centred PCA of GAP traits, inversions, stability",
        description="Draw N images of a class, keep the superpixels that make the model surest of it "
        "(genetic search), run the row-centred PCA on their GAP traits and visualise the "
        "first PCs. Writes OUT (a folder, created atomically): summary.json, "
        "traits.safetensors (traits, pcs, loadings, fitness), pca.json (information ratios, "
        "PCs), masks.npz (kept superpixels), information_ratio.png, inversions/pcK.png, and "
        "with --stability stability.json/.png, with --per-layer layers.json/.png.",
    )
    add_model_args(p)
    p.add_argument(
        "--data", required=True, help="ImageFolder root (uses DATA/<class>) or a folder of images"
    )
    p.add_argument(
        "--class", dest="target_class", metavar="CLASS", required=True, help="the class, e.g. cat"
    )
    p.add_argument(
        "--n", type=positive_int, default=300, help="sample size Ns (default 300, the paper's)"
    )
    p.add_argument("--out", "-o", required=True, help="results folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ga", action="store_true", help="skip the genetic superpixel search")
    p.add_argument(
        "--ga-mode",
        choices=("paper", "fast"),
        default="paper",
        help="paper: 50 genomes × 50 generations; fast: occlusion-seeded, early stop",
    )
    p.add_argument(
        "--invert",
        default="tv",
        help="feature inverter for the PCs: tv (paper), fourier, another plugin's, or none",
    )
    p.add_argument(
        "--inversion-steps",
        type=positive_int,
        help="default: the inverter's own (tv 4000, fourier 512)",
    )
    p.add_argument(
        "--pcs", type=positive_int, default=3, help="how many leading PCs to invert (default 3)"
    )
    p.add_argument(
        "--stability",
        type=positive_list(int),
        metavar="N1,N2,...",
        help="also measure PC1's spread for these sample sizes (e.g. 50,100,300)",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="repeats per size for --stability (paper: 3)",
    )
    p.add_argument(
        "--per-layer", action="store_true", help="row-centred PCA of every block's maps too"
    )
    p.add_argument("--layer-mode", choices=("blocks", "conv"), default="blocks")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="images per forward pass when taking traits",
    )
    p.add_argument(
        "--ga-batch-size",
        type=positive_int,
        default=50,
        help="genomes per forward pass in the genetic search (default 50; a GPU wants 500 or "
        "more); changes speed, not the search's answers",
    )
    p.add_argument("--json", action="store_true", help="print summary.json to stdout at the end")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_engine_args(
        p,
        "one batched genetic search per block of images per model actor (the same traits "
        "and PCA as local; the PCA, inversions and plots run here)",
    )
    p.set_defaults(handler=_run_traits)


def _run_traits(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SxaiError(
            f"{out} already exists; pass --overwrite to replace it or choose another --out"
        )
    if args.n < 2:
        raise SxaiError(f"--n must be at least 2, got {args.n}")
    check_engine_args(args)
    if args.engine == "ray":
        from ..scale._ray import ray_session
        from ..scale.ray_traits import RayRunner

        # one Ray session for the run: the stability repeats reuse it
        with ray_session(args.address):
            runner = RayRunner(
                concurrency=args.concurrency, num_gpus_per_worker=args.num_gpus_per_worker
            )
            return _traits_run(args, out, runner)
    return _traits_run(args, out, None)


def _traits_run(args: argparse.Namespace, out: Path, runner) -> int:
    from .._utils.io import atomic_folder, dumps_json
    from ..data.images import class_images
    from ..traits.common import common_traits
    from ..traits.results import TraitsRun, write_common_traits

    inverter = None
    if args.invert != "none":
        from ..plugin.manager import get_feature_inverter

        inverter = get_feature_inverter(args.invert)
    model = model_from_args(args)
    paths = class_images(args.data, args.target_class)
    ga_config = None
    if not args.no_ga:
        from ..traits.genetic import GAConfig

        ga_config = GAConfig(mode=args.ga_mode, batch_size=args.ga_batch_size)
    progress = not (args.json or args.quiet)

    found = common_traits(
        model,
        paths,
        args.target_class,
        n=args.n,
        seed=args.seed,
        ga_config=ga_config,
        use_ga=not args.no_ga,
        progress=progress,
        batch_size=args.batch_size,
        runner=runner,
    )
    for _path, why in found.failures:
        print(f"skipped: {why}", file=sys.stderr)
    run = TraitsRun(
        target_class=args.target_class,
        data=str(args.data),
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        pcs=args.pcs,
        inversion_steps=args.inversion_steps,
        stability_sizes=tuple(args.stability or ()),
        repeats=args.repeats,
        per_layer=args.per_layer,
        layer_mode=args.layer_mode,
    )
    with atomic_folder(out) as tmp:
        summary = write_common_traits(
            tmp,
            run,
            model,
            found,
            candidates=paths,
            inverter=inverter,
            ga_config=ga_config,
            progress=progress,
            runner=runner,
        )
    if args.json:
        print(dumps_json(summary))
    else:
        ratios = found.pca.explained_variance_ratio_
        print(
            f"{len(found.paths)} images of {args.target_class}: PC1 {100 * ratios[0]:.1f}%, "
            f"{found.pca.n_components_} PCs reach 85%; wrote {out}"
        )
        if "stability" in summary:
            shown = ", ".join(
                f"Ns={n}: {e:.2f}%" for n, e in summary["stability"]["spread_percent"].items()
            )
            print(f"spread of PC1: {shown}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _traits(subparsers)
