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
from .trait_model import TraitModel, check_state_fits

DEFAULT_CLASSES = tuple(f"class_{i}" for i in range(1000))


class TimmBody(nn.Module):
    """The convolutional part of a timm model: ``forward_features`` (timm's classifier dropped)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt`` file, read by timm's ``load_state_dict``.

    timm reads safetensors, or ``torch.load(weights_only=True)`` (no unpickling of code), takes the
    ``state_dict`` / ``model`` (or EMA) entry of a training checkpoint and strips DDP and
    ``torch.compile`` prefixes; errors here name the file and what it should hold.
    """
    from timm.models import load_state_dict

    path = _existing_weights_file(path)
    try:
        state = load_state_dict(str(path))
    except Exception as exc:
        raise WeightsError(
            f"weights file {path} could not be read ({type(exc).__name__}: {exc}); "
            "expected a state dict saved as .safetensors or with torch.save"
        ) from exc
    return _check_tensors(state, path)


def _existing_weights_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    return path


def _check_tensors(state: object, path: str | Path) -> dict[str, torch.Tensor]:
    """``state`` if it is a state dict of tensors; the ``model_state_dict`` of a checkpoint in the
    PyTorch tutorials' layout (which timm's reader leaves as it is) is taken out first."""
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return state


def _offline_hint(
    name: str, why: str = "no connection to the model hub?", url: str | None = None
) -> str:
    where = f"from {url} " if url else ""
    hub = "" if url else ". Set HF_HUB_OFFLINE=1 to fail at once instead of retrying"
    return (
        f"could not fetch pretrained weights for {name!r} {where}({why}). "
        f"Either go online, or pass a local file: weights='path/to/{name}.safetensors' "
        f"(CLI: --weights PATH), a timm or torchvision state dict for {name}{hub}"
    )


HUB_CONNECT_TIMEOUT_S = 3.0
_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


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
    convert_state: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    | None = None,
    timm_kwargs: dict | None = None,
    prune: Callable[[nn.Module], None] | None = None,
) -> TraitModel:
    """Build ``timm_name`` without its classifier, and put a GAP head on its last conv map.

    ``weights`` (a local state dict) wins over ``pretrained``; keys of timm's own classifier in the
    file are ignored, every other tensor must fit. ``convert_state`` maps a foreign state dict
    (e.g. torchvision's) onto the timm model's keys. ``prune`` edits the timm model before any
    local weights are loaded (e.g. drops VGG's MLP pre-logits, which a GAP head replaces).
    """
    import timm
    from timm.models import get_pretrained_cfg

    kwargs = dict(num_classes=0, **(timm_kwargs or {}))
    download = pretrained and weights is None
    source = get_pretrained_cfg(timm_name) if download and timm.is_model(timm_name) else None
    url = source.url if source is not None and not source.hf_hub_id else None
    unreachable = _unreachable_hub() if download and not url else None
    why = f"cannot connect to {unreachable}" if unreachable else "no connection to the model hub?"
    try:
        # no network: use the cache only, at once, instead of a minute of retries
        with _hub_offline() if unreachable else nullcontext():
            model = timm.create_model(timm_name, pretrained=download, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise
        raise WeightsError(_offline_hint(timm_name, why)) from exc
    except (
        OSError
    ) as exc:  # huggingface_hub's offline / connection errors and urllib's derive from OSError
        if url:
            why = f"{type(exc).__name__}: {_one_line(exc)}"
        raise WeightsError(_offline_hint(timm_name, why, url)) from exc
    if prune is not None:
        prune(model)
    if weights is not None:
        load_local_weights(model, weights, convert_state)

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
        class_names=list(class_names)
        if class_names
        else list(DEFAULT_CLASSES[: _imagenet_classes(cfg)]),
        name=name or timm_name,
        input_size=input_size,  # type: ignore[arg-type]
        mean=cfg.get("mean", (0.485, 0.456, 0.406)),
        std=cfg.get("std", (0.229, 0.224, 0.225)),
    )


def load_local_weights(
    model: nn.Module,
    path: str | Path,
    convert_state: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    | None = None,
) -> None:
    """Load a local state dict into a timm model the way timm loads a local file.

    That is the model's pretrained cfg with ``pretrained_cfg_overlay=dict(file=path)``, loaded by
    ``timm.models.load_pretrained`` (timm's reader, its first-conv and classifier handling), with
    :func:`fit_state` as the ``filter_fn``. It runs after ``prune`` on the model as built, rather
    than inside ``timm.create_model``, so that a pruned model (VGG without its MLP) takes the file
    without building the layers it drops, and so that a file that does not fit is refused with
    sxai's message naming the tensor instead of torch's list of every mismatch.
    """
    from timm.models import load_pretrained, resolve_pretrained_cfg

    path = _existing_weights_file(path)
    cfg = model.pretrained_cfg or {}
    cfg = resolve_pretrained_cfg(
        cfg.get("architecture") or type(model).__name__,
        pretrained_cfg=dict(cfg),
        pretrained_cfg_overlay=dict(file=str(path), source=None),
    ).to_dict()
    fitted = []

    def filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        fitted.append(True)
        return fit_state(state, model, path, convert_state)

    try:
        load_pretrained(
            model,
            pretrained_cfg=cfg,
            num_classes=getattr(model, "num_classes", 0),
            filter_fn=filter_fn,
        )
    except WeightsError:
        raise
    except Exception as exc:
        if fitted:  # the file was read and fitted: loading it failed for another reason
            raise WeightsError(
                f"weights file {path} could not be loaded ({type(exc).__name__}: {_one_line(exc)})"
            ) from exc
        raise WeightsError(
            f"weights file {path} could not be read ({type(exc).__name__}: {_one_line(exc)}); "
            "expected a state dict saved as .safetensors or with torch.save"
        ) from exc


def fit_state(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    source: str | Path,
    convert_state: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    | None = None,
) -> dict[str, torch.Tensor]:
    """timm ``filter_fn``: a file's state dict made to fit ``model``, or a ``WeightsError`` saying why.

    Refuses a classifier-head file (it goes to ``--head``), applies ``convert_state``, drops
    classifier keys the model does not have, and checks every remaining tensor and every missing one.
    """
    state = _check_tensors(state, source)
    if set(state) == {"weight", "bias"} and state["weight"].ndim == 2:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
        raise WeightsError(
            f"{source}: holds only a classifier head ({shapes}), as `sxai train-head` "
            "writes, not backbone weights; pass it with --head (Python: head=)"
        )
    if convert_state is not None:
        try:
            state = convert_state(state, model)
        except (WeightsError, TypeError) as exc:  # timm retries a filter_fn that raises TypeError
            raise WeightsError(f"{source}: {exc}") from exc
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not _is_classifier_key(k, model)}
    check_state_fits(model, state, str(source))
    return state


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _imagenet_classes(cfg: dict) -> int:
    return int(cfg.get("num_classes", 1000) or 1000)


def _is_classifier_key(key: str, model: nn.Module) -> bool:
    classifier = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier", "classifier")
    prefixes = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
    return any(key.startswith(p + ".") for p in prefixes) or key.startswith(HEAD_PREFIXES)


# Key prefixes of classifier heads in timm and torchvision checkpoints: ignored when only the
# convolutional body is loaded.
HEAD_PREFIXES = ("head.", "pre_logits.", "classifier.", "fc.", "_fc.", "last_linear.")
