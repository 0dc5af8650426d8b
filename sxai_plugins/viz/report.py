"""One self-contained HTML report per model: common traits, semantic spaces, example explanations.

Everything the page shows is inside the file: images are base64 ``data:`` URIs, the style is
inline, there is no JavaScript and nothing is fetched. Optional pieces that are missing (a plot,
the common-traits folder, an inversion) are skipped with a note in the page.

This module gathers what the page shows; the page itself is the Jinja2 template
``templates/report.html.j2``, rendered with autoescape on, so every text that reaches the page
(file names, names and fields from the space files, strings from JSON) is escaped.

Inputs are the folders the other commands write: ``sxai space`` (``*.safetensors``,
``report.json``, ``plots/``) and ``sxai traits`` (``summary.json``, ``pca.json``, ``*.png``,
``inversions/pc*.png``).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .._utils.errors import SpaceError, SxaiError
from .._utils.io import atomic_write, printable
from ..models.trait_model import TraitModel
from ..spaces.space import SemanticSpace, SpaceSet

if TYPE_CHECKING:
    from jinja2 import Environment
    from markupsafe import Markup

log = logging.getLogger("sxai")

__all__ = ["EVALUATION_LABELS", "build_report", "data_uri", "file_data_uri"]

# report.json / SemanticSpace.evaluation keys, in the order and words the page shows them
EVALUATION_LABELS = {
    # probe spaces (format v2): out-of-fold figures, see sxai_plugins.space_validity
    "protocol": "how the figures were measured",
    "n_positive": "images of the class showing the concept",
    "n_natural": "images of the class without it (natural negatives)",
    "n_rival": "images of other classes showing it",
    "drop": "share with P_s(original) > P_s(concept hidden by a held-out masking)",
    "auroc": "AUROC of P_s, concept shown vs hidden or absent",
    "auroc_natural": "AUROC of P_s, concept shown vs naturally absent",
    "control_shift": "mean |ΔP_s| when a region of the same size elsewhere is hidden",
    "rival_auroc": "AUROC of P_s, this class vs other classes showing the concept",
    "ece": "expected calibration error of P_s",
    # SSN spaces (format v1)
    "n_eval": "evaluation images (annotated, not used to build)",
    "fraction_original_above_masked": "fraction with P_s(original) > P_s(concept masked)",
    "auroc_original_vs_masked": "AUROC of P_s, original vs concept masked",
    "auroc_visible_vs_not": "AUROC of P_s, concept visible vs not visible (same class)",
    "n_natural_negatives": "same-class images without the concept visible",
    "qq_r2": "Q-Q R² of the reference distribution (normality)",
}
THUMB = 256  # longest side of an example thumbnail, in pixels


TEMPLATE = "report.html.j2"


# ------------------------------------------------------------------------------------ helpers
def _escape(value: Any) -> Markup:
    """How the template shows a value (its ``finalize``, before autoescape): as text, escaped by
    ``html.escape`` (as the page always has: ``'`` as ``&#x27;``), with file-name bytes that are
    not UTF-8 as \\xNN (a lone surrogate cannot be written as UTF-8); markup passes through."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    return Markup(html.escape(printable(str(value)), quote=True))


@functools.cache
def _environment() -> Environment:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader(__package__, "templates"),
        autoescape=True,
        finalize=_escape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _num(value: Any, digits: int = 3) -> str:
    """A figure as text: n/a for missing or NaN, integers as they are."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


class Cell(NamedTuple):
    """A table cell: text, right-aligned when ``numeric``, in ``<code>`` when ``code``."""

    text: str
    numeric: bool = False
    code: bool = False


def _n(value: Any, digits: int = 3) -> Cell:
    return Cell(_num(value, digits), numeric=True)


def _t(value: Any) -> Cell:
    return Cell(str(value))


def _code(value: Any) -> Cell:
    return Cell(str(value), code=True)


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` for embedding bytes in the page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def file_data_uri(path: str | Path) -> str | None:
    """A data URI of an image file that PIL can decode, or None when it is missing or unreadable
    (so a corrupt plot becomes a note instead of a broken picture)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            fmt = (image.format or "").lower()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        log.warning("%s: not a readable image; left out of the report", path)
        return None
    mime = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}.get(
        fmt
    )
    return data_uri(data, mime) if mime else None


def _figure(path: Path, caption: str, missing: str, wide: bool = False) -> dict[str, Any]:
    """A picture for the template's ``figure`` macro: the image, or the note saying why not."""
    uri = file_data_uri(path)
    note = None
    if uri is None:
        state = "unreadable" if path.exists() else "missing"
        note = f"{caption}: {path.name} is {state}; {missing}"
    return {"uri": uri, "caption": caption, "wide": wide, "note": note}


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); its figures are left out")
        return None


# ----------------------------------------------------------------------------------- sections
def _header(
    model: TraitModel, spaces_dir: Path, summary: Any
) -> tuple[list[list[Cell]], list[str]]:
    """The header table's rows and its note (weights mismatch)."""
    fingerprint = model.fingerprint()
    rows = [
        [_t("backbone"), _code(model.name)],
        [_t("weights fingerprint"), _code(fingerprint)],
        [_t("classes"), _t(", ".join(model.class_names))],
        [_t("trait channels (GAP)"), _t(model.trait_dim)],
        [_t("input size"), _t("×".join(str(s) for s in model.input_size))],
        [_t("semantic spaces"), _code(spaces_dir)],
    ]
    notes = []
    if isinstance(summary, dict):
        for key in ("recipe", "annotations", "reference"):
            if key in summary:
                rows.append([_t(f"spaces {key}"), _code(summary[key])])
        if summary.get("fingerprint") not in (None, fingerprint):
            notes.append(
                f"report.json was written for weights {summary['fingerprint']}, not this "
                f"model's {fingerprint}: its figures may describe other weights"
            )
    return rows, notes


def _pc_number(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)", path.stem)
    return (int(match.group(1)) if match else 1 << 30, path.name)


def _traits_section(traits_dir: Path | None) -> dict[str, Any] | None:
    if traits_dir is None:
        return None
    notes: list[str] = []
    summary = _read_json(traits_dir / "summary.json", notes)
    pca = _read_json(traits_dir / "pca.json", notes)
    section: dict[str, Any] = {
        "folder": traits_dir,
        "settings": None,
        "spread": None,
        "ratios": None,
    }
    if isinstance(summary, dict):
        shown = [
            ("class", summary.get("class")),
            ("images used", summary.get("n_used")),
            ("seed", summary.get("seed")),
            ("genetic search", "yes" if summary.get("genetic_search") else "no"),
            ("mean target probability after the search", summary.get("mean_fitness")),
            ("PC1 information ratio", summary.get("pc1_information_ratio")),
            ("PCs reaching 85 %", summary.get("n_components_85")),
            ("feature inverter", summary.get("inverter")),
        ]
        section["settings"] = [[_t(k), _n(v)] for k, v in shown if v is not None]
        spread = (summary.get("stability") or {}).get("spread_percent") or {}
        section["spread"] = [[_t(n), _n(e, 2)] for n, e in spread.items()]
    else:
        notes.append("summary.json is missing: the run's settings are not shown")
    if isinstance(pca, dict) and pca.get("information_ratio"):
        ratios = pca["information_ratio"][:10]
        cumulative = pca.get("cumulative", [None] * len(ratios))
        section["ratios"] = [
            [_t(f"PC{i + 1}"), _n(r), _n(c)] for i, (r, c) in enumerate(zip(ratios, cumulative))
        ]
    section["notes"] = notes
    section["ratio_figure"] = _figure(
        traits_dir / "information_ratio.png",
        "information ratio of the PCs",
        "written by every `sxai traits` run",
    )
    section["inversions"] = [
        _figure(p, p.stem.upper(), "")
        for p in sorted((traits_dir / "inversions").glob("*.png"), key=_pc_number)
    ]
    extras = []
    for name, caption, how in (
        ("stability.png", "stability of PC1", "run `sxai traits` with --stability"),
        ("layers.png", "PC1 per layer", "run `sxai traits` with --per-layer"),
    ):
        if (traits_dir / name).exists():
            extras.append(_figure(traits_dir / name, caption, how))
        else:
            extras.append({"uri": None, "note": f"No {caption} plot ({how})."})
    section["extras"] = extras
    return section


def _space_section(
    space: SemanticSpace, figures: dict[str, Any], plots: Path, owners: dict[int, list[str]]
) -> dict[str, Any]:
    key = space.key
    reported = figures.get("ssn")
    ssn_note = None
    if reported is not None and list(reported) != space.indices.tolist():
        ssn_note = (
            f"report.json lists SSNs {reported} but the space file has "
            f"{space.indices.tolist()}; the file's are shown"
        )
    ssn_rows = []
    for channel, delta in zip(space.indices.tolist(), space.delta.tolist()):
        others = [k for k in owners.get(channel, []) if k != key]
        weight = delta if space.probe is not None else delta / space.n_ssn
        ssn_rows.append([_n(channel), _n(delta, 4), _n(weight, 4), _t(", ".join(others))])
    evaluation = [
        [_t(label), _n(figures[k])] for k, label in EVALUATION_LABELS.items() if k in figures
    ]
    evaluation += [
        [_t(k), _n(v)]
        for k, v in figures.items()
        if k not in EVALUATION_LABELS
        and k not in ("ssn", "delta")
        and not isinstance(v, list | dict)
    ]
    ref = space.reference
    low, high = plots / f"{key}.low.png", plots / f"{key}.high.png"
    return {
        "key": key,
        "class_name": space.class_name,
        "concept": space.concept,
        "mode": space.recipe.get("mode", "n/a"),
        "masker": space.masker or "n/a",
        "n_images": space.n_images or "n/a",
        "trait_layer": space.trait_layer,
        "ssn_note": ssn_note,
        "n_ssn": space.n_ssn,
        "probe": space.probe is not None,
        "ssn_rows": ssn_rows,
        "evaluation": evaluation,
        "reference": None
        if ref is None
        else [
            _n(ref.mu, 4),
            _n(ref.sigma, 4),
            _n(ref.a_min, 4),
            _n(ref.a_max, 4),
            _n(ref.n),
            _n(ref.qq_r2),
        ],
        "inversion": _figure(
            plots / f"{key}.inversion.png",
            "inversion of the space's SSN target",
            "build the spaces with --invert fourier to draw it",
        ),
        "distribution": _figure(
            plots / f"{key}.distribution.png",
            "A_s over the reference images with the fitted normal; Q-Q plot",
            "`sxai space` draws it unless --no-plots",
            wide=True,
        ),
        # spaces without these sheets (the bundled ones ship none) would get two notes each: leave
        # the section out instead
        "sheets": [
            _figure(low, "P_s < 0.1", "no reference image is that low", wide=True),
            _figure(high, "P_s > 0.9", "no reference image is that high", wide=True),
        ]
        if low.is_file() or high.is_file()
        else None,
    }


def _thumbnail(path: Path) -> str | None:
    from .._utils.errors import ImageLoadError
    from ..data.images import load_image

    try:
        image = load_image(path)
    except ImageLoadError:
        return None
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def _example_card(assessment: Any, sentence: str, radar: Path) -> dict[str, Any]:
    path = Path(assessment.path)
    probs = sorted(assessment.class_probabilities.items(), key=lambda kv: -kv[1])
    return {
        "name": path.name,
        "thumbnail": _thumbnail(path),
        "radar": _figure(radar, "radar map of P_s", "the radar map could not be drawn"),
        "predicted": assessment.predicted,
        "top_classes": ", ".join(f"{c} {p:.3f}" for c, p in probs[:5]),
        "sentence": sentence,
        "scores": [[_t(s.key), _n(s.activation, 4), _n(s.probability)] for s in assessment.spaces],
        "concepts": [
            [
                _t(c.concept),
                _n(c.probability),
                _n(c.delta),
                _t(c.rival or "none"),
                _n(c.rival_probability),
            ]
            for c in assessment.concepts
        ],
        "p_max": _num(assessment.p_max),
        "concept_max": assessment.concept_max or "n/a",
        "delta_max_p": _num(assessment.delta_max_p),
    }


def _examples_section(
    model: TraitModel,
    spaces: SpaceSet,
    examples: Sequence[str | Path] | None,
    template_name: str,
    batch_size: int,
    progress: bool,
    failures: list[tuple[Path, str]],
) -> dict[str, Any] | None:
    from tqdm.auto import tqdm

    from ..data.images import expand_paths
    from ..explain.trust import assess_outputs
    from ..models.inference import iter_outputs
    from ..plugin.manager import get_explanation_template
    from .plots import radar_map

    if not examples:
        return None
    template = get_explanation_template(template_name)
    paths = expand_paths(examples)
    mine: list[tuple[Path, str]] = []
    cards = []
    with (
        tempfile.TemporaryDirectory(prefix="sxai-report-") as tmp,
        tqdm(total=len(paths), desc="report examples", unit="img", disable=not progress) as bar,
    ):
        for batch in iter_outputs(model, paths, batch_size, mine):
            for assessment in assess_outputs(model, spaces, batch.output, batch.paths):
                radar = radar_map(assessment, Path(tmp) / f"{len(cards)}.png")
                cards.append(_example_card(assessment, template.render(assessment), radar))
            bar.update(len(batch.paths))
        bar.update(len(paths) - bar.n)
    failures.extend(mine)
    return {
        "template": template.name,
        "cards": cards,
        "skipped": [f"skipped {path.name}: {why}" for path, why in mine],
    }


# ---------------------------------------------------------------------------------------- main
def _spaces_folder(model: TraitModel, spaces_dir: str | Path | None) -> Path:
    from ..explain.trust import default_spaces_dir

    if spaces_dir is None:
        folder = default_spaces_dir(model.name)
        if folder is None:
            raise SpaceError(
                f"no spaces folder given and none is bundled for backbone {model.name!r}; "
                "build one with `sxai space ... --out DIR` and pass it (--spaces DIR)"
            )
        return folder
    folder = Path(spaces_dir)
    if not folder.is_dir():
        raise SpaceError(
            f"{folder}: not a folder; pass the folder `sxai space --out` wrote "
            "(space files, report.json, plots/)"
        )
    return folder


def build_report(
    model: TraitModel,
    spaces_dir: str | Path | None,
    out_html: str | Path,
    traits_dir: str | Path | None = None,
    examples: Sequence[str | Path] | None = None,
    *,
    template: str = "english",
    force: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    failures: list[tuple[Path, str]] | None = None,
) -> Path:
    """Write the HTML report of ``model`` to ``out_html`` (atomically) and return its path.

    Args:
        model: the model the spaces were built on (checked by fingerprint unless ``force``).
        spaces_dir: a folder written by ``sxai space``; None: the spaces bundled for the model.
        out_html: the page to write.
        traits_dir: a folder written by ``sxai traits`` (optional; skipped with a note if None).
        examples: image files or folders to explain (optional); unreadable ones are noted in the
            page, appended to ``failures`` and skipped.
        template: the explanation template by name.
        force: accept spaces built on other weights of the same architecture.
        batch_size: images per forward pass for the examples.
        progress: show a progress bar over the examples.
        failures: a list that receives ``(path, reason)`` for every unreadable example.
    """
    from ..explain.trust import load_space_set

    folder = _spaces_folder(model, spaces_dir)
    if traits_dir is not None and not Path(traits_dir).is_dir():
        raise SxaiError(f"{traits_dir}: not a folder; pass the folder `sxai traits --out` wrote")
    spaces = load_space_set([folder], model, force=force)
    notes: list[str] = []
    summary = _read_json(folder / "report.json", notes)
    if summary is None and not notes:
        notes.append("report.json is missing: the evaluation figures come from the space files")
    per_space = (summary or {}).get("spaces", {}) if isinstance(summary, dict) else {}
    # owners of every SSN channel, from the space files themselves (report.json may be stale)
    owners: dict[int, list[str]] = {}
    for space in spaces:
        for channel in space.indices.tolist():
            owners.setdefault(int(channel), []).append(space.key)
    failures = failures if failures is not None else []
    examples_section = _examples_section(
        model, spaces, examples, template, batch_size, progress, failures
    )
    header_rows, header_notes = _header(model, folder, summary)
    plots = folder / "plots"
    page = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            model_name=model.name,
            fingerprint=model.fingerprint(),
            header_rows=header_rows,
            notes=header_notes + notes,
            traits=_traits_section(Path(traits_dir) if traits_dir is not None else None),
            spaces=[
                _space_section(
                    space, {**space.evaluation, **(per_space.get(space.key) or {})}, plots, owners
                )
                for space in spaces
            ],
            shared=[[_n(c), _t(", ".join(k))] for c, k in sorted(owners.items()) if len(k) > 1],
            examples=examples_section,
        )
    )
    return atomic_write(out_html, lambda tmp: tmp.write_text(page, encoding="utf-8"))
