"""sxai backbone plugin: AlexNet, registered in timm's model registry, with a GAP head.

timm has no AlexNet, so importing this plugin registers one the way timm registers its own models
(``generate_default_cfgs`` + ``register_model`` + ``build_model_with_cfg``): the model is
torchvision's ``AlexNet`` with timm's model interface, so torchvision AlexNet state dicts load as
they are, and ``timm.create_model("alexnet", pretrained=True)`` loads torchvision's ImageNet weights
through timm's loader (``pretrained_cfg_overlay=dict(file="alexnet.pth")`` for a local copy). Traits
are the GAP of the 256-channel map after the last conv block.

``pretrained=True`` downloads torchvision's ImageNet weights; offline that fails with a message saying
to pass ``weights=`` a local torchvision AlexNet state dict (e.g. saved once online with
``torch.save(torchvision.models.alexnet(weights="DEFAULT").state_dict(), "alexnet.pth")``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sxai_plugins import BackboneSpec, hookimpl

if (
    TYPE_CHECKING
):  # torch, torchvision and timm load when a model is built, not when plugins are listed
    from sxai_plugins import TraitModel


def build_alexnet(
    pretrained: bool = False, weights: str | None = None, class_names: list[str] | None = None
) -> TraitModel:
    from sxai_plugins.models import build_timm_trait_model

    from . import _model  # noqa: F401  (registers "alexnet" with timm)

    return build_timm_trait_model(
        "alexnet", pretrained=pretrained, weights=weights, class_names=class_names
    )


@hookimpl
def sxai_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            "alexnet",
            build_alexnet,
            "AlexNet (registered in timm by this plugin) with a GAP head",
            "torchvision ImageNet weights",
        )
    ]
