"""Opening an index of either kind for searching, by what its path is."""

from __future__ import annotations

from pathlib import Path

from .index import Searchable, SearchIndex
from .parquet import ParquetIndex, is_parquet_path


def open_index(path: str | Path) -> Searchable:
    """A folder or a ``*.parquet`` file is a Parquet dataset (searched with DuckDB, see
    :mod:`sxai_plugins.search.parquet`); anything else an SQLite file (:class:`SearchIndex`).
    Both answer ``search(query, limit)`` with the same SQL and the same results."""
    if is_parquet_path(path):
        return ParquetIndex(path)
    return SearchIndex(path)
