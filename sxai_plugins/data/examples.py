"""The bundled example images (three cats, three dogs, held out from the default head's training)."""

from __future__ import annotations

from pathlib import Path

from .._utils.assets import ASSETS

EXAMPLES = ASSETS / "examples"


def example_images() -> list[Path]:
    """Paths of the bundled examples, named ``<class>_<id>.jpg``."""
    return sorted(EXAMPLES.glob("*.jpg"))
