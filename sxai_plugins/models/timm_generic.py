"""The core's generic backbone adapter: any timm CNN by name, with a GAP head."""

from __future__ import annotations

from functools import partial

from ..plugin.hookspecs import BackboneSpec, hookimpl


def _build(name: str, **options):
    from .timm_adapter import build_timm_trait_model

    return build_timm_trait_model(name, **options)


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


@hookimpl(trylast=True)
def sxai_resolve_backbone(name: str) -> BackboneSpec | None:
    if not _is_timm_model(name):
        return None
    return BackboneSpec(
        name=name,
        build=partial(_build, name),
        description=f"timm {name} with a GAP head (generic adapter)",
        pretrained_source=f"timm hub weights for {name}",
    )
