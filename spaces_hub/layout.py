"""The layout of a semantic-space repository and its index, ``spaces.json`` (format version 1).

A repository holds one set of spaces built on one backbone::

    spaces.json                         the index (below); read first, and the only file trusted
    README.md                           model card generated from the spaces (never read back)
    spaces/<class>.<concept>.safetensors  one space per file (``SemanticSpace.save``)
    <extra files>                       optional (plots...), listed in the index, never read back

``spaces.json``, format version 1::

    {
      "format_version": 1,                  int; readers refuse a larger one
      "kind": "sxai-semantic-spaces",
      "backbone": "lite0_catdog",           name of the backbone the traits come from
      "fingerprint": "0123abcd...",         TraitModel.fingerprint() of that backbone
      "trait_dim": 1280,                    C, the width of the trait vector
      "trait_layer": "gap",
      "classes": ["cat", "dog"],            sorted, unique
      "concepts": ["ears", "eyes"],         sorted, unique
      "files": [                            one entry per space, sorted by path
        {"path": "spaces/cat.eyes.safetensors", "class_name": "cat", "concept": "eyes",
         "n_ssn": 5, "sha256": "<64 hex>", "size": 1234}
      ],
      "extra_files": [{"path": "plots/cat.eyes.png", "sha256": "<64 hex>", "size": 5678}],
      "created_with": {"sxai": "0.1.0", "space_format_version": 1}
    }

Rules. Readers ignore keys they do not know, so adding an optional key keeps the version;
any change an older reader would misread (renaming or re-meaning a key, another file format)
bumps ``format_version``. Space paths must match ``spaces/<name>.safetensors`` with ``<name>``
made of ``[A-Za-z0-9_.-]``: anything else in ``files`` is ignored with a warning and never
downloaded, and so are repository files the index does not list. A space entry's ``class_name``
and ``concept`` must be safe names (``check_name``) and its path exactly
``spaces/<class_name>.<concept>.safetensors``, or the index is refused; the space file's own
class and concept must then equal its entry's. Every space file is checked against its ``size``
and ``sha256`` while it downloads and again before its safetensors header is even parsed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sxai_plugins.spaces.space import FORMAT_VERSION as SPACE_FORMAT_VERSION
from sxai_plugins.spaces.space import MAX_NAME_LENGTH, NAME_PATTERN, SemanticSpace

from .errors import HubError, SpacesIndexError

FORMAT_VERSION = 1
INDEX_NAME = "spaces.json"
CARD_NAME = "README.md"
SPACES_DIR = "spaces"
KIND = "sxai-semantic-spaces"
MAX_INDEX_BYTES = 16 * 1024 * 1024
# A space is a few SSN indices and weights: anything near this size is not one of ours.
MAX_SPACE_BYTES = 64 * 1024 * 1024

SPACE_PATH_RE = re.compile(r"spaces/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,200}\.safetensors")
# Class and concept names end up in file names on the puller's disk: the core's one rule for them
# (no separators, no "..", no leading dot), which every loaded space also passes.
NAME_RE = NAME_PATTERN
MAX_NAME_CHARS = MAX_NAME_LENGTH
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Files a Hub repository has without anyone asking for them: not worth a warning.
HUB_HOUSEKEEPING = frozenset({".gitattributes"})


@dataclass(frozen=True)
class FileEntry:
    """One file listed in the index."""

    path: str
    sha256: str
    size: int
    class_name: str = ""
    concept: str = ""


@dataclass(frozen=True)
class SpacesIndex:
    """A parsed, validated ``spaces.json``."""

    format_version: int
    backbone: str
    fingerprint: str
    trait_dim: int
    classes: list[str]
    concepts: list[str]
    files: list[FileEntry]
    extra_files: list[FileEntry]
    ignored: list[str]  # entries of ``files`` refused by the path rule (never downloaded)
    raw: dict[str, Any]

    def listed_paths(self) -> set[str]:
        return {
            INDEX_NAME,
            CARD_NAME,
            *(f.path for f in self.files),
            *(f.path for f in self.extra_files),
        }


def is_safe_name(name: object) -> bool:
    """Whether ``name`` may be a class or concept name inside a file name (``NAME_RE``)."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_CHARS
        and NAME_RE.fullmatch(name) is not None
    )


def check_name(name: object, what: str, where: str) -> str:
    """``name`` if it is a safe class or concept name, else :class:`HubError` saying why.

    The one place spaces_hub decides which names may become file names; ``what`` is "class name"
    or "concept", ``where`` names the file or repository in the message.
    """
    if is_safe_name(name):
        return name  # type: ignore[return-value]
    raise HubError(
        f"{where}: {what} {str(name)[:120]!r} is not a safe name (letters, digits, '_' and "
        "'-', in parts joined by single dots, at most 100 characters); it would become part "
        "of a file name, so the spaces are refused"
    )


def space_filename(space: SemanticSpace, where: str = "space") -> str:
    """``<class>.<concept>.safetensors`` for a space whose names pass :func:`check_name`."""
    check_name(space.class_name, "class name", where)
    check_name(space.concept, "concept", where)
    return f"{space.class_name}.{space.concept}.safetensors"


def space_path(space: SemanticSpace) -> str:
    """``spaces/<class>.<concept>.safetensors``; names that are not safe are refused."""
    return f"{SPACES_DIR}/{space_filename(space, f'space {space.key[:120]!r}')}"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_space_set(spaces: Sequence[SemanticSpace]) -> None:
    """A shared set is for one backbone, with one space per (class, concept) and distinct file names."""
    if not spaces:
        raise HubError("no semantic spaces to push")
    for field in ("backbone", "fingerprint", "trait_dim", "trait_layer"):
        values = sorted({str(getattr(s, field)) for s in spaces})
        if len(values) > 1:
            raise HubError(
                f"the spaces do not share one {field} ({', '.join(values)}); push one set per backbone"
            )
    seen: dict[str, str] = {}
    for space in spaces:
        path = space_path(space)
        if path in seen:
            raise HubError(
                f"spaces {seen[path]!r} and {space.key!r} would both be stored as {path}; "
                "rename one of them"
            )
        seen[path] = space.key


def build_index(
    spaces: Sequence[SemanticSpace],
    files: dict[str, Path],
    extra_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """The index of ``spaces`` whose files (``space_path`` -> local file) have been written."""
    try:
        from importlib.metadata import version

        sxai_version = version("sxai")
    except Exception:  # running from a source tree that was never installed
        sxai_version = "unknown"
    first = spaces[0]
    entries = []
    for space in spaces:
        path = space_path(space)
        entries.append(
            {
                "path": path,
                "class_name": space.class_name,
                "concept": space.concept,
                "n_ssn": space.n_ssn,
                "sha256": sha256_file(files[path]),
                "size": files[path].stat().st_size,
            }
        )
    extras = [
        {"path": p, "sha256": sha256_file(f), "size": f.stat().st_size}
        for p, f in sorted((extra_files or {}).items())
    ]
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "backbone": first.backbone,
        "fingerprint": first.fingerprint,
        "trait_dim": first.trait_dim,
        "trait_layer": first.trait_layer,
        "classes": sorted({s.class_name for s in spaces}),
        "concepts": sorted({s.concept for s in spaces}),
        "files": sorted(entries, key=lambda e: e["path"]),
        "extra_files": extras,
        "created_with": {"sxai": sxai_version, "space_format_version": SPACE_FORMAT_VERSION},
    }


def parse_index(data: bytes, where: str) -> SpacesIndex:
    """Validate the bytes of a ``spaces.json``; ``where`` names it in errors (``owner/name@rev``)."""
    if len(data) > MAX_INDEX_BYTES:
        raise SpacesIndexError(
            f"{where}: {INDEX_NAME} is {len(data)} bytes, more than an index can be "
            f"({MAX_INDEX_BYTES}); the repository is not a valid spaces repository"
        )
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpacesIndexError(
            f"{where}: {INDEX_NAME} is not valid JSON ({exc}); re-push the spaces"
        ) from exc
    if not isinstance(raw, dict):
        raise SpacesIndexError(f"{where}: {INDEX_NAME} is not a JSON object; re-push the spaces")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SpacesIndexError(
            f"{where}: {INDEX_NAME} has no valid format_version; re-push the spaces"
        )
    if version > FORMAT_VERSION:
        raise SpacesIndexError(
            f"{where}: {INDEX_NAME} has format version {version}, newer than this sxai "
            f"reads ({FORMAT_VERSION}); upgrade sxai (pip install -U sxai)"
        )

    def need(key: str, kind: type) -> Any:
        value = raw.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SpacesIndexError(
                f"{where}: {INDEX_NAME} lacks a valid {key!r} ({kind.__name__}); re-push the spaces"
            )
        return value

    backbone, fingerprint, trait_dim = (
        need("backbone", str),
        need("fingerprint", str),
        need("trait_dim", int),
    )
    files_raw, extras_raw = need("files", list), raw.get("extra_files", [])
    if not isinstance(extras_raw, list):
        extras_raw = []
    files: list[FileEntry] = []
    ignored: list[str] = []
    seen: set[str] = set()
    for item in files_raw:
        entry = _entry(item, where)
        if not SPACE_PATH_RE.fullmatch(entry.path):
            ignored.append(entry.path)
            continue
        for value, what in ((entry.class_name, "class_name"), (entry.concept, "concept")):
            if not is_safe_name(value):
                raise SpacesIndexError(
                    f"{where}: {INDEX_NAME} gives {entry.path} the {what} {value[:120]!r}, "
                    "which is not a safe name (letters, digits, '_', '-', parts joined "
                    "by single dots); refusing the set (ask the owner to re-push)"
                )
        if entry.path != f"{SPACES_DIR}/{entry.class_name}.{entry.concept}.safetensors":
            raise SpacesIndexError(
                f"{where}: {INDEX_NAME} lists {entry.path} for {entry.class_name}."
                f"{entry.concept}, but that space must be stored as {SPACES_DIR}/"
                f"{entry.class_name}.{entry.concept}.safetensors; refusing the set "
                "(ask the owner to re-push)"
            )
        if entry.path in seen:
            raise SpacesIndexError(
                f"{where}: {INDEX_NAME} lists {entry.path} twice; re-push the spaces"
            )
        if entry.size > MAX_SPACE_BYTES:
            raise SpacesIndexError(
                f"{where}: {INDEX_NAME} says {entry.path} has {entry.size} bytes, far more "
                "than a semantic space; refusing to download it"
            )
        seen.add(entry.path)
        files.append(entry)
    if not files:
        raise SpacesIndexError(f"{where}: {INDEX_NAME} lists no space files (spaces/*.safetensors)")
    extras = []
    for item in extras_raw:
        try:
            extras.append(_entry(item, where))
        except SpacesIndexError:
            continue  # extras are never read back: a bad entry only costs its listing
    return SpacesIndex(
        format_version=version,
        backbone=backbone,
        fingerprint=fingerprint,
        trait_dim=trait_dim,
        classes=[c for c in raw.get("classes", []) if isinstance(c, str)],
        concepts=[c for c in raw.get("concepts", []) if isinstance(c, str)],
        files=files,
        extra_files=extras,
        ignored=ignored,
        raw=raw,
    )


def _entry(item: Any, where: str) -> FileEntry:
    if not isinstance(item, dict):
        raise SpacesIndexError(f"{where}: {INDEX_NAME} has a file entry that is not an object")
    path, sha, size = item.get("path"), item.get("sha256"), item.get("size")
    if (
        not isinstance(path, str)
        or not isinstance(sha, str)
        or not _SHA256_RE.fullmatch(sha)
        or not isinstance(size, int)
        or isinstance(size, bool)
        or size < 0
    ):
        raise SpacesIndexError(
            f"{where}: {INDEX_NAME} has a malformed file entry {str(path)[:80]!r} "
            "(needs path, sha256 as 64 hex digits, size); re-push the spaces"
        )
    class_name, concept = item.get("class_name"), item.get("concept")
    return FileEntry(
        path=path,
        sha256=sha,
        size=size,
        class_name=class_name if isinstance(class_name, str) else "",
        concept=concept if isinstance(concept, str) else "",
    )


def save_spaces(spaces: Sequence[SemanticSpace], folder: str | Path) -> list[Path]:
    """Write each space to ``folder/<class>.<concept>.safetensors``, never anywhere else.

    Every name is checked and every target resolved (symlinks included) before the first byte is
    written, so a refused set leaves the folder as it was.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HubError(
            f"{folder}: exists and is not a folder; pass a folder to write the spaces into"
        )
    root = folder.resolve()
    targets = []
    for space in spaces:
        target = folder / space_filename(space, f"space {space.key[:120]!r}")
        if not target.resolve().is_relative_to(root):
            raise HubError(
                f"{target}: resolves to {target.resolve()}, outside {root}; remove that link "
                "or write the spaces into another folder"
            )
        targets.append(target)
    return [space.save(target) for space, target in zip(spaces, targets)]
