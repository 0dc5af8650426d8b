"""The README.md model card of a space repository, generated from the spaces themselves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from huggingface_hub import ModelCardData

from sxai_plugins.spaces.space import SemanticSpace

from .layout import INDEX_NAME, space_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


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


def render_card(spaces: Sequence[SemanticSpace], repo_id: str, extra_paths: Sequence[str] = ()) -> str:
    """Markdown with Hub metadata: what the spaces are, how they were built, their figures, how to load."""
    first = spaces[0]
    meta = ModelCardData(
        library_name="sxai",
        tags=["sxai", "s-xai", "semantic-spaces", "explainable-ai", first.backbone],
    )
    classes = sorted({s.class_name for s in spaces})
    concepts = sorted({s.concept for s in spaces})
    lines = [
        "---", meta.to_yaml(), "---", "",
        f"# Semantic spaces for `{first.backbone}`", "",
        f"{len(spaces)} semantic spaces (S-XAI, Xu, Chen & Zhang, *Adv. Sci.* 2022) over the "
        f"{first.trait_dim} pooled trait channels (`{first.trait_layer}`) of the backbone `{first.backbone}` "
        f"(weights fingerprint `{first.fingerprint}`). Each space lists a few semantically sensitive "
        "neurons and turns a trait vector into the probability that the image shows the concept.", "",
        f"- classes: {', '.join(classes)}",
        f"- concepts: {', '.join(concepts)}",
        f"- index: [`{INDEX_NAME}`]({INDEX_NAME}) (sha256 and size of every file); "
        "files are safetensors only, no pickle", "",
        "## How to load", "",
        "```python",
        "import sxai_plugins, spaces_hub",
        f'model = sxai_plugins.create_model("{first.backbone}")',
        f'spaces = spaces_hub.pull("{repo_id}", model=model)  # checks the backbone fingerprint',
        "```", "",
        "Then `SpaceSet(spaces).probabilities(model.traits(images))` gives one probability per space "
        f"and image. On the command line: `sxai hub pull {repo_id}`, or pass `hf://{repo_id}` "
        "(optionally `@revision`) wherever an sxai command takes spaces.", "",
        "## How they were built", "",
        f"- masker: {_shared(spaces, lambda s: s.masker or 'n/a')}",
        f"- images per class and concept: {_shared(spaces, lambda s: s.n_images)}",
        f"- SSNs per space: {_shared(spaces, lambda s: s.n_ssn)}",
    ]
    recipe_keys = sorted({k for s in spaces for k in _flatten(s.recipe)})
    for key in recipe_keys:
        lines.append(f"- {key}: {_shared(spaces, lambda s, k=key: _flatten(s.recipe).get(k, 'n/a'))}")
    lines += [
        "", "The reference distribution of each space is a normal fitted to its weighted activation "
        "over a reference image set (n images; QQ R² says how normal it is).", "",
        "## Spaces", "",
    ]
    eval_keys = sorted({k for s in spaces for k in _flatten(s.evaluation)})
    header = ["class", "concept", "SSNs", "reference n", "QQ R²", *eval_keys, "file"]
    lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
    lines.append("|" + "---|" * len(header))
    for s in sorted(spaces, key=lambda s: s.key):
        ev = _flatten(s.evaluation)
        ref = s.reference
        row = [s.class_name, s.concept, str(s.n_ssn), str(ref.n) if ref else "—",
               _fmt(ref.qq_r2) if ref else "—", *(_fmt(ev[k]) if k in ev else "—" for k in eval_keys),
               f"[{space_path(s).split('/', 1)[1]}]({space_path(s)})"]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if not eval_keys:
        lines += ["", "No evaluation figures were recorded with these spaces."]
    plots = [p for p in extra_paths if p.lower().endswith(IMAGE_SUFFIXES)]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p}]({p})" for p in plots]
    others = [p for p in extra_paths if p not in plots]
    if others:
        lines += ["", "## Other files", ""]
        lines += [f"- [`{p}`]({p})" for p in others]
    return "\n".join(lines).rstrip() + "\n"
