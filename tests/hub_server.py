"""A small Hugging Face Hub-compatible HTTP server on loopback, for tests of ``spaces_hub``.

No package on PyPI serves the Hub's *write* API without the real Hub behind it, so this one
implements what huggingface_hub 2.4's ``HfApi`` and ``hf_hub_download`` call (model repos only):

    POST /api/repos/create                               create (409 with the url if it exists)
    POST /api/validate-yaml                              README.md metadata check
    GET  /api/models/{owner}/{name}[/revision/{rev}]     repo info: id, sha, siblings
    GET  /api/models/{owner}/{name}/tree/{rev}[/{path}]  listing (?recursive=true|false)
    POST /api/models/{owner}/{name}/preupload/{rev}      upload modes: always "regular" (no LFS/xet)
    POST /api/models/{owner}/{name}/commit/{rev}         NDJSON: header, file (base64), deletedFile,
                                                         deletedFolder
    POST /api/models/{owner}/{name}/branch/{branch}      create a branch (409 if it exists)
    HEAD /{owner}/{name}/resolve/{rev}/{path}            X-Repo-Commit, ETag, Content-Length
    GET  /{owner}/{name}/resolve/{rev}/{path}            the bytes ("Range: bytes=N-" honoured)

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) like the Hub's, so
the client raises its usual exceptions. Blobs live on disk under ``root``; refs and commits in
memory. ``requests`` records every (method, path) served. Test hooks: ``write_token`` (writes need
``Authorization: Bearer <token>``), ``short_paths`` (GET serves only half of those files),
``oversize`` (GET sends that many zero bytes after those files, announced in Content-Length or
not, while HEAD keeps the true size); ``sent`` counts the body bytes written per path.
HTTP/1.0, one connection per request, so ``stop()`` really takes the Hub away.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_oid(data: bytes) -> str:
    """The git blob id the Hub uses as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit
    commits: dict[str, dict[str, str]] = field(default_factory=dict)  # commit -> {path: blob oid}


class HubServer:
    def __init__(self, root: str | Path, write_token: str | None = None) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.write_token = write_token
        self.short_paths: set[str] = set()
        self.oversize: dict[str, tuple[int, bool]] = {}  # path -> (extra bytes, announced)
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ------------------------------------------------------------------------------ storage
    def put_blob(self, data: bytes) -> str:
        oid = git_oid(data)
        path = self.blobs / oid
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return oid

    def read_blob(self, oid: str) -> bytes:
        return (self.blobs / oid).read_bytes()

    def create_repo(self, repo_id: str, private: bool = False) -> bool:
        with self._lock:
            if repo_id in self.repos:
                return False
            repo = Repo(private=private)
            first = self._new_commit(
                {".gitattributes": self.put_blob(b"*.safetensors filter=lfs\n")}
            )
            repo.commits[first[0]] = first[1]
            repo.refs["main"] = first[0]
            self.repos[repo_id] = repo
            return True

    def _new_commit(self, files: dict[str, str]) -> tuple[str, dict[str, str]]:
        sha = hashlib.sha1(
            json.dumps([next(self._counter), sorted(files.items())]).encode()
        ).hexdigest()
        return sha, dict(files)

    def resolve(self, repo_id: str, rev: str) -> str | None:
        repo = self.repos[repo_id]
        if rev in repo.refs:
            return repo.refs[rev]
        return rev if rev in repo.commits else None

    def commit(self, repo_id: str, branch: str, ops: list[dict[str, Any]]) -> str:
        with self._lock:
            repo = self.repos[repo_id]
            files = dict(repo.commits[repo.refs[branch]])
            for op in ops:
                key, value = op["key"], op["value"]
                if key == "file":
                    files[value["path"]] = self.put_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: o for p, o in files.items() if not p.startswith(prefix)}
                else:
                    raise ValueError(f"unsupported commit operation {key!r}")
            sha, tree = self._new_commit(files)
            repo.commits[sha] = tree
            repo.refs[branch] = sha
            return sha


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    # ------------------------------------------------------------------------------ replies
    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._json(status, {"error": message}, extra)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        token = self.hub.write_token
        if token is None or self.headers.get("Authorization") == f"Bearer {token}":
            return True
        self._error(401, None, "Invalid credentials in Authorization header")
        return False

    # ------------------------------------------------------------------------------ routing
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append((self.command, unquote(url.path)))
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if self.command == "POST" and parts == ["api", "repos", "create"]:
                return self._create_repo()
            if self.command == "POST" and parts == ["api", "validate-yaml"]:
                return self._validate_yaml()
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
                if repo_id not in self.hub.repos:
                    return self._error(404, "RepoNotFound", "Repository not found")
                return self._api(repo_id, rest, query)
            if len(parts) >= 5 and parts[2] == "resolve" and self.command in ("GET", "HEAD"):
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            self._error(404, None, f"no route for {self.command} {url.path}")
        except Exception as exc:  # a server bug must show up as a 500, not a hang
            self._error(500, None, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------ endpoints
    def _create_repo(self) -> None:
        if not self._authorised():
            return
        payload = json.loads(self._body())
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if self.hub.create_repo(repo_id, private=payload.get("visibility") == "private"):
            self._json(200, {"url": url, "name": repo_id})
        else:
            self._json(409, {"error": "You already created this model repo", "url": url})

    def _validate_yaml(self) -> None:
        content = json.loads(self._body())["content"]
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as exc:
                return self._json(400, {"errors": [{"message": str(exc)}], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _api(self, repo_id: str, rest: list[str], query: dict[str, str]) -> None:
        hub = self.hub
        action = rest[0] if rest else "revision"
        rev = rest[1] if len(rest) > 1 else "main"
        if action == "branch" and self.command == "POST":
            if not self._authorised():
                return
            payload = json.loads(self._body() or b"{}")
            if rev in hub.repos[repo_id].refs:
                return self._error(409, None, "Branch already exists")
            start = hub.resolve(repo_id, payload.get("startingPoint") or "main")
            if start is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            hub.repos[repo_id].refs[rev] = start
            return self._json(200, {})
        commit = hub.resolve(repo_id, rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = hub.repos[repo_id].commits[commit]
        if action == "revision" and self.command == "GET":
            return self._json(
                200,
                {
                    "id": repo_id,
                    "sha": commit,
                    "private": hub.repos[repo_id].private,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )
        if action == "tree" and self.command == "GET":
            prefix = "/".join(rest[2:]).strip("/")
            return self._tree(files, prefix, query.get("recursive", "False").lower() == "true")
        if action == "preupload" and self.command == "POST":
            if not self._authorised():
                return
            wanted = json.loads(self._body())["files"]
            return self._json(
                200,
                {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "regular",
                            "shouldIgnore": False,
                            "oid": files.get(f["path"]),
                        }
                        for f in wanted
                    ]
                },
            )
        if action == "commit" and self.command == "POST":
            if not self._authorised():
                return
            if rev not in hub.repos[repo_id].refs:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                return self._error(400, None, "commit payload must start with a header")
            try:
                sha = hub.commit(repo_id, rev, lines[1:])
            except ValueError as exc:
                return self._error(400, None, str(exc))
            return self._json(
                200,
                {
                    "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}",
                    "commitOid": sha,
                    "success": True,
                    "pullRequestUrl": None,
                },
            )
        self._error(404, None, f"no route for {self.command} {action}")

    def _tree(self, files: dict[str, str], prefix: str, recursive: bool) -> None:
        entries: dict[str, dict[str, Any]] = {}
        under = prefix + "/" if prefix else ""
        for path, oid in sorted(files.items()):
            if not path.startswith(under):
                continue
            rel = path[len(under) :]
            if recursive or "/" not in rel:
                entries[path] = {
                    "type": "file",
                    "oid": oid,
                    "size": (self.hub.blobs / oid).stat().st_size,
                    "path": path,
                }
            else:
                folder = under + rel.split("/", 1)[0]
                entries.setdefault(
                    folder,
                    {
                        "type": "directory",
                        "oid": git_oid(folder.encode()),
                        "size": 0,
                        "path": folder,
                    },
                )
            if recursive:
                for depth in range(1, rel.count("/") + 1):
                    folder = under + "/".join(rel.split("/")[:depth])
                    entries.setdefault(
                        folder,
                        {
                            "type": "directory",
                            "oid": git_oid(folder.encode()),
                            "size": 0,
                            "path": folder,
                        },
                    )
        if prefix and not entries:
            return self._error(404, "EntryNotFound", f"{prefix} does not exist")
        self._json(200, list(entries.values()))

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        hub = self.hub
        if repo_id not in hub.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        commit = hub.resolve(repo_id, rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        oid = hub.repos[repo_id].commits[commit].get(path)
        if oid is None:
            return self._error(
                404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": commit}
            )
        data = hub.read_blob(oid)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        if self.command == "HEAD":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        if path in hub.short_paths:
            data = data[: len(data) // 2]
        if path in hub.oversize:
            return self._send_oversized(path, data, headers, *hub.oversize[path])
        status, start = 200, 0
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and wanted[6:].endswith("-"):
            start, status = int(wanted[6:-1]), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(status, data[start:], headers, content_type="application/octet-stream")

    def _send_oversized(
        self, path: str, data: bytes, headers: dict[str, str], extra: int, announced: bool
    ) -> None:
        """``data`` then ``extra`` zero bytes, in 64 KiB writes, until done or the client hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, value)
        if announced:
            self.send_header("Content-Length", str(len(data) + extra))
        self.end_headers()  # without Content-Length, HTTP/1.0 clients read until the connection closes
        self.hub.sent[path] = 0
        block = bytes(64 * 1024)
        try:
            self.wfile.write(data)
            self.hub.sent[path] += len(data)
            while extra > 0:
                chunk = block[: min(extra, len(block))]
                self.wfile.write(chunk)
                self.wfile.flush()
                self.hub.sent[path] += len(chunk)
                extra -= len(chunk)
        except OSError:  # the client stopped reading: what we count is what it was sent
            self.close_connection = True
