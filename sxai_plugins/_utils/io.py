"""Writing artifacts atomically: a crash never leaves a half-written file behind."""

from __future__ import annotations

import codecs
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _escape_unprintable(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: a byte of a file name that is not UTF-8 (which Python holds as a
    surrogate escape, U+DC80..U+DCFF) becomes \\xNN, anything else unprintable \\uNNNN."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    chunk = exc.object[exc.start : exc.end]
    return "".join(
        f"\\x{ord(c) - 0xDC00:02x}"
        if 0xDC80 <= ord(c) <= 0xDCFF
        else c.encode("ascii", "backslashreplace").decode("ascii")
        for c in chunk
    ), exc.end


ESCAPE_ERRORS = "sxai.escape"
codecs.register_error(ESCAPE_ERRORS, _escape_unprintable)


def printable(text: str) -> str:
    """``text`` safe to write as UTF-8: file-name bytes that are not UTF-8 shown as \\xNN."""
    return text.encode("utf-8", ESCAPE_ERRORS).decode("utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no NaN) and NumPy scalars as Python's."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def rounded(value: float | None, digits: int = 6) -> float | None:
    """A number as JSON output shows it: ``digits`` decimals (non-finite ones become null later)."""
    return None if value is None else round(float(value), digits)


def dumps_json(data: Any) -> str:
    """Strict JSON for output: non-finite floats become null (``json_safe``), and
    ``allow_nan=False`` makes any that slip through fail loudly instead of printing ``NaN``."""
    return json.dumps(json_safe(data), indent=2, allow_nan=False)


def write_json(path: str | Path, data: Any) -> Path:
    """Valid JSON, atomically: non-finite floats are written as null."""
    text = dumps_json(data) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_safetensors(
    path: str | Path, tensors: dict, metadata: dict[str, str] | None = None
) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """``with atomic_folder(out) as tmp:`` write into ``tmp``; when the block succeeds, ``tmp``
    replaces ``out`` whole (files of an earlier run never survive beside the new ones), and an old
    ``out`` is removed only after the new one is in place. When the block fails, ``out`` is as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; give the usual permissions
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_can_create_in(folder: Path, flag: str, target: Path) -> None:
    from .errors import SxaiError

    existing = _nearest_existing(folder.absolute())
    if not existing.is_dir():
        raise SxaiError(
            f"{flag} {target}: {existing} is a file, so no folder can be made there; "
            "choose another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SxaiError(
            f"{flag} {target}: cannot write in {existing} (read-only folder or no permission); "
            "choose a writable place"
        )


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, a file path the command could not write at the end.

    ``flag`` names the option in the one-line error. Missing parent folders are fine (they are
    created) as long as the nearest existing one is writable.
    """
    from .errors import SxaiError

    path = Path(path)
    if path.is_dir():
        raise SxaiError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'out'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise SxaiError(
            f"{flag} {path}: the file is read-only; make it writable or choose another path"
        )
    _check_can_create_in(path.parent, flag, path)
    return path


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, a folder the command could not write its files into."""
    from .errors import SxaiError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SxaiError(f"{flag} {path}: exists and is a file; give a folder")
    _check_can_create_in(path, flag, path)
    return path
