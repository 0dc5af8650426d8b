"""The README.md model card of a space repository, generated from the spaces themselves.

The card is ``huggingface_hub.ModelCard.from_template`` over ``card_template.md`` (Jinja2) with
``ModelCardData`` as its metadata; this module only works out the values the template shows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from sxai_plugins.spaces.space import SemanticSpace

from .layout import INDEX_NAME, space_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")
TEMPLATE = Path(__file__).with_name("card_template.md")
TAGS = ("sxai", "s-xai", "semantic-spaces", "explainable-ai")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shared(spaces: Sequence[SemanticSpace], get) -> str:
    values = {_fmt(get(s)) for s in spaces}
    return values.pop() if len(values) == 1 else "varies (see each file's metadata)"


def base_model(backbone: str) -> str | None:
    """The Hub id of the weights the backbone loads (e.g. ``timm/vgg19.tv_in1k``), where known.

    That is timm's pretrained cfg for the name, unless an installed plugin serves the name with
    weights of its own (its ``pretrained_source`` does not name that id). Only a guide for the
    Hub's model tree: which weights the spaces fit is the fingerprint in the index.
    """
    import timm
    from timm.models import get_pretrained_cfg

    from sxai_plugins.plugin.manager import backbone_table

    cfg = get_pretrained_cfg(backbone) if timm.is_model(backbone) else None
    hub_id = cfg.hf_hub_id if cfg is not None else None
    if not hub_id:
        return None
    served = backbone_table().get(backbone)
    if served is not None and hub_id not in (served[1].pretrained_source or ""):
        return None
    return hub_id


def card_data(spaces: Sequence[SemanticSpace]) -> ModelCardData:
    backbone = spaces[0].backbone
    return ModelCardData(
        library_name="sxai", tags=[*TAGS, backbone], base_model=base_model(backbone)
    )


def _built(spaces: Sequence[SemanticSpace]) -> list[tuple[str, str]]:
    """How the spaces were built: the masker, image and SSN counts, then every recipe entry."""
    rows = [
        ("masker", _shared(spaces, lambda s: s.masker or "n/a")),
        ("images per class and concept", _shared(spaces, lambda s: s.n_images)),
        ("SSNs per space", _shared(spaces, lambda s: s.n_ssn)),
    ]
    recipe_keys = sorted({k for s in spaces for k in _flatten(s.recipe)})
    rows += [
        (key, _shared(spaces, lambda s, k=key: _flatten(s.recipe).get(k, "n/a")))
        for key in recipe_keys
    ]
    return rows


def _table(spaces: Sequence[SemanticSpace]) -> tuple[list[list[str]], bool]:
    """The spaces table, header first (cells escaped), and whether any evaluation figure was recorded."""
    eval_keys = sorted({k for s in spaces for k in _flatten(s.evaluation)})
    rows = [["class", "concept", "SSNs", "reference n", "QQ R²", *eval_keys, "file"]]
    for s in sorted(spaces, key=lambda s: s.key):
        ev = _flatten(s.evaluation)
        ref = s.reference
        rows.append(
            [
                s.class_name,
                s.concept,
                str(s.n_ssn),
                str(ref.n) if ref else "—",
                _fmt(ref.qq_r2) if ref else "—",
                *(_fmt(ev[k]) if k in ev else "—" for k in eval_keys),
                f"[{space_path(s).split('/', 1)[1]}]({space_path(s)})",
            ]
        )
    return [[_cell(c) for c in row] for row in rows], bool(eval_keys)


def render_card(
    spaces: Sequence[SemanticSpace], repo_id: str, extra_paths: Sequence[str] = ()
) -> str:
    """Markdown with Hub metadata: what the spaces are, how they were built, their figures, how to load."""
    first = spaces[0]
    table, has_evaluation = _table(spaces)
    plots = [p for p in extra_paths if p.lower().endswith(IMAGE_SUFFIXES)]
    card = ModelCard.from_template(
        card_data(spaces),
        template_path=str(TEMPLATE),
        repo_id=repo_id,
        backbone=first.backbone,
        n_spaces=len(spaces),
        trait_dim=first.trait_dim,
        trait_layer=first.trait_layer,
        fingerprint=first.fingerprint,
        classes=sorted({s.class_name for s in spaces}),
        concepts=sorted({s.concept for s in spaces}),
        index_name=INDEX_NAME,
        built=_built(spaces),
        table=table,
        has_evaluation=has_evaluation,
        plots=plots,
        others=[p for p in extra_paths if p not in plots],
    )
    return str(card).rstrip() + "\n"
