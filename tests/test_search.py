"""Semantic sample search: the query language, the SQLite index (incremental, resumable), sheets."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from sxai_plugins import SxaiError, TraitModel
from sxai_plugins.search.index import (
    IndexMeta,
    SearchIndex,
    SearchIndexError,
    index_folder,
)
from sxai_plugins.search.query import MAX_DEPTH, QueryError, compile_query, parse_query
from sxai_plugins.spaces.space import SemanticSpace, SpaceSet
from sxai_plugins.viz.plots import contact_sheet

TRAITS = 12
SPACES = {"cat.eyes": "p0", "cat.legs": "p1", "dog.nose": "p2", "dog.eyes": "p3"}
CLASSES = ("cat", "dog")


def tiny_model(seed: int = 0) -> TraitModel:
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, TRAITS, 3), nn.ReLU()
    )
    return TraitModel(body, TRAITS, list(CLASSES), name="tiny", input_size=(3, 32, 32)).eval()


def tiny_spaces(model: TraitModel, keys=tuple(SPACES)) -> SpaceSet:
    g = torch.Generator().manual_seed(1)
    reference = model.traits(torch.rand(24, 3, 32, 32, generator=g)).detach()
    spaces = []
    for i, key in enumerate(keys):
        class_name, concept = key.split(".")
        idx = torch.tensor([i % TRAITS, (i + 5) % TRAITS])
        space = SemanticSpace(
            class_name,
            concept,
            model.name,
            model.fingerprint(),
            TRAITS,
            idx,
            torch.tensor([1.0, -0.7]) * (i + 1),
        )
        spaces.append(space.with_reference(reference @ space.weight_vector()))
    return SpaceSet(spaces)


def write_images(folder, n: int, seed: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (24 + i, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def count_forwards(model: TraitModel) -> list:
    calls: list = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


# ------------------------------------------------------------------------------- language
def test_two_conditions_compile_to_parameterised_sql():
    q = compile_query("dog.nose > 0.9 and cat.legs < 0.1", SPACES, CLASSES)
    assert q.where == "(p2 > ? AND p1 < ?)"
    assert q.params == (0.9, 0.1)
    assert q.spaces == ("dog.nose", "cat.legs")


@pytest.mark.parametrize(
    ("query", "where", "params"),
    [
        (
            "cat.eyes >= 0.5 or dog.eyes <= .5 and not cat.legs = 1",
            "(p0 >= ? OR (p3 <= ? AND (NOT p1 = ?)))",
            (0.5, 0.5, 1.0),
        ),
        (
            "(cat.eyes > 0.5 or dog.eyes > 0.5) and cat.legs != 0",
            "((p0 > ? OR p3 > ?) AND p1 != ?)",
            (0.5, 0.5, 0.0),
        ),
        ("predicted = dog", "predicted = ?", ("dog",)),
        (
            "predicted == \"cat\" AND NOT predicted <> 'cat'",
            "(predicted = ? AND (NOT predicted != ?))",
            ("cat", "cat"),
        ),
        ("0.2 < dog.eyes", "? < p3", (0.2,)),
        ("dog.eyes > cat.eyes", "p3 > p0", ()),
        ("cat.eyes > -1e-3", "p0 > ?", (-0.001,)),
        ("not not cat.eyes < 0.5", "(NOT (NOT p0 < ?))", (0.5,)),
    ],
)
def test_grammar(query, where, params):
    q = compile_query(query, SPACES, CLASSES)
    assert (q.where, q.params) == (where, params)


@pytest.mark.parametrize(
    ("query", "position", "fragment"),
    [
        ("dog.nose > ", 11, "end of query"),
        ("dog.nose > 0.9 and", 18, "end of query"),
        ("dog.nose 0.9", 9, "comparison operator"),
        ("(dog.nose > 0.9", 15, "')' to close the '(' at position 0"),
        ("dog.nose > 0.9)", 14, "'and', 'or'"),
        ("dog.nose @ 0.9", 9, "unexpected character '@'"),
        ("predicted = 'cat", 12, "unterminated string"),
        ("dog.noze > 0.9", 0, "unknown space 'dog.noze'"),
        ("nose > 0.9", 0, "unknown name 'nose'"),
        ("predicted = horse", 12, "unknown class 'horse' (classes: cat, dog)"),
        ("predicted > cat", 10, "= or != only"),
        ("predicted = 0.5", 12, "compared with a class name"),
        ("0.1 < 0.2", 0, "at least one space"),
        ("dog.eyes > 'cat'", 11, "only be compared with 'predicted'"),
        ("dog.eyes > cat", 11, "unknown name 'cat'"),
        ("", 0, "empty query"),
        ("and", 0, "expected a space name"),
    ],
)
def test_malformed_queries_point_at_the_offending_token(query, position, fragment):
    with pytest.raises(QueryError) as info:
        compile_query(query, SPACES, CLASSES)
    err = info.value
    assert isinstance(err, SxaiError)
    assert err.position == position
    assert fragment in str(err)
    message_lines = str(err).splitlines()
    assert message_lines[-2] == "  " + query
    assert message_lines[-1] == "  " + " " * position + "^"


@pytest.mark.parametrize(
    ("query", "order"),
    [
        ("dog.nose > 0.9 and cat.legs < 0.1", ("dog.nose", True)),
        ("cat.legs < 0.1 and dog.nose > 0.9", ("cat.legs", False)),
        ("0.5 > cat.eyes", ("cat.eyes", False)),
        ("0.5 <= cat.eyes", ("cat.eyes", True)),
        ("not cat.eyes > 0.5", ("cat.eyes", False)),
        ("not (predicted = cat or not dog.eyes < 0.2)", ("dog.eyes", False)),
        ("predicted = cat", None),
    ],
)
def test_matches_are_ordered_most_extreme_first_on_the_first_space(query, order):
    assert compile_query(query, SPACES, CLASSES).order == order


def test_unknown_space_lists_the_indexed_ones():
    with pytest.raises(QueryError, match="indexed spaces: cat.eyes, cat.legs, dog.eyes, dog.nose"):
        compile_query("cat.nose > 0.5", SPACES, CLASSES)


def test_deep_nesting_is_a_query_error_not_a_crash():
    with pytest.raises(QueryError, match="nested"):
        parse_query("(" * 5000 + "cat.eyes > 0" + ")" * 5000)
    with pytest.raises(QueryError, match="nested"):
        parse_query("not " * 5000 + "cat.eyes > 0")
    parse_query("(" * (MAX_DEPTH - 1) + "cat.eyes > 0" + ")" * (MAX_DEPTH - 1))
    with pytest.raises(QueryError, match="comparisons"):
        parse_query(" or ".join(["cat.eyes > 0"] * 1000))


# ------------------------------------------------------------------------------- fuzzing
@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "index.sqlite"
    meta = IndexMeta("tiny", "0" * 16, CLASSES, tuple(SPACES), "d" * 16)
    with SearchIndex(path, meta) as index:
        probs = torch.rand(20, len(SPACES), generator=torch.Generator().manual_seed(0))
        index.add(
            [(f"/x/{i}.png", 1, 1) for i in range(20)], torch.rand(20, 2).softmax(1), probs, probs
        )
        index.commit()
        yield index


PIECES = [
    "cat.eyes",
    "cat.legs",
    "dog.nose",
    "dog.eyes",
    "dog.tail",
    "predicted",
    "cat",
    "dog",
    "'dog'",
    '"cat"',
    "0.5",
    "-1",
    "1e3",
    ".2",
    "<",
    "<=",
    ">",
    ">=",
    "=",
    "==",
    "!=",
    "<>",
    "and",
    "or",
    "not",
    "AND",
    "(",
    ")",
    "'",
    '"',
    "@",
    ";",
    "--",
    "x",
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(st.text(max_size=60), st.lists(st.sampled_from(PIECES), max_size=14).map(" ".join))
)
def test_fuzz_only_query_errors_and_valid_sql(fuzz_db, query):
    try:
        compiled = compile_query(query, SPACES, CLASSES)
    except QueryError:
        return
    # whatever compiles must be valid SQL that runs on a real index
    fuzz_db.db.execute(
        f"SELECT count(*) FROM images WHERE {compiled.where}", compiled.params
    ).fetchone()


def test_values_cannot_inject_sql(tmp_path):
    evil = "x'); DROP TABLE images; --"
    meta = IndexMeta("tiny", "0" * 16, ("cat", evil), tuple(SPACES), "d" * 16)
    with SearchIndex(tmp_path / "i.sqlite", meta) as index:
        probs = torch.full((2, len(SPACES)), 0.5)
        index.add(
            [("/a.png", 1, 1), ("/b.png", 1, 1)],
            torch.tensor([[0.1, 0.9], [0.9, 0.1]]),
            probs,
            probs,
        )
        index.commit()
        result = index.search(f'predicted = "{evil}"')
        assert [m.path for m in result.matches] == ["/a.png"]
        assert len(index) == 2


# ------------------------------------------------------------------------------------ index
@pytest.fixture
def setup(tmp_path):
    model = tiny_model()
    spaces = tiny_spaces(model)
    folder = tmp_path / "images"
    paths = write_images(folder, 10)
    (folder / "broken.png").write_bytes(b"not a png at all")
    return model, spaces, folder, paths, tmp_path / "index.sqlite"


def test_index_scores_every_image_once_and_skips_bad_files(setup):
    model, spaces, folder, paths, db = setup
    calls = count_forwards(model)
    report = index_folder(model, spaces, folder, db, batch_size=4, progress=False)
    assert (report.found, report.scored, report.batches) == (11, 10, 3)
    assert len(calls) == 3  # one forward pass per batch: prediction and all spaces together
    assert [p for p, _why in report.failed] == [str((folder / "broken.png").resolve())]
    with SearchIndex(db) as index:
        assert len(index) == 10
        everything = index.search("predicted = cat or predicted = dog", limit=None)
    assert [m.path for m in everything.matches] == sorted(
        str(p.resolve()) for p in paths
    )  # by path
    # the stored numbers are those of a direct forward pass
    first = everything.matches[0]
    image = torch.from_numpy(
        np.asarray(
            Image.open(paths[0]).convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32
        )
        / 255
    ).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits, traits = model(image)
    expected = spaces.probabilities(traits)[0]
    assert list(first.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert first.predicted == CLASSES[int(logits.argmax())]
    assert sum(first.class_probabilities.values()) == pytest.approx(1.0)


def test_index_is_incremental(setup):
    model, spaces, folder, paths, db = setup
    index_folder(model, spaces, folder, db, batch_size=4, progress=False)
    calls = count_forwards(model)
    again = index_folder(model, spaces, folder, db, batch_size=4, progress=False)
    assert (again.scored, again.unchanged, len(calls)) == (0, 11, 0)  # the broken file is known too
    # a changed file (new content, size and mtime) is scored again; a removed one leaves the index
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(paths[3])
    os.utime(paths[3], ns=(1_000_000_000, 1_000_000_000))
    paths[5].unlink()
    third = index_folder(model, spaces, folder, db, batch_size=4, progress=False)
    assert (third.scored, third.unchanged, third.removed, len(calls)) == (1, 9, 1, 1)
    with SearchIndex(db) as index:
        assert len(index) == 9
        stored = index.db.execute(
            "SELECT mtime_ns FROM images WHERE path = ?", (str(paths[3].resolve()),)
        ).fetchone()
    assert stored == (1_000_000_000,)


class Interrupted(Exception):
    pass


def test_index_resumes_after_an_interruption_without_rescoring(setup):
    model, spaces, folder, paths, db = setup

    def stop_after_two(batches_done, _paths):
        if batches_done == 2:
            raise Interrupted

    calls = count_forwards(model)
    with pytest.raises(Interrupted):
        index_folder(
            model, spaces, folder, db, batch_size=3, progress=False, on_batch=stop_after_two
        )
    assert len(calls) == 2
    with SearchIndex(db) as index:
        assert len(index) == 6  # both finished batches were committed
        done = {row[0] for row in index.db.execute("SELECT path FROM images")}
    resumed = index_folder(model, spaces, folder, db, batch_size=3, progress=False)
    assert resumed.scored == 4 and resumed.unchanged == 7  # 6 images + the known broken file
    assert len(calls) == 2 + 2  # the 4 remaining images in 2 batches; nothing rescored
    with SearchIndex(db) as index:
        assert len(index) == 10
        assert done <= {row[0] for row in index.db.execute("SELECT path FROM images")}


def test_index_refuses_other_spaces_or_model(setup):
    model, spaces, folder, _paths, db = setup
    index_folder(model, spaces, folder, db, batch_size=8, progress=False)
    with pytest.raises(SearchIndexError, match="spaces"):
        index_folder(
            model, tiny_spaces(model, ("cat.eyes", "dog.eyes")), folder, db, progress=False
        )
    other = tiny_model(seed=3)
    with pytest.raises(SearchIndexError, match="model"):
        index_folder(other, tiny_spaces(other), folder, db, progress=False)


def test_opening_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(SearchIndexError, match="no such index"):
        SearchIndex(tmp_path / "nothing.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SearchIndexError, match="not an sxai index, or a damaged one"):
        SearchIndex(junk)
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(SearchIndexError, match="empty index"):
        SearchIndex(empty)


def test_search_limit_total_and_contact_sheet(setup, tmp_path):
    model, spaces, folder, paths, db = setup
    index_folder(model, spaces, folder, db, batch_size=8, progress=False)
    with SearchIndex(db) as index:
        probs = {m.path: m.probabilities for m in index.search("cat.eyes >= 0", limit=None).matches}
        threshold = float(np.median([p["dog.nose"] for p in probs.values()]))
        result = index.search(f"dog.nose > {threshold!r}", limit=2)
    # most extreme first on the query's space, then by path
    expected = sorted(
        (p for p, v in probs.items() if v["dog.nose"] > threshold),
        key=lambda p: (-probs[p]["dog.nose"], p),
    )
    assert result.total == len(expected) and result.total >= 3
    assert [m.path for m in result.matches] == expected[:2]
    assert result.spaces == ("dog.nose",)
    paths[0].unlink()  # a match whose file is gone shows as a grey tile, not a crash
    with SearchIndex(db) as index:
        everything = index.search("cat.eyes >= 0", limit=None).matches
    sheet = contact_sheet(everything, tmp_path / "sheet.png", ["dog.nose"], thumb=64, columns=4)
    with Image.open(sheet) as image:
        assert image.format == "PNG"
        assert image.width == 4 * (64 + 8) + 8
        assert image.height == 3 * (64 + 12 * 3 + 4 + 8) + 8  # 10 matches in rows of 4
    with pytest.raises(SearchIndexError, match="no matches"):
        contact_sheet([], tmp_path / "none.png")


# ------------------------------------------------------------------------------------ robustness
def test_a_file_name_that_is_not_utf8_is_indexed_found_and_rerun(setup):
    model, spaces, folder, _paths, db = setup
    odd = folder / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(odd)
    (folder / os.fsdecode(b"bad\xff.png")).write_bytes(b"junk")
    first = index_folder(model, spaces, folder, db, batch_size=4, progress=False)
    assert first.scored == 11 and len(first.failed) == 2
    again = index_folder(model, spaces, folder, db, batch_size=4, progress=False)
    assert (again.scored, again.unchanged, again.failed) == (0, 13, [])
    with SearchIndex(db) as index:
        paths = [
            m.path for m in index.search("predicted = cat or predicted = dog", limit=None).matches
        ]
    assert str(odd.resolve()) in paths
    assert Path(next(p for p in paths if "caf" in p)).is_file()


def _open_and_add(db, meta, barrier, row, results) -> None:
    try:
        barrier.wait(timeout=30)
        with SearchIndex(db, meta) as index:
            probs = torch.full((1, len(meta.spaces)), 0.5)
            index.add([(f"/img{row}.png", 1, 1)], torch.tensor([[0.3, 0.7]]), probs, probs)
            index.commit()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_creating_the_same_new_index_at_once_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    meta = IndexMeta("tiny", "0" * 16, CLASSES, tuple(SPACES), "d" * 16)
    db = tmp_path / "fresh.sqlite"
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    workers = [
        ctx.Process(target=_open_and_add, args=(db, meta, barrier, i, results)) for i in range(n)
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert outcomes == ["ok"] * n
    with SearchIndex(db) as index:
        assert len(index) == n and index.meta == meta


def _search_paths(db) -> list[str]:
    with SearchIndex(db) as index:
        return sorted(m.path for m in index.search("cat.eyes >= 0", limit=None).matches)


def test_a_read_only_index_in_a_read_only_folder_can_be_searched(setup, as_nobody, open_tmp_path):
    model, spaces, folder, _paths, _db = setup
    db = open_tmp_path / "index.sqlite"
    index_folder(model, spaces, folder, db, batch_size=8, progress=False)
    expected = _search_paths(db)
    before = (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(open_tmp_path)))
    db.chmod(0o444)
    open_tmp_path.chmod(0o555)
    assert as_nobody(_search_paths, db) == ("ok", expected) and len(expected) == 10
    assert (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(open_tmp_path))) == before


def test_a_damaged_index_is_a_clear_error_naming_the_file(setup, capsys):
    model, spaces, folder, _paths, db = setup
    index_folder(model, spaces, folder, db, batch_size=8, progress=False)
    with sqlite3.connect(db) as con:
        page = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images'").fetchone()[0]
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(db, "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(b"\xa5" * page_size)
    with pytest.raises(SearchIndexError, match=rf"{db}: not an sxai index, or a damaged one"):
        index_folder(model, spaces, folder, db, batch_size=8, progress=False)
    from sxai_plugins.cli.main import main

    assert main(["search", "cat.eyes > 0", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"sxai: error: {db}: not an sxai index, or a damaged one")
        and err.count("\n") == 1
    )
