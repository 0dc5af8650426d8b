"""One self-contained HTML report per model: common traits, semantic spaces, example explanations.

Everything the page shows is inside the file: images are base64 ``data:`` URIs, the style is
inline, there is no JavaScript and nothing is fetched. All text is escaped. Optional pieces that
are missing (a plot, the common-traits folder, an inversion) are skipped with a note in the page.

Inputs are the folders the other commands write: ``sxai space`` (``*.safetensors``,
``report.json``, ``plots/``) and ``sxai traits`` (``summary.json``, ``pca.json``, ``*.png``,
``inversions/pc*.png``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._utils.errors import SpaceError, SxaiError
from .._utils.io import atomic_write, printable
from ..models.trait_model import TraitModel
from ..spaces.space import SemanticSpace, SpaceSet

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

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1180px;
padding:1rem 1.5rem 3rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;
margin-top:2.4rem}h3{margin:1.2rem 0 .4rem}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
table{border-collapse:collapse;margin:.4rem 0 1rem}th,td{border:1px solid #ddd;padding:.2rem .55rem;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f4f4f6}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.35rem .7rem;
margin:.5rem 0;font-size:.93em}.meta{color:#555}
figure{display:inline-block;margin:.4rem .8rem .8rem 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.88em;color:#444}
.wide img{max-width:1100px}.grid{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.example{border:1px solid #ddd;border-radius:6px;padding:.8rem;margin:1rem 0}
.sentence{font-size:1.1rem;font-style:italic;margin:.4rem 0 .8rem}
nav ul{columns:3;padding-left:1.2rem}.facts{flex:1 1 320px;min-width:300px}
"""


# ------------------------------------------------------------------------------------ helpers
def _e(value: Any) -> str:
    return html.escape(printable(str(value)), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    """A figure as text: n/a for missing or NaN, integers as they are."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return _e(value)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


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
    mime = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}.get(fmt)
    return data_uri(data, mime) if mime else None


def _figure(path: Path, caption: str, missing: str, wide: bool = False) -> str:
    uri = file_data_uri(path)
    if uri is None:
        state = "unreadable" if path.exists() else "missing"
        return _note(f"{caption}: {path.name} is {state}; {missing}")
    css = ' class="wide"' if wide else ""
    return (f'<figure{css}><img src="{uri}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


class _Numeric(str):
    """A table cell holding a number: right-aligned."""


def _n(value: Any, digits: int = 3) -> _Numeric:
    return _Numeric(_num(value, digits))


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """A table of already-escaped cells (header cells are escaped here; None: no header row)."""
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if isinstance(c, _Numeric) else f"<td>{c}</td>"
                         for c in row) + "</tr>"
        for row in rows)
    return f"<table>{head}{body}</table>"


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); its figures are left out")
        return None


# ----------------------------------------------------------------------------------- sections
def _header(model: TraitModel, spaces_dir: Path, summary: Any) -> str:
    fingerprint = model.fingerprint()
    rows = [
        ["backbone", f"<code>{_e(model.name)}</code>"],
        ["weights fingerprint", f"<code>{_e(fingerprint)}</code>"],
        ["classes", _e(", ".join(model.class_names))],
        ["trait channels (GAP)", _e(model.trait_dim)],
        ["input size", _e("×".join(str(s) for s in model.input_size))],
        ["semantic spaces", f"<code>{_e(spaces_dir)}</code>"],
    ]
    if isinstance(summary, dict):
        for key in ("recipe", "annotations", "reference"):
            if key in summary:
                rows.append([f"spaces {key}", f"<code>{_e(summary[key])}</code>"])
    parts = [f"<h1>S-XAI report: {_e(model.name)}</h1>",
             f'<p class="meta">weights <code>{_e(fingerprint)}</code></p>',
             _table(None, rows)]
    if isinstance(summary, dict) and summary.get("fingerprint") not in (None, fingerprint):
        parts.append(_note(f"report.json was written for weights {summary['fingerprint']}, not this "
                           f"model's {fingerprint}: its figures may describe other weights"))
    return "".join(parts)


def _pc_number(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)", path.stem)
    return (int(match.group(1)) if match else 1 << 30, path.name)


def _traits_section(traits_dir: Path | None) -> str:
    parts = ['<h2 id="traits">Common traits</h2>']
    if traits_dir is None:
        parts.append(_note("No common-traits folder given: run `sxai traits --data DATA --class CLASS --out DIR` and "
                           "pass --traits DIR (traits_dir=...) to show the class's PC1 here."))
        return "".join(parts)
    notes: list[str] = []
    summary = _read_json(traits_dir / "summary.json", notes)
    pca = _read_json(traits_dir / "pca.json", notes)
    parts.append(f'<p class="meta">from <code>{_e(traits_dir)}</code></p>')
    if isinstance(summary, dict):
        shown = [("class", summary.get("class")), ("images used", summary.get("n_used")),
                 ("seed", summary.get("seed")),
                 ("genetic search", "yes" if summary.get("genetic_search") else "no"),
                 ("mean target probability after the search", summary.get("mean_fitness")),
                 ("PC1 information ratio", summary.get("pc1_information_ratio")),
                 ("PCs reaching 85 %", summary.get("n_components_85")),
                 ("feature inverter", summary.get("inverter"))]
        parts.append(_table(None, [[_e(k), _n(v)] for k, v in shown if v is not None]))
        spread = (summary.get("stability") or {}).get("spread_percent") or {}
        if spread:
            parts.append("<h3>Stability of PC1 (spread e over repeats)</h3>")
            parts.append(_table(["Ns", "e (%)"], [[_e(n), _n(e, 2)] for n, e in spread.items()]))
    else:
        notes.append("summary.json is missing: the run's settings are not shown")
    if isinstance(pca, dict) and pca.get("information_ratio"):
        ratios = pca["information_ratio"][:10]
        cumulative = pca.get("cumulative", [None] * len(ratios))
        parts.append("<h3>Information ratio of the first PCs</h3>")
        parts.append(_table(["PC", "ratio", "cumulative"],
                            [[_e(f"PC{i + 1}"), _n(r), _n(c)] for i, (r, c) in enumerate(zip(ratios, cumulative))]))
    parts.extend(_note(n) for n in notes)
    parts.append(_figure(traits_dir / "information_ratio.png", "information ratio of the PCs",
                         "written by every `sxai traits` run"))
    inversions = sorted((traits_dir / "inversions").glob("*.png"), key=_pc_number)
    if inversions:
        parts.append("<h3>Inversions of the principal components</h3>")
        parts.extend(_figure(p, p.stem.upper(), "") for p in inversions)
    else:
        parts.append(_note("No inversions of the PCs (run `sxai traits` with --invert fourier)."))
    for name, caption, how in (("stability.png", "stability of PC1", "run `sxai traits` with --stability"),
                               ("layers.png", "PC1 per layer", "run `sxai traits` with --per-layer")):
        if (traits_dir / name).exists():
            parts.append(_figure(traits_dir / name, caption, how))
        else:
            parts.append(_note(f"No {caption} plot ({how})."))
    return "".join(parts)


def _space_section(index: int, space: SemanticSpace, figures: dict[str, Any], plots: Path,
                   owners: dict[int, list[str]]) -> str:
    key = space.key
    parts = [f'<h2 id="space-{index}">Space {_e(key)}</h2>',
             f'<p class="meta">class <b>{_e(space.class_name)}</b>, concept <b>{_e(space.concept)}</b>; '
             f"recipe {_e(space.recipe.get('mode', 'n/a'))}, masker {_e(space.masker or 'n/a')}, "
             f"built from {_e(space.n_images or 'n/a')} images, trait layer {_e(space.trait_layer)}</p>"]
    reported = figures.get("ssn")
    if reported is not None and list(reported) != space.indices.tolist():
        parts.append(_note(f"report.json lists SSNs {reported} but the space file has "
                           f"{space.indices.tolist()}; the file's are shown"))
    parts.append(f"<h3>{space.n_ssn} semantically sensitive neurons</h3>")
    ssn_rows = []
    for channel, delta in zip(space.indices.tolist(), space.delta.tolist()):
        others = [k for k in owners.get(channel, []) if k != key]
        weight = delta if space.probe is not None else delta / space.n_ssn
        ssn_rows.append([_n(channel), _n(delta, 4), _n(weight, 4), _e(", ".join(others))])
    if space.probe is not None:
        parts.append("<p>The space is a calibrated concept probe over all channels; these are the "
                     "channels of largest weight on standardised traits.</p>")
        parts.append(_table(["channel", "standardised weight", "weight", "also an SSN of"], ssn_rows))
    else:
        parts.append(_table(["channel", "Δ", "weight Δ/N_SSN", "also an SSN of"], ssn_rows))
    parts.append("<h3>Evaluation</h3>")
    rows = [[_e(label), _n(figures[k])] for k, label in EVALUATION_LABELS.items() if k in figures]
    rows += [[_e(k), _n(v)] for k, v in figures.items()
             if k not in EVALUATION_LABELS and k not in ("ssn", "delta") and not isinstance(v, list | dict)]
    parts.append(_table(["figure", "value"], rows) if rows else
                 _note("No evaluation figures in report.json or the space file."))
    ref = space.reference
    if ref is not None:
        parts.append("<h3>Reference distribution of A_s</h3>")
        parts.append(_table(["μ", "σ", "A_min", "A_max", "images", "Q-Q R²"],
                            [[_n(ref.mu, 4), _n(ref.sigma, 4), _n(ref.a_min, 4), _n(ref.a_max, 4),
                              _n(ref.n), _n(ref.qq_r2)]]))
    parts.append(_figure(plots / f"{key}.inversion.png", "inversion of the space's SSN target",
                         "build the spaces with --invert fourier to draw it"))
    parts.append(_figure(plots / f"{key}.distribution.png",
                         "A_s over the reference images with the fitted normal; Q-Q plot",
                         "`sxai space` draws it unless --no-plots", wide=True))
    low, high = plots / f"{key}.low.png", plots / f"{key}.high.png"
    # spaces without these sheets (the bundled ones ship none) would get two notes each: leave
    # the section out instead
    if low.is_file() or high.is_file():
        parts.append("<h3>Reference images at both ends</h3>")
        parts.append(_figure(low, "P_s < 0.1", "no reference image is that low", wide=True))
        parts.append(_figure(high, "P_s > 0.9", "no reference image is that high", wide=True))
    return "".join(parts)


def _shared_section(owners: dict[int, list[str]]) -> str:
    shared = {c: keys for c, keys in sorted(owners.items()) if len(keys) > 1}
    parts = ['<h2 id="shared">Shared channels</h2>']
    if not shared:
        parts.append(_note("No channel is an SSN of more than one space."))
    else:
        parts.append("<p>Channels that are SSNs of more than one space (the paper found one shared "
                     "by cats' eyes and nose).</p>")
        parts.append(_table(["channel", "spaces"], [[_n(c), _e(", ".join(k))] for c, k in shared.items()]))
    return "".join(parts)


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


def _example_card(assessment: Any, sentence: str, radar: Path) -> str:
    path = Path(assessment.path)
    thumb = _thumbnail(path)
    probs = sorted(assessment.class_probabilities.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{c} {p:.3f}" for c, p in probs[:5])
    parts = ['<div class="example">', f"<h3>{_e(path.name)}</h3>", '<div class="grid">']
    if thumb:
        parts.append(f'<figure><img src="{thumb}" alt="{_e(path.name)}"><figcaption>'
                     f"{_e(path.name)}</figcaption></figure>")
    parts.append(_figure(radar, "radar map of P_s", "the radar map could not be drawn"))
    parts.append('<div class="facts">')
    parts.append(f"<p>predicted <b>{_e(assessment.predicted)}</b> ({_e(shown)})</p>")
    parts.append(f'<p class="sentence">{_e(sentence)}</p>')
    parts.append(_table(["space", "A_s", "P_s"],
                        [[_e(s.key), _n(s.activation, 4), _n(s.probability)] for s in assessment.spaces]))
    if assessment.concepts:
        parts.append(_table(
            ["concept", f"P ({assessment.predicted})", "ΔP", "rival", "rival P"],
            [[_e(c.concept), _n(c.probability), _n(c.delta), _e(c.rival or "none"), _n(c.rival_probability)]
             for c in assessment.concepts]))
    parts.append(f"<p>P_max {_num(assessment.p_max)} ({_e(assessment.concept_max or 'n/a')}), "
                 f"ΔmaxP {_num(assessment.delta_max_p)}</p>")
    parts.append("</div></div></div>")
    return "".join(parts)


def _examples_section(model: TraitModel, spaces: SpaceSet, examples: Sequence[str | Path] | None,
                      template_name: str, batch_size: int, progress: bool,
                      failures: list[tuple[Path, str]]) -> tuple[str, int]:
    from tqdm.auto import tqdm

    from ..data.images import expand_paths, iter_batches
    from ..explain.trust import assess
    from ..models.inference import model_size
    from ..plugin.manager import get_explanation_template
    from .radar import radar_map

    parts = ['<h2 id="examples">Example explanations</h2>']
    if not examples:
        parts.append(_note("No example images given (pass --examples IMG... / examples=[...])."))
        return "".join(parts), 0
    template = get_explanation_template(template_name)
    paths = expand_paths(examples)
    mine: list[tuple[Path, str]] = []
    cards = []
    with tempfile.TemporaryDirectory(prefix="sxai-report-") as tmp, \
            tqdm(total=len(paths), desc="report examples", unit="img", disable=not progress) as bar:
        for batch in iter_batches(paths, model_size(model), batch_size, mine):
            for assessment in assess(model, spaces, batch.images, batch.paths):
                radar = radar_map(assessment, Path(tmp) / f"{len(cards)}.png")
                cards.append(_example_card(assessment, template.render(assessment), radar))
            bar.update(len(batch.paths))
        bar.update(len(paths) - bar.n)
    parts.append(f"<p>Explanations by the <code>{_e(template.name)}</code> template.</p>")
    parts.extend(cards)
    for path, why in mine:
        parts.append(_note(f"skipped {path.name}: {why}"))
    failures.extend(mine)
    return "".join(parts), len(cards)


# ---------------------------------------------------------------------------------------- main
def _spaces_folder(model: TraitModel, spaces_dir: str | Path | None) -> Path:
    from ..explain.trust import default_spaces_dir

    if spaces_dir is None:
        folder = default_spaces_dir(model.name)
        if folder is None:
            raise SpaceError(f"no spaces folder given and none is bundled for backbone {model.name!r}; "
                             "build one with `sxai space ... --out DIR` and pass it (--spaces DIR)")
        return folder
    folder = Path(spaces_dir)
    if not folder.is_dir():
        raise SpaceError(f"{folder}: not a folder; pass the folder `sxai space --out` wrote "
                         "(space files, report.json, plots/)")
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
    examples_html, n_examples = _examples_section(model, spaces, examples, template, batch_size,
                                                  progress, failures)

    toc = ['<nav><ul><li><a href="#traits">Common traits</a></li>']
    toc += [f'<li><a href="#space-{i}">Space {_e(s.key)}</a></li>' for i, s in enumerate(spaces)]
    toc += ['<li><a href="#shared">Shared channels</a></li>',
            f'<li><a href="#examples">Example explanations ({n_examples})</a></li></ul></nav>']
    body = [_header(model, folder, summary), *(_note(n) for n in notes), "".join(toc),
            _traits_section(Path(traits_dir) if traits_dir is not None else None)]
    plots = folder / "plots"
    for i, space in enumerate(spaces):
        figures = {**space.evaluation, **(per_space.get(space.key) or {})}
        body.append(_space_section(i, space, figures, plots, owners))
    body.append(_shared_section(owners))
    body.append(examples_html)
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>S-XAI report: {_e(model.name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
    return atomic_write(out_html, lambda tmp: tmp.write_text(page, encoding="utf-8"))
