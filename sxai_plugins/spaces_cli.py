"""``sxai space``: build semantic spaces from concept annotations, evaluate them, plot them."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tomllib
from pathlib import Path

from .cli import add_model_args, command, model_from_args
from .errors import SxaiError

CONFIG_KEYS = {"annotations", "image_root", "reference", "classes", "concepts", "out", "recipe",
               "recipe_options", "backbone", "head", "weights", "invert", "inversion_steps", "plots",
               "contact_sheets"}


@command
def _space(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "space", help="build semantic spaces from concept annotations",
        description="Build one semantic space per (class, concept) from annotated images (COCO "
                    "keypoints/polygons/boxes), fit each space's reference distribution on the "
                    "reference images predicted as its class, evaluate it on annotated images it was "
                    "not built from, and write OUT/<class>.<concept>.safetensors, OUT/report.json "
                    "and OUT/plots/. Options can come from a TOML file (--config; paths in it are "
                    "relative to the file); command-line options override it.",
    )
    p.add_argument("--config", help="TOML file with the keys: " + ", ".join(sorted(CONFIG_KEYS)))
    p.add_argument("--annotations", help="COCO annotation file")
    p.add_argument("--image-root", help="folder the annotation file's image paths are relative to")
    p.add_argument("--reference", help="folder of reference images (searched recursively)")
    p.add_argument("--class", dest="classes", action="append", help="class name (repeatable)")
    p.add_argument("--concept", dest="concepts", action="append", help="concept name (repeatable)")
    p.add_argument("--out", "-o", help="output folder")
    p.add_argument("--recipe", choices=["paper", "tuned"], help="paper: the paper's method; tuned: ours (default)")
    p.add_argument("--n-ssn", type=int, help="number of SSNs (paper recipe; default 5)")
    p.add_argument("--masker", help="masker plugin name (default: superpixel for paper, inpaint for tuned)")
    p.add_argument("--region", choices=["superpixel", "disc"], help="how points grow into a region")
    p.add_argument("--seed", type=int, help="seed of the build/evaluation split (default 0)")
    p.add_argument("--invert", help="feature inverter for the space pictures: fourier, tv or none (default none)")
    p.add_argument("--inversion-steps", type=int)
    p.add_argument("--no-plots", action="store_true", help="skip distribution plots and contact sheets")
    p.add_argument("--no-contact-sheets", action="store_true",
                   help="skip the sheets of reference images (they copy the data set's images)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_model_args(p)
    p.set_defaults(handler=_run_space, backbone=None)


def _load_config(args: argparse.Namespace) -> dict:
    config: dict = {}
    if args.config:
        path = Path(args.config)
        try:
            config = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SxaiError(f"{path}: cannot read the space config ({exc})") from exc
        unknown = set(config) - CONFIG_KEYS
        if unknown:
            raise SxaiError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
        for key in ("annotations", "image_root", "reference", "out", "head", "weights"):
            if key in config:
                config[key] = str((path.parent / config[key]).resolve())
    overrides = {
        "annotations": args.annotations, "image_root": args.image_root, "reference": args.reference,
        "classes": args.classes, "concepts": args.concepts, "out": args.out, "recipe": args.recipe,
        "invert": args.invert, "inversion_steps": args.inversion_steps, "backbone": args.backbone,
        "head": args.head, "weights": args.weights,
    }
    config.update({k: v for k, v in overrides.items() if v is not None})
    options = dict(config.get("recipe_options", {}))
    for key, value in (("n_ssn", args.n_ssn), ("masker", args.masker), ("region", args.region), ("seed", args.seed)):
        if value is not None:
            options[key] = value
    config["recipe_options"] = options
    missing = [k for k in ("annotations", "reference", "out") if not config.get(k)]
    if missing:
        raise SxaiError(f"sxai space needs {', '.join('--' + k for k in missing)} (or a --config with them)")
    return config


def reference_scores(model, folder: str | Path, progress: bool = True):
    """Logits and traits of every image under ``folder``, cached in ~/.cache/sxai by model weights,
    head and the folder's file list (paths, sizes, mtimes), so rebuilding spaces costs no rescoring."""
    from safetensors.torch import load_file

    from .images import list_images
    from .inference import score_paths
    from .io import write_safetensors

    paths = list_images(folder)
    if not paths:
        raise SxaiError(f"{folder}: no images to use as the reference set")
    digest = hashlib.sha256(model.fingerprint().encode())
    digest.update(model.head.weight.detach().numpy().tobytes())
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    cache_dir = Path(os.environ.get("SXAI_CACHE", Path.home() / ".cache" / "sxai"))
    cache = cache_dir / f"reference-{digest.hexdigest()[:20]}.safetensors"
    if cache.is_file():
        tensors = load_file(str(cache))
        kept = json.loads(cache.with_suffix(".json").read_text())
        return [Path(p) for p in kept], tensors["traits"], tensors["logits"]
    scored = score_paths(model, paths, progress=progress, desc="reference images")
    # the JSON (paths) goes first: a cache file without its path list is never read
    from .io import write_json

    write_json(cache.with_suffix(".json"), [str(p) for p in scored.paths])
    write_safetensors(cache, {"traits": scored.traits, "logits": scored.logits})
    return scored.paths, scored.traits, scored.logits


def format_table(spaces) -> str:
    head = f"{'space':<12}{'SSNs':>5}{'P(orig)>P(masked)':>19}{'AUROC vis/not':>15}{'(neg)':>6}{'AUROC orig/mask':>17}{'Q-Q R²':>8}"
    rows = [head, "-" * len(head)]
    for s in spaces:
        e = s.evaluation

        def fmt(v):
            return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

        rows.append(f"{s.key:<12}{s.n_ssn:>5}{fmt(e['fraction_original_above_masked']):>19}"
                    f"{fmt(e['auroc_visible_vs_not']):>15}{e['n_natural_negatives']:>6}"
                    f"{fmt(e['auroc_original_vs_masked']):>17}{fmt(e['qq_r2']):>8}")
    return "\n".join(rows)


def _run_space(args: argparse.Namespace) -> int:
    from . import DEFAULT_BACKBONE
    from .build_spaces import SpaceRecipe, build_spaces
    from .concepts import load_coco
    from .io import write_json

    config = _load_config(args)
    args.backbone = config.get("backbone", DEFAULT_BACKBONE)
    args.head, args.weights = config.get("head"), config.get("weights")
    model = model_from_args(args)
    annotations = load_coco(config["annotations"], config.get("image_root") or Path(config["annotations"]).parent)
    classes = config.get("classes") or list(model.class_names)
    concepts = config.get("concepts") or list(annotations.concepts)
    mode = config.get("recipe", "tuned")
    options = config["recipe_options"]
    recipe = SpaceRecipe.paper(**options) if mode == "paper" else SpaceRecipe.tuned(**options)
    paths, traits, logits = reference_scores(model, config["reference"])
    report = build_spaces(model, annotations, classes, concepts, (traits, logits), recipe)
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    for space in report.spaces:
        space.save(out / f"{space.key}.safetensors")
    summary = {
        "backbone": model.name, "fingerprint": model.fingerprint(), "recipe": mode,
        "annotations": str(config["annotations"]), "reference": str(config["reference"]),
        "spaces": {s.key: {"ssn": s.indices.tolist(), "delta": [round(float(d), 6) for d in s.delta],
                           **s.evaluation} for s in report.spaces},
        "shared_channels": {str(c): keys for c, keys in report.shared_channels.items()},
    }
    write_json(out / "report.json", summary)
    if not args.no_plots and config.get("plots", True):
        from .space_plots import distribution_plot, extreme_sheets

        predicted = logits.argmax(1)
        for space in report.spaces:
            keep = predicted == model.class_names.index(space.class_name)
            own = traits[keep]
            distribution_plot(space, space.activation(own).numpy(), out / "plots" / f"{space.key}.distribution.png")
            if config.get("contact_sheets", True) and not args.no_contact_sheets:
                own_paths = [p for p, k in zip(paths, keep.tolist()) if k]
                extreme_sheets(space, own_paths, space.probability(own).numpy(), out / "plots")
    if config.get("invert", "none") != "none":
        from .space_plots import invert_spaces

        invert_spaces(model, report.spaces, out / "plots", config["invert"], config.get("inversion_steps"))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(report.spaces))
        if report.shared_channels:
            print("channels shared between spaces: " + "; ".join(
                f"{c}: {', '.join(keys)}" for c, keys in report.shared_channels.items()))
        print(f"wrote {len(report.spaces)} spaces to {out}")
    return 0


__all__ = ["format_table", "reference_scores"]
