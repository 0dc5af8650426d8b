"""The ``sxai`` command line. Every command has ``--help``; ``--json`` output is documented there.

Commands come from plugins through the ``sxai_add_commands`` hook: the core's own
(:mod:`sxai_plugins.cli.commands`) first, then any installed plugin's.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from .._utils.errors import SxaiError
from .._utils.io import ESCAPE_ERRORS


def build_parser() -> argparse.ArgumentParser:
    from ..plugin.manager import get_plugin_manager

    parser = argparse.ArgumentParser(
        prog="sxai", description="Semantic explanations (S-XAI) for timm CNNs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    try:
        get_plugin_manager().hook.sxai_add_commands(subparsers=sub)
    except argparse.ArgumentError as exc:
        raise SxaiError(
            f"a plugin adds a command that already exists: {exc}; uninstall one of the "
            "two plugins (`sxai backbones` lists what is installed)"
        ) from exc
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line are one line for the user, not a file, line and source."""
    print(f"sxai: warning: {message}", file=file or sys.stderr)


def _printable_streams() -> None:
    """Paths that are not valid UTF-8 print with \\x escapes instead of crashing the print."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=ESCAPE_ERRORS)


def main(argv: list[str] | None = None) -> int:
    _printable_streams()
    show_warning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
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
    sys.exit(main())
