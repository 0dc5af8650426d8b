"""``sxai report``: one self-contained HTML page of traits, spaces and explanations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._utils.io import check_output_file
from ._args import add_model_args, model_from_args, positive_int


# ------------------------------------------------------------------------------------- report
def _report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page: common traits, spaces, example explanations",
        description="Write one HTML file (images embedded, no JavaScript, nothing fetched) with the "
        "model's backbone and fingerprint, the common traits (--traits), one section per "
        "semantic space (SSNs and weights, evaluation figures, inversion, distribution "
        "and Q-Q plot, reference images at both ends), the shared channels, and example "
        "explanations (prediction, radar map, sentence, P_s table). Missing optional "
        "pieces are noted in the page; unreadable examples are reported and skipped.",
    )
    add_model_args(p)
    p.add_argument(
        "--spaces",
        "-s",
        metavar="DIR",
        help="a folder written by `sxai space` (default: the spaces bundled with the backbone)",
    )
    p.add_argument("--traits", metavar="DIR", help="a folder written by `sxai traits` (optional)")
    p.add_argument(
        "--examples",
        "-e",
        nargs="*",
        metavar="IMG",
        help="images or folders to explain (default: the bundled examples; "
        "--examples with nothing after it: none)",
    )
    p.add_argument(
        "--template", "-t", default="english", help="explanation template (default english)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="use spaces built on other weights of the same architecture",
    )
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", "-o", required=True, metavar="FILE.html", help="the page to write")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from ..data.examples import example_images
    from ..plugin.manager import get_explanation_template
    from ..viz.report import build_report
    from ._args import show_progress

    get_explanation_template(args.template)  # fail on a bad name before any work
    check_output_file(args.out)
    model = model_from_args(args)
    examples = example_images() if args.examples is None else args.examples
    failures: list[tuple[Path, str]] = []
    out = build_report(
        model,
        args.spaces,
        args.out,
        traits_dir=args.traits,
        examples=examples,
        template=args.template,
        force=args.force,
        batch_size=args.batch_size,
        progress=show_progress(args, len(examples), small=16),
        failures=failures,
    )
    for _path, why in failures:
        print(f"skipped: {why}", file=sys.stderr)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _report(subparsers)
