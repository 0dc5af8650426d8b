"""Semantic attributions side by side with Captum's class attributions (drawn as one figure by
``viz.plots.comparison_figure``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def comparison_panels(
    model,
    space,
    image: np.ndarray,
    methods: Sequence[str],
    semantic_methods: Sequence[str],
    options: dict,
    progress: bool = False,
) -> list[tuple[str, torch.Tensor]]:
    """(title, ``3×H×W`` attribution) per class method, then per semantic method, for one image;
    ``options`` as :func:`~.semantic.compare_attributions` takes them. ``progress``: a bar over
    the methods (occlusion and integrated gradients take seconds to minutes each on a CPU)."""
    from tqdm.auto import tqdm

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
    with tqdm(
        total=len(methods) + len(semantic_methods),
        desc="attributions",
        unit="method",
        disable=not progress,
    ) as bar:
        for method in methods:
            bar.set_postfix_str(f"class {method}")
            attr = ClassAttribution(model, method).attribute(
                x, target=target, **comparison_options(method, options, mask)
            )
            panels.append((f"{method}: logit '{label}'", attr[0]))
            bar.update()
        for method in semantic_methods:
            bar.set_postfix_str(f"semantic {method}")
            attr = SemanticAttribution(model, space, method).attribute(
                x, **comparison_options(method, options, mask)
            )
            panels.append((f"{method}: A_s {space.key}", attr[0]))
            bar.update()
    return panels
