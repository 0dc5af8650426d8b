"""The one model type S-XAI works on: conv features -> global average pooling -> linear classifier.

``TraitModel(x)`` takes RGB images in [0, 1] (normalisation happens inside the model, so attacks,
feature inversion and attributions all work in pixel space) and returns both the logits and the
pooled trait vectors, because S-XAI needs both for every image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .._utils.errors import WeightsError


class TraitOutput(NamedTuple):
    logits: torch.Tensor  # B × num_classes
    traits: torch.Tensor  # B × C, the GAP layer's output


class TraitModel(nn.Module):
    """A CNN with a GAP trait layer.

    Args:
        body: maps normalised ``B×3×H×W`` images to the last conv map ``B×C×h×w``.
        trait_dim: ``C``.
        class_names: one name per output of the classifier.
        name: the backbone name it was built from.
        input_size: ``(3, H, W)`` the backbone expects.
        mean, std: per-channel normalisation applied inside ``forward``.
    """

    def __init__(
        self,
        body: nn.Module,
        trait_dim: int,
        class_names: Sequence[str],
        *,
        name: str,
        input_size: tuple[int, int, int] = (3, 224, 224),
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("a TraitModel needs at least one class name")
        self.body = body
        self.head = nn.Linear(trait_dim, len(class_names))
        self.trait_dim = int(trait_dim)
        self.class_names = list(class_names)
        self.name = name
        self.input_size = tuple(int(v) for v in input_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_config(self) -> dict:
        """Preprocessing, in timm's ``data_config`` vocabulary."""
        return {
            "input_size": self.input_size,
            "mean": tuple(self.mean.flatten().tolist()),
            "std": tuple(self.std.flatten().tolist()),
            "interpolation": "bilinear",
        }

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last conv map ``B×C×h×w`` for images in [0, 1]."""
        return self.body((images - self.mean) / self.std)

    def traits(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> TraitOutput:
        traits = self.traits(images)
        return TraitOutput(self.head(traits), traits)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits alone: a plain ``forward_func`` for Captum."""
        return self.head(self.traits(images))

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Replace the classifier with a fresh one for ``class_names``."""
        device = self.head.weight.device
        self.class_names = list(class_names)
        self.head = nn.Linear(self.trait_dim, len(self.class_names)).to(device)

    def load_head(self, state: dict[str, torch.Tensor], source: str = "head weights") -> None:
        load_state_checked(self.head, state, source)

    def fingerprint(self) -> str:
        """sha256 of the body's weights: what a semantic space's traits depend on."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.body.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with an error that names the first tensor that does not fit."""
    check_state_fits(module, state, source)
    module.load_state_dict(state)


def check_state_fits(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse ``state`` unless it holds exactly ``module``'s tensors with their shapes, naming the first
    that does not fit."""
    own = module.state_dict()
    for key, tensor in state.items():
        if key not in own:
            raise WeightsError(
                f"{source}: tensor {key!r} does not exist in the model "
                f"(expected keys such as {', '.join(list(own)[:3])})"
            )
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(own[key].shape)}; the file was made for another backbone or class count"
            )
    missing = [key for key in own if key not in state]
    if missing:
        raise WeightsError(
            f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing in all)"
        )
