"""CLI commands ``compare`` (class vs. semantic attributions) and ``adversarial`` (PGD detection).

Registered on import by ``sxai_plugins.cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

import argparse
import sys
from pathlib import Path

from .._utils.errors import SxaiError
from .._utils.io import dumps_json, rounded
from ._args import (
    add_model_args,
    add_space_args,
    model_from_args,
    non_negative_int,
    positive_int,
)


def _methods(text: str) -> list[str]:
    from ..attr import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}"
        )
    return methods


# ------------------------------------------------------------------------------------ compare
def _compare(sub: argparse._SubParsersAction) -> None:
    from ..attr import METHODS

    p = sub.add_parser(
        "compare",
        help="class attributions (Captum) beside the semantic attribution of a space",
        description=(
            "One image: Captum attributions of the predicted class's logit (--methods) beside "
            "attributions of the space's A_s (--semantic-methods), drawn in one figure (--out). "
            "With --annotations: score every method over the annotated images showing the space's "
            "concept (of the space's class): the share of the positive attribution mass inside the "
            "concept's region and the pointing game (the peak inside the region), plus Captum's "
            "infidelity (Gaussian noise σ=0.003, normalised) and sensitivity_max (uniform noise "
            "radius 0.02) on the first --robustness-n images only, as they cost --perturbations "
            "extra attributions each. Regions: 'disc' (default: discs of 6% of the shorter side "
            "around the annotated points) or 'superpixel' (the paper's SLIC rule). Methods: "
            f"{', '.join(METHODS)}; 'occlusion' is superpixel occlusion (Captum FeatureAblation "
            "over SLIC superpixels), 'window' Captum's sliding-window Occlusion. With --json, one "
            "image prints {path, predicted, space, activation, probability, figure, methods}; "
            "an annotated set prints {space, concept, region_mode, n_images, region_fraction, "
            "rows: [{target, method, n_images, mass_in_region, pointing, infidelity, sensitivity, "
            "n_robustness, seconds_per_image}], skipped, settings}."
        ),
    )
    p.add_argument("image", nargs="?", help="an image file (or use --annotations)")
    p.add_argument(
        "--space", required=True, help="the space to attribute, as class.concept (e.g. cat.eyes)"
    )
    add_model_args(p)
    add_space_args(p)
    p.add_argument(
        "--methods",
        type=_methods,
        default=["ig", "occlusion", "gradcam", "saliency"],
        help="class attributions (default ig,occlusion,gradcam,saliency)",
    )
    p.add_argument(
        "--semantic-methods",
        type=_methods,
        default=["occlusion"],
        help="attributions of the space's A_s (default occlusion)",
    )
    p.add_argument("--annotations", help="a COCO concept annotation file: score over its images")
    p.add_argument(
        "--image-root",
        help="folder the annotation file's image paths are relative to "
        "(default: the file's folder)",
    )
    p.add_argument(
        "--limit",
        type=non_negative_int,
        default=0,
        help="at most this many annotated images (0: all)",
    )
    p.add_argument("--region", choices=("disc", "superpixel"), default="disc", help="region mode")
    p.add_argument(
        "--robustness-n",
        type=non_negative_int,
        default=2,
        help="images for infidelity and sensitivity_max (default 2; 0: skip)",
    )
    p.add_argument(
        "--perturbations",
        type=positive_int,
        default=4,
        help="perturbations per image for both (default 4)",
    )
    p.add_argument(
        "--ig-steps", type=positive_int, default=16, help="integration steps of 'ig' (default 16)"
    )
    p.add_argument(
        "--n-segments",
        type=positive_int,
        default=40,
        help="SLIC superpixels for 'occlusion' (default 40)",
    )
    p.add_argument(
        "--fill",
        choices=("blur", "mean", "black"),
        default="blur",
        help="what occluded pixels become (default blur)",
    )
    p.add_argument(
        "--out",
        "-o",
        help="figure PNG (one image: default sxai-out/<stem>.compare.png; "
        "annotations: the first image's figure, only when given)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    p.set_defaults(handler=_run_compare)


def _pick_space(args: argparse.Namespace, model):
    from ..explain.trust import load_space_set

    spaces = load_space_set(args.spaces, model, force=args.force)
    for space in spaces:
        if space.key == args.space:
            return space
    raise SxaiError(f"no space {args.space!r} among the loaded spaces: {', '.join(spaces.keys)}")


def _run_compare(args: argparse.Namespace) -> int:
    import torch

    from ..attr.compare import comparison_panels
    from ..data.images import load_image, to_array
    from ..viz.plots import comparison_figure

    if bool(args.image) == bool(args.annotations):
        raise SxaiError("give either one IMAGE or --annotations FILE (not both, not neither)")
    model = model_from_args(args)
    space = _pick_space(args, model)
    options = {"n_steps": args.ig_steps, "n_segments": args.n_segments, "fill": args.fill}
    size = (model.input_size[1], model.input_size[2])
    if args.annotations:
        return _compare_annotations(args, model, space, options, size)
    image = to_array(load_image(args.image), size)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = model(x.to(next(model.parameters()).device))
    probs = out.logits.softmax(1)[0].cpu()
    predicted = model.class_names[int(probs.argmax())]
    activation = float(space.activation(out)[0])
    probability = float(space.probability(out)[0]) if space.reference or space.probe else None
    panels = comparison_panels(
        model,
        space,
        image,
        args.methods,
        args.semantic_methods,
        options,
        progress=not (args.quiet or args.json),
    )
    figure = Path(args.out or Path("sxai-out") / f"{Path(args.image).stem}.compare.png")
    comparison_figure(
        image,
        panels,
        figure,
        title=f"{Path(args.image).name}: predicted {predicted} ({float(probs.max()):.3f}); "
        f"{space.key} P={probability if probability is None else round(probability, 3)}",
    )
    record = {
        "path": args.image,
        "predicted": predicted,
        "space": space.key,
        "activation": rounded(activation),
        "probability": rounded(probability),
        "figure": str(figure),
        "methods": [name for name, _ in panels],
    }
    if args.json:
        print(dumps_json(record))
    else:
        print(
            f"{args.image}: predicted {predicted} ({float(probs.max()):.3f}); {space.key}: "
            f"A_s {activation:.4f}, P_s {'–' if probability is None else f'{probability:.3f}'}"
        )
        print(f"figure: {figure}")
    return 0


def _compare_annotations(args, model, space, options: dict, size: tuple[int, int]) -> int:
    import warnings

    from ..attr.compare import comparison_panels
    from ..attr.semantic import compare_attributions
    from ..data.concepts import AnnotationWarning, concept_region, load_coco
    from ..viz.plots import comparison_figure

    root = args.image_root or str(Path(args.annotations).parent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AnnotationWarning)
        annotations = load_coco(args.annotations, root)
    for w in caught:
        print(f"skipped: {w.message}", file=sys.stderr)
    if space.concept not in annotations.concepts:
        raise SxaiError(
            f"{args.annotations}: no concept {space.concept!r} (has "
            f"{', '.join(annotations.concepts)}); pick another --space"
        )
    chosen = [
        a
        for a in annotations.annotations
        if a.class_name == space.class_name and a.has(space.concept)
    ]
    if args.limit:
        chosen = chosen[: args.limit]
    if not chosen:
        raise SxaiError(
            f"{args.annotations}: no image of class {space.class_name!r} shows {space.concept!r}"
        )
    report = compare_attributions(
        model,
        space,
        chosen,
        methods=args.methods,
        semantic_methods=args.semantic_methods,
        region_mode=args.region,
        robustness_n=args.robustness_n,
        n_perturb_samples=args.perturbations,
        options=options,
        progress=not (args.quiet or args.json),
    )
    for why in report.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    if args.out:
        first = chosen[0]
        image = first.load(size)
        region = concept_region(
            image, first.geometry(space.concept, image.shape[:2]), mode=args.region
        )
        panels = comparison_panels(
            model, space, image, args.methods, args.semantic_methods, options
        )
        comparison_figure(
            image, panels, args.out, region, title=f"{first.image_path.name}: {space.key}"
        )
    if args.json:
        print(dumps_json(report.to_dict()))
    else:
        print(report.table())
        if args.out:
            print(f"figure: {args.out}")
    return 0 if report.n_images else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _compare(subparsers)
