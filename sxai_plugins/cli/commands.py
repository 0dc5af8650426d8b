"""The core's commands, added through the same hook a plugin uses (``sxai_add_commands``).

Listed in the order of the S-XAI pipeline, which is the order ``sxai --help`` shows. A command
module only parses arguments, calls the library and prints; it imports the library inside its
handler, so that ``sxai --help`` stays fast.
"""

from __future__ import annotations

import argparse

from ..plugin.hookspecs import hookimpl
from . import (
    adversarial,
    backbones,
    compare,
    discover,
    explain,
    predict,
    report,
    search,
    spaces,
    train_head,
    traits,
)

PIPELINE_ORDER = (
    backbones,
    predict,
    train_head,
    traits,
    discover,
    spaces,
    explain,
    search,
    report,
    compare,
    adversarial,
)


@hookimpl(tryfirst=True)
def sxai_add_commands(subparsers: argparse._SubParsersAction) -> None:
    for module in PIPELINE_ORDER:
        module.add_commands(subparsers)
