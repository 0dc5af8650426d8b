"""Radar maps of semantic probabilities: concepts on the axes, one polygon per class (paper Fig. 4)."""

from __future__ import annotations

import math
from pathlib import Path

from .._utils.io import atomic_write
from ..explain.trust import Assessment


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


def radar_figure(assessment: Assessment, title: str | None = None):
    """The matplotlib Figure of :func:`radar_map`: a radar with three or more concepts; with one or
    two a radar is a line or a point, so grouped bars show the same numbers."""
    # the object-oriented API with an Agg canvas: no pyplot global state, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    concepts, series = radar_data(assessment)
    n = len(concepts)
    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
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
            ax.bar([k + (i - (len(series) - 1) / 2) * width for k in range(n)], values, width,
                   label=class_name, alpha=0.8, hatch=hatch)
        ax.set_xticks(range(n))
        ax.set_xticklabels(concepts)
        ax.set_ylabel("semantic probability")
    ax.set_ylim(0.0, 1.0)
    # below the plot, in columns: beside it, a legend ran off the right edge of the image
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08 if n >= 3 else -0.1), fontsize="small",
              ncol=min(len(series), 4), frameon=False)
    if title is None:
        p = assessment.class_probabilities.get(assessment.predicted)
        title = f"predicted: {assessment.predicted}" + (f" ({p:.3f})" if p is not None else "")
    ax.set_title(title, pad=18, fontsize="medium")
    # fixed margins instead of tight_layout, which draws the figure twice (half the time per map)
    fig.subplots_adjust(left=0.12, right=0.88, top=0.84, bottom=0.2)
    return fig


def radar_map(assessment: Assessment, path: str | Path, title: str | None = None, dpi: int = 100) -> Path:
    """Draw the radar map of one assessment and write it as a PNG, atomically."""
    fig = radar_figure(assessment, title)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
