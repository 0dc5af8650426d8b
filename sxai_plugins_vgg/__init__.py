"""sxai backbone plugin: timm's VGG with the paper's GAP head.

The S-XAI paper put a global average pooling layer on VGG-19's last conv block in place of the
fully connected pre-logits. timm's ``vgg*`` models carry those layers as a ``ConvMlp`` pre-logits
module; this plugin removes it (saving ~100M parameters) so traits are the GAP of the 512-channel map.

Offline, ``pretrained=True`` cannot fetch timm's weights: pass ``weights=`` a local timm or torchvision
VGG state dict instead (CLI: ``--weights vgg19.safetensors``). The classifier head starts untrained:
train it with ``sxai train-head``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from sxai_plugins import BackboneSpec, hookimpl

if TYPE_CHECKING:  # torch and timm load when a model is built, not when plugins are listed
    from torch import nn

    from sxai_plugins import TraitModel

VARIANTS = {
    "vgg19": "VGG-19 (the paper's backbone) with a GAP head",
    "vgg16": "VGG-16 with a GAP head",
    "vgg19_bn": "VGG-19 with batch norm and a GAP head",
}


def _drop_pre_logits(model: nn.Module) -> None:
    from torch import nn

    model.pre_logits = nn.Identity()


def build_vgg(
    timm_name: str,
    pretrained: bool = False,
    weights: str | None = None,
    class_names: list[str] | None = None,
) -> TraitModel:
    from sxai_plugins.models import build_timm_trait_model

    from_hub = pretrained and weights is None
    return build_timm_trait_model(
        timm_name,
        pretrained=pretrained,
        weights=weights,
        class_names=class_names,
        prune=_drop_pre_logits,
        # Unless timm's hub checkpoint (which has the full MLP) is loaded, build the MLP we are about
        # to drop at a negligible width: initialising its 100M parameters costs seconds.
        timm_kwargs=None if from_hub else {"mlp_ratio": 1 / 4096},
    )


@hookimpl
def sxai_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(name, partial(build_vgg, name), description, f"timm hub: timm/{name}.tv_in1k")
        for name, description in VARIANTS.items()
    ]
