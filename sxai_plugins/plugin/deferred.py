"""Plugin objects whose implementation loads on first use.

A provider hook runs whenever plugins are listed (``sxai --help``, ``sxai backbones``); a plugin
whose objects need torch can return :class:`Deferred` stand-ins so that listing stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any


class Deferred:
    """Stands for ``module:attribute()`` under ``name``: the object is built on first attribute use."""

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self._target = target
        self._object: Any = None

    def load(self) -> Any:
        if self._object is None:
            module, _, attribute = self._target.partition(":")
            self._object = getattr(importlib.import_module(module), attribute)()
        return self._object

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self.load(), attribute)

    def __repr__(self) -> str:
        return f"Deferred({self.name!r}, {self._target!r})"
