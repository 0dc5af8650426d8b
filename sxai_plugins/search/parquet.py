"""The search index as a Parquet dataset, searched with DuckDB.

A dataset is a folder written by ``sxai index --engine ray`` (or :func:`export_sqlite`)::

    DATASET/meta.json             the IndexMeta (model, classes, spaces) its numbers depend on
    DATASET/images/*.parquet      path, mtime_ns, size, predicted, c0…, p0…, a0… (the SQLite
                                  index's ``images`` table: c = class probabilities, p = P_s,
                                  a = A_s, in the order of meta.json's classes and spaces)
    DATASET/failures/*.parquet    path, mtime_ns, size, error (unreadable files)

Each part file also carries the meta in its key-value metadata (``sxai.index``), so one part
file (``*.parquet``) can be searched on its own. Part files are written whole and renamed into
place, so a reader never sees half of one, and an interrupted writer leaves only whole parts.

Searching compiles the query with :mod:`sxai_plugins.search.query` into the same parameterised
SQL as the SQLite index; DuckDB runs it over the Parquet files, reading only the columns the
query needs (no full load). DuckDB and pyarrow are imported only here, and only when a Parquet
dataset is used (the ``ray`` extra installs them).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._utils.io import atomic_write
from .._utils.optional import require
from .index import (
    IndexMeta,
    Searchable,
    SearchIndex,
    SearchIndexError,
    describe_mismatch,
)

FORMAT = "sxai-parquet-index"
META_FILE = "meta.json"
IMAGES = "images"
FAILURES = "failures"
META_KEY = b"sxai.index"


def is_parquet_path(path: str | Path) -> bool:
    """A folder or a ``*.parquet`` file is searched as a Parquet dataset; anything else is SQLite."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() == ".parquet"


def _duckdb():
    return require("duckdb", "searching a Parquet dataset")


def _pyarrow():
    require("pyarrow", "a Parquet dataset")
    import pyarrow
    import pyarrow.compute
    import pyarrow.parquet

    return pyarrow


def images_schema(meta: IndexMeta):
    """The Arrow schema of the ``images`` part files (the SQLite table's columns and types)."""
    pa = _pyarrow()
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("predicted", pa.string(), nullable=False),
    ]
    fields += [pa.field(f"c{i}", pa.float64(), nullable=False) for i in range(len(meta.classes))]
    fields += [pa.field(f"p{i}", pa.float64(), nullable=False) for i in range(len(meta.spaces))]
    fields += [pa.field(f"a{i}", pa.float64(), nullable=False) for i in range(len(meta.spaces))]
    return pa.schema(fields, metadata={META_KEY: meta.to_json().encode()})


def failures_schema(meta: IndexMeta):
    pa = _pyarrow()
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("mtime_ns", pa.int64(), nullable=False),
            pa.field("size", pa.int64(), nullable=False),
            pa.field("error", pa.string(), nullable=False),
        ],
        metadata={META_KEY: meta.to_json().encode()},
    )


def _meta_json(meta: IndexMeta) -> str:
    return json.dumps({"format": FORMAT, **json.loads(meta.to_json())}, indent=1)


def _read_meta(path: Path) -> IndexMeta:
    """The meta of a dataset folder (``meta.json``) or of one part file (its metadata)."""
    try:
        if path.is_dir():
            meta_file = path / META_FILE
            if not meta_file.is_file():
                raise SearchIndexError(
                    f"{path}: a folder without {META_FILE}, so not an sxai Parquet dataset; "
                    "build one with `sxai index SOURCE --engine ray --out DATASET`, or pass "
                    "an SQLite index file"
                )
            data = json.loads(meta_file.read_text())
            if data.get("format") != FORMAT:
                raise SearchIndexError(f"{meta_file}: not an sxai Parquet dataset's {META_FILE}")
            return IndexMeta.from_json(json.dumps(data))
        if not path.is_file():
            raise SearchIndexError(
                f"{path}: no such Parquet file; build a dataset with "
                "`sxai index SOURCE --engine ray --out DATASET`"
            )
        pq = _pyarrow().parquet
        metadata = pq.read_schema(path).metadata or {}
        if META_KEY not in metadata:
            raise SearchIndexError(
                f"{path}: a Parquet file without sxai's index metadata ({META_KEY.decode()}); "
                "search a dataset written by `sxai index --engine ray`, or one of its part files"
            )
        return IndexMeta.from_json(metadata[META_KEY].decode())
    except SearchIndexError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SearchIndexError(f"{path}: unreadable sxai Parquet index ({exc})") from exc


def _parts(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.parquet") if p.is_file())


class ParquetIndex(Searchable):
    """A Parquet dataset (or one part file) opened for searching with DuckDB, read-only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        self.space_columns = {key: f"p{i}" for i, key in enumerate(self.meta.spaces)}
        self.class_columns = {name: f"c{i}" for i, name in enumerate(self.meta.classes)}
        duckdb = _duckdb()
        self._error = duckdb.Error
        self.files = _parts(self.path / IMAGES) if self.path.is_dir() else [str(self.path)]
        self.db = duckdb.connect(":memory:")
        try:
            if self.files:
                relation = self.db.read_parquet(self.files)
            else:  # a dataset with no readable image yet: an empty table of the right columns
                relation = self.db.from_arrow(images_schema(self.meta).empty_table())
            missing = [
                c
                for c in (
                    "path",
                    "predicted",
                    *self.class_columns.values(),
                    *self.space_columns.values(),
                )
                if c not in relation.columns
            ]
            if missing:
                raise SearchIndexError(
                    f"{self.path}: not an sxai Parquet index (columns {', '.join(missing)} missing)"
                )
            relation.create_view("images")
        except BaseException:
            self.db.close()
            raise

    def _rows(self, sql: str, params: tuple) -> list[tuple]:
        try:
            return self.db.execute(sql, list(params)).fetchall()
        except self._error as exc:
            raise SearchIndexError(
                f"{self.path}: the Parquet index could not be read ({exc})"
            ) from exc

    def __len__(self) -> int:
        return int(self._rows("SELECT count(*) FROM images", ())[0][0])

    def failures(self) -> list[tuple[str, str]]:
        """``(path, error)`` of every file recorded as unreadable, by path."""
        files = _parts(self.path / FAILURES) if self.path.is_dir() else []
        if not files:
            return []
        try:
            return self.db.read_parquet(files).order("path").select("path, error").fetchall()
        except self._error as exc:
            raise SearchIndexError(f"{self.path}: the failures could not be read ({exc})") from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ParquetIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ParquetWriter:
    """Writes a Parquet dataset: creates it with its meta, plans incremental runs, removes stale
    rows and adds whole part files. One writer at a time per dataset."""

    def __init__(self, path: str | Path, meta: IndexMeta) -> None:
        self.path = Path(path)
        self.meta = meta
        if self.path.exists() and not self.path.is_dir():
            raise SearchIndexError(
                f"{self.path}: is a file; --out needs a folder for the Parquet dataset"
            )
        if self.path.is_dir() and any(self.path.iterdir()):
            stored = _read_meta(self.path)
            if stored != meta:
                raise SearchIndexError(describe_mismatch(self.path, stored, meta, "--out"))
        else:
            atomic_write(self.path / META_FILE, lambda tmp: tmp.write_text(_meta_json(meta)))
        (self.path / IMAGES).mkdir(exist_ok=True)
        (self.path / FAILURES).mkdir(exist_ok=True)
        self.run = uuid.uuid4().hex[:12]
        self.parts = 0

    def _known(self, db) -> str:
        """A ``known`` view: (path, mtime_ns, size) of every indexed or known-unreadable file."""
        selects = []
        for folder in (IMAGES, FAILURES):
            files = _parts(self.path / folder)
            if files:
                name = f"known_{folder}"
                db.read_parquet(files).select("path, mtime_ns, size").create_view(name)
                selects.append(f"SELECT path, mtime_ns, size FROM {name}")
        if not selects:
            selects = [
                "SELECT ''::VARCHAR AS path, 0::BIGINT AS mtime_ns, 0::BIGINT AS size WHERE false"
            ]
        db.execute("CREATE VIEW known AS " + " UNION ALL ".join(selects))
        return "known"

    def plan(self, listing, prefix: str) -> tuple[Any, list[str]]:
        """``(todo, stale)`` for a listing (an Arrow table of path, mtime_ns, size).

        todo: the listed files not recorded with the same mtime and size (an anti-join), by path.
        stale: recorded paths under ``prefix`` whose file changed or is gone; their rows must go
        before the new ones are added (:meth:`remove`).
        """
        duckdb = _duckdb()
        db = duckdb.connect(":memory:")
        try:
            db.register("listing", listing)
            self._known(db)
            todo = db.sql(
                "SELECT l.path, l.mtime_ns, l.size FROM listing l "
                "ANTI JOIN known k ON l.path = k.path AND l.mtime_ns = k.mtime_ns AND l.size = k.size "
                "ORDER BY l.path"
            ).to_arrow_table()
            stale = db.execute(
                "SELECT DISTINCT k.path FROM known k "
                "ANTI JOIN listing l ON l.path = k.path AND l.mtime_ns = k.mtime_ns AND l.size = k.size "
                "WHERE starts_with(k.path, ?) ORDER BY k.path",
                [prefix],
            ).fetchall()
        finally:
            db.close()
        return todo, [row[0] for row in stale]

    def remove(self, paths: Sequence[str]) -> int:
        """Drop the rows of ``paths`` from every part file holding one (each part rewritten whole
        and renamed into place); the number of rows dropped."""
        if not paths:
            return 0
        pa = _pyarrow()
        pc, pq = pa.compute, pa.parquet
        gone = pa.array(list(paths), pa.string())
        dropped = 0
        for folder in (IMAGES, FAILURES):
            for file in _parts(self.path / folder):
                table = pq.read_table(file)
                hit = pc.is_in(table["path"], value_set=gone)
                n = pc.sum(hit).as_py() or 0
                if not n:
                    continue
                dropped += n
                kept = table.filter(pc.invert(hit))
                if kept.num_rows:
                    atomic_write(file, lambda tmp, kept=kept: pq.write_table(kept, tmp))
                else:
                    os.unlink(file)
        return dropped

    def add(self, images, failures=None) -> None:
        """Write ``images`` (and ``failures``), Arrow tables of :func:`images_schema` and
        :func:`failures_schema`, as new part files."""
        pq = _pyarrow().parquet
        for folder, table, schema in (
            (IMAGES, images, images_schema(self.meta)),
            (FAILURES, failures, failures_schema(self.meta)),
        ):
            if table is None or table.num_rows == 0:
                continue
            table = table.select(schema.names).cast(schema)
            name = f"part-{self.run}-{self.parts:05d}.parquet"
            atomic_write(self.path / folder / name, lambda tmp, t=table: pq.write_table(t, tmp))
        self.parts += 1


def export_sqlite(db: str | Path, out: str | Path) -> Path:
    """Write the SQLite index ``db`` as a Parquet dataset ``out`` (a new folder): the same rows,
    searchable with the same queries."""
    pa = _pyarrow()
    out = Path(out)
    if out.exists():
        raise SearchIndexError(f"{out} already exists; choose a new folder for the Parquet dataset")
    with SearchIndex(db) as index:
        meta = index.meta
        columns = images_schema(meta).names
        rows = index.db.execute(f"SELECT {', '.join(columns)} FROM images ORDER BY path").fetchall()
        failed = index.db.execute(
            "SELECT path, mtime_ns, size, error FROM failures ORDER BY path"
        ).fetchall()
    if any(isinstance(r[0], bytes) for r in [*rows, *failed]):
        raise SearchIndexError(
            f"{db}: holds file names that are not UTF-8; a Parquet dataset stores names as UTF-8 text"
        )
    writer = ParquetWriter(out, meta)
    writer.add(
        pa.Table.from_pylist([dict(zip(columns, r)) for r in rows], images_schema(meta)),
        pa.Table.from_pylist(
            [dict(zip(("path", "mtime_ns", "size", "error"), r)) for r in failed],
            failures_schema(meta),
        ),
    )
    return out
