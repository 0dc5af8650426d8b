"""Row-centred PCA layer by layer (the paper's Supplementary S.2 and Supplementary Fig. 4).

For a layer whose maps are ``C×H×W``, the N images give an N×C matrix at every spatial position
(h, w). Each is row-centred (every image's C values centred at that position) and its covariance
``S = X̂ X̂ᵀ / (C − 1)`` eigen-decomposed; the information ratio of PC1 at that position is
``λ₁ / tr(S)``. A layer's ratio is the **mean over positions** of these per-position ratios
(positions where every image has the same C values, ``tr(S) = 0``, carry no information and are
left out). The **pooled** ratio ``Σ λ₁ / Σ tr(S)`` over positions, which weights positions by their
variance, is reported beside it.

The eigenvalues are computed in batches of positions with ``torch.linalg.eigvalsh`` (the
eigenvalue-only form of ``eigh``). ``X̂ X̂ᵀ`` (N×N) and ``X̂ᵀ X̂`` (C×C) share their non-zero
eigenvalues, so the smaller one is decomposed: for a layer with C ≤ N the C×C matrices are summed
over image batches as they stream past and the maps are never stored; for C > N the maps are kept
(N×C×H×W) and the N×N matrices built from them.

Which layers: ``mode="blocks"`` hooks every block of the body (a module with sub-modules whose
parent is an ``nn.Sequential``/``nn.ModuleList``, outermost only: EfficientNet's ``blocks.i.j``,
ResNet's ``layerK.j``), falling back to ``"conv"`` when there are none; ``mode="conv"`` hooks every
convolution and pooling layer (the paper's VGG figure). Both end with the body's output map and the
GAP layer (``gap``, one position: the trait vectors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .._utils.errors import SxaiError
from ..data.images import iter_batches
from ..models.trait_model import TraitModel

__all__ = ["LayerRatio", "layer_information_ratios", "select_layers"]

OUTPUT = "output"
GAP = "gap"
_CONTAINERS = (nn.Sequential, nn.ModuleList)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class LayerRatio:
    """The information ratio of PC1 for one layer."""

    name: str
    kind: str  # the module's class name, "output" or "gap"
    channels: int
    height: int
    width: int
    ratio_mean: float  # mean over positions of λ₁ / tr(S)
    ratio_pooled: float  # Σ λ₁ / Σ tr(S) over positions
    positions_used: int  # positions with tr(S) > 0

    def to_dict(self) -> dict:
        return asdict(self)


def _candidates(body: nn.Module, mode: str) -> dict[str, nn.Module]:
    modules = dict(body.named_modules())
    if mode == "conv":
        return {
            name: m for name, m in modules.items() if name and isinstance(m, (nn.Conv2d, *_POOLS))
        }
    if mode != "blocks":
        raise ValueError(f"layer mode must be 'blocks' or 'conv', got {mode!r}")
    blocks: dict[str, nn.Module] = {}
    for name, module in modules.items():
        if not name or isinstance(module, _CONTAINERS) or not any(True for _ in module.children()):
            continue
        parent = modules[name.rpartition(".")[0]]
        if not isinstance(parent, _CONTAINERS):
            continue
        if any(name.startswith(chosen + ".") for chosen in blocks):
            continue  # a block inside a block (e.g. a downsample path)
        blocks[name] = module
    return blocks or _candidates(body, "conv")


def _execution_order(model: TraitModel, candidates: dict[str, nn.Module]) -> list[str]:
    """Candidates that run once per forward with a 4-D output, in the order they run."""
    calls: list[str] = []
    handles = []
    for name, module in candidates.items():

        def hook(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                calls.append(name)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            size = model.input_size
            model.feature_map(
                torch.full((1, *size), 0.5, device=model.mean.device, dtype=model.mean.dtype)
            )
    finally:
        for handle in handles:
            handle.remove()
    return [name for name in dict.fromkeys(calls) if calls.count(name) == 1]


def select_layers(model: TraitModel, mode: str = "blocks") -> list[str]:
    """Names of the body's modules whose outputs are analysed, in execution order (the body's
    output map and the GAP layer come on top of these)."""
    return _execution_order(model, _candidates(model.body, mode))


class _Accumulator:
    """Streams one layer's maps into what its eigenvalues need (see the module docstring)."""

    def __init__(self, expected_images: int) -> None:
        self.expected = expected_images
        self.gram: torch.Tensor | None = None  # P×C×C, summed over images (C ≤ N)
        self.maps: list[torch.Tensor] = []  # B×C×P chunks (C > N)
        self.shape: tuple[int, int, int] | None = None

    def add(self, maps: torch.Tensor) -> None:
        maps = maps.detach().to(torch.float64)
        b, c, h, w = maps.shape
        if self.shape is None:
            self.shape = (c, h, w)
        flat = maps.reshape(b, c, h * w)
        flat = flat - flat.mean(dim=1, keepdim=True)  # row-centring is per image and position
        if c <= self.expected:
            update = torch.einsum("bcp,bdp->pcd", flat, flat)
            self.gram = update if self.gram is None else self.gram + update
        else:
            self.maps.append(flat.to(torch.float32).cpu())

    def _matrices(self, chunk: int):
        """P_chunk×m×m symmetric matrices, m = min(C, N), a chunk of positions at a time."""
        if self.gram is not None:
            for i in range(0, len(self.gram), chunk):
                yield self.gram[i : i + chunk]
            return
        stacked = torch.cat(self.maps)  # N×C×P
        for i in range(0, stacked.shape[2], chunk):
            x = stacked[:, :, i : i + chunk].permute(2, 0, 1).to(torch.float64)  # P×N×C
            yield x @ x.transpose(1, 2)

    def eigen_ratios(self, chunk: int) -> tuple[float, float, int]:
        """(mean over positions of λ₁/tr, Σλ₁/Σtr, positions used)."""
        ratios, top_sum, trace_sum = [], 0.0, 0.0
        for matrices in self._matrices(chunk):
            top = torch.linalg.eigvalsh(matrices)[:, -1].clamp_min(0)
            # the trace from the diagonal is exactly 0 where nothing varies; eigenvalue sums are not
            trace = matrices.diagonal(dim1=1, dim2=2).sum(dim=1)
            keep = trace > 0
            ratios.append((top[keep] / trace[keep]).cpu())
            top_sum += float(top.sum())
            trace_sum += float(trace.sum())
        ratios_t = torch.cat(ratios) if ratios else torch.zeros(0)
        mean = float(ratios_t.mean()) if len(ratios_t) else float("nan")
        pooled = top_sum / trace_sum if trace_sum > 0 else float("nan")
        return mean, pooled, len(ratios_t)


def layer_information_ratios(
    model: TraitModel,
    images: torch.Tensor | Sequence[str | Path],
    layers: Sequence[str] | None = None,
    mode: str = "blocks",
    batch_size: int = 16,
    chunk: int = 1024,
    progress: bool = True,
) -> list[LayerRatio]:
    """PC1's information ratio for every chosen layer, the body's output and GAP.

    Args:
        model: the network.
        images: ``N×3×H×W`` in [0, 1], or image files (loaded at the model's input size; an
            unreadable file is logged and skipped).
        layers: module names inside ``model.body`` (default: :func:`select_layers` with ``mode``).
        mode: ``"blocks"`` or ``"conv"`` (see the module docstring).
        batch_size: images per forward pass.
        chunk: positions per batched eigen-decomposition (bounds memory).
        progress: show progress bars.
    """
    names = list(layers) if layers is not None else select_layers(model, mode)
    modules = dict(model.body.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise SxaiError(
            f"no module {missing[0]!r} in the body of {model.name!r}; "
            f"pick names from select_layers(model) or model.body.named_modules()"
        )
    if isinstance(images, torch.Tensor):
        expected = len(images)
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    else:
        expected = len(images)
        size = (model.input_size[1], model.input_size[2])
        batches = (batch.images for batch in iter_batches(list(images), size, batch_size))
    if expected < 2:
        raise SxaiError(f"per-layer PCA needs at least 2 images, got {expected}")

    accumulators = {name: _Accumulator(expected) for name in [*names, OUTPUT, GAP]}
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: accumulators[name].add(out)
        )
        for name in names
    ]
    device, dtype = model.mean.device, model.mean.dtype
    seen = 0
    try:
        with (
            torch.inference_mode(),
            tqdm(total=expected, desc="per-layer maps", unit="img", disable=not progress) as bar,
        ):
            for batch in batches:
                features = model.feature_map(batch.to(device=device, dtype=dtype))
                accumulators[OUTPUT].add(features)
                accumulators[GAP].add(features.mean(dim=(2, 3), keepdim=True))
                seen += len(batch)
                bar.update(len(batch))
    finally:
        for handle in handles:
            handle.remove()
    if seen < 2:
        raise SxaiError(f"per-layer PCA needs at least 2 readable images, got {seen}")

    kinds = {name: type(modules[name]).__name__ for name in names} | {OUTPUT: OUTPUT, GAP: GAP}
    results = []
    for name, acc in tqdm(
        accumulators.items(), desc="per-layer PCA", unit="layer", disable=not progress
    ):
        if acc.shape is None:
            raise SxaiError(f"layer {name!r} of {model.name!r} never ran in the forward pass")
        mean, pooled, used = acc.eigen_ratios(chunk)
        c, h, w = acc.shape
        results.append(LayerRatio(name, kinds[name], c, h, w, mean, pooled, used))
    return results
