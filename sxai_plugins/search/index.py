"""Semantic sample search: an SQLite index of semantic probabilities and a small query language.

``index_folder`` scores every image of a folder once (prediction and every space's P_s and A_s
from one forward pass per batch) into SQLite. It is incremental (a file already indexed with the
same mtime and size is not scored again) and resumable (one transaction per batch, WAL journal:
an interruption loses at most the batch in flight).

``SearchIndex.search("dog.nose > 0.9 and cat.legs < 0.1")`` finds images by their semantic
probabilities, in the query language of :mod:`sxai_plugins.search.query`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._utils.errors import SxaiError
from ..data.images import list_images
from ..models.inference import iter_outputs
from ..models.trait_model import TraitModel
from ..spaces.space import SpaceSet
from .query import CompiledQuery, compile_query

SCHEMA_VERSION = 1


class SearchIndexError(SxaiError):
    """The index file is unusable or was built with another model or other spaces."""


# ------------------------------------------------------------------------------------ index
@dataclass(frozen=True)
class IndexMeta:
    """What an index's numbers depend on: rows are only comparable under the same meta."""

    backbone: str
    fingerprint: str
    classes: tuple[str, ...]
    spaces: tuple[str, ...]
    spaces_digest: str

    @classmethod
    def of(cls, model: TraitModel, spaces: SpaceSet) -> IndexMeta:
        return cls(
            model.name,
            model.fingerprint(),
            tuple(model.class_names),
            tuple(spaces.keys),
            spaces_digest(spaces),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema": SCHEMA_VERSION,
                **self.__dict__,
                "classes": list(self.classes),
                "spaces": list(self.spaces),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> IndexMeta:
        data = json.loads(text)
        return cls(
            data["backbone"],
            data["fingerprint"],
            tuple(data["classes"]),
            tuple(data["spaces"]),
            data["spaces_digest"],
        )


def spaces_digest(spaces: SpaceSet) -> str:
    """A hash of everything that turns traits into P_s (weights and reference distributions)."""
    digest = hashlib.sha256()
    for space in spaces:
        digest.update(space.key.encode())
        digest.update(space.weight_vector().numpy().tobytes())
        link = space.probe.metadata() if space.probe is not None else space.reference.__dict__
        digest.update(json.dumps(link, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@dataclass
class Match:
    path: str
    predicted: str
    class_probabilities: dict[str, float]
    probabilities: dict[str, float]  # space name -> P_s


@dataclass
class SearchResult:
    query: str
    matches: list[Match]
    total: int  # matches in the index, before the limit
    spaces: tuple[str, ...]  # the spaces the query refers to


@dataclass
class IndexReport:
    found: int = 0  # images in the folder
    unchanged: int = (
        0  # skipped: already indexed (or already known unreadable), same mtime and size
    )
    scored: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    removed: int = 0  # rows of files that are gone from the folder
    batches: int = 0


def _db_path(path: str) -> str | bytes:
    """How a path is stored: text, or its raw bytes when it is not valid UTF-8 (SQLite text must be).

    A file name that is not UTF-8 reaches Python as a str with surrogate escapes
    (``os.fsdecode``); ``os.fsencode`` gives back the exact bytes, and ``_from_db`` the same str.
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def _from_db(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _text(message: str) -> str:
    """A message that SQLite can store and any terminal can print (undecodable bytes as \\x..)."""
    return message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _explain_db_error(path: Path, exc: sqlite3.Error) -> str:
    """Say what is wrong with an index file; never suggest deleting one that may be valid."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return (
            f"{path}: the index is locked by another process ({text}); wait until that "
            "`sxai index` finishes and run this again"
        )
    if "readonly" in text or "read-only" in text:
        return f"{path}: cannot write the index ({text}); make the file and its folder writable, or pass another --db"
    if "unable to open" in text:
        return f"{path}: cannot open the index ({text}); check that the file and its folder are readable"
    return (
        f"{path}: not an sxai index, or a damaged one ({text}); pass another --db, or rebuild the index "
        "with `sxai index DIR --db NEW_FILE`"
    )


def describe_mismatch(path: Path, stored: IndexMeta, meta: IndexMeta, flag: str) -> str:
    """Why an index built under ``stored`` cannot take rows scored under ``meta``."""
    what = []
    if (stored.backbone, stored.fingerprint) != (meta.backbone, meta.fingerprint):
        what.append(
            f"model {stored.backbone} ({stored.fingerprint}), now {meta.backbone} ({meta.fingerprint})"
        )
    if stored.classes != meta.classes:
        what.append(f"classes {list(stored.classes)}, now {list(meta.classes)}")
    if stored.spaces != meta.spaces or stored.spaces_digest != meta.spaces_digest:
        what.append(
            f"spaces {list(stored.spaces)} ({stored.spaces_digest}), now {list(meta.spaces)} "
            f"({meta.spaces_digest})"
        )
    return (
        f"{path} was indexed with {'; '.join(what)}: its numbers would not be comparable. "
        f"Index into another {flag} for this model and these spaces; this one stays searchable as it is"
    )


class Searchable:
    """The search both index kinds share: the same compiled query, the same SQL text.

    A subclass sets ``meta``, ``path`` and the column maps and runs SQL with :meth:`_rows`
    (``sql`` with ``?`` parameters; an ``images`` table with the SQLite index's columns).
    """

    path: Path
    meta: IndexMeta
    space_columns: dict[str, str]
    class_columns: dict[str, str]

    def _rows(self, sql: str, params: tuple) -> list[tuple]:
        raise NotImplementedError

    def compile(self, query: str) -> CompiledQuery:
        return compile_query(query, self.space_columns, self.meta.classes)

    def search(self, query: str, limit: int | None = 50) -> SearchResult:
        """Images matching ``query`` and how many match in all (``total``).

        Matches come most extreme first on the query's first space: descending for ``>``, ``>=``,
        ``=``, ``!=``, ascending for ``<``, ``<=`` (reversed under ``not``), then by path; a query
        without a space (``predicted = cat``) is ordered by path. Ordering by the space lets
        SQLite walk that space's index, so a selective query does not scan the table.
        """
        compiled = self.compile(query)
        cols = [*self.class_columns.values(), *self.space_columns.values()]
        if compiled.order is not None:
            key, descending = compiled.order
            order_by = f"{self.space_columns[key]} {'DESC' if descending else 'ASC'}, path"
        else:
            order_by = "path"
        sql = f"SELECT path, predicted, {', '.join(cols)} FROM images WHERE {compiled.where} ORDER BY {order_by}"
        params = compiled.params
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, int(limit))
        matches = []
        n_classes = len(self.meta.classes)
        for path, predicted, *values in self._rows(sql, params):
            matches.append(
                Match(
                    _from_db(path),
                    predicted,
                    dict(zip(self.meta.classes, values[:n_classes])),
                    dict(zip(self.meta.spaces, values[n_classes:])),
                )
            )
        if limit is None or len(matches) < limit:
            total = len(matches)  # everything was fetched: no need to count
        else:
            total = self._rows(
                f"SELECT count(*) FROM images WHERE {compiled.where}", compiled.params
            )[0][0]
        return SearchResult(query, matches, int(total), compiled.spaces)


class SearchIndex(Searchable):
    """An SQLite file of per-image predictions and semantic probabilities."""

    def __init__(self, path: str | Path, meta: IndexMeta | None = None) -> None:
        """Open ``path``. With ``meta`` the file is created if needed and must match it; without,
        it must exist already and is opened read-only (searching)."""
        self.path = Path(path)
        if meta is None and not self.path.is_file():
            raise SearchIndexError(
                f"{self.path}: no such index; build one with `sxai index DIR --db {path}`"
            )
        if meta is not None:
            if self.path.is_dir():
                raise SearchIndexError(
                    f"{self.path}: is a folder; --db needs a file name, e.g. {self.path / 'index.db'}"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._connect(read_only=meta is None)
        except sqlite3.Error as exc:
            raise SearchIndexError(_explain_db_error(self.path, exc)) from exc
        try:
            stored = self._open(meta)
        except BaseException:
            self.db.close()
            raise
        self.meta = stored
        self.space_columns = {key: f"p{i}" for i, key in enumerate(stored.spaces)}
        self.class_columns = {name: f"c{i}" for i, name in enumerate(stored.classes)}

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        # timeout is SQLite's busy timeout: a second process waits for the lock instead of failing
        if not read_only:
            return sqlite3.connect(str(self.path), timeout=30)
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            # A WAL index needs its -shm file, which a reader cannot create in a read-only folder.
            # With no -wal file beside it, nothing is pending, so reading it as immutable is exact.
            if Path(f"{self.path}-wal").exists():
                raise
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=30)

    def _use_wal(self, patience: float = 30.0) -> None:
        """Switch the file to WAL. The switch needs the file to itself and, unlike other
        statements, SQLite does not wait on the busy timeout for it: processes opening the same
        index at once get "database is locked" at once. So wait here, as the busy timeout would."""
        deadline = time.monotonic() + patience
        delay = 0.01
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _open(self, meta: IndexMeta | None) -> IndexMeta:
        try:
            if meta is not None:
                self._use_wal()
                self.db.execute(
                    "PRAGMA synchronous=NORMAL"
                )  # with WAL: consistent after a crash, fast
            # the 2 MB default page cache makes every search re-read the table: 5x slower at 100k rows
            self.db.execute("PRAGMA cache_size=-131072")
            self.db.execute("PRAGMA mmap_size=268435456")
            stored = self._stored_meta()
            if stored is None and meta is not None:
                self._create(meta)
                stored = self._stored_meta()  # another process may have created it first
        except sqlite3.Error as exc:
            raise SearchIndexError(_explain_db_error(self.path, exc)) from exc
        if stored is None:
            raise SearchIndexError(
                f"{self.path}: empty index; build it with `sxai index DIR --db {self.path}`"
            )
        if meta is not None and stored != meta:
            raise SearchIndexError(self._mismatch(stored, meta))
        return stored

    def finish(self) -> None:
        """Leave a plain (rollback-journal) file, so read-only folders and readers can open it."""
        try:
            self.db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass  # another connection still uses the WAL: it will be checkpointed later

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stored_meta(self) -> IndexMeta | None:
        has = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has:
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key='index'").fetchone()
        if row is None:
            return None
        try:
            return IndexMeta.from_json(row[0])
        except (KeyError, TypeError, ValueError) as exc:
            raise SearchIndexError(f"{self.path}: corrupted index metadata ({exc})") from exc

    def _mismatch(self, stored: IndexMeta, meta: IndexMeta) -> str:
        return describe_mismatch(self.path, stored, meta, "--db")

    def _create(self, meta: IndexMeta) -> None:
        """The schema, in one IMMEDIATE transaction: two processes creating the same new index
        take turns (busy timeout), and the second finds everything there (IF NOT EXISTS, OR IGNORE)."""
        cols = [f"c{i} REAL NOT NULL" for i in range(len(meta.classes))]
        cols += [f"p{i} REAL NOT NULL" for i in range(len(meta.spaces))]
        cols += [f"a{i} REAL NOT NULL" for i in range(len(meta.spaces))]
        self.db.commit()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            # path is TEXT, or a BLOB of the raw bytes of a name that is not UTF-8 (_db_path)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, "
                "mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, predicted TEXT NOT NULL, "
                + ", ".join(cols)
                + ")"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS failures (path TEXT PRIMARY KEY, "
                "mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, error TEXT NOT NULL)"
            )
            # one index per searchable column: a range condition on any space is an index seek
            for i in range(len(meta.spaces)):
                self.db.execute(f"CREATE INDEX IF NOT EXISTS images_p{i} ON images (p{i})")
            self.db.execute("CREATE INDEX IF NOT EXISTS images_predicted ON images (predicted)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('index', ?)", (meta.to_json(),))
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    # ------------------------------------------------------------------------------ writing
    def known(self) -> dict[str, tuple[int, int]]:
        """path -> (mtime_ns, size) of every indexed or known-unreadable file."""
        rows = self.db.execute(
            "SELECT path, mtime_ns, size FROM images UNION ALL "
            "SELECT path, mtime_ns, size FROM failures"
        )
        return {_from_db(path): (mtime, size) for path, mtime, size in rows}

    def add(
        self,
        rows: Sequence[tuple[str, int, int]],
        class_probabilities: torch.Tensor,
        probabilities: torch.Tensor,
        activations: torch.Tensor,
    ) -> None:
        """Insert or replace rows ``(path, mtime_ns, size)`` with their scores (no commit)."""
        classes = list(self.meta.classes)
        n = len(classes) + 2 * len(self.meta.spaces)
        sql = (
            f"INSERT OR REPLACE INTO images (path, mtime_ns, size, predicted, "
            f"{', '.join([*self.class_columns.values(), *self.space_columns.values()])}, "
            f"{', '.join(f'a{i}' for i in range(len(self.meta.spaces)))}) "
            f"VALUES (?, ?, ?, ?, {', '.join('?' * n)})"
        )
        values = torch.cat(
            [class_probabilities.double(), probabilities.double(), activations.double()], 1
        )
        predicted = class_probabilities.argmax(dim=1).tolist()
        self.db.executemany(
            sql,
            [
                (_db_path(path), mtime, size, classes[p], *vals)
                for (path, mtime, size), p, vals in zip(rows, predicted, values.tolist())
            ],
        )
        self.db.executemany(
            "DELETE FROM failures WHERE path = ?", [(_db_path(r[0]),) for r in rows]
        )

    def add_failures(self, failures: Sequence[tuple[str, int, int, str]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
            [(_db_path(path), mtime, size, _text(why)) for path, mtime, size, why in failures],
        )
        self.db.executemany(
            "DELETE FROM images WHERE path = ?", [(_db_path(f[0]),) for f in failures]
        )

    def remove(self, paths: Sequence[str]) -> None:
        self.db.executemany("DELETE FROM images WHERE path = ?", [(_db_path(p),) for p in paths])
        self.db.executemany("DELETE FROM failures WHERE path = ?", [(_db_path(p),) for p in paths])

    def commit(self) -> None:
        self.db.commit()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM images").fetchone()[0])

    # ---------------------------------------------------------------------------- searching
    def _rows(self, sql: str, params: tuple) -> list[tuple]:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise SearchIndexError(_explain_db_error(self.path, exc)) from exc


def _stat(paths: Sequence[Path]) -> Iterator[tuple[Path, tuple[int, int] | None]]:
    for path in paths:
        try:
            st = path.stat()
            yield path, (st.st_mtime_ns, st.st_size)
        except OSError:
            yield path, None


@torch.inference_mode()
def index_folder(
    model: TraitModel,
    spaces: SpaceSet,
    folder: str | Path,
    db: str | Path,
    *,
    batch_size: int = 32,
    progress: bool = True,
    on_batch: Callable[[int, list[Path]], None] | None = None,
    precision: str = "fp32",
) -> IndexReport:
    """Score the images under ``folder`` that are new or changed into the index ``db``.

    One forward pass per batch gives the prediction and every space's P_s; each batch is committed
    before the next starts, so after an interruption a rerun scores only what is left.
    ``on_batch(batches_done, paths)`` is called after each commit. The caller checks that the
    spaces fit the model (``spaces.check_compatible(model)``). ``precision`` as in
    :func:`~sxai_plugins.models.inference.iter_outputs`.
    """
    folder = Path(folder).resolve()
    report = IndexReport()
    paths = list_images(folder)
    report.found = len(paths)
    with SearchIndex(db, IndexMeta.of(model, spaces)) as index:
        try:
            _index_into(
                index,
                model,
                spaces,
                paths,
                folder,
                report,
                batch_size,
                progress,
                on_batch,
                precision,
            )
        except sqlite3.Error as exc:
            raise SearchIndexError(_explain_db_error(index.path, exc)) from exc
        index.finish()
    return report


def _index_into(
    index: SearchIndex,
    model: TraitModel,
    spaces: SpaceSet,
    paths: list[Path],
    folder: Path,
    report: IndexReport,
    batch_size: int,
    progress: bool,
    on_batch: Callable[[int, list[Path]], None] | None,
    precision: str = "fp32",
) -> None:
    known = index.known()
    here = {str(p) for p in paths}
    prefix = str(folder) + os.sep
    gone = [p for p in known if p.startswith(prefix) and p not in here]
    if gone:
        index.remove(gone)
        index.commit()
    report.removed = len(gone)
    todo: list[Path] = []
    stats: dict[Path, tuple[int, int]] = {}
    vanished: list[tuple[Path, str]] = []
    for path, stat in _stat(paths):
        if stat is None:
            vanished.append((path, f"{path}: could not be read (removed while indexing?)"))
        elif known.get(str(path)) == stat:
            report.unchanged += 1
        else:
            todo.append(path)
            stats[path] = stat
    report.failed.extend((str(p), why) for p, why in vanished)
    failures: list[tuple[Path, str]] = []
    recorded = 0

    def flush_failures() -> None:
        nonlocal recorded
        new = failures[recorded:]
        index.add_failures([(str(p), *stats[p], why) for p, why in new])
        report.failed.extend((str(p), why) for p, why in new)
        recorded = len(failures)

    with (
        tqdm(total=len(todo), desc="indexing", unit="img", disable=not progress) as bar,
        spaces.pooling(model),
    ):
        for batch in iter_outputs(model, todo, batch_size, failures, precision=precision):
            out = batch.output
            activations = spaces.activations(out).cpu()
            index.add(
                [(str(p), *stats[p]) for p in batch.paths],
                out.logits.softmax(dim=1).cpu(),
                spaces.probabilities_from_activations(activations),
                activations,
            )
            flush_failures()
            index.commit()
            report.scored += len(batch.paths)
            report.batches += 1
            bar.update(report.scored + len(failures) - bar.n)  # unreadable files count as done
            if on_batch is not None:
                on_batch(report.batches, batch.paths)
        flush_failures()
        index.commit()
        bar.update(len(todo) - bar.n)
