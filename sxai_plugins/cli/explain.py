"""CLI commands ``explain``, ``index`` and ``search`` (registered on import by ``sxai_plugins.cli``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._utils.io import check_output_folder, dumps_json, rounded
from ._args import (
    add_model_args,
    add_space_args,
    model_from_args,
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


# ------------------------------------------------------------------------------------ explain
def _explain(sub: argparse._SubParsersAction) -> None:
    from ._args import add_inference_args

    p = sub.add_parser(
        "explain",
        help="prediction, semantic probabilities, explanation sentence and radar map",
        description="Assess each image (files or folders) with the semantic spaces: print the "
        "prediction, the class probabilities, every space's P_s and the explanation "
        "sentence, and write a radar map PNG per image to --out. "
        + EXPLAIN_JSON
        + " Unreadable files are reported on stderr and skipped.",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    add_model_args(p)
    add_space_args(p, batch_size=True)
    p.add_argument(
        "--template",
        "-t",
        default="english",
        help="explanation template by name (default english; an unknown name lists the installed ones)",
    )
    p.add_argument(
        "--out", "-o", default="sxai-out", help="folder for the radar maps (default sxai-out/)"
    )
    p.add_argument(
        "--top",
        type=positive_int,
        default=5,
        help="classes shown per image in text output (default 5; --json lists all)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    add_inference_args(p)
    p.set_defaults(handler=_run_explain)


def _record(assessment, sentence: str, radar: Path) -> dict:
    return {
        "path": assessment.path,
        "predicted": assessment.predicted,
        "probabilities": {c: rounded(p) for c, p in assessment.class_probabilities.items()},
        "sentence": sentence,
        "radar": str(radar),
        "p_max": rounded(assessment.p_max),
        "concept_max": assessment.concept_max,
        "delta_max_p": rounded(assessment.delta_max_p),
        "concepts": [
            {
                "concept": c.concept,
                "probability": rounded(c.probability),
                "delta": rounded(c.delta),
                "rival": c.rival,
                "rival_probability": rounded(c.rival_probability),
            }
            for c in assessment.concepts
        ],
        "spaces": [
            {
                "space": s.key,
                "class": s.class_name,
                "concept": s.concept,
                "activation": rounded(s.activation),
                "probability": rounded(s.probability),
            }
            for s in assessment.spaces
        ],
        "detection": None
        if assessment.detection is None
        else {
            "flag": assessment.detection["flag"],
            "score": rounded(assessment.detection["score"]),
            "threshold": rounded(assessment.detection["threshold"]),
            "fpr": rounded(assessment.detection["fpr"]),
        },
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

    from ..data.images import expand_paths
    from ..explain.trust import assess_outputs, load_space_set
    from ..models.inference import iter_outputs
    from ..plugin.manager import get_explanation_template
    from ..robust.detection import FLAG_SENTENCE, detector_folder, load_detector
    from ..viz.plots import radar_map
    from ._args import show_progress

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
    with tqdm(
        total=len(paths), desc="explaining", unit="img", disable=not show_progress(args, len(paths))
    ) as bar:
        for batch in iter_outputs(
            model, paths, args.batch_size, failures, precision=args.precision
        ):
            for assessment in assess_outputs(
                model, spaces, batch.output, batch.paths, detector=detector
            ):
                sentence = template.render(assessment)
                radar = radar_map(assessment, out / _radar_name(Path(assessment.path), taken))
                records.append(_record(assessment, sentence, radar))
            bar.update(len(records) + len(failures) - bar.n)  # unreadable files count as done
        bar.update(len(paths) - bar.n)
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
                print(
                    f"  {FLAG_SENTENCE} (detection score {d['score']:.3f} > threshold "
                    f"{d['threshold']:.3f}; {d['fpr']:.0%} of clean images are flagged too)."
                )
            print(f"  radar map: {r['radar']}")
    return 0 if records or not paths else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _explain(subparsers)
