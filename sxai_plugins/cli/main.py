"""The ``sxai`` command line. Every command has ``--help``; ``--json`` output is documented there."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from collections.abc import Callable

import torch

from .. import DEFAULT_BACKBONE
from .._utils.errors import SxaiError
from .._utils.io import ESCAPE_ERRORS, dumps_json

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(register: Callable[[argparse._SubParsersAction], None]):
    """Decorator: ``register(subparsers)`` adds one sub-command (kept in definition order)."""
    _COMMANDS.append(register)
    return register


def positive_list(kind: type[int] | type[float]) -> Callable[[str], list]:
    """An argparse ``type`` for "a,b,c": one or more positive numbers of ``kind``."""
    noun = "integers" if kind is int else "numbers"

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}") from exc
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected one or more positive {noun}, got {text!r}")
        return values

    return parse


def _number(kind: type[int] | type[float], text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from exc
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type``: an integer ≥ 1 (batch sizes, epochs, counts)."""
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type``: an integer ≥ 0 (limits where 0 means all)."""
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number > 0 (learning rates, step factors)."""
    value = _number(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse ``type``: a number strictly between 0 and 1 (a held-out share)."""
    value = _number(float, text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (exclusive), got {text!r}")
    return value


DEVICE_TYPES = ("cpu", "cuda")


def device_name(text: str) -> str:
    """argparse ``type`` for ``--device``: auto, cpu, cuda or cuda:N (what sxai's models run on)."""
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device torch knows (try cpu, cuda or cuda:0)") from exc
    if device.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r}: sxai runs on cpu or cuda (cuda:N), or auto; "
                                         f"{device.type} is not supported")
    return text


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", "-b", default=DEFAULT_BACKBONE,
                        help=f"backbone name (see `sxai backbones`; default {DEFAULT_BACKBONE})")
    parser.add_argument("--weights", help="local backbone weights (.safetensors/.pth) instead of downloading")
    parser.add_argument("--head", help="a head file written by `sxai train-head`")
    parser.add_argument("--no-pretrained", action="store_true", help="random backbone weights")
    parser.add_argument("--device", default="cpu", type=device_name,
                        help="where the model runs: cpu (default), cuda, cuda:1, … or auto (cuda when "
                             "available, else cpu)")


def add_space_args(parser: argparse.ArgumentParser) -> None:
    """``--spaces`` (repeatable: files, folders, hf:// sources) and ``--force``."""
    parser.add_argument("--spaces", "-s", action="append", metavar="PATH|hf://owner/name@rev",
                        help="a space file, a folder of them, or a hub source (repeatable); default: "
                             "the spaces bundled with the backbone, if any")
    parser.add_argument("--force", action="store_true",
                        help="use spaces built on other weights of the same architecture")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is cuda when a GPU is visible, else cpu; an unusable device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SxaiError(f"--device {name!r} is not a device torch knows (try cpu, cuda or cuda:0)") from exc
    if device.type not in DEVICE_TYPES:
        raise SxaiError(f"--device {name}: sxai runs on cpu or cuda (cuda:N), or auto; {device.type} is not supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SxaiError(f"--device {name}: this torch sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SxaiError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def model_from_args(args: argparse.Namespace):
    from .. import create_model

    device = resolve_device(getattr(args, "device", "cpu"))  # before the slow part: fail fast
    model = create_model(args.backbone, pretrained=not args.no_pretrained, weights=args.weights, head=args.head)
    return model.to(device)


# ---------------------------------------------------------------------------------------- backbones
@command
def _backbones(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbones", help="list installed backbones and the plugin providing each",
                       description="List the backbones installed plugins provide. Any timm CNN name "
                                   "also works through the core's generic adapter.")
    p.add_argument("--json", action="store_true", help="print [{name, plugin, description, weights}]")
    p.set_defaults(handler=_run_backbones)


def _run_backbones(args: argparse.Namespace) -> int:
    from ..plugin.manager import backbone_table, plugin_failures

    rows = [
        {"name": name, "plugin": plugin, "description": spec.description, "weights": spec.pretrained_source}
        for name, (plugin, spec) in sorted(backbone_table().items())
    ]
    if args.json:
        print(dumps_json(rows))
        return 0
    width = max(len(r["name"]) for r in rows)
    pwidth = max(len(r["plugin"]) for r in rows)
    for r in rows:
        default = "  (default)" if r["name"] == DEFAULT_BACKBONE else ""
        print(f"{r['name']:<{width}}  {r['plugin']:<{pwidth}}  {r['description']}{default}")
    print("+ any timm CNN by name (generic adapter in sxai_plugins.backbones.timm_generic)")
    for failure in plugin_failures():
        print(f"! plugin {failure.name} failed to load: {failure.error}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ predict
@command
def _predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="class probabilities of images",
        description="Print the class probabilities of each image (files or folders). With --json, "
                    "print a list with one record per image: "
                    '{"path": str, "predicted": class name, "probabilities": {class: p, ...}}. '
                    "Unreadable files are reported on stderr and skipped.",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    add_model_args(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--top", type=positive_int, default=5, help="classes shown per image in text output")
    p.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    p.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from ..data.images import expand_paths
    from ..models.inference import score_paths

    paths = expand_paths(args.images, require=True)
    model = model_from_args(args)
    scored = score_paths(model, paths, args.batch_size, progress=not args.json and len(paths) > 64,
                         failures=[])
    for _path, why in scored.failures:
        print(f"skipped: {why}", file=sys.stderr)
    records = []
    for path, probs in zip(scored.paths, scored.probabilities):
        records.append({
            "path": str(path),
            "predicted": model.class_names[int(probs.argmax())],
            "probabilities": {c: round(float(p), 6) for c, p in zip(model.class_names, probs)},
        })
    if args.json:
        print(dumps_json(records))
    else:
        for record in records:
            top = sorted(record["probabilities"].items(), key=lambda kv: -kv[1])[: args.top]
            shown = ", ".join(f"{c} {p:.3f}" for c, p in top)
            print(f"{record['path']}: {record['predicted']}  ({shown})")
    return 0 if records or not paths else 1


# --------------------------------------------------------------------------------------- train-head
@command
def _train_head(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-head", help="train a GAP classifier head on an ImageFolder",
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
    p.add_argument("--heldout", type=fraction, default=0.2,
                   help="fraction kept out for the accuracy, between 0 and 1 (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_run_train_head)


def _run_train_head(args: argparse.Namespace) -> int:
    from .._utils.io import check_output_file
    from ..models.head import train_head

    check_output_file(args.out)
    model = model_from_args(args)
    result = train_head(model, args.data, args.out, heldout_fraction=args.heldout, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"wrote {result.weights} and {result.card}")
    print(f"train accuracy {result.train_accuracy:.4f} on {result.n_train} images; "
          f"held-out accuracy {result.heldout_accuracy:.4f} on {result.n_heldout} images")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sxai", description="Semantic explanations (S-XAI) for timm CNNs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _load_extra_commands()
    for register in _COMMANDS:
        register(sub)
    return parser


def _load_extra_commands() -> None:
    """Commands that live in their own modules register themselves on import."""
    import importlib

    for module in ("traits.common", "cli.spaces", "cli.explain", "cli.hub", "cli.compare"):
        try:
            importlib.import_module(f"sxai_plugins.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sxai_plugins.{module}":
                raise


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line are one line for the user, not a file, line and source."""
    print(f"sxai: warning: {message}", file=file or sys.stderr)


def _printable_streams() -> None:
    """Paths that are not valid UTF-8 print with \\x escapes instead of crashing the print."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=ESCAPE_ERRORS)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _printable_streams()
    show_warning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return args.handler(args)
    except SxaiError as exc:
        print(f"sxai: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sxai: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = show_warning


if __name__ == "__main__":
    # Re-import so that command modules register on the same module object `main` reads.
    from sxai_plugins.cli.main import main as _main

    sys.exit(_main())
