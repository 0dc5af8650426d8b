"""Every picture sxai draws, in one place: information ratios and stability of the common traits,
PC1 per layer, radar maps of semantic probabilities, the distribution of a space, contact sheets,
ROC curves of the adversarial detector and attribution comparisons.

Only matplotlib's object-oriented API is used: a :class:`matplotlib.figure.Figure` with an Agg
canvas of its own, never the global-state interface and never a backend switch, so drawing a
picture leaves the backend of a notebook or an application alone and keeps no figures alive. Every picture is
written as a PNG through :func:`save_figure`, atomically (``sxai_plugins._utils.io.atomic_write``).
matplotlib and PIL are imported when a picture is drawn, not when this module is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils.io import atomic_write

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from ..explain.trust import Assessment
    from ..robust.adversarial import AdversarialReport
    from ..search.index import Match
    from ..spaces.space import SemanticSpace
    from ..traits.common import Stability
    from ..traits.layers import LayerRatio

__all__ = [
    "comparison_figure",
    "contact_sheet",
    "distribution_plot",
    "extreme_sheets",
    "new_figure",
    "plot_information_ratios",
    "plot_layer_ratios",
    "plot_stability",
    "radar_data",
    "radar_figure",
    "radar_map",
    "roc_figure",
    "save_figure",
]


# ------------------------------------------------------------------------------------ helpers
def new_figure(**kwargs: Any) -> Figure:
    """A :class:`~matplotlib.figure.Figure` on its own Agg canvas (``kwargs`` go to ``Figure``):
    no global figure manager, no backend switch, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(picture: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib Figure (at ``dpi``) or a PIL image as a PNG at ``path``, atomically, and
    return the path."""
    if hasattr(picture, "savefig"):
        return atomic_write(path, lambda tmp: picture.savefig(tmp, format="png", dpi=dpi))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


# ------------------------------------------------------------------------------ common traits
def plot_information_ratios(
    ratios: np.ndarray, path: str | Path, shown: int = 10, title: str = ""
) -> Path:
    """Bar chart of the first ``shown`` information ratios with the cumulative ratio (paper Fig. 2c)."""
    ratios = np.asarray(ratios, dtype=np.float64)[:shown] * 100
    x = np.arange(1, len(ratios) + 1)
    fig = new_figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.bar(x, ratios, color="tab:blue")
    for xi, value in zip(x, ratios):
        ax.annotate(f"{value:.1f}%", (xi, value), ha="center", va="bottom", fontsize=8)
    ax.plot(x, np.cumsum(ratios), "kx--", label="cumulative")
    ax.axhline(85, color="grey", lw=0.8, ls=":", label="85%")
    ax.set_xticks(x, [f"PC{i}" for i in x])
    ax.set_ylim(0, 108)  # room for the labels above a dominant PC1
    ax.set_ylabel("information ratio (%)")
    ax.set_title(title or "Row-centred PCA of the GAP traits")
    ax.legend()
    return save_figure(fig, path, dpi=120)


def plot_stability(result: Stability, path: str | Path, title: str = "") -> Path:
    """Spread e of PC1 against the sample size Ns (paper Fig. 2d)."""
    fig = new_figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    values = [result.spreads[n] for n in result.sizes]
    ax.plot(result.sizes, values, "o-")
    for n, e in zip(result.sizes, values):
        ax.annotate(
            f"{e:.1f}%", (n, e), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8
        )
    ax.set_xticks(result.sizes)
    ax.set_xlabel("number of samples Ns")
    ax.set_ylabel(f"spread e of PC1 (%), {result.repeats} repeats")
    ax.set_title(title or "Stability of the common traits")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=120)


def plot_layer_ratios(ratios: Sequence[LayerRatio], path: str | Path, title: str = "") -> Path:
    """Line plot of PC1's information ratio per layer (mean and pooled)."""
    x = np.arange(len(ratios))
    fig = new_figure(figsize=(max(6.0, 0.35 * len(ratios) + 2), 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, [100 * r.ratio_mean for r in ratios], "o-", label="mean over positions")
    ax.plot(
        x,
        [100 * r.ratio_pooled for r in ratios],
        "x--",
        alpha=0.7,
        label="pooled (variance-weighted)",
    )
    ax.set_xticks(x, [r.name for r in ratios], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("information ratio of PC1 (%)")
    ax.set_xlabel("layer (last: global average pooling)")
    ax.set_title(title or "Row-centred PCA per layer")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=120)


# ---------------------------------------------------------------------------------- radar map
def radar_data(assessment: Assessment) -> tuple[list[str], dict[str, list[float]]]:
    """(concepts in first-seen order, class -> P per concept); a missing space counts as 0."""
    concepts: list[str] = []
    classes: list[str] = []
    table: dict[tuple[str, str], float] = {}
    for score in assessment.spaces:
        if score.concept not in concepts:
            concepts.append(score.concept)
        if score.class_name not in classes:
            classes.append(score.class_name)
        table[score.class_name, score.concept] = score.probability
    return concepts, {c: [table.get((c, k), 0.0) for k in concepts] for c in classes}


def radar_figure(assessment: Assessment, title: str | None = None) -> Figure:
    """The radar map of semantic probabilities, concepts on the axes and one polygon per class
    (paper Fig. 4), with three or more concepts; with one or two a radar is a line or a point, so
    grouped bars show the same numbers."""
    concepts, series = radar_data(assessment)
    n = len(concepts)
    fig = new_figure(figsize=(4.5, 4.5))
    if n >= 3:
        angles = [2 * math.pi * i / n for i in range(n)]
        ax = fig.add_subplot(projection="polar")
        ax.set_theta_offset(math.pi / 2)
        ax.set_theta_direction(-1)
        ax.set_xticks(angles)
        ax.set_xticklabels(concepts)
        ax.set_yticks([0.2, 0.5, 0.8])
        for class_name, values in series.items():
            style = "-" if class_name == assessment.predicted else "--"
            ax.plot(angles + angles[:1], values + values[:1], style, linewidth=2, label=class_name)
            ax.fill(angles + angles[:1], values + values[:1], alpha=0.15)
    else:
        ax = fig.add_subplot()
        width = 0.8 / max(len(series), 1)
        for i, (class_name, values) in enumerate(series.items()):
            hatch = None if class_name == assessment.predicted else "//"
            ax.bar(
                [k + (i - (len(series) - 1) / 2) * width for k in range(n)],
                values,
                width,
                label=class_name,
                alpha=0.8,
                hatch=hatch,
            )
        ax.set_xticks(range(n))
        ax.set_xticklabels(concepts)
        ax.set_ylabel("semantic probability")
    ax.set_ylim(0.0, 1.0)
    # below the plot, in columns: beside it, a legend ran off the right edge of the image
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08 if n >= 3 else -0.1),
        fontsize="small",
        ncol=min(len(series), 4),
        frameon=False,
    )
    if title is None:
        p = assessment.class_probabilities.get(assessment.predicted)
        title = f"predicted: {assessment.predicted}" + (f" ({p:.3f})" if p is not None else "")
    ax.set_title(title, pad=18, fontsize="medium")
    # fixed margins instead of tight_layout, which draws the figure twice (half the time per map)
    fig.subplots_adjust(left=0.12, right=0.88, top=0.84, bottom=0.2)
    return fig


def radar_map(
    assessment: Assessment, path: str | Path, title: str | None = None, dpi: int = 100
) -> Path:
    """Draw the radar map of one assessment (:func:`radar_figure`) and write it as a PNG."""
    return save_figure(radar_figure(assessment, title), path, dpi=dpi)


# ----------------------------------------------------------------------------- semantic space
def distribution_plot(space: SemanticSpace, activations: np.ndarray, path: str | Path) -> Path:
    """Histogram of A_s over the reference set with the fitted normal, and the Q-Q plot with R²."""
    from scipy import stats

    a = np.asarray(activations, dtype=float)
    ref = space.reference
    fig = new_figure(figsize=(9, 3.6))
    left, right = fig.subplots(1, 2)
    left.hist(a, bins=40, density=True, color="#9ecae1", edgecolor="white")
    xs = np.linspace(a.min(), a.max(), 200)
    left.plot(
        xs,
        stats.norm.pdf(xs, ref.mu, ref.sigma),
        color="#d62728",
        lw=2,
        label=f"N({ref.mu:.3g}, {ref.sigma:.3g}²)",
    )
    left.set(
        title=f"{space.key}: A_s over {ref.n} reference images", xlabel="A_s", ylabel="density"
    )
    left.legend(fontsize=8)
    (osm, osr), (slope, intercept, _r) = stats.probplot(a, dist="norm")
    right.scatter(osm, osr, s=6, color="#3182bd")
    right.plot(osm, slope * osm + intercept, color="#d62728", lw=1.5)
    right.set(title=f"Q-Q plot, R² = {ref.qq_r2:.3f}", xlabel="normal quantiles", ylabel="A_s")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def extreme_sheets(
    space: SemanticSpace,
    paths: Sequence[Path],
    probabilities: np.ndarray,
    folder: str | Path,
    low: float = 0.1,
    high: float = 0.9,
    limit: int = 24,
) -> list[Path]:
    """Contact sheets of the reference images with P_s < ``low`` and P_s > ``high``."""
    from ..search.index import Match

    folder = Path(folder)
    written = []
    order = np.argsort(probabilities)
    for name, picked in (
        ("low", [i for i in order if probabilities[i] < low][:limit]),
        ("high", [i for i in order[::-1] if probabilities[i] > high][:limit]),
    ):
        if not picked:
            continue
        matches = [
            Match(str(paths[i]), space.class_name, {}, {space.key: float(probabilities[i])})
            for i in picked
        ]
        written.append(
            contact_sheet(matches, folder / f"{space.key}.{name}.png", spaces=[space.key])
        )
    return written


def contact_sheet(
    matches: Sequence[Match],
    out: str | Path,
    spaces: Sequence[str] = (),
    thumb: int = 128,
    columns: int = 6,
) -> Path:
    """A PNG grid of the matches' thumbnails, each captioned with its name, prediction and the
    given spaces' P_s. An unreadable image shows as a grey tile."""
    from PIL import Image, ImageDraw

    from .._utils.errors import ImageLoadError
    from ..data.images import load_image
    from ..search.index import SearchIndexError

    if not matches:
        raise SearchIndexError("no matches: nothing to put on a contact sheet")
    columns = max(1, min(columns, len(matches)))
    rows = math.ceil(len(matches) / columns)
    lines = 2 + min(len(spaces), 3)
    caption = 12 * lines + 4
    sheet = Image.new("RGB", (columns * (thumb + 8) + 8, rows * (thumb + caption + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for i, match in enumerate(matches):
        x = 8 + (i % columns) * (thumb + 8)
        y = 8 + (i // columns) * (thumb + caption + 8)
        try:
            image = load_image(match.path)
            image.thumbnail((thumb, thumb))
            sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        except ImageLoadError:
            draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill="lightgrey")
            draw.text((x + 4, y + thumb // 2 - 6), "unreadable", fill="black")
        text = [Path(match.path).name[:22], f"pred: {match.predicted}"]
        text += [f"{key}: {match.probabilities[key]:.3f}" for key in spaces[:3]]
        for j, line in enumerate(text):
            draw.text((x, y + thumb + 2 + 12 * j), line, fill="black")
    return save_figure(sheet, out)


# ------------------------------------------------------------------------- adversarial detector
def roc_figure(report: AdversarialReport, path: str | Path, title: str = "") -> Path:
    """ROC curves of the detection score (clean vs successful adversarial), one panel per attack
    and one curve per ε, with the calibrated threshold's operating point (●, measured FPR and
    detection) and the paper rule's (×)."""
    from ..robust.adversarial import _number

    attacks = list(dict.fromkeys(r.attack for r in report.results))
    fig = new_figure(figsize=(4.6 * len(attacks), 4.4), layout="constrained")
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for ax, attack in zip(axes, attacks):
        rows = [r for r in report.results if r.attack == attack]
        for i, r in enumerate(rows):
            colour = colours[i % len(colours)]
            if r.roc:
                ax.plot(
                    r.roc["fpr"],
                    r.roc["tpr"],
                    color=colour,
                    lw=1.6,
                    label=f"ε={r.eps:g}: AUC {_number(r.auc)}, success {r.attack_success_rate:.0%}",
                )
            if report.detector and math.isfinite(r.detection_rate):
                ax.plot([r.false_positive_rate], [r.detection_rate], "o", color=colour, ms=7)
            for rule in r.rules[:1]:
                if math.isfinite(rule.detection_rate):
                    ax.plot(
                        [rule.false_positive_rate],
                        [rule.detection_rate],
                        "x",
                        color=colour,
                        ms=8,
                        mew=2,
                    )
        if report.detector:
            ax.axvline(report.detector["fpr"], color="grey", ls=":", lw=1)
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=1, ls="--")
        ax.set(
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            xlabel="false-positive rate (clean images)",
            ylabel="detection rate (successful adversarial)",
            title=f"{ {'adaptive': 'adaptive PGD', 'score-aware': 'score-aware PGD'}.get(attack, 'PGD') }, "
            f"{report.steps} steps",
        )
        ax.legend(loc="lower right", fontsize=8)
    score = report.detector["score"] if report.detector else "paper"
    fig.suptitle(
        title or f"{score} score ROC: ● calibrated threshold, × {report.rules[0].name} rule",
        fontsize=10,
    )
    return save_figure(fig, path, dpi=110)


# ------------------------------------------------------------------------------- attributions
def comparison_figure(
    image: np.ndarray,
    panels: Sequence[tuple[str, torch.Tensor]],
    path: str | Path,
    region: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """One row: the image (with the region's outline, if given), then each attribution's positive
    part blended over the image (Captum's ``visualize_image_attr``, drawn on our own axes)."""
    from captum.attr import visualization as viz

    fig = new_figure(figsize=(3 * (len(panels) + 1), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels) + 1, squeeze=False)[0]
    axes[0].imshow(image)
    if region is not None and region.any():
        axes[0].contour(region.astype(float), levels=[0.5], colors="lime", linewidths=1.5)
    axes[0].set_title("image" + (" + region" if region is not None else ""), fontsize=9)
    axes[0].axis("off")
    for ax, (name, attr) in zip(axes[1:], panels):
        heat = attr.detach().float().cpu().permute(1, 2, 0).numpy()
        if heat.sum(axis=2).max() > 0:
            viz.visualize_image_attr(
                heat,
                image,
                method="blended_heat_map",
                sign="positive",
                plt_fig_axis=(fig, ax),
                use_pyplot=False,
                title=name,
            )
        else:  # nothing positive to draw: Captum would divide by zero
            ax.imshow(image)
            ax.set_title(f"{name}\n(no positive attribution)")
        ax.title.set_fontsize(9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)
