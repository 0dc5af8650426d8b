"""argparse types and the options several commands share (model, device, spaces)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import argparse
import math
from collections.abc import Callable

from .. import DEFAULT_BACKBONE
from .._utils.errors import SxaiError


def positive_list(kind: type[int] | type[float]) -> Callable[[str], list]:
    """An argparse ``type`` for "a,b,c": one or more positive numbers of ``kind``."""
    noun = "integers" if kind is int else "numbers"

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {noun}, got {text!r}"
            ) from exc
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected one or more positive {noun}, got {text!r}")
        return values

    return parse


def _number(kind: type[int] | type[float], text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from exc
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
        raise argparse.ArgumentTypeError(
            f"expected a fraction between 0 and 1 (exclusive), got {text!r}"
        )
    return value


DEVICE_TYPES = ("cpu", "cuda")


def device_name(text: str) -> str:
    """argparse ``type`` for ``--device``: auto, cpu, cuda or cuda:N (what sxai's models run on)."""
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device torch knows (try cpu, cuda or cuda:0)"
        ) from exc
    if device.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: sxai runs on cpu or cuda (cuda:N), or auto; {device.type} is not supported"
        )
    return text


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        "-b",
        default=DEFAULT_BACKBONE,
        help=f"backbone name (see `sxai backbones`; default {DEFAULT_BACKBONE})",
    )
    parser.add_argument(
        "--weights", help="local backbone weights (.safetensors/.pth) instead of downloading"
    )
    parser.add_argument("--head", help="a head file written by `sxai train-head`")
    parser.add_argument("--no-pretrained", action="store_true", help="random backbone weights")
    parser.add_argument(
        "--device",
        default="cpu",
        type=device_name,
        help="where the model runs: cpu (default), cuda, cuda:1, … or auto (cuda when "
        "available, else cpu)",
    )


def add_space_args(parser: argparse.ArgumentParser, batch_size: bool = False) -> None:
    """``--spaces`` (repeatable: files, folders, hf:// sources), ``--force`` and optionally ``--batch-size``."""
    parser.add_argument(
        "--spaces",
        "-s",
        action="append",
        metavar="PATH|hf://owner/name@rev",
        help="a space file, a folder of them, or a hub source (repeatable); default: "
        "the spaces bundled with the backbone, if any",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="use spaces built on other weights of the same architecture",
    )
    if batch_size:
        parser.add_argument("--batch-size", type=positive_int, default=32)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is cuda when a GPU is visible, else cpu; an unusable device is a clear error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SxaiError(
            f"--device {name!r} is not a device torch knows (try cpu, cuda or cuda:0)"
        ) from exc
    if device.type not in DEVICE_TYPES:
        raise SxaiError(
            f"--device {name}: sxai runs on cpu or cuda (cuda:N), or auto; {device.type} is not supported"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SxaiError(f"--device {name}: this torch sees no CUDA GPU; use --device cpu")
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise SxaiError(
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return device


def model_from_args(args: argparse.Namespace):
    from .. import create_model

    device = resolve_device(getattr(args, "device", "cpu"))  # before the slow part: fail fast
    model = create_model(
        args.backbone, pretrained=not args.no_pretrained, weights=args.weights, head=args.head
    )
    return model.to(device)


def add_inference_args(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """``--quiet`` (no progress bar) and, for commands that run the model over images,
    ``--precision`` (autocast on CUDA)."""
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    if precision:
        parser.add_argument(
            "--precision",
            choices=("fp32", "bf16", "fp16"),
            default="fp32",
            help="forward-pass precision: fp32 (default), or bf16/fp16 autocast on a "
            "CUDA device (slightly different numbers, much faster)",
        )


def show_progress(args: argparse.Namespace, count: int, small: int = 64) -> bool:
    """A progress bar unless ``--quiet`` or ``--json``: always on a terminal, and on a redirected
    stderr only for more than ``small`` items (logs and captured output stay clean)."""
    import sys

    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return False
    return count > small or sys.stderr.isatty()


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_engine_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--engine local|ray`` and the Ray engine's options (``pip install "sxai[ray]"``)."""
    group = parser.add_argument_group(
        "scale-out engine", 'the Ray Data engine (pip install "sxai[ray]")'
    )
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help=f"local: this process (default); ray: {what} on Ray Data (a local Ray instance, or "
        "the cluster of --address)",
    )
    group.add_argument(
        "--address",
        help="the Ray cluster: auto (the running one) or ray://HOST:PORT; default: RAY_ADDRESS, "
        "else a new local instance",
    )
    group.add_argument(
        "--num-gpus-per-worker",
        type=non_negative_float,
        default=0.0,
        metavar="G",
        help="GPUs per model actor (default 0: CPU actors)",
    )
    group.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="N",
        help="model actors (default: one per G GPUs, or one per 4 CPUs of the cluster)",
    )


def check_engine_args(args: argparse.Namespace) -> None:
    """The Ray options only make sense with --engine ray."""
    if args.engine == "ray":
        return
    given = [
        flag
        for flag, value in (
            ("--address", args.address),
            ("--num-gpus-per-worker", args.num_gpus_per_worker or None),
            ("--concurrency", args.concurrency),
        )
        if value is not None
    ]
    if given:
        raise SxaiError(f"{', '.join(given)} only apply with --engine ray")
