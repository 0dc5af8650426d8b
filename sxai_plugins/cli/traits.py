"""``sxai traits``: the common traits of a class (genetic search, PCA, stability, inversion)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils.errors import SxaiError
from .._utils.io import atomic_folder, atomic_write, dumps_json, write_json, write_safetensors
from ..data.images import class_images
from ..models.trait_model import TraitModel
from ..traits.common import CommonTraits, common_traits, stability
from ..traits.pca import RowCentredPCA
from ..viz.plots import plot_information_ratios, plot_layer_ratios, plot_stability
from ._args import add_model_args, model_from_args, positive_int, positive_list


def _traits(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "traits", help="common traits of a class: row-centred PCA of GAP traits, inversions, stability",
        description="Draw N images of a class, keep the superpixels that make the model surest of it "
                    "(genetic search), run the row-centred PCA on their GAP traits and visualise the "
                    "first PCs. Writes OUT (a folder, created atomically): summary.json, "
                    "traits.safetensors (traits, pcs, loadings, fitness), pca.json (information ratios, "
                    "PCs), masks.npz (kept superpixels), information_ratio.png, inversions/pcK.png, and "
                    "with --stability stability.json/.png, with --per-layer layers.json/.png.",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, help="ImageFolder root (uses DATA/<class>) or a folder of images")
    p.add_argument("--class", dest="target_class", metavar="CLASS", required=True, help="the class, e.g. cat")
    p.add_argument("--n", type=positive_int, default=300, help="sample size Ns (default 300, the paper's)")
    p.add_argument("--out", "-o", required=True, help="results folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ga", action="store_true", help="skip the genetic superpixel search")
    p.add_argument("--ga-mode", choices=("paper", "fast"), default="paper",
                   help="paper: 50 genomes × 50 generations; fast: occlusion-seeded, early stop")
    p.add_argument("--invert", default="tv",
                   help="feature inverter for the PCs: tv (paper), fourier, another plugin's, or none")
    p.add_argument("--inversion-steps", type=positive_int, help="default: the inverter's own (tv 4000, fourier 512)")
    p.add_argument("--pcs", type=positive_int, default=3, help="how many leading PCs to invert (default 3)")
    p.add_argument("--stability", type=positive_list(int), metavar="N1,N2,...",
                   help="also measure PC1's spread for these sample sizes (e.g. 50,100,300)")
    p.add_argument("--repeats", type=positive_int, default=3, help="repeats per size for --stability (paper: 3)")
    p.add_argument("--per-layer", action="store_true", help="row-centred PCA of every block's maps too")
    p.add_argument("--layer-mode", choices=("blocks", "conv"), default="blocks")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass when taking traits")
    p.add_argument("--ga-batch-size", type=positive_int, default=50,
                   help="genomes per forward pass in the genetic search (default 50; a GPU wants 500 or "
                        "more); changes speed, not the search's answers")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout at the end")
    p.set_defaults(handler=_run_traits)


def _run_traits(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SxaiError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if args.n < 2:
        raise SxaiError(f"--n must be at least 2, got {args.n}")
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
    progress = not args.json

    found = common_traits(model, paths, args.target_class, n=args.n, seed=args.seed, ga_config=ga_config,
                          use_ga=not args.no_ga, progress=progress, batch_size=args.batch_size)
    for _path, why in found.failures:
        print(f"skipped: {why}", file=sys.stderr)
    with atomic_folder(out) as tmp:
        summary = _write_results(tmp, out, args, model, found, inverter, ga_config, paths, progress)
    if args.json:
        print(dumps_json(summary))
    else:
        ratios = found.pca.explained_variance_ratio_
        print(f"{len(found.paths)} images of {args.target_class}: PC1 {100 * ratios[0]:.1f}%, "
              f"{found.pca.n_components_} PCs reach 85%; wrote {out}")
        if "stability" in summary:
            shown = ", ".join(f"Ns={n}: {e:.2f}%" for n, e in summary["stability"]["spread_percent"].items())
            print(f"spread of PC1: {shown}")
    return 0


def _write_results(tmp: Path, out: Path, args: argparse.Namespace, model: TraitModel, found: CommonTraits,
                   inverter: Any, ga_config: Any, candidates: list[Path], progress: bool) -> dict[str, Any]:
    pca = found.pca
    paths = [str(p) for p in found.paths]
    files = ["summary.json", "traits.safetensors", "pca.json", "masks.npz", "information_ratio.png"]
    write_safetensors(
        tmp / "traits.safetensors",
        {"traits": found.traits, "pcs": torch.from_numpy(pca.components_).float(),
         "loadings": torch.from_numpy(pca.eigenvectors_).float(),
         "fitness": torch.from_numpy(found.fitness).float()},
        metadata={"sxai.traits": json.dumps({"paths": paths, "class": args.target_class,
                                              "backbone": model.name, "fingerprint": model.fingerprint()})},
    )
    masks = found.masks

    def _save_masks(target: Path) -> None:
        with open(target, "wb") as handle:
            np.savez_compressed(handle, masks=masks, paths=np.asarray(paths))

    atomic_write(tmp / "masks.npz", _save_masks)
    ratios = pca.explained_variance_ratio_
    write_json(tmp / "pca.json", {
        "information_ratio": [float(r) for r in ratios],
        "cumulative": [float(c) for c in np.cumsum(ratios)],
        "n_components_85": int(pca.n_components_),
        "pcs": [[float(v) for v in row] for row in pca.components_],
    })
    plot_information_ratios(ratios, tmp / "information_ratio.png",
                            title=f"{args.target_class}: row-centred PCA of {len(paths)} images ({model.name})")

    inversions: list[str] = []
    if inverter is not None:
        from ..viz.inversion import save_png

        n_pcs = min(max(args.pcs, 1), len(paths))
        targets = RowCentredPCA(n_components=n_pcs).fit(found.traits).components_
        images = inverter.invert(model, torch.from_numpy(targets).float(), steps=args.inversion_steps,
                                 seed=args.seed, progress=progress)
        names = [f"pc{i + 1}" for i in range(len(targets))]
        save_png(images, tmp / "inversions", names)
        inversions = [f"inversions/{name}.png" for name in names]
        files += inversions

    summary: dict[str, Any] = {
        "backbone": model.name,
        "fingerprint": model.fingerprint(),
        "class": args.target_class,
        "data": str(args.data),
        "n_requested": args.n,
        "n_used": len(paths),
        "n_candidates": len(candidates),
        "seed": args.seed,
        "genetic_search": None if ga_config is None else asdict(ga_config),
        "mean_fitness": None if np.isnan(found.fitness).all() else float(np.nanmean(found.fitness)),
        "pc1_information_ratio": float(ratios[0]),
        "n_components_85": int(pca.n_components_),
        "inverter": None if inverter is None else inverter.name,
        "inversion_steps": args.inversion_steps,
        "skipped": [{"path": str(p), "error": why} for p, why in found.failures],
    }
    if args.stability:
        result = stability(model, candidates, args.target_class, sizes=args.stability, repeats=args.repeats,
                           seed=args.seed, ga_config=ga_config, use_ga=ga_config is not None,
                           progress=progress, batch_size=args.batch_size, known=found)
        write_json(tmp / "stability.json", result.to_dict())
        plot_stability(result, tmp / "stability.png", title=f"{args.target_class} ({model.name})")
        files += ["stability.json", "stability.png"]
        summary["stability"] = {"spread_percent": {str(n): result.spreads[n] for n in result.sizes},
                                "repeats": result.repeats}
    if args.per_layer:
        from ..traits.layers import layer_information_ratios

        per_layer = layer_information_ratios(
            model, torch.from_numpy(found.images).permute(0, 3, 1, 2), mode=args.layer_mode,
            batch_size=args.batch_size, progress=progress)
        write_json(tmp / "layers.json", {
            "aggregation": "ratio_mean: mean over spatial positions of λ1/tr(S); "
                           "ratio_pooled: Σλ1/Σtr(S) over positions",
            "layers": [r.to_dict() for r in per_layer],
        })
        plot_layer_ratios(per_layer, tmp / "layers.png", title=f"{args.target_class}: PC1 per layer ({model.name})")
        files += ["layers.json", "layers.png"]
    summary["files"] = files
    write_json(tmp / "summary.json", summary)
    return summary


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _traits(subparsers)
