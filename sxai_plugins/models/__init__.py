"""The model, image → (logits, GAP traits): the TraitModel, the timm adapter and built-in backbones.

Plugin authors build their backbones with :func:`build_timm_trait_model`.
"""

from .timm_adapter import TimmBody, build_timm_trait_model, load_weights_file

__all__ = ["TimmBody", "build_timm_trait_model", "load_weights_file"]
