"""Built-in backbone adapters and the helpers plugin authors use to write their own."""

from .timm_adapter import TimmBody, build_timm_trait_model, load_weights_file

__all__ = ["TimmBody", "build_timm_trait_model", "load_weights_file"]
