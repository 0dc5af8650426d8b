"""``sxai index`` and ``sxai search``: semantic sample search over a SQLite index."""

from __future__ import annotations

import argparse
import sys

from .._utils.errors import SxaiError
from .._utils.io import check_output_file, check_output_folder, dumps_json, rounded
from ._args import (
    add_engine_args,
    add_model_args,
    add_space_args,
    check_engine_args,
    model_from_args,
    non_negative_int,
)


# -------------------------------------------------------------------------------------- index
def _index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="score a folder of images into a search index (SQLite, or Parquet with --engine ray)",
        description="Score every image under SOURCE (prediction and every space's A_s and P_s, one "
        "forward pass per batch) into the SQLite file --db. Incremental: files already indexed "
        "with the same mtime and size are skipped; after an interruption, run it again to "
        "finish. Unreadable files are reported and recorded, and retried once they change. "
        "With --engine ray, a Ray Data pipeline (decoding tasks, model actors) writes a Parquet "
        "dataset --out instead, incremental the same way; SOURCE may then also be a "
        "pyarrow-filesystem URI (s3://bucket/prefix, gs://…). `sxai search` reads both kinds.",
    )
    p.add_argument(
        "folder",
        metavar="SOURCE",
        help="folder of images (searched recursively); with --engine ray also a URI",
    )
    p.add_argument("--db", help="the SQLite index file (created if missing); local engine")
    p.add_argument(
        "--out",
        metavar="DATASET_DIR",
        help="the Parquet dataset folder (created if missing); --engine ray",
    )
    add_engine_args(p, "decode in CPU tasks and score in model actors")
    add_model_args(p)
    add_space_args(p, batch_size=True)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="forward-pass precision: fp32 (default), or bf16/fp16 autocast on a CUDA device",
    )
    p.set_defaults(handler=_run_index)


def _run_index(args: argparse.Namespace) -> int:
    from ..explain.trust import load_space_set

    check_engine_args(args)
    if args.engine == "ray":
        if args.db or not args.out:
            raise SxaiError(
                "--engine ray writes a Parquet dataset: pass --out DATASET_DIR (not --db); "
                "`sxai search --db DATASET_DIR` searches it"
            )
        if args.precision != "fp32":
            raise SxaiError("--engine ray scores in fp32; drop --precision")
        from ..scale._ray import ray_module

        ray_module()  # says how to install Ray before the model loads
        check_output_folder(args.out, "--out")
        target = args.out
    else:
        if args.out or not args.db:
            raise SxaiError(
                "the local engine writes an SQLite index: pass --db FILE (--out DATASET_DIR is "
                "for --engine ray)"
            )
        check_output_file(args.db, "--db")
        target = args.db
    model = model_from_args(args)
    spaces = load_space_set(args.spaces, model, force=args.force)
    if args.engine == "ray":
        from ..scale.ray_index import index_with_ray

        report = index_with_ray(
            model,
            spaces,
            args.folder,
            args.out,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            num_gpus_per_worker=args.num_gpus_per_worker,
            address=args.address,
            progress=not args.quiet,
        )
    else:
        from ..search.index import index_folder

        report = index_folder(
            model,
            spaces,
            args.folder,
            args.db,
            batch_size=args.batch_size,
            progress=not args.quiet,
            precision=args.precision,
        )
    for _path, why in report.failed:
        print(f"skipped: {why}", file=sys.stderr)
    print(
        f"{target}: {report.found} images found, {report.scored} scored, {report.unchanged} "
        f"unchanged, {len(report.failed)} unreadable, {report.removed} removed"
    )
    return 0


# ------------------------------------------------------------------------------------- search
def _search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="find indexed images by semantic probabilities",
        description='Find images in an index built by `sxai index`, e.g. "dog.nose > 0.9 and '
        'cat.legs < 0.1" or "predicted = cat and not (cat.eyes < 0.5)". Names: indexed '
        "spaces class.concept (their P_s) and predicted (the predicted class, compared "
        "with = or != to a class name); operators < <= > >= = == != <>; and, or, not, "
        "parentheses. Matches come most extreme first on the query's first space (descending "
        "for > >= = !=, ascending for < <=), then by path; a query without a space is "
        "ordered by path. The exit status is 1 when "
        'nothing matches. With --json, print {"query", "total", "matches": [{"path", "predicted", "class_probabilities", '
        '"probabilities": {space: P_s}}]}.',
    )
    p.add_argument("query", help="the search query (quote it in the shell)")
    p.add_argument(
        "--db",
        required=True,
        help="an index written by `sxai index`: an SQLite file, or a Parquet dataset (a folder, "
        "or one *.parquet part file) written with --engine ray, searched with DuckDB",
    )
    p.add_argument(
        "--limit", type=non_negative_int, default=50, help="matches shown (default 50; 0: all)"
    )
    p.add_argument("--sheet", help="write a contact sheet PNG of the matches shown")
    p.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    p.set_defaults(handler=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from ..search.db import open_index
    from ..viz.plots import contact_sheet

    if args.sheet:
        check_output_file(args.sheet, "--sheet")
    with open_index(args.db) as index:
        result = index.search(args.query, limit=args.limit or None)
    if args.json:
        print(
            dumps_json(
                {
                    "query": result.query,
                    "total": result.total,
                    "matches": [
                        {
                            "path": m.path,
                            "predicted": m.predicted,
                            "class_probabilities": {
                                k: rounded(v) for k, v in m.class_probabilities.items()
                            },
                            "probabilities": {k: rounded(v) for k, v in m.probabilities.items()},
                        }
                        for m in result.matches
                    ],
                }
            )
        )
    else:
        for m in result.matches:
            shown = "  ".join(f"{k} {m.probabilities[k]:.3f}" for k in result.spaces)
            print(f"{m.path}  {m.predicted}  {shown}".rstrip())
        print(f"{len(result.matches)} shown of {result.total} matches")
    if args.sheet:
        if result.matches:
            contact_sheet(result.matches, args.sheet, result.spaces)
            print(f"contact sheet: {args.sheet}", file=sys.stderr if args.json else sys.stdout)
        else:
            print("no matches: no contact sheet written", file=sys.stderr)
    return 0 if result.matches else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _index(subparsers)
    _search(subparsers)
