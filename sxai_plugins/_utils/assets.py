"""Where the package's bundled files (default head, spaces, example images) live."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
