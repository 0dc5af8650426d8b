"""AlexNet in timm's registry: torchvision's model with timm's interface and pretrained config.

Importing this module registers ``alexnet`` with timm (the plugin does so when a model is built).
"""

from __future__ import annotations

import torch
import torchvision.models
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

TORCHVISION_WEIGHTS = torchvision.models.AlexNet_Weights.IMAGENET1K_V1


class AlexNet(torchvision.models.AlexNet):
    """torchvision's AlexNet, with timm's model interface (``forward_features`` and friends).

    ``num_classes=0`` drops torchvision's classifier (the MLP on the 6×6 pooled map): the head is
    then a global average pool of the last conv map, as timm's models have without a classifier.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> None:
        super().__init__(num_classes=num_classes or 1000, dropout=drop_rate)
        if in_chans != 3:  # timm's loader adapts pretrained first-conv weights to in_chans
            self.features[0] = nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2)
        self.num_features = 256
        self.drop_rate = drop_rate
        self.num_classes = num_classes
        if num_classes == 0:
            self.reset_classifier(0)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        if num_classes > 0:
            fresh = torchvision.models.AlexNet(num_classes=num_classes, dropout=self.drop_rate)
            self.avgpool, self.classifier = fresh.avgpool, fresh.classifier
        else:
            self.avgpool = nn.Identity()
            self.classifier = nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.num_classes == 0:
            return x.mean(dim=(2, 3))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _filter_fn(state_dict: dict[str, torch.Tensor], model: AlexNet) -> dict[str, torch.Tensor]:
    """torchvision's checkpoint as it is, less the classifier MLP a ``num_classes=0`` model has dropped.

    (timm's loader itself drops only the last layer, ``classifier.6``, when the class counts differ.)
    """
    own = model.state_dict()
    return {k: v for k, v in state_dict.items() if k in own or not k.startswith("classifier.")}


default_cfgs = generate_default_cfgs(
    {
        "alexnet.tv_in1k": {
            "url": TORCHVISION_WEIGHTS.url,
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": (6, 6),
            "crop_pct": 0.875,  # torchvision: resize 256, centre crop 224
            "interpolation": "bilinear",
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "features.0",
            "classifier": "classifier.6",
            "license": "bsd-3-clause",
            "origin_url": "https://github.com/pytorch/vision",
        },
    }
)


@register_model
def alexnet(pretrained: bool = False, **kwargs) -> AlexNet:
    """AlexNet (torchvision layout and ImageNet weights), built and loaded by timm."""
    return build_model_with_cfg(
        AlexNet, "alexnet", pretrained, pretrained_filter_fn=_filter_fn, **kwargs
    )
