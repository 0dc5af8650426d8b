"""``sxai space``: build semantic spaces from concept annotations, evaluate them, plot them."""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from pathlib import Path

from .._utils.errors import SxaiError
from ._args import (
    add_engine_args,
    add_model_args,
    check_engine_args,
    model_from_args,
    positive_int,
)

CONFIG_KEYS = {
    "annotations",
    "image_root",
    "visibility",
    "reference",
    "classes",
    "concepts",
    "out",
    "recipe",
    "recipe_options",
    "backbone",
    "head",
    "weights",
    "invert",
    "inversion_steps",
    "plots",
    "contact_sheets",
    "evaluate",
    "folds",
}
RECIPES = ("probe", "tuned", "paper")
# config keys that name where annotated images come from: --discovered brings its own
DISCOVERED_EXCLUDES = {"annotations", "image_root", "visibility", "classes", "concepts"}


def _space(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "space",
        help="build semantic spaces from concept annotations",
        description="Build one semantic space per (class, concept) from annotated images (COCO "
        "keypoints/polygons/boxes; --visibility adds images labelled without points), "
        "evaluate it on images it was not built from, and write "
        "OUT/<class>.<concept>.safetensors, OUT/report.json and OUT/plots/ (OUT is "
        "replaced whole). The default recipe 'probe' trains a calibrated concept probe "
        "on the traits of originals, concept-masked and control-masked copies and "
        "reports out-of-fold validity; 'paper' and 'tuned' build the SSN spaces of "
        "format v1. Options can come from a TOML file (--config; paths in it are "
        "relative to the file); command-line options override it.",
    )
    p.add_argument("--config", help="TOML file with the keys: " + ", ".join(sorted(CONFIG_KEYS)))
    p.add_argument("--annotations", help="COCO annotation file")
    p.add_argument(
        "--discovered",
        action="append",
        metavar="DISC",
        help="a folder written by sxai discover, its clusters named in DISC/concepts.toml "
        "(repeatable, one per class): builds probe spaces from the named clusters' masks "
        "(written to DISC/masks.coco.json) instead of --annotations; a --config brings the "
        "recipe ([recipe_options]) but no annotated images",
    )
    p.add_argument(
        "--natural-negatives",
        action="store_true",
        help="with --discovered: an image in which no cluster of a concept occurs counts as "
        "not showing it (default: unknown)",
    )
    p.add_argument(
        "--mask-core",
        type=float,
        default=0.5,
        help="with --discovered: the share of each named cluster's segments, nearest its "
        "centre, that make the masks (default 0.5; 1 keeps every segment)",
    )
    p.add_argument("--image-root", help="folder the annotation file's image paths are relative to")
    p.add_argument(
        "--visibility",
        help="JSON of images labelled with visible parts, without points "
        "(probe recipe: more natural positives and negatives)",
    )
    p.add_argument(
        "--reference",
        help="folder of reference images (searched recursively; needed by "
        "paper and tuned, optional for probe: distribution plots)",
    )
    p.add_argument("--class", dest="classes", action="append", help="class name (repeatable)")
    p.add_argument("--concept", dest="concepts", action="append", help="concept name (repeatable)")
    p.add_argument("--out", "-o", help="output folder")
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        help="probe (default): calibrated concept probes (format v2); tuned: SSNs ranked by "
        "paired masking effect and natural negatives; paper: the paper's PC1 difference",
    )
    p.add_argument(
        "--folds",
        type=positive_int,
        help="probe: out-of-fold evaluation folds, at least 2 (default 5)",
    )
    p.add_argument(
        "--no-evaluate",
        action="store_true",
        help="probe: skip the out-of-fold evaluation (faster; the files carry no figures)",
    )
    p.add_argument(
        "--n-ssn", type=positive_int, help="number of SSNs (kept for display by probe; default 5)"
    )
    p.add_argument("--masker", help="paper/tuned: masker plugin name (default superpixel)")
    p.add_argument(
        "--region",
        choices=["superpixel", "disc"],
        help="paper/tuned: how points grow into a region",
    )
    p.add_argument("--seed", type=int, help="seed of splits, folds and control regions (default 0)")
    p.add_argument(
        "--invert",
        help="feature inverter for the space pictures: fourier, tv or none (default none)",
    )
    p.add_argument("--inversion-steps", type=int)
    p.add_argument(
        "--no-plots", action="store_true", help="skip distribution plots and contact sheets"
    )
    p.add_argument(
        "--no-contact-sheets",
        action="store_true",
        help="skip the sheets of reference images (they copy the data set's images)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_model_args(p)
    add_engine_args(
        p,
        "the masked/unmasked feature extraction of the probe recipe, one block of labelled "
        "images per model actor (the same features as local; the probes are fitted here)",
    )
    p.set_defaults(handler=_run_space, backbone=None)


def _load_config(args: argparse.Namespace) -> dict:
    config: dict = {}
    if getattr(args, "discovered", None) and args.annotations:
        raise SxaiError(
            "--discovered builds spaces from named clusters; it does not combine with --annotations"
        )
    if args.config:
        path = Path(args.config)
        try:
            config = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SxaiError(f"{path}: cannot read the space config ({exc})") from exc
        unknown = set(config) - CONFIG_KEYS
        if unknown:
            raise SxaiError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
        if getattr(args, "discovered", None):
            # the named clusters are the annotations: a config brings the recipe and the outputs
            sources = sorted(set(config) & DISCOVERED_EXCLUDES)
            if sources:
                raise SxaiError(
                    f"{path}: {', '.join(sources)} name annotated images, which --discovered "
                    "replaces with the named clusters; leave them out of a config used with "
                    "--discovered (its [recipe_options], out, folds, ... apply)"
                )
        for key in (
            "annotations",
            "image_root",
            "visibility",
            "reference",
            "out",
            "head",
            "weights",
        ):
            if key in config:
                config[key] = str((path.parent / config[key]).resolve())
    overrides = {
        "annotations": args.annotations,
        "image_root": args.image_root,
        "reference": args.reference,
        "visibility": args.visibility,
        "folds": args.folds,
        "classes": args.classes,
        "concepts": args.concepts,
        "out": args.out,
        "recipe": args.recipe,
        "invert": args.invert,
        "inversion_steps": args.inversion_steps,
        "backbone": args.backbone,
        "head": args.head,
        "weights": args.weights,
    }
    config.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_evaluate:
        config["evaluate"] = False
    if int(config.get("folds", 5)) < 2:
        raise SxaiError(
            f"--folds must be at least 2 (every image is scored by spaces built without it), got {config['folds']}"
        )
    if config.get("recipe", "probe") not in RECIPES:
        raise SxaiError(f"unknown recipe {config['recipe']!r}; use one of {', '.join(RECIPES)}")
    options = dict(config.get("recipe_options", {}))
    for key, value in (
        ("n_ssn", args.n_ssn),
        ("masker", args.masker),
        ("region", args.region),
        ("seed", args.seed),
    ):
        if value is not None:
            options[key] = value
    config["recipe_options"] = options
    if getattr(args, "discovered", None):
        if config.get("recipe", "probe") != "probe":
            raise SxaiError("--discovered builds probe spaces; leave out --recipe")
        needed: tuple[str, ...] = ("out",)
    elif config.get("recipe", "probe") == "probe":
        needed = ("annotations", "out")
    else:
        needed = ("annotations", "reference", "out")
    missing = [k for k in needed if not config.get(k)]
    if missing:
        raise SxaiError(
            f"sxai space needs {', '.join('--' + k for k in missing)} (or a --config with them)"
        )
    return config


def _fmt(value, digits: int = 3) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def format_table(spaces) -> str:
    """The spaces' evaluation figures, one row each (out-of-fold figures for probe spaces)."""
    if spaces and "drop" in spaces[0].evaluation:
        columns = [
            ("drop", "drop"),
            ("auroc", "AUROC"),
            ("auroc_natural", "AUROC nat"),
            ("control_shift", "ctrl |ΔP|"),
            ("rival_auroc", "rival AUROC"),
            ("ece", "ECE"),
        ]
        head = f"{'space':<12}{'pos':>5}{'nat':>5}" + "".join(
            f"{label:>13}" for _, label in columns
        )
        rows = [head, "-" * len(head)]
        for s in spaces:
            e = s.evaluation
            rows.append(
                f"{s.key:<12}{e.get('n_positive', 0):>5}{e.get('n_natural', 0):>5}"
                + "".join(f"{_fmt(e.get(name)):>13}" for name, _ in columns)
            )
        return "\n".join(rows + ["(out of fold: each image scored by probes that never saw it)"])
    head = (
        f"{'space':<12}{'SSNs':>5}{'P(orig)>P(masked)':>19}{'AUROC vis/not':>15}{'(neg)':>6}"
        f"{'AUROC orig/mask':>17}{'Q-Q R²':>8}"
    )
    rows = [head, "-" * len(head)]
    for s in spaces:
        e = s.evaluation
        if not e:
            rows.append(f"{s.key:<12}{s.n_ssn:>5}  (not evaluated)")
            continue
        rows.append(
            f"{s.key:<12}{s.n_ssn:>5}{_fmt(e['fraction_original_above_masked']):>19}"
            f"{_fmt(e['auroc_visible_vs_not']):>15}{e['n_natural_negatives']:>6}"
            f"{_fmt(e['auroc_original_vs_masked']):>17}{_fmt(e['qq_r2']):>8}"
        )
    return "\n".join(rows)


def _run_space(args: argparse.Namespace) -> int:
    check_engine_args(args)
    if args.engine == "ray":
        from ..scale._ray import ray_session
        from ..scale.ray_traits import RayExtractor

        with ray_session(args.address):
            return _space_run(
                args,
                RayExtractor(
                    concurrency=args.concurrency, num_gpus_per_worker=args.num_gpus_per_worker
                ),
            )
    return _space_run(args, None)


def _space_run(args: argparse.Namespace, extractor) -> int:
    from .. import DEFAULT_BACKBONE
    from .._utils.io import atomic_folder, dumps_json, write_json
    from ..data.concepts import load_coco
    from ..spaces.build import reference_scores
    from ..spaces.from_config import build_from_config, write_plots

    config = _load_config(args)
    args.backbone = config.get("backbone", DEFAULT_BACKBONE)
    args.head, args.weights = config.get("head"), config.get("weights")
    out = Path(config["out"])
    if out.exists() and not out.is_dir():
        raise SxaiError(f"{out}: exists and is not a folder; choose another --out")
    if not os.access(out.parent if out.parent.exists() else Path.cwd(), os.W_OK):
        raise SxaiError(f"{out.parent}: cannot write there; choose another --out")
    model = model_from_args(args)
    mode = config.get("recipe", "probe")
    progress = not (args.quiet or args.json)
    # a probe that reads pooled layers is drawn over the reference images' features, not traits
    layers = config["recipe_options"].get("layers", ()) if mode == "probe" else ()
    try:
        model.check_layers(layers)
    except ValueError as exc:
        raise SxaiError(f"recipe_options.layers: {exc}") from None
    reference = (
        reference_scores(model, config["reference"], progress=progress, layers=layers)
        if config.get("reference")
        else None
    )
    if args.discovered:
        from ..discover.spaces import build_discovered_spaces

        spaces, shared, namings = build_discovered_spaces(
            model,
            args.discovered,
            config["recipe_options"],
            evaluate=config.get("evaluate", True),
            folds=int(config.get("folds", 5)),
            natural_negatives=args.natural_negatives,
            reference=reference,
            progress=progress,
            core=args.mask_core,
        )
        source = {
            "discovered": {
                str(n.discovery.folder): {
                    "class": n.discovery.class_name,
                    "names": n.concepts,
                    "masks": str(n.discovery.folder / "masks.coco.json"),
                }
                for n in namings
            }
        }
    else:
        annotations = load_coco(
            config["annotations"], config.get("image_root") or Path(config["annotations"]).parent
        )
        classes = config.get("classes") or list(model.class_names)
        concepts = config.get("concepts") or list(annotations.concepts)
        spaces, shared = build_from_config(
            model,
            annotations,
            {**config, "recipe": mode},
            classes,
            concepts,
            reference,
            progress,
            extractor=extractor,
        )
        source = {
            "annotations": str(config["annotations"]),
            "visibility": config.get("visibility"),
        }
    summary = {
        "backbone": model.name,
        "fingerprint": model.fingerprint(),
        "recipe": mode,
        **source,
        "reference": config.get("reference"),
        "spaces": {
            s.key: {
                "ssn": s.indices.tolist(),
                "delta": [round(float(d), 6) for d in s.delta],
                **s.evaluation,
            }
            for s in spaces
        },
        "shared_channels": {str(c): keys for c, keys in shared.items()},
    }
    with atomic_folder(out) as tmp:
        for space in spaces:
            space.save(tmp / f"{space.key}.safetensors")
        write_json(tmp / "report.json", summary)
        if not args.no_plots and config.get("plots", True):
            write_plots(
                model,
                spaces,
                config,
                reference,
                tmp / "plots",
                contact_sheets=not args.no_contact_sheets,
                progress=progress,
            )
    if args.json:
        print(dumps_json(summary))
    else:
        print(format_table(spaces))
        if shared:
            print(
                "channels shared between spaces: "
                + "; ".join(f"{c}: {', '.join(keys)}" for c, keys in shared.items())
            )
        print(f"wrote {len(spaces)} spaces to {out}")
    return 0


__all__ = ["format_table"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _space(subparsers)
