"""Checks a downloaded file passes before anything parses it: size, sha256, safetensors header.

The safetensors format is an 8-byte little-endian header length N, N bytes of JSON, then the
tensor data. The header is checked here against the file's real size, so that a file whose
header lies about offsets or lengths is refused with its name before it reaches the
safetensors library.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .errors import IntegrityError
from .layout import FileEntry, sha256_file

# Bytes per element for every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


def verify_entry(path: str | Path, entry: FileEntry, where: str) -> None:
    """Refuse ``path`` unless its size and sha256 are those the index lists for ``entry``."""
    size = Path(path).stat().st_size
    if size != entry.size:
        raise IntegrityError(f"{where}: {entry.path} has {size} bytes but the index says {entry.size}; "
                             "the file was changed or damaged, refusing it (ask the owner to re-push)")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise IntegrityError(f"{where}: {entry.path} has sha256 {digest[:12]}… but the index says "
                             f"{entry.sha256[:12]}…; the file was changed or damaged, refusing it "
                             "(ask the owner to re-push)")


def check_safetensors_header(path: str | Path, name: str) -> dict:
    """Parse and check the header of a safetensors file; ``name`` is how errors call the file.

    Every tensor must have a known dtype, a shape of non-negative ints, and data offsets that
    match its byte length; together the tensors must tile the data section exactly.
    """
    path = Path(path)
    size = path.stat().st_size

    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{name}: not a valid safetensors file ({why}); refusing it")

    if size < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"header claims {n} bytes but the file has {size - 8} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_len = size - 8 - n
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor {key!r} is not described by an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise bad(f"tensor {key!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise bad(f"tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"tensor {key!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise bad(f"tensor {key!r} claims bytes {begin}..{end} but the data section has {data_len}")
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise bad(f"tensor {key!r} of shape {shape} and dtype {dtype} needs "
                      f"{math.prod(shape) * DTYPE_SIZES[dtype]} bytes but claims {end - begin}")
        spans.append((begin, end, key))
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            raise bad(f"tensor {key!r} starts at {begin}, expected {position} (overlap or gap)")
        position = end
    if position != data_len:
        raise bad(f"tensors cover {position} bytes of data but the file has {data_len}")
    return header
