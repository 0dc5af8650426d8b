"""``sxai train-head``: a GAP classifier head trained on an ImageFolder."""

from __future__ import annotations

import argparse

from ._args import add_model_args, fraction, model_from_args, positive_float, positive_int


# --------------------------------------------------------------------------------------- train-head
def _train_head(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-head",
        help="train a GAP classifier head on an ImageFolder",
        description="Train the classifier head of a backbone on frozen GAP traits (paper recipe: Adam, "
        "batch 16, 3 epochs). Writes OUT (safetensors) and OUT with .json (the card: "
        "backbone, classes, accuracy, data, seed, held-out files).",
    )
    p.add_argument("data", help="ImageFolder root: DATA/<class>/<images>")
    p.add_argument("--out", "-o", required=True, help="output .safetensors path")
    add_model_args(p)
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument(
        "--heldout",
        type=fraction,
        default=0.2,
        help="fraction kept out for the accuracy, between 0 and 1 (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_train_head)


def _run_train_head(args: argparse.Namespace) -> int:
    from .._utils.io import check_output_file
    from ..models.head import train_head

    check_output_file(args.out)
    model = model_from_args(args)
    result = train_head(
        model,
        args.data,
        args.out,
        heldout_fraction=args.heldout,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"wrote {result.weights} and {result.card}")
    print(
        f"train accuracy {result.train_accuracy:.4f} on {result.n_train} images; "
        f"held-out accuracy {result.heldout_accuracy:.4f} on {result.n_heldout} images"
    )
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _train_head(subparsers)
