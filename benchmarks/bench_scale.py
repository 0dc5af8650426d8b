"""Benchmark the scale-out engine (``--engine ray``) and search over Parquet with DuckDB.

1. Indexing throughput on this machine: ``index_with_ray`` (Ray Data: decoding tasks, one
   scoring actor, Parquet written by the driver) against the local engine (``index_folder``,
   SQLite) on the same ``--n`` images, alternated, best of ``--repeats``. Ray is started once
   before (``ray.init(num_cpus=CPUS)``, timed apart): a cluster is up before jobs are sent to
   it. Each Ray run still starts its actor and its workers (torch import, model unpickling).
   Target: ratio >= 0.8.
2. Search over ``--rows`` synthetic rows (8 spaces): DuckDB over a Parquet dataset against the
   SQLite index holding the same rows, for the two-condition query with ``--limit 50`` (what
   ``sxai search`` runs: the first matches and the total), median of ``--search-repeats`` on an
   open index, and once from a fresh open. Target: DuckDB < 1 s.

Prints one JSON object, then a table. Example::

    python benchmarks/bench_scale.py --n 500 --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SXAI_SHARED", ROOT.parent / "shared"))
DEFAULT_FOLDER = SHARED / "data" / "dogs-vs-cats" / "unlabeled"
QUERY = "dog.nose > 0.9 and cat.legs < 0.1"
KEYS = [f"{c}.{k}" for c in ("cat", "dog") for k in ("eyes", "nose", "ears", "legs")]


# ------------------------------------------------------------------------------------ indexing
def bench_indexing(args: argparse.Namespace, n: int, repeats: int) -> dict:
    import ray
    import torch

    from sxai_plugins import create_model, load_space_set
    from sxai_plugins.data.images import list_images
    from sxai_plugins.scale.ray_index import index_with_ray
    from sxai_plugins.search.index import index_folder

    model = create_model(args.backbone)
    spaces = load_space_set([], model)
    paths = list_images(args.folder)[:n]
    if len(paths) < n:
        sys.exit(f"{args.folder}: only {len(paths)} images, asked for {n}")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    init_s = time.perf_counter() - t0
    local, remote = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "images"
            folder.mkdir()
            for i, path in enumerate(paths):  # links: the same files, a folder holding just them
                (folder / f"{i:05d}{path.suffix}").symlink_to(path.resolve())
            for rep in range(repeats):  # alternate, best of: the machine is shared
                t0 = time.perf_counter()
                report = index_folder(
                    model,
                    spaces,
                    folder,
                    Path(tmp) / f"index{rep}.sqlite",
                    batch_size=args.batch_size,
                    progress=False,
                )
                local.append(time.perf_counter() - t0)
                assert report.scored == n, report
                t0 = time.perf_counter()
                report = index_with_ray(
                    model,
                    spaces,
                    folder,
                    Path(tmp) / f"dataset{rep}",
                    batch_size=args.batch_size,
                    progress=False,
                )
                remote.append(time.perf_counter() - t0)
                assert report.scored == n, report
    finally:
        ray.shutdown()
    return {
        "backbone": model.name,
        "images": n,
        "batch_size": args.batch_size,
        "ray_cpus": args.cpus,
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "ray_init_s": init_s,
        "local_s": local,
        "ray_s": remote,
        "local_images_per_s": n / min(local),
        "ray_images_per_s": n / min(remote),
        "ratio": min(local) / min(remote),
        "ratio_with_ray_init": min(local) / (min(remote) + init_s),
        # what the Ray run costs beyond the local one: the job's start (actor process, imports,
        # model unpickling, Ray Data's executor), paid once per job whatever its size
        "ray_extra_s": min(remote) - min(local),
        "target_ratio": 0.8,
    }


# -------------------------------------------------------------------------------------- search
def make_rows(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """The same synthetic rows as a Parquet dataset (DuckDB writes it, no Python loop) and as an
    SQLite index (filled from that Parquet by the sqlite3 module, in chunks)."""
    import duckdb
    import pyarrow.parquet as pq

    from sxai_plugins.search.index import IndexMeta, SearchIndex
    from sxai_plugins.search.parquet import IMAGES, META_FILE, META_KEY, _meta_json

    meta = IndexMeta("synthetic", "0" * 16, ("cat", "dog"), tuple(KEYS), "0" * 16)
    dataset = tmp / "dataset"
    (dataset / IMAGES).mkdir(parents=True)
    (dataset / "failures").mkdir()
    (dataset / META_FILE).write_text(_meta_json(meta))
    part = dataset / IMAGES / "part-synthetic-00000.parquet"
    s = len(KEYS)
    cols = ", ".join(
        ["printf('/photos/%08d.jpg', i) AS path", "0::BIGINT AS mtime_ns", "0::BIGINT AS size"]
        + ["CASE WHEN c0 >= 0.5 THEN 'cat' ELSE 'dog' END AS predicted", "c0", "1 - c0 AS c1"]
        + [f"random() AS p{k}" for k in range(s)]
        + [f"random() * 4 - 2 AS a{k}" for k in range(s)]
    )
    db = duckdb.connect()
    db.execute(f"SELECT setseed({args.seed})")
    t0 = time.perf_counter()
    db.execute(
        f"COPY (SELECT {cols} FROM (SELECT i, random() AS c0 FROM range({args.rows}) t(i))) "
        f"TO '{part}' (FORMAT parquet, ROW_GROUP_SIZE 122880, "
        f"KV_METADATA {{'{META_KEY.decode()}': '{meta.to_json()}'}})"
    )
    parquet_s = time.perf_counter() - t0
    db.close()
    sqlite = tmp / "index.sqlite"
    t0 = time.perf_counter()
    with SearchIndex(sqlite, meta) as index:
        # bulk load without the per-space indexes, then build them (as fast as SQLite gets)
        made = index.db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        for name, _create in made:
            index.db.execute(f"DROP INDEX {name}")
        names = pq.read_schema(part).names
        sql = f"INSERT INTO images ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        for batch in pq.ParquetFile(part).iter_batches(batch_size=200_000):
            index.db.executemany(sql, zip(*(c.to_pylist() for c in batch.columns)))
            index.commit()
        for _name, create in made:
            index.db.execute(create)
        index.commit()
        index.finish()
    sqlite_s = time.perf_counter() - t0
    return dataset, sqlite, parquet_s, sqlite_s


def time_search(open_index, path: Path, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    with open_index(path) as index:
        first = index.search(QUERY, limit=args.limit)
    fresh = time.perf_counter() - t0
    runs = []
    with open_index(path) as index:
        for _ in range(args.search_repeats):
            t0 = time.perf_counter()
            result = index.search(QUERY, limit=args.limit)
            runs.append(time.perf_counter() - t0)
    assert [m.path for m in result.matches] == [m.path for m in first.matches]
    runs.sort()
    return {
        "median_s": statistics.median(runs),
        "max_s": runs[-1],
        "fresh_open_s": fresh,
        "matches": first.total,
        "first": [m.path for m in first.matches[:3]],
    }


def bench_search(args: argparse.Namespace) -> dict:
    from sxai_plugins.search.index import SearchIndex
    from sxai_plugins.search.parquet import ParquetIndex

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        dataset, sqlite, parquet_s, sqlite_s = make_rows(args, Path(tmp))
        size = sum(p.stat().st_size for p in dataset.rglob("*.parquet"))
        duck = time_search(ParquetIndex, dataset, args)
        lite = time_search(SearchIndex, sqlite, args)
        assert duck["matches"] == lite["matches"] and duck["first"] == lite["first"]
        shutil.rmtree(dataset)
    return {
        "rows": args.rows,
        "spaces": len(KEYS),
        "query": QUERY,
        "limit": args.limit,
        "parquet_bytes": size,
        "build_parquet_s": parquet_s,
        "build_sqlite_s": sqlite_s,
        "duckdb": duck,
        "sqlite": lite,
        "target_s": 1.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    p.add_argument("--n", type=int, default=200, help="images to index (the README: 500)")
    p.add_argument(
        "--n-large",
        type=int,
        default=0,
        help="also one side-by-side pair on this many images (the README: 1800 of --folder "
        "…/train), to show the per-job start being paid once",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs given to Ray")
    p.add_argument("--backbone", default="lite0_catdog")
    p.add_argument("--rows", type=int, default=1_000_000, help="(the README: 10,000,000)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--search-repeats", type=int, default=5)
    p.add_argument("--seed", type=float, default=0.5, help="DuckDB setseed, in [-1, 1]")
    p.add_argument("--tmp", default=None, help="folder for the synthetic dataset")
    p.add_argument("--skip-indexing", action="store_true")
    p.add_argument("--skip-search", action="store_true")
    args = p.parse_args()
    result = {}
    if not args.skip_search:
        result["search"] = bench_search(args)
    if not args.skip_indexing:
        result["indexing"] = bench_indexing(args, args.n, args.repeats)
        if args.n_large:
            result["indexing_large"] = bench_indexing(args, args.n_large, 1)
    print(json.dumps(result, indent=2))
    rows = []
    if "search" in result:
        s = result["search"]
        rows += [
            (
                f"DuckDB over Parquet, {s['rows']:,} rows, median",
                f"{s['duckdb']['median_s']:.3f} s",
                "< 1 s",
            ),
            ("DuckDB, fresh open + search", f"{s['duckdb']['fresh_open_s']:.3f} s", ""),
            ("SQLite, same rows, median", f"{s['sqlite']['median_s']:.3f} s", ""),
            ("SQLite, fresh open + search", f"{s['sqlite']['fresh_open_s']:.3f} s", ""),
            ("matches", f"{s['duckdb']['matches']:,}", ""),
        ]
    if "indexing" in result:
        ix = result["indexing"]
        rows += [
            (
                f"local engine ({ix['backbone']}, {ix['images']} img)",
                f"{ix['local_images_per_s']:.1f} img/s",
                "",
            ),
            ("--engine ray", f"{ix['ray_images_per_s']:.1f} img/s", ""),
            ("ray / local", f"{ix['ratio']:.2f}", ">= 0.8"),
            ("ray / local, ray.init counted", f"{ix['ratio_with_ray_init']:.2f}", ""),
            ("ray's extra time per job", f"{ix['ray_extra_s']:.1f} s", ""),
        ]
    if "indexing_large" in result:
        ix = result["indexing_large"]
        rows += [
            (f"local engine, {ix['images']} img", f"{ix['local_images_per_s']:.1f} img/s", ""),
            (f"--engine ray, {ix['images']} img", f"{ix['ray_images_per_s']:.1f} img/s", ""),
            (f"ray / local, {ix['images']} img", f"{ix['ratio']:.2f}", ""),
            (f"ray's extra time, {ix['images']} img", f"{ix['ray_extra_s']:.1f} s", ""),
        ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")


if __name__ == "__main__":
    main()
