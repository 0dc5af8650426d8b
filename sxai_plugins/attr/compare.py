"""Semantic attributions side by side with Captum's class attributions, as one figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def comparison_panels(model, space, image: np.ndarray, methods: Sequence[str],
                      semantic_methods: Sequence[str], options: dict) -> list[tuple[str, torch.Tensor]]:
    """(title, ``3×H×W`` attribution) per class method, then per semantic method, for one image;
    ``options`` as :func:`~.semantic.compare_attributions` takes them."""
    from ..data.images import to_tensor
    from .semantic import (
        N_SEGMENTS,
        ClassAttribution,
        SemanticAttribution,
        comparison_options,
        predicted_class,
        superpixel_mask,
    )

    x = to_tensor(image)[None].contiguous().to(next(model.parameters()).device)
    mask = superpixel_mask(x, options.get("n_segments", N_SEGMENTS))
    target = predicted_class(model, x)
    label = model.class_names[int(target[0])]
    panels = []
    for method in methods:
        attr = ClassAttribution(model, method).attribute(x, target=target, **comparison_options(method, options, mask))
        panels.append((f"{method}: logit '{label}'", attr[0]))
    for method in semantic_methods:
        attr = SemanticAttribution(model, space, method).attribute(x, **comparison_options(method, options, mask))
        panels.append((f"{method}: A_s {space.key}", attr[0]))
    return panels


def comparison_figure(image: np.ndarray, panels: Sequence[tuple[str, torch.Tensor]], path: str | Path,
                      region: np.ndarray | None = None, title: str = "") -> Path:
    """One row: the image (with the region's outline, if given), then each attribution's positive
    part blended over the image (Captum's ``visualize_image_attr``). Written atomically."""
    from captum.attr import visualization as viz
    from matplotlib.figure import Figure

    from .._utils.io import atomic_write

    fig = Figure(figsize=(3 * (len(panels) + 1), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels) + 1, squeeze=False)[0]
    axes[0].imshow(image)
    if region is not None and region.any():
        axes[0].contour(region.astype(float), levels=[0.5], colors="lime", linewidths=1.5)
    axes[0].set_title("image" + (" + region" if region is not None else ""), fontsize=9)
    axes[0].axis("off")
    for ax, (name, attr) in zip(axes[1:], panels):
        heat = attr.detach().float().cpu().permute(1, 2, 0).numpy()
        if heat.sum(axis=2).max() > 0:
            viz.visualize_image_attr(heat, image, method="blended_heat_map", sign="positive",
                                     plt_fig_axis=(fig, ax), use_pyplot=False, title=name)
        else:  # nothing positive to draw: Captum would divide by zero
            ax.imshow(image)
            ax.set_title(f"{name}\n(no positive attribution)")
        ax.title.set_fontsize(9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
