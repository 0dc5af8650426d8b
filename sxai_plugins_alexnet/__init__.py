"""sxai backbone plugin: AlexNet, registered in timm's model registry, with a GAP head.

timm has no AlexNet, so importing this plugin registers one (``timm.create_model("alexnet")``) with
torchvision's layout, so torchvision AlexNet state dicts load as they are. Traits are the GAP of the
256-channel map after the last conv block.

``pretrained=True`` downloads torchvision's ImageNet weights; offline that fails with a message saying
to pass ``weights=`` a local torchvision AlexNet state dict (e.g. saved once online with
``torch.save(torchvision.models.alexnet(weights="DEFAULT").state_dict(), "alexnet.pth")``).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from sxai_plugins import BackboneSpec, TraitModel, WeightsError, hookimpl
from sxai_plugins.models import build_timm_trait_model

TORCHVISION_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
PRETRAINED_CFG = {
    "url": TORCHVISION_URL,
    "architecture": "alexnet",
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "num_classes": 1000,
    "classifier": "classifier",
    "first_conv": "features.0",
}


class AlexNet(nn.Module):
    """torchvision's AlexNet, with timm's model interface (``forward_features`` and friends)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.num_features = 256
        self.pretrained_cfg = dict(PRETRAINED_CFG)
        self.default_cfg = self.pretrained_cfg
        self.reset_classifier(num_classes, dropout)

    def reset_classifier(self, num_classes: int, dropout: float = 0.5) -> None:
        self.num_classes = num_classes
        if num_classes > 0:
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )
        else:  # a GAP head replaces torchvision's classifier
            self.avgpool = nn.Identity()
            self.classifier = nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 0:
            return x.mean(dim=(2, 3))
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def alexnet(pretrained: bool = False, num_classes: int = 1000, **kwargs) -> AlexNet:
    """AlexNet (torchvision layout). timm passes its factory options, which AlexNet ignores."""
    model = AlexNet(num_classes=num_classes)
    if pretrained:
        try:
            state = torch.hub.load_state_dict_from_url(TORCHVISION_URL, map_location="cpu", progress=False)
        except Exception as exc:
            raise WeightsError(
                f"could not download torchvision's AlexNet weights ({type(exc).__name__}: {exc}). "
                "Offline, pass a local torchvision AlexNet state dict: "
                "create_model('alexnet', weights='alexnet.pth') or --weights alexnet.pth"
            ) from exc
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own})
    return model


def build_alexnet(
    pretrained: bool = False, weights: str | None = None, class_names: list[str] | None = None
) -> TraitModel:
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
