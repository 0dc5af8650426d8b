"""The one model type S-XAI works on: conv features -> global average pooling -> linear classifier.

``TraitModel(x)`` takes RGB images in [0, 1] (normalisation happens inside the model, so attacks,
feature inversion and attributions all work in pixel space) and returns both the logits and the
pooled trait vectors, because S-XAI needs both for every image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from .._utils.errors import WeightsError


class _Outputs(NamedTuple):
    logits: torch.Tensor  # B × num_classes
    traits: torch.Tensor  # B × C, the GAP layer's output


class TraitOutput(_Outputs):
    """``(logits, traits)`` of a forward pass, and ``pooled``: layer -> ``B × 2C_l``, the mean- and
    max-pooled outputs of ``TraitModel.pooled_layers`` (None when it pools none). A pair, so that
    ``logits, traits = model(x)`` keeps working."""

    def __new__(cls, logits, traits, pooled: dict[str, torch.Tensor] | None = None):
        self = super().__new__(cls, logits, traits)
        self.pooled = pooled
        return self

    def features(self, layers: Sequence[str] = ()) -> torch.Tensor:
        """What a semantic space that reads ``layers`` takes: the traits, then those layers' pooled
        outputs in that order."""
        if not layers:
            return self.traits
        missing = [name for name in layers if name not in (self.pooled or {})]
        if missing:
            raise ValueError(
                f"this forward pass did not pool {', '.join(missing)}: load the spaces with "
                "load_space_set, or call model.pool_layers(spaces.layer_names) first"
            )
        return torch.cat([self.traits, *(self.pooled[name] for name in layers)], dim=1)


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
        # Modules of ``body`` whose pooled outputs every forward pass also returns (set by
        # ``pool_layers`` when spaces that read them are loaded).
        self.pooled_layers: tuple[str, ...] = ()
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
        if not self.pooled_layers:
            traits = self.traits(images)
            return TraitOutput(self.head(traits), traits)
        with pooled_layers(self, self.pooled_layers) as captured:
            traits = self.traits(images)
        return TraitOutput(self.head(traits), traits, dict(captured))

    @contextmanager
    def pooling(self, layers: Sequence[str]) -> Iterator[TraitModel]:
        """:meth:`pool_layers` inside the block; the layers pooled before come back after it."""
        before = self.pooled_layers
        self.pool_layers(layers)
        try:
            yield self
        finally:
            self.pooled_layers = before

    def pool_layers(self, layers: Sequence[str]) -> None:
        """Make every forward pass also return the mean- and max-pooled outputs of these modules
        of ``body`` (``TraitOutput.pooled``); ``()`` turns it off."""
        self.check_layers(layers)
        self.pooled_layers = tuple(layers)

    def check_layers(self, layers: Sequence[str]) -> None:
        """A ValueError naming the first of ``layers`` that is no module of ``body``."""
        for name in layers:
            _layer(self, name)

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


def pool_map(output: torch.Tensor) -> torch.Tensor:
    """``B×2C``: the mean and the max over the positions of a ``B×C×h×w`` map."""
    if output.dim() != 4:
        raise ValueError(f"can only pool B×C×h×w maps, got shape {tuple(output.shape)}")
    return torch.cat([output.mean(dim=(2, 3)), output.amax(dim=(2, 3))], dim=1)


def _layer(model: TraitModel, name: str) -> nn.Module:
    try:
        return model.body.get_submodule(name)
    except AttributeError as exc:
        examples = ", ".join(repr(n) for n, _ in list(model.body.named_modules())[1:4])
        raise ValueError(
            f"{model.name} has no layer {name!r} in its body (layer names look like {examples})"
        ) from exc


@contextmanager
def pooled_layers(model: TraitModel, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, every forward pass of ``model`` stores :func:`pool_map` of the output of each
    module of ``model.body`` named in ``layers`` (``"model.blocks.4"``) in the dict it yields; the
    hooks are gone after the block, whatever happens in it."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in layers:
            module = _layer(model, name)

            def hook(_module, _inputs, output, name=name):
                captured[name] = pool_map(output)

            handles.append(module.register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


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
