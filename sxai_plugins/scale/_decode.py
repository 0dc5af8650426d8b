"""The CPU side of the Ray pipelines: listing a source and decoding its files.

Kept apart from the model code so that a decoding task's worker imports NumPy and Pillow only,
not torch (whose import alone takes seconds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._utils.errors import ImageLoadError, SxaiError
from ..data.images import IMAGE_SUFFIXES, list_images, load_image
from ._ray import local_paths_ok


# ------------------------------------------------------------------------------------ listing
def _is_uri(source: str) -> bool:
    return "://" in source


def list_source(source: str | Path) -> tuple[Any, str, Any, list[tuple[str, str]]]:
    """``(listing, prefix, filesystem, unlisted)`` of the images under ``source``.

    listing: an Arrow table (path, mtime_ns, size), by path; paths as the index stores them
    (absolute local paths, as the SQLite index does, or ``scheme://bucket/key``). prefix: what
    every path of this source starts with. filesystem: the pyarrow filesystem of a URI (``None``
    for a local folder). unlisted: ``(path, why)`` of files that cannot be indexed.
    """
    import pyarrow as pa

    source = str(source)
    rows: list[tuple[str, int, int]] = []
    unlisted: list[tuple[str, str]] = []
    if _is_uri(source):
        from pyarrow import fs as pafs

        try:
            filesystem, base = pafs.FileSystem.from_uri(source)
            infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
        except (OSError, ValueError) as exc:
            raise SxaiError(f"{source}: cannot list it ({exc})") from exc
        scheme = source.split("://", 1)[0]
        for info in infos:
            if info.type == pafs.FileType.File and Path(info.path).suffix.lower() in IMAGE_SUFFIXES:
                rows.append((f"{scheme}://{info.path}", info.mtime_ns or 0, info.size or 0))
        prefix = f"{scheme}://{base.rstrip('/')}/"
    else:
        filesystem = None
        folder = Path(source).resolve()
        try:
            paths = list_images(folder)
        except ImageLoadError as exc:
            raise SxaiError(str(exc)) from exc
        paths, unlisted = local_paths_ok(paths)
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                unlisted.append((str(path), f"{path}: could not be read (removed while indexing?)"))
                continue
            rows.append((str(path), st.st_mtime_ns, st.st_size))
        prefix = str(folder) + os.sep
    rows.sort()
    listing = pa.table(
        {
            "path": pa.array([r[0] for r in rows], pa.string()),
            "mtime_ns": pa.array([r[1] for r in rows], pa.int64()),
            "size": pa.array([r[2] for r in rows], pa.int64()),
        }
    )
    return listing, prefix, filesystem, unlisted


# ----------------------------------------------------------------------------------- decoding
def _read(path: str, filesystem) -> bytes:
    if filesystem is None:
        with open(path, "rb") as f:
            return f.read()
    with filesystem.open_input_file(path.split("://", 1)[1]) as f:
        return f.read()


def decode_batch(batch: dict[str, np.ndarray], size: tuple[int, int], filesystem) -> dict:
    """A CPU task: read, decode and resize each file as the local engine does (``load_image``,
    then Pillow's bilinear resize to the model's input); uint8 pixels, or the error."""
    from PIL import Image

    n = len(batch["path"])
    images = np.zeros((n, size[0], size[1], 3), dtype=np.uint8)
    errors = [""] * n
    for i, path in enumerate(batch["path"]):
        path = str(path)
        try:
            image = load_image(path, size, data=_read(path, filesystem))
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            images[i] = np.asarray(image, dtype=np.uint8)
        except ImageLoadError as exc:
            errors[i] = str(exc)
        except FileNotFoundError:
            errors[i] = f"{path}: no such file"
        except OSError as exc:
            errors[i] = f"{path}: could not be read ({exc})"
    return {
        "path": batch["path"],
        "mtime_ns": batch["mtime_ns"],
        "size": batch["size"],
        "image": images,
        "error": np.array(errors, dtype=object),
    }
