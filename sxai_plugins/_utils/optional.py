"""Optional dependencies: imported only where a feature needs them, with a hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import SxaiError

SCALE_EXTRA = 'pip install "sxai[ray]"'


class MissingDependencyError(SxaiError, ImportError):
    """A feature needs a package that is not installed."""


def require(module: str, feature: str, extra: str = SCALE_EXTRA) -> ModuleType:
    """``import module``, or a :class:`MissingDependencyError` saying which feature needs it and
    how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingDependencyError(
            f"{feature} needs {package}, which is not installed: {extra}"
        ) from exc
