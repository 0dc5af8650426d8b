"""Push a set of semantic spaces to a Hub repository in one commit; pull it back, verified.

All network and cache work is done by ``huggingface_hub`` (``HfApi``, ``hf_hub_download``), so
tokens (``token=``, ``HF_TOKEN``, ``hf auth login``), ``HF_HUB_CACHE`` / ``cache_dir`` and
``HF_HUB_OFFLINE=1`` behave as they do for any Hub download. The endpoint is read from
``HF_ENDPOINT`` at call time (``huggingface_hub`` reads it once, at import) and passed explicitly.

Cache safety (checked against huggingface_hub 2.4's ``file_download.py``): each download is
written to a process-unique ``<blob>.<random>.incomplete`` file next to the blob, renamed onto
the blob only when complete (size checked against the server's), and unlinked on any failure;
the snapshot entry is created only after that rename. A file that then fails our own checks
(index sha256/size, safetensors header, space metadata) is removed from the cache as well, so
a refused file is never picked up later.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)
from tqdm.auto import tqdm

from sxai_plugins._utils.errors import SpaceError
from sxai_plugins.spaces.space import SemanticSpace, check_model_fits

from .card import render_card
from .errors import (
    DownloadError,
    HubAuthError,
    HubError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUnreachableError,
    HubWarning,
    IntegrityError,
    SpacesIndexError,
)
from .layout import (
    CARD_NAME,
    HUB_HOUSEKEEPING,
    INDEX_NAME,
    MAX_INDEX_BYTES,
    SPACES_DIR,
    FileEntry,
    SpacesIndex,
    build_index,
    check_space_set,
    parse_index,
    space_path,
)
from .safety import check_safetensors_header, verify_entry

log = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload semantic spaces with sxai"

try:  # the transport errors of the HTTP client huggingface_hub uses
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError, ConnectionError)
except ImportError:  # pragma: no cover - other huggingface_hub versions
    _TRANSPORT_ERRORS = (ConnectionError,)


class _QuietBar(tqdm):
    """Per-file byte bars of a few-KB file are noise: ``pull`` shows one bar over the files."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


class OversizeError(DownloadError):
    """The server announced or sent more bytes than the index lists for a file."""


def _capped_bar(limit: int, what: str, where: str) -> type[tqdm]:
    """A quiet byte bar that stops the download once the server sends more than ``limit`` bytes.

    hf_hub_download checks the size only after reading the whole body, so a server that lies
    could make us read gigabytes. Its byte bar is told of every chunk before the chunk is written
    (huggingface_hub 2.4 ``http_get``), so raising here ends the transfer after at most one
    chunk (``constants.DOWNLOAD_CHUNK_SIZE``, 10 MB) past the limit; huggingface_hub then deletes
    its ``.incomplete`` file. A size announced up front (Content-Length) is refused before any
    byte of the body is read.
    """

    def refuse(size: int, verb: str) -> OversizeError:
        return OversizeError(
            f"{where}: the server {verb} {size} bytes for {what}, but {limit} are "
            "allowed (the size the index lists); download stopped, nothing was kept"
        )

    class CappedBar(_QuietBar):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            total = kwargs.get("total")
            if total is not None and total > limit:
                raise refuse(total, "announced")
            self.received = 0
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self.received += int(n or 0)
            if self.received > limit:
                raise refuse(self.received, "sent at least")
            return super().update(n)

    return CappedBar


def hub_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``HF_ENDPOINT`` as set now, else huggingface_hub's default."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, endpoint: str, action: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line ``HubError``s naming the repo and a next step."""
    where = f"{repo_id}@{revision or hf_constants.DEFAULT_REVISION}"
    try:
        yield
    except HubError:
        raise
    except HFValidationError as exc:
        raise HubError(
            f"{repo_id!r} is not a valid repo id ({_one_line(exc, 120)}); use owner/name"
        ) from exc
    except RevisionNotFoundError as exc:
        raise HubRevisionNotFoundError(
            f"{where}: no such revision on {endpoint}; check the branch, tag or commit name"
        ) from exc
    except RepositoryNotFoundError as exc:  # also gated repos
        raise HubRepoNotFoundError(
            f"{repo_id}: no such repository on {endpoint}, or it is private; check the name, and give a "
            "token (token=, HF_TOKEN or `hf auth login`) for a private repository"
        ) from exc
    except (RevisionResolutionError, LocalEntryNotFoundError, *_TRANSPORT_ERRORS) as exc:
        if action == "push":
            raise HubUnreachableError(
                f"{repo_id}: cannot reach {endpoint} to push ({_one_line(type(exc).__name__)}); check the "
                "network and HF_ENDPOINT, and unset HF_HUB_OFFLINE"
            ) from exc
        raise HubUnreachableError(
            f"{where}: cannot reach {endpoint} and the local cache has no copy; check the network and "
            "HF_ENDPOINT, or pull once online before using HF_HUB_OFFLINE=1"
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            raise HubAuthError(
                f"{repo_id}: {endpoint} refused the credentials ({status}) to {action}; give a token with "
                "write access (token=, HF_TOKEN or `hf auth login`)"
            ) from exc
        raise HubError(
            f"{where}: {endpoint} answered {status} to {action} "
            f"({_one_line(exc.server_message or exc, 120)}); try again later"
        ) from exc


# --------------------------------------------------------------------------------------------- push
def _extra_files(
    extra_files: Mapping[str, str | Path] | Sequence[str | Path] | None,
) -> dict[str, Path]:
    """``{path_in_repo: local file}``; a plain list puts each file at the root under its own name."""
    if not extra_files:
        return {}
    items = (
        extra_files.items()
        if isinstance(extra_files, Mapping)
        else [(Path(p).name, p) for p in extra_files]
    )
    out: dict[str, Path] = {}
    for name, local in items:
        local = Path(local)
        pure = PurePosixPath(name)
        if not local.is_file():
            raise HubError(f"extra file {local}: no such file")
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise HubError(
                f"extra file {name!r}: the path in the repository must be relative, without '..'"
            )
        if str(pure) in (INDEX_NAME, CARD_NAME) or pure.parts[0] == SPACES_DIR:
            raise HubError(
                f"extra file {name!r}: {INDEX_NAME}, {CARD_NAME} and {SPACES_DIR}/ are written "
                "by push itself; choose another path"
            )
        out[str(pure)] = local
    return out


def _stale_space_files(api: HfApi, repo_id: str, revision: str | None, keep: set[str]) -> list[str]:
    """Space files an earlier push left that this set no longer has (the ``spaces/`` folder is ours)."""
    try:
        entries = api.list_repo_tree(repo_id, path_in_repo=SPACES_DIR, revision=revision)
        return sorted(
            e.path for e in entries if getattr(e, "size", None) is not None and e.path not in keep
        )
    except RemoteEntryNotFoundError:  # no spaces/ folder yet
        return []


def push(
    spaces: Iterable[SemanticSpace],
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    extra_files: Mapping[str, str | Path] | Sequence[str | Path] | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload ``spaces`` (one backbone) with their index and model card in a single commit.

    Creates the repository if needed (``private`` only applies then) and the branch ``revision``
    if it does not exist. Space files a previous push left under ``spaces/`` that this set does
    not have are deleted in the same commit. ``extra_files`` (``{path_in_repo: local path}`` or a
    list of paths) are uploaded, listed in the index and shown in the card (images as plots),
    but never read back by ``pull``.

    Returns huggingface_hub's ``CommitInfo`` (``.oid``, ``.commit_url``).
    """
    spaces = list(spaces)
    check_space_set(spaces)
    extras = _extra_files(extra_files)
    endpoint = hub_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="sxai-push-") as tmp:
        files = {space_path(s): s.save(Path(tmp) / space_path(s)) for s in spaces}
        index = build_index(spaces, files, extras)
        card = render_card(spaces, repo_id, list(extras))
        operations: list[Any] = [
            CommitOperationAdd(INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode()),
            CommitOperationAdd(CARD_NAME, card.encode()),
            *(CommitOperationAdd(path, str(local)) for path, local in sorted(files.items())),
            *(CommitOperationAdd(path, str(local)) for path, local in sorted(extras.items())),
        ]
        with _hub_errors(repo_id, revision, endpoint, "push"):
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision not in (None, hf_constants.DEFAULT_REVISION):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            stale = _stale_space_files(api, repo_id, revision, set(files))
            operations += [CommitOperationDelete(path) for path in stale]
            info = api.create_commit(
                repo_id, operations, commit_message=commit_message, revision=revision
            )
    log.info("pushed %d spaces to %s (%s)", len(spaces), repo_id, info.oid)
    return info


# --------------------------------------------------------------------------------------------- pull
def _evict(pointer: Path) -> None:
    """Drop a refused file from the cache (snapshot entry and blob) so nothing uses it later."""
    blob = pointer.resolve()
    pointer.unlink(missing_ok=True)
    if blob != pointer:
        blob.unlink(missing_ok=True)


def _warn_unlisted(present: list[str] | None, index: SpacesIndex, where: str) -> None:
    if index.ignored:
        warnings.warn(
            f"{where}: ignoring entries of {INDEX_NAME} that are not space files (never downloaded): "
            f"{', '.join(index.ignored[:10])}",
            HubWarning,
            stacklevel=3,
        )
    unlisted = sorted(set(present or ()) - index.listed_paths() - HUB_HOUSEKEEPING)
    if unlisted:
        warnings.warn(
            f"{where}: ignoring {len(unlisted)} file(s) that {INDEX_NAME} does not list (never "
            f"downloaded): {', '.join(unlisted[:10])}",
            HubWarning,
            stacklevel=3,
        )


def _repo_files(api: HfApi, repo_id: str, revision: str | None) -> tuple[bool, list[str] | None]:
    """(whether the Hub answered, the files at ``revision``): one API call, no retries.

    Asked before resolving the revision so that an unreachable Hub costs one timeout, not one
    per call; a missing repo or revision raises here.
    """
    if hf_constants.is_offline_mode():
        return False, None
    try:
        info = api.model_info(repo_id, revision=revision)
    except _TRANSPORT_ERRORS as exc:
        log.debug("cannot reach the Hub for %s: %s", repo_id, exc)
        return False, None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status >= 500:  # Hub down: the cache may still serve
            return False, None
        raise
    return True, [s.rfilename for s in info.siblings or []]


@dataclass(frozen=True)
class _Snapshot:
    """One repository at one resolved commit: downloads from it are capped, checked and evicted on refusal."""

    repo_id: str
    revision: str | None
    commit: str
    endpoint: str
    token: str | None
    cache_dir: str | Path | None

    @property
    def where(self) -> str:
        return f"{self.repo_id}@{self.revision or hf_constants.DEFAULT_REVISION}"

    def download(self, filename: str, limit: int) -> Path:
        """``filename`` at the commit, from the cache or the Hub, refused past ``limit`` bytes."""
        where = self.where
        with _hub_errors(self.repo_id, self.revision, self.endpoint, "pull"):
            try:
                path = Path(
                    hf_hub_download(
                        self.repo_id,
                        filename,
                        revision=self.commit,
                        cache_dir=self.cache_dir,
                        token=self.token,
                        endpoint=self.endpoint,
                        tqdm_class=_capped_bar(limit, filename, where),
                    )
                )
            except RemoteEntryNotFoundError as exc:
                if filename == INDEX_NAME:
                    raise SpacesIndexError(
                        f"{where}: the repository has no {INDEX_NAME}, so it holds no sxai spaces; check the "
                        "repo name, or publish spaces with `sxai hub push`"
                    ) from exc
                raise IntegrityError(
                    f"{where}: {filename} is listed in {INDEX_NAME} but missing from the "
                    "repository; ask the owner to re-push"
                ) from exc
            except LocalEntryNotFoundError:
                raise  # offline without a cached copy: _hub_errors says so
            except EntryNotFoundError as exc:  # pragma: no cover - other subclasses
                raise IntegrityError(f"{where}: {filename} not found ({_one_line(exc)})") from exc
            except OSError as exc:
                if isinstance(exc, HfHubHTTPError):
                    raise
                raise DownloadError(
                    f"{where}: the download of {filename} did not complete "
                    f"({_one_line(exc, 160)}); nothing was kept in the cache, run the pull "
                    "again"
                ) from exc
        # a copy cached earlier (or by another tool) never went through the capped bar
        size = path.stat().st_size
        if size > limit:
            _evict(path)
            raise OversizeError(
                f"{where}: the cached {filename} has {size} bytes, more than the {limit} "
                "allowed; it was removed from the cache, run the pull again"
            )
        return path

    def index(self) -> SpacesIndex:
        path = self.download(INDEX_NAME, MAX_INDEX_BYTES)
        try:
            return parse_index(path.read_bytes(), self.where)
        except SpacesIndexError:
            _evict(path)
            raise

    def space(self, entry: FileEntry, index: SpacesIndex) -> SemanticSpace:
        """The space file ``entry``, checked (size, sha256, safetensors header, metadata) before use."""
        local = self.download(entry.path, entry.size)
        try:
            return _checked_space(local, entry, index, self.where)
        except IntegrityError:
            _evict(local)
            raise


def _checked_space(local: Path, entry: FileEntry, index: SpacesIndex, where: str) -> SemanticSpace:
    verify_entry(local, entry, where)
    check_safetensors_header(local, f"{where}: {entry.path}")
    try:
        space = SemanticSpace.load(local)
    except SpaceError as exc:
        # the reason without the cache path it starts with (the entry path says which file)
        reason = str(exc).removeprefix(f"{local}: ")
        raise IntegrityError(
            f"{where}: {entry.path} is not a valid semantic space ({_one_line(reason, 200)})"
        ) from exc
    # the file's own class and concept name the space everywhere after this (and files written
    # with --out), so they must be the checked names of its index entry
    mismatch = [
        f"{k} {str(getattr(space, k))[:120]!r} vs {v!r}"
        for k, v in (
            ("class_name", entry.class_name),
            ("concept", entry.concept),
            ("backbone", index.backbone),
            ("fingerprint", index.fingerprint),
            ("trait_dim", index.trait_dim),
        )
        if getattr(space, k) != v
    ]
    if mismatch:
        raise IntegrityError(
            f"{where}: {entry.path} disagrees with {INDEX_NAME} "
            f"({'; '.join(mismatch)}); ask the owner to re-push"
        )
    return space


def pull(
    repo_id: str,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    model: Any = None,
    force: bool = False,
    *,
    endpoint: str | None = None,
    progress: bool = True,
) -> list[SemanticSpace]:
    """Download a space set into the Hub cache and load it, verified; works offline from the cache.

    ``spaces.json`` is fetched first; then only the space files it lists, each checked against
    the index (size, sha256), its safetensors header, and the index's backbone. With ``model``,
    spaces whose backbone fingerprint differs from ``model.fingerprint()`` are refused unless
    ``force=True`` (a different trait width is always refused). Every revision is resolved to
    one commit first, so a push during the pull cannot mix two versions.
    """
    endpoint = hub_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id, revision, endpoint, "pull"):
        reachable, present = _repo_files(api, repo_id, revision)
        commit = api.resolve_revision(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=not reachable
        )
    snapshot = _Snapshot(repo_id, revision, commit, endpoint, token, cache_dir)

    index = snapshot.index()
    if model is not None:  # refuse a model that cannot fit before downloading any space
        check_model_fits(
            model,
            index.backbone,
            index.fingerprint,
            index.trait_dim,
            force=force,
            subject=f"{snapshot.where}: the spaces were",
        )
    _warn_unlisted(present, index, snapshot.where)

    spaces: list[SemanticSpace] = []
    for entry in tqdm(
        index.files,
        desc=f"pull {repo_id}",
        unit="space",
        disable=not progress or len(index.files) < 8,
    ):
        space = snapshot.space(entry, index)
        if model is not None:
            space.check_compatible(model, force=force)
        spaces.append(space)
    return spaces
