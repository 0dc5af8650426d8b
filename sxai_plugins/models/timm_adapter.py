"""Turning a timm model into a :class:`TraitModel`: shared by the generic adapter and the plugins."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from .._utils.errors import BackboneError, WeightsError
from .trait_model import TraitModel, load_state_checked

DEFAULT_CLASSES = tuple(f"class_{i}" for i in range(1000))


class TimmBody(nn.Module):
    """The convolutional part of a timm model: ``forward_features`` (timm's classifier dropped)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt`` file (read without unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"weights file {path} could not be read ({type(exc).__name__}: {exc}); "
            "expected a state dict saved as .safetensors or with torch.save"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return state


def _offline_hint(name: str, why: str = "no connection to the model hub?") -> str:
    return (
        f"could not fetch pretrained weights for {name!r} ({why}). "
        f"Either go online, or pass a local file: weights='path/to/{name}.safetensors' "
        f"(CLI: --weights PATH), a timm or torchvision state dict for {name}. "
        "Set HF_HUB_OFFLINE=1 to fail at once instead of retrying"
    )


HUB_CONNECT_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _unreachable_hub() -> str | None:
    """The Hub endpoint when one quick TCP connect to it fails, else None.

    Without it, huggingface_hub retries each request for about a minute before failing. Behind a
    proxy a direct connect says nothing, so it is not tried there.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.is_offline_mode() or any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError:
        return endpoint
    return None


@contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode (as HF_HUB_OFFLINE=1), for one call: cached files only."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def build_timm_trait_model(
    timm_name: str,
    *,
    name: str | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    convert_state: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None,
    timm_kwargs: dict | None = None,
    prune: Callable[[nn.Module], None] | None = None,
) -> TraitModel:
    """Build ``timm_name`` without its classifier, and put a GAP head on its last conv map.

    ``weights`` (a local state dict) wins over ``pretrained``; keys of timm's own classifier in the
    file are ignored, every other tensor must fit. ``convert_state`` maps a foreign state dict
    (e.g. torchvision's) onto the timm model's keys. ``prune`` edits the timm model before any
    weights are loaded (e.g. drops VGG's MLP pre-logits, which a GAP head replaces).
    """
    import timm

    kwargs = dict(num_classes=0, **(timm_kwargs or {}))
    download = pretrained and weights is None
    unreachable = _unreachable_hub() if download else None
    why = f"cannot connect to {unreachable}" if unreachable else "no connection to the model hub?"
    try:
        # no network: use the cache only, at once, instead of a minute of retries
        with _hub_offline() if unreachable else nullcontext():
            model = timm.create_model(timm_name, pretrained=download, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise
        raise WeightsError(_offline_hint(timm_name, why)) from exc
    except OSError as exc:  # huggingface_hub's offline / connection errors derive from OSError
        raise WeightsError(_offline_hint(timm_name, why)) from exc
    if prune is not None:
        prune(model)
    if weights is not None:
        state = load_weights_file(weights)
        if set(state) == {"weight", "bias"} and state["weight"].ndim == 2:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
            raise WeightsError(f"{weights}: holds only a classifier head ({shapes}), as `sxai train-head` "
                               "writes, not backbone weights; pass it with --head (Python: head=)")
        if convert_state is not None:
            try:
                state = convert_state(state, model)
            except WeightsError as exc:
                raise WeightsError(f"{weights}: {exc}") from exc
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own or not _is_classifier_key(k, model)}
        load_state_checked(model, state, str(weights))

    model.eval()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))
    with torch.no_grad():
        probe = model.forward_features(torch.zeros(1, *input_size))
    if probe.ndim != 4:
        raise BackboneError(
            f"{timm_name!r} is not a CNN: its features have shape {tuple(probe.shape)}, "
            "but a GAP trait layer needs a B×C×H×W conv map"
        )
    return TraitModel(
        TimmBody(model),
        trait_dim=probe.shape[1],
        class_names=list(class_names) if class_names else list(DEFAULT_CLASSES[: _imagenet_classes(cfg)]),
        name=name or timm_name,
        input_size=input_size,  # type: ignore[arg-type]
        mean=cfg.get("mean", (0.485, 0.456, 0.406)),
        std=cfg.get("std", (0.229, 0.224, 0.225)),
    )


def _imagenet_classes(cfg: dict) -> int:
    return int(cfg.get("num_classes", 1000) or 1000)


def _is_classifier_key(key: str, model: nn.Module) -> bool:
    classifier = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier", "classifier")
    prefixes = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
    return any(key.startswith(p + ".") for p in prefixes) or key.startswith(HEAD_PREFIXES)


# Key prefixes of classifier heads in timm and torchvision checkpoints: ignored when only the
# convolutional body is loaded.
HEAD_PREFIXES = ("head.", "pre_logits.", "classifier.", "fc.", "_fc.", "last_linear.")
