"""Checks a downloaded file passes before anything reads its tensors: size, sha256, safetensors header.

The size and sha256 are checked against the index first. The header is then checked by the
safetensors library itself (``safe_open``): it refuses a header that is too large or too small,
not JSON, or whose dtypes, shapes and data offsets do not tile the file's data section exactly,
so a file whose header lies is refused, with its name, before any tensor is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .errors import IntegrityError
from .layout import FileEntry, sha256_file

_LIBRARY_PREFIX = "Error while deserializing header: "


def verify_entry(path: str | Path, entry: FileEntry, where: str) -> None:
    """Refuse ``path`` unless its size and sha256 are those the index lists for ``entry``."""
    size = Path(path).stat().st_size
    if size != entry.size:
        raise IntegrityError(
            f"{where}: {entry.path} has {size} bytes but the index says {entry.size}; "
            "the file was changed or damaged, refusing it (ask the owner to re-push)"
        )
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise IntegrityError(
            f"{where}: {entry.path} has sha256 {digest[:12]}… but the index says "
            f"{entry.sha256[:12]}…; the file was changed or damaged, refusing it "
            "(ask the owner to re-push)"
        )


def check_safetensors_header(path: str | Path, name: str) -> dict[str, Any]:
    """Open ``path`` with ``safetensors.safe_open`` (which validates the whole header) and describe it.

    ``name`` is how errors call the file. Returns the header as the format writes it, without
    the offsets: ``{"__metadata__": {...}, tensor: {"dtype": ..., "shape": [...]}, ...}``.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            header: dict[str, Any] = {"__metadata__": f.metadata() or {}}
            for key in f.keys():
                tensor = f.get_slice(key)
                header[key] = {"dtype": tensor.get_dtype(), "shape": list(tensor.get_shape())}
    except SafetensorError as exc:
        reason = " ".join(str(exc).split()).removeprefix(_LIBRARY_PREFIX)
        if len(reason) > 200:
            reason = reason[:199] + "…"
        raise IntegrityError(
            f"{name}: not a valid safetensors file ({reason}); refusing it "
            "(ask the owner to re-push)"
        ) from exc
    return header
