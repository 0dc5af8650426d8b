"""Semantic attributions side by side with Captum's class attributions (drawn as one figure by
``viz.plots.comparison_figure``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def comparison_panels(model, space, image: np.ndarray, methods: Sequence[str],
                      semantic_methods: Sequence[str], options: dict) -> list[tuple[str, torch.Tensor]]:
    """(title, ``3×H×W`` attribution) per class method, then per semantic method, for one image."""
    from .semantic import ClassAttribution, SemanticAttribution, superpixel_mask

    device = next(model.parameters()).device
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous().to(device)
    mask = superpixel_mask(x, options.get("n_segments", 40))
    klass, semantic = ClassAttribution(model), SemanticAttribution(model, space)
    target = klass.predicted(x)
    label = model.class_names[int(target[0])]
    panels = []
    for method in methods:
        kw = dict(options, feature_mask=mask) if method == "occlusion" else options
        panels.append((f"{method}: logit '{label}'", klass.attribute(x, method, target=target, **kw)[0]))
    for method in semantic_methods:
        kw = dict(options, feature_mask=mask) if method == "occlusion" else options
        panels.append((f"{method}: A_s {space.key}", semantic.attribute(x, method, **kw)[0]))
    return panels
