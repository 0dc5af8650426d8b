"""CLI commands ``explain``, ``index`` and ``search`` (registered on import by ``sxai_plugins.cli``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._utils.io import check_output_file, check_output_folder, dumps_json
from .main import (
    add_model_args,
    add_space_args,
    command,
    model_from_args,
    non_negative_int,
    positive_int,
)

EXPLAIN_JSON = (
    "With --json, print a list with one record per readable image: "
    '{"path": str, "predicted": class, "probabilities": {class: p}, "sentence": str, '
    '"radar": PNG path, "p_max": float|null, "concept_max": str|null, "delta_max_p": float|null, '
    '"concepts": [{"concept", "probability", "delta", "rival", "rival_probability"}], '
    '"spaces": [{"space": "class.concept", "class": str, "concept": str, "activation": A_s, '
    '"probability": P_s}], '
    '"detection": {"flag": bool, "score": float, "threshold": float, "fpr": float}|null}. '
    "detection is the calibrated adversarial detector stored with the spaces (detector.json in "
    "their folder, written by `sxai calibrate-detector`): flag is score > threshold, and fpr the "
    "false-positive budget on clean images it was calibrated to; null when the spaces carry none. "
    "Numbers are rounded to 6 decimals."
)


def _add_space_args(p: argparse.ArgumentParser) -> None:
    add_space_args(p)
    p.add_argument("--batch-size", type=positive_int, default=32)


# ------------------------------------------------------------------------------------ explain
@command
def _explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="prediction, semantic probabilities, explanation sentence and radar map",
        description="Assess each image (files or folders) with the semantic spaces: print the "
                    "prediction, the class probabilities, every space's P_s and the explanation "
                    "sentence, and write a radar map PNG per image to --out. " + EXPLAIN_JSON +
                    " Unreadable files are reported on stderr and skipped.",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    add_model_args(p)
    _add_space_args(p)
    p.add_argument("--template", "-t", default="english",
                   help="explanation template by name (default english; an unknown name lists the installed ones)")
    p.add_argument("--out", "-o", default="sxai-out", help="folder for the radar maps (default sxai-out/)")
    p.add_argument("--top", type=positive_int, default=5,
                   help="classes shown per image in text output (default 5; --json lists all)")
    p.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    p.set_defaults(handler=_run_explain)


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _record(assessment, sentence: str, radar: Path) -> dict:
    return {
        "path": assessment.path,
        "predicted": assessment.predicted,
        "probabilities": {c: _r(p) for c, p in assessment.class_probabilities.items()},
        "sentence": sentence,
        "radar": str(radar),
        "p_max": _r(assessment.p_max),
        "concept_max": assessment.concept_max,
        "delta_max_p": _r(assessment.delta_max_p),
        "concepts": [
            {"concept": c.concept, "probability": _r(c.probability), "delta": _r(c.delta),
             "rival": c.rival, "rival_probability": _r(c.rival_probability)}
            for c in assessment.concepts
        ],
        "spaces": [
            {"space": s.key, "class": s.class_name, "concept": s.concept,
             "activation": _r(s.activation), "probability": _r(s.probability)}
            for s in assessment.spaces
        ],
        "detection": None if assessment.detection is None else {
            "flag": assessment.detection["flag"], "score": _r(assessment.detection["score"]),
            "threshold": _r(assessment.detection["threshold"]), "fpr": _r(assessment.detection["fpr"])},
    }


def _radar_name(path: Path, taken: set[str]) -> str:
    name = f"{path.stem}.radar.png"
    n = 1
    while name in taken:  # two images with the same stem in different folders
        n += 1
        name = f"{path.stem}-{n}.radar.png"
    taken.add(name)
    return name


def _run_explain(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.images import expand_paths, iter_batches
    from ..explain.trust import assess, load_space_set
    from ..models.inference import model_size
    from ..plugin.manager import get_explanation_template
    from ..robust.detection import FLAG_SENTENCE, detector_folder, load_detector
    from ..viz.radar import radar_map

    template = get_explanation_template(args.template)  # fail on a bad name before any work
    check_output_folder(args.out)
    paths = expand_paths(args.images, require=True)
    model = model_from_args(args)
    spaces = load_space_set(args.spaces, model, force=args.force)
    detector = load_detector(detector_folder(args.spaces, model.name), spaces, model.class_names)
    out = Path(args.out)
    failures: list[tuple[Path, str]] = []
    records = []
    taken: set[str] = set()
    with tqdm(total=len(paths), desc="explaining", unit="img",
              disable=args.json or len(paths) <= 64) as bar:
        for batch in iter_batches(paths, model_size(model), args.batch_size, failures):
            for assessment in assess(model, spaces, batch.images, batch.paths, detector=detector):
                sentence = template.render(assessment)
                radar = radar_map(assessment, out / _radar_name(Path(assessment.path), taken))
                records.append(_record(assessment, sentence, radar))
            bar.update(len(batch.paths))
    for _path, why in failures:
        print(f"skipped: {why}", file=sys.stderr)
    if args.json:
        print(dumps_json(records))
    else:
        for r in records:
            top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[: args.top]
            shown = ", ".join(f"{c} {p:.3f}" for c, p in top)
            print(f"{r['path']}: {r['predicted']}  ({shown})")
            print("  " + "  ".join(f"{s['space']} {s['probability']:.3f}" for s in r["spaces"]))
            print(f"  {r['sentence']}")
            d = r["detection"]
            if d is not None and d["flag"]:
                print(f"  {FLAG_SENTENCE} (detection score {d['score']:.3f} > threshold "
                      f"{d['threshold']:.3f}; {d['fpr']:.0%} of clean images are flagged too).")
            print(f"  radar map: {r['radar']}")
    return 0 if records or not paths else 1


# -------------------------------------------------------------------------------------- index
@command
def _index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index", help="score a folder of images into a search index (SQLite)",
        description="Score every image under DIR (prediction and every space's P_s, one forward pass "
                    "per batch) into the SQLite file --db. Incremental: files already indexed with "
                    "the same mtime and size are skipped; after an interruption, run it again to "
                    "finish. Unreadable files are reported and recorded, and retried once they change.",
    )
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--db", required=True, help="the index file (created if missing)")
    add_model_args(p)
    _add_space_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_index)


def _run_index(args: argparse.Namespace) -> int:
    from ..explain.trust import load_space_set
    from ..search.index import index_folder

    check_output_file(args.db, "--db")
    model = model_from_args(args)
    spaces = load_space_set(args.spaces, model, force=args.force)
    report = index_folder(model, spaces, args.folder, args.db, batch_size=args.batch_size,
                          progress=not args.quiet)
    for _path, why in report.failed:
        print(f"skipped: {why}", file=sys.stderr)
    print(f"{args.db}: {report.found} images found, {report.scored} scored, {report.unchanged} "
          f"unchanged, {len(report.failed)} unreadable, {report.removed} removed")
    return 0


# ------------------------------------------------------------------------------------- search
@command
def _search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="find indexed images by semantic probabilities",
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
    p.add_argument("--db", required=True, help="an index written by `sxai index`")
    p.add_argument("--limit", type=non_negative_int, default=50, help="matches shown (default 50; 0: all)")
    p.add_argument("--sheet", help="write a contact sheet PNG of the matches shown")
    p.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    p.set_defaults(handler=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from ..search.index import SearchIndex, contact_sheet

    if args.sheet:
        check_output_file(args.sheet, "--sheet")
    with SearchIndex(args.db) as index:
        result = index.search(args.query, limit=args.limit or None)
    if args.json:
        print(dumps_json({
            "query": result.query, "total": result.total,
            "matches": [{"path": m.path, "predicted": m.predicted,
                         "class_probabilities": {k: _r(v) for k, v in m.class_probabilities.items()},
                         "probabilities": {k: _r(v) for k, v in m.probabilities.items()}}
                        for m in result.matches],
        }))
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


# ------------------------------------------------------------------------------------- report
@command
def _report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML page: common traits, spaces, example explanations",
        description="Write one HTML file (images embedded, no JavaScript, nothing fetched) with the "
                    "model's backbone and fingerprint, the common traits (--traits), one section per "
                    "semantic space (SSNs and weights, evaluation figures, inversion, distribution "
                    "and Q-Q plot, reference images at both ends), the shared channels, and example "
                    "explanations (prediction, radar map, sentence, P_s table). Missing optional "
                    "pieces are noted in the page; unreadable examples are reported and skipped.",
    )
    add_model_args(p)
    p.add_argument("--spaces", "-s", metavar="DIR",
                   help="a folder written by `sxai space` (default: the spaces bundled with the backbone)")
    p.add_argument("--traits", metavar="DIR", help="a folder written by `sxai traits` (optional)")
    p.add_argument("--examples", "-e", nargs="*", metavar="IMG",
                   help="images or folders to explain (default: the bundled examples; "
                        "--examples with nothing after it: none)")
    p.add_argument("--template", "-t", default="english", help="explanation template (default english)")
    p.add_argument("--force", action="store_true",
                   help="use spaces built on other weights of the same architecture")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", "-o", required=True, metavar="FILE.html", help="the page to write")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from ..data.examples import example_images
    from ..plugin.manager import get_explanation_template
    from ..viz.report import build_report

    get_explanation_template(args.template)  # fail on a bad name before any work
    check_output_file(args.out)
    model = model_from_args(args)
    examples = example_images() if args.examples is None else args.examples
    failures: list[tuple[Path, str]] = []
    out = build_report(model, args.spaces, args.out, traits_dir=args.traits, examples=examples,
                       template=args.template, force=args.force, batch_size=args.batch_size,
                       progress=len(examples) > 16, failures=failures)
    for _path, why in failures:
        print(f"skipped: {why}", file=sys.stderr)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
