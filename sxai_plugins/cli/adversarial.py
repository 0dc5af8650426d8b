"""``sxai adversarial`` and ``sxai calibrate-detector``: PGD attacks against the semantic detector."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import DEFAULT_BACKBONE
from .._utils.assets import ASSETS
from .._utils.errors import SxaiError
from .._utils.io import dumps_json
from ._args import (
    add_model_args,
    add_space_args,
    model_from_args,
    non_negative_int,
    positive_float,
    positive_int,
    positive_list,
)

# the default model's head card lists the images its head never saw: clean attack material
DEFAULT_CARD = ASSETS / DEFAULT_BACKBONE / "head.json"


# -------------------------------------------------------------------------------- adversarial
def _adversarial(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adversarial",
        help="PGD attacks and their detection by semantic probabilities",
        description=(
            "Attack images with untargeted L∞ PGD (captum.robust.PGD; images in [0, 1], no random "
            "start, --steps steps of --step-size-factor·ε/steps) at each ε, and with --adaptive also "
            "with the adaptive attacker (its loss caps the label's cross-entropy at "
            "--adaptive-confidence and adds --adaptive-weight × the semantic margin of the class it "
            "pushes to: it raises that class's semantic probabilities). Report per attack and ε the "
            "attack success rate (over the images classified correctly when clean, which are the "
            "ones attacked), the ROC AUC of the detection score (every clean image vs the successful "
            "adversarial ones; also for its confidence and semantic parts alone), the detection rate "
            "at the calibrated threshold and the false-positive rate measured on these clean images, "
            "and each rule's rates. The detector is the one stored with the spaces (detector.json, "
            "from `sxai calibrate-detector`), or one calibrated now on --calibration images, which "
            "must not be among the attacked ones. The paper's rule flags an image when one semantic "
            "probability is above 0.99 or more than one is above 0.9; --rule adds others. Images: "
            "--data DIR (an ImageFolder whose folder names are the model's classes gives true "
            "labels; any other folder uses the clean predictions as labels), else the held-out files "
            "of --heldout-card (default: the bundled head's card for the default backbone). With "
            "--json, print {n_images, n_correct, labels, steps, step_size_factor, rules, results: "
            "[{attack, eps, n_attacked, n_success, attack_success_rate, score, auc, auc_margin, "
            "auc_semantic, detected, detection_rate, false_positives, false_positive_rate, n_clean, "
            "rules: [{rule, detected, detection_rate, false_positives, false_positive_rate}], "
            "mean_max_p_clean, mean_max_p_adversarial, roc: {fpr, tpr}}], detector, skipped}."
        ),
    )
    p.add_argument("--data", help="folder of images (ImageFolder or flat)")
    p.add_argument("--heldout-card", help="a head card (head.json) whose held-out files to attack")
    p.add_argument("--data-root", help="the folder the card's held-out paths are relative to")
    p.add_argument(
        "--n",
        type=non_negative_int,
        default=200,
        help="images drawn (seeded) from the set (default 200; 0: all)",
    )
    p.add_argument(
        "--eps",
        type=positive_list(float),
        default=[0.05, 0.01, 0.005],
        help="L∞ radii (default 0.05,0.01,0.005)",
    )
    p.add_argument("--steps", type=positive_int, default=10, help="PGD steps (default 10)")
    p.add_argument(
        "--step-size-factor",
        type=positive_float,
        default=2.5,
        help="step size = factor·ε/steps (default 2.5)",
    )
    p.add_argument("--adaptive", action="store_true", help="also run the adaptive attacker")
    p.add_argument(
        "--score-aware",
        action="store_true",
        help="also run the score-aware attacker: it knows the detector (β, c) and lowers its "
        "gap score once the image is misclassified (needs a gap detector)",
    )
    p.add_argument(
        "--adaptive-weight",
        type=positive_float,
        default=1.0,
        help="weight of its semantic term (default 1)",
    )
    p.add_argument(
        "--adaptive-confidence",
        type=_fraction,
        default=0.9,
        help="the confidence in the wrong class at which it stops raising the loss (default 0.9)",
    )
    p.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="single=S,multi=M,count=K[,scope=all|predicted]",
        help="another detection rule (repeatable); omitted keys keep the paper's values",
    )
    p.add_argument(
        "--calibration",
        nargs="+",
        metavar="IMG",
        help="clean images or folders to calibrate a detector on now (instead of the stored one)",
    )
    _add_calibration_args(p)
    p.add_argument("--roc", metavar="PNG", help="write the ROC plot here")
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="keep attacked outputs here: a rerun (or one with other spaces) reuses them",
    )
    add_model_args(p)
    add_space_args(p)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the image draws")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    p.set_defaults(handler=_run_adversarial)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    from ..robust import SCORES

    p.add_argument(
        "--fpr",
        type=_fraction,
        default=0.05,
        help="false-positive budget on clean images the threshold is calibrated to (default 0.05)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="probability that the false-positive rate stays within --fpr over the draw of "
        "calibration images (default 0.9; 0: within it on average, the conformal quantile)",
    )
    p.add_argument(
        "--score",
        choices=SCORES,
        default="gap",
        help="detection score: gap (confidence beyond the semantic evidence; default) or "
        "paper (the paper's rule as a score)",
    )
    p.add_argument(
        "--calibration-n",
        type=non_negative_int,
        default=400,
        help="calibration images drawn (seeded) from those given (default 400; 0: all)",
    )


def _draw(paths: list[Path], n: int, seed: int) -> list[Path]:
    # a seeded draw, so that both classes of a sorted list are represented
    return sorted(random.Random(seed).sample(paths, n)) if n and n < len(paths) else paths


def _attack_paths(args: argparse.Namespace) -> list[Path]:
    from ..data.images import list_images
    from ..robust.adversarial import heldout_files

    if args.data:
        paths = list_images(args.data)
    else:
        card = args.heldout_card
        if card is None and args.head:
            card = str(Path(args.head).with_suffix(".json"))
        if card is None and args.backbone == DEFAULT_BACKBONE and not args.weights:
            card = str(DEFAULT_CARD)
        if card is None:
            raise SxaiError(
                "no images: pass --data DIR, or --heldout-card CARD (a head card listing "
                "held-out files)"
            )
        paths = heldout_files(card, args.data_root)
    if not paths:
        raise SxaiError(f"{args.data or args.heldout_card}: no images found")
    return _draw(paths, args.n, args.seed)


def calibrate_on(
    model, spaces, sources: Sequence[str], args: argparse.Namespace, failures: list | None = None
):
    """A detector calibrated on the clean images in ``sources`` (one prediction pass)."""
    import os

    import torch

    from ..data.images import expand_paths
    from ..models.inference import iter_outputs
    from ..robust.detection import calibrate

    if not 0 <= args.confidence < 1:
        raise SxaiError(f"--confidence must be in [0, 1), got {args.confidence}")
    paths = _draw(expand_paths(sources, require=True), args.calibration_n, args.seed)
    from tqdm.auto import tqdm

    logits, probabilities, used = [], [], []
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
    with tqdm(total=len(paths), desc="calibration images", unit="img", disable=quiet) as bar:
        for batch in iter_outputs(model, paths, args.batch_size, failures):
            out = batch.output
            logits.append(out.logits.cpu())
            probabilities.append(spaces.probabilities(out))
            used += [p.resolve() for p in batch.paths]
            bar.update(len(batch.paths))
    if not used:
        raise SxaiError(f"no readable calibration images in {', '.join(sources)}")
    root = Path(os.path.commonpath([str(p.parent) for p in used]))
    try:
        return calibrate(
            torch.cat(logits),
            torch.cat(probabilities),
            spaces,
            model.class_names,
            args.fpr,
            args.score,
            confidence=args.confidence or None,
            fingerprint=model.fingerprint(),
            source=str(root),
            files=[str(p.relative_to(root)) for p in used],
        )
    except ValueError as exc:
        raise SxaiError(f"calibration: {exc}") from None


def _run_adversarial(args: argparse.Namespace) -> int:
    from .._utils.io import check_output_file
    from ..explain.trust import load_space_set
    from ..robust.adversarial import PAPER_RULE, DetectionRule, evaluate_detection
    from ..robust.detection import detector_folder, load_detector
    from ..viz.plots import roc_figure

    rules = [PAPER_RULE] + [
        DetectionRule.parse(text, name=f"custom{i + 1}" if len(args.rule) > 1 else "custom")
        for i, text in enumerate(args.rule)
    ]
    if args.roc:
        check_output_file(args.roc, "--roc")
    paths = _attack_paths(args)
    model = model_from_args(args)
    spaces = load_space_set(args.spaces, model, force=args.force)
    failures: list = []
    if args.calibration:
        detector = calibrate_on(model, spaces, args.calibration, args, failures)
    else:
        detector = load_detector(
            detector_folder(args.spaces, model.name), spaces, model.class_names
        )
    if detector is not None:
        overlap = detector.calibration_paths() & {p.resolve() for p in paths}
        if overlap:
            raise SxaiError(
                f"{len(overlap)} of the attacked images (e.g. {sorted(overlap)[0]}) were used to "
                "calibrate the detector, so its false-positive rate cannot be measured on them; "
                "attack other images or calibrate on others (--calibration)"
            )
    report = evaluate_detection(
        model,
        spaces,
        paths,
        eps=args.eps,
        rules=rules,
        steps=args.steps,
        step_size_factor=args.step_size_factor,
        batch_size=args.batch_size,
        progress=not (args.quiet or args.json),
        detector=detector,
        attacks=("pgd",)
        + (("adaptive",) if args.adaptive else ())
        + (("score-aware",) if args.score_aware else ()),
        adaptive_weight=args.adaptive_weight,
        adaptive_confidence=args.adaptive_confidence,
        cache=args.cache,
    )
    for why in [why for _p, why in failures] + report.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    if args.roc:
        roc_figure(report, args.roc)
    if args.json:
        print(dumps_json(report.to_dict()))
    else:
        print(report.table())
        for rule in rules:
            print(
                f"rule {rule.name}: one P > {rule.single:g}, or {rule.count}+ above {rule.multi:g} "
                f"({rule.scope} spaces)"
            )
        if detector is None:
            print(
                "no calibrated detector: the spaces carry no detector.json (see `sxai calibrate-detector`) "
                "and no --calibration images were given; the AUC is the paper rule's as a score"
            )
        if args.roc:
            print(f"ROC plot: {args.roc}")
    return 0 if report.n_images else 1


# ------------------------------------------------------------------------- calibrate-detector
def _calibrate_detector(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate-detector",
        help="calibrate the adversarial detector on clean images and store it with the spaces",
        description=(
            "Score clean images (one prediction pass each) with the detection score and set the "
            "threshold that flags at most --fpr of clean images like them (the conformal quantile "
            "of their scores), then write detector.json beside the spaces (--out to write elsewhere). "
            "`sxai explain` with the same spaces then flags suspicious images. Use images that the "
            "head was not trained on and that you will not evaluate the detector on (`sxai "
            "adversarial` refuses to measure a false-positive rate on calibration images). Scores: "
            "gap (default) = logit margin of the prediction − (β·semantic margin + c), β and c fitted "
            "on these images; paper = the paper's rule as a score (above 0 exactly when it flags)."
        ),
    )
    p.add_argument("images", nargs="*", help="clean image files or folders")
    p.add_argument(
        "--heldout-rest",
        type=positive_int,
        metavar="N",
        help="calibrate on the held-out images of the head card (--heldout-card; default the "
        "bundled head's) that `sxai adversarial --n N --seed SEED` does not attack",
    )
    p.add_argument("--heldout-card", help="the head card for --heldout-rest")
    p.add_argument("--data-root", help="the folder the card's held-out paths are relative to")
    _add_calibration_args(p)
    p.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="where to write the detector (default: detector.json in the spaces' folder)",
    )
    add_model_args(p)
    add_space_args(p)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw")
    p.add_argument("--json", action="store_true", help="print the detector as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_calibrate_detector)


def _run_calibrate_detector(args: argparse.Namespace) -> int:
    from .._utils.io import check_output_file
    from ..explain.trust import load_space_set
    from ..robust.detection import DETECTOR_FILE, detector_folder

    sources = [str(p) for p in args.images]
    if args.heldout_rest:
        attacked = set(
            _attack_paths(
                argparse.Namespace(**{**vars(args), "data": None, "n": args.heldout_rest})
            )
        )
        sources += [
            str(p)
            for p in _attack_paths(argparse.Namespace(**{**vars(args), "data": None, "n": 0}))
            if p not in attacked
        ]
    if not sources:
        raise SxaiError("no calibration images: give IMAGES, or --heldout-rest N")
    model = model_from_args(args)
    spaces = load_space_set(args.spaces, model, force=args.force)
    out = args.out
    if out is None:
        folder = detector_folder(args.spaces, model.name)
        if folder is None:
            raise SxaiError(
                "the detector is stored in the spaces' folder, and these spaces have no single "
                "folder (pass one --spaces FOLDER, or --out FILE)"
            )
        out = folder / DETECTOR_FILE
    check_output_file(out)
    failures: list = []
    detector = calibrate_on(model, spaces, sources, args, failures)
    for _p, why in failures:
        print(f"skipped: {why}", file=sys.stderr)
    path = detector.save(out)
    if args.json:
        data = detector.to_dict()
        data.pop("calibration_files")
        print(dumps_json({**data, "path": str(path)}))
    else:
        print(
            f"{path}: score {detector.score}, threshold {detector.threshold:.4f} for a false-positive "
            f"budget of {detector.fpr:g} on {detector.n_calibration} clean images "
            f"({detector.calibration_fpr:.1%} of them above it)"
        )
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _adversarial(subparsers)
    _calibrate_detector(subparsers)
