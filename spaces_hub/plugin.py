"""spaces_hub as an sxai plugin: ``hf://`` space sources and the ``sxai hub`` command.

Registered through the ``sxai`` entry-point group, so the core never imports ``spaces_hub``: a
command that takes spaces asks the ``sxai_resolve_spaces`` hook, and this plugin answers for
``hf://owner/name[@revision]``.
"""

from __future__ import annotations

import argparse

from sxai_plugins import hookimpl


@hookimpl
def sxai_resolve_spaces(source, model, force):
    from .resolve import HF_PREFIX, resolve_spaces

    if not source.startswith(HF_PREFIX):
        return None
    return resolve_spaces([source], model=model, force=force)


@hookimpl
def sxai_add_commands(subparsers: argparse._SubParsersAction) -> None:
    from .cli import add_hub_command

    add_hub_command(subparsers)
