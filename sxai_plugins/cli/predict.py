"""``sxai predict``: class probabilities of images."""

from __future__ import annotations

import argparse
import sys

from .._utils.io import dumps_json
from ._args import add_model_args, model_from_args, positive_int


# ------------------------------------------------------------------------------------------ predict
def _predict(sub: argparse._SubParsersAction) -> None:
    from ._args import add_inference_args

    p = sub.add_parser(
        "predict",
        help="class probabilities of images",
        description="Print the class probabilities of each image (files or folders). With --json, "
        "print a list with one record per image: "
        '{"path": str, "predicted": class name, "probabilities": {class: p, ...}}. '
        "Unreadable files are reported on stderr and skipped.",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    add_model_args(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--top", type=positive_int, default=5, help="classes shown per image in text output"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    add_inference_args(p)
    p.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from ..data.images import expand_paths
    from ..models.inference import score_paths
    from ._args import show_progress

    paths = expand_paths(args.images, require=True)
    model = model_from_args(args)
    scored = score_paths(
        model,
        paths,
        args.batch_size,
        progress=show_progress(args, len(paths)),
        desc="predicting",
        failures=[],
        precision=args.precision,
    )
    for _path, why in scored.failures:
        print(f"skipped: {why}", file=sys.stderr)
    records = []
    for path, probs in zip(scored.paths, scored.probabilities):
        records.append(
            {
                "path": str(path),
                "predicted": model.class_names[int(probs.argmax())],
                "probabilities": {c: round(float(p), 6) for c, p in zip(model.class_names, probs)},
            }
        )
    if args.json:
        print(dumps_json(records))
    else:
        for record in records:
            top = sorted(record["probabilities"].items(), key=lambda kv: -kv[1])[: args.top]
            shown = ", ".join(f"{c} {p:.3f}" for c, p in top)
            print(f"{record['path']}: {record['predicted']}  ({shown})")
    return 0 if records or not paths else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _predict(subparsers)
