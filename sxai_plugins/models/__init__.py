"""The model, image → (logits, GAP traits): the TraitModel, the timm adapter and built-in backbones.

Plugin authors build their backbones with :func:`build_timm_trait_model`. The names below load on
first use, so that listing plugins does not import timm.
"""

from __future__ import annotations

__all__ = ["TimmBody", "build_timm_trait_model", "load_weights_file"]


def __getattr__(name: str):
    if name in __all__:
        from . import timm_adapter

        return getattr(timm_adapter, name)
    raise AttributeError(f"module 'sxai_plugins.models' has no attribute {name!r}")
