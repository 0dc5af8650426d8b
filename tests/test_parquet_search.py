"""Search over a Parquet dataset with DuckDB: the same queries, the same SQL, the same answers as
the SQLite index (no Ray needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("duckdb")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
from test_search import CLASSES, SPACES, tiny_model, tiny_spaces, write_images  # noqa: E402

from sxai_plugins.cli.main import main  # noqa: E402
from sxai_plugins.search.db import open_index  # noqa: E402
from sxai_plugins.search.index import (  # noqa: E402
    IndexMeta,
    SearchIndex,
    SearchIndexError,
    index_folder,
)
from sxai_plugins.search.parquet import (  # noqa: E402
    ParquetIndex,
    ParquetWriter,
    export_sqlite,
    images_schema,
)

LEVELS = [0.0, 0.25, 0.5, 0.75, 1.0]  # quantised P_s: many ties, so the order by path matters


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same rows as an SQLite index and as a Parquet dataset: 40 real images of a tiny model,
    plus 200 rows of quantised probabilities, and one unreadable file."""
    root = tmp_path_factory.mktemp("both")
    model = tiny_model()
    spaces = tiny_spaces(model)
    write_images(root / "images", 40)
    (root / "images" / "broken.png").write_bytes(b"not a png")
    db = root / "index.sqlite"
    index_folder(model, spaces, root / "images", db, batch_size=16, progress=False)
    g = torch.Generator().manual_seed(7)
    with SearchIndex(db, IndexMeta.of(model, spaces)) as index:
        levels = torch.tensor(LEVELS, dtype=torch.float64)
        probs = levels[torch.randint(0, len(LEVELS), (200, len(SPACES)), generator=g)]
        classes = torch.rand(200, 2, generator=g, dtype=torch.float64).softmax(1)
        index.add(
            [(f"/synthetic/{i:03d}.png", i, 1000 + i) for i in range(200)], classes, probs, probs
        )
        index.commit()
    out = export_sqlite(db, root / "dataset")
    return db, out


# the tiny model's spaces: SPACES' keys; its classes: CLASSES
space_names = st.sampled_from(sorted(SPACES))
numbers = st.one_of(
    st.sampled_from(LEVELS), st.floats(-0.1, 1.1, allow_nan=False).map(lambda x: round(x, 4))
)
ops = st.sampled_from(["<", "<=", ">", ">=", "=", "==", "!=", "<>"])
comparison = st.one_of(
    st.tuples(space_names, ops, numbers).map(lambda t: f"{t[0]} {t[1]} {t[2]!r}"),
    st.tuples(numbers, ops, space_names).map(lambda t: f"{t[0]!r} {t[1]} {t[2]}"),
    st.tuples(space_names, ops, space_names).map(" ".join),
    st.tuples(st.sampled_from(["=", "!=", "=="]), st.sampled_from(CLASSES)).map(
        lambda t: f"predicted {t[0]} {t[1]}"
    ),
)
queries = st.recursive(
    comparison,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or", "AND", "Or"]), inner).map(" ".join),
        inner.map(lambda q: f"not {q}"),
        inner.map(lambda q: f"({q})"),
    ),
    max_leaves=6,
)


def _rows(result):
    return [
        (m.path, m.predicted, m.class_probabilities, m.probabilities) for m in result.matches
    ], result.total


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=queries, limit=st.one_of(st.none(), st.integers(0, 12)))
def test_random_queries_match_identically_on_sqlite_and_parquet(both, query, limit):
    db, dataset = both
    with SearchIndex(db) as sqlite_index, ParquetIndex(dataset) as parquet_index:
        expected = _rows(sqlite_index.search(query, limit=limit))
        assert _rows(parquet_index.search(query, limit=limit)) == expected


def test_the_dataset_holds_the_same_rows_and_failures(both):
    db, dataset = both
    with SearchIndex(db) as sqlite_index, ParquetIndex(dataset) as parquet_index:
        assert len(parquet_index) == len(sqlite_index) == 240
        assert parquet_index.meta == sqlite_index.meta
        failed = sqlite_index.db.execute("SELECT path, error FROM failures").fetchall()
        assert parquet_index.failures() == failed and len(failed) == 1
    schema = pq.read_schema(next((dataset / "images").glob("*.parquet")))
    assert schema.names[:4] == ["path", "mtime_ns", "size", "predicted"]
    assert schema.remove_metadata() == images_schema(parquet_index.meta).remove_metadata()


def test_the_command_prints_the_same_json_and_sheet_for_both_kinds(both, capsys, tmp_path):
    from PIL import Image

    db, dataset = both
    outputs, sheets = [], []
    for n, where in enumerate((db, dataset)):
        sheets.append(tmp_path / f"sheet{n}.png")
        query = ["search", "dog.nose > 0.5 and cat.legs < 0.5", "--db", str(where), "--json"]
        code = main([*query, "--limit", "7", "--sheet", str(sheets[-1])])
        outputs.append((code, json.loads(capsys.readouterr().out)))
    assert np.array_equal(np.asarray(Image.open(sheets[0])), np.asarray(Image.open(sheets[1])))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == 0 and len(outputs[0][1]["matches"]) == 7


def test_one_part_file_is_searchable_on_its_own(both):
    db, dataset = both
    (part,) = (dataset / "images").glob("*.parquet")
    with open_index(part) as index, SearchIndex(db) as sqlite_index:
        assert isinstance(index, ParquetIndex)
        q = "cat.eyes >= 0.5 or predicted = dog"
        assert _rows(index.search(q, limit=None)) == _rows(sqlite_index.search(q, limit=None))


def test_what_is_not_an_index_is_a_clear_error(tmp_path, both):
    with pytest.raises(SearchIndexError, match="without meta.json, so not an sxai Parquet dataset"):
        open_index(tmp_path)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    with pytest.raises(SearchIndexError, match="without sxai's index metadata"):
        open_index(plain)
    with pytest.raises(SearchIndexError, match="no such Parquet file"):
        open_index(tmp_path / "missing.parquet")
    with pytest.raises(SearchIndexError, match="no such index"):
        open_index(tmp_path / "missing.db")
    # a query error names the token, as for SQLite
    _db, dataset = both
    assert main(["search", "dog.noze > 1", "--db", str(dataset)]) == 2


def test_writer_plans_an_anti_join_and_drops_stale_rows(tmp_path):
    model = tiny_model()
    meta = IndexMeta.of(model, tiny_spaces(model))
    writer = ParquetWriter(tmp_path / "ds", meta)
    n = 6
    row = {f"c{i}": [0.5] * n for i in range(2)} | {
        f"{k}{i}": list(np.linspace(0, 1, n)) for k in "pa" for i in range(len(SPACES))
    }
    images = pa.table(
        {"path": [f"/d/{i}.png" for i in range(n)], "mtime_ns": [1] * n, "size": [10] * n}
        | {"predicted": ["cat"] * n}
        | row
    )
    failures = pa.table({"path": ["/d/bad.png"], "mtime_ns": [1], "size": [3], "error": ["junk"]})
    writer.add(images, failures)
    listing = pa.table(
        {
            "path": ["/d/0.png", "/d/1.png", "/d/2.png", "/d/bad.png", "/d/new.png", "/e/x.png"],
            "mtime_ns": [1, 2, 1, 1, 1, 1],  # 1.png changed
            "size": [10, 10, 10, 3, 5, 5],
        }
    )
    todo, stale = writer.plan(listing, "/d/")
    assert todo.column("path").to_pylist() == ["/d/1.png", "/d/new.png", "/e/x.png"]
    assert stale == ["/d/1.png", "/d/3.png", "/d/4.png", "/d/5.png"]  # changed or gone
    assert writer.remove(stale) == 4
    with ParquetIndex(tmp_path / "ds") as index:
        assert len(index) == 2 and index.failures() == [("/d/bad.png", "junk")]
    # the same model and spaces reopen the dataset; others are refused, naming what differs
    ParquetWriter(tmp_path / "ds", meta)
    other = tiny_model(seed=3)
    with pytest.raises(SearchIndexError, match="model tiny"):
        ParquetWriter(tmp_path / "ds", IndexMeta.of(other, tiny_spaces(other)))


def test_a_missing_optional_package_says_how_to_install_it(monkeypatch, both, tmp_path, capsys):
    import sys

    from sxai_plugins._utils.optional import MissingDependencyError

    _db, dataset = both
    monkeypatch.setitem(sys.modules, "duckdb", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r'needs duckdb.*pip install "sxai\[ray\]"'):
        ParquetIndex(dataset)
    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "images").mkdir()
    assert (
        main(["index", str(tmp_path / "images"), "--engine", "ray", "--out", str(tmp_path / "d")])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        'sxai: error: --engine ray needs ray, which is not installed: pip install "sxai[ray]"'
        in err
    )
