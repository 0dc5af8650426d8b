"""``sxai backbones``: the installed backbones and the plugin providing each."""

from __future__ import annotations

import argparse
import sys

from .. import DEFAULT_BACKBONE
from .._utils.io import dumps_json


# ---------------------------------------------------------------------------------------- backbones
def _backbones(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backbones",
        help="list installed backbones and the plugin providing each",
        description="List the backbones installed plugins provide. Any timm CNN name "
        "also works through the core's generic adapter.",
    )
    p.add_argument(
        "--json", action="store_true", help="print [{name, plugin, description, weights}]"
    )
    p.set_defaults(handler=_run_backbones)


def _run_backbones(args: argparse.Namespace) -> int:
    from ..plugin.manager import backbone_table, plugin_failures

    rows = [
        {
            "name": name,
            "plugin": plugin,
            "description": spec.description,
            "weights": spec.pretrained_source,
        }
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
    print("+ any timm CNN by name (generic adapter in sxai_plugins.models.timm_generic)")
    for failure in plugin_failures():
        print(f"! plugin {failure.name} failed to load: {failure.error}", file=sys.stderr)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _backbones(subparsers)
