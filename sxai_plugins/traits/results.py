"""The folder a common-traits run writes: traits, PCA, masks, plots, and optionally inversions of
the principal components, the stability over Ns and per-layer information ratios.

Each part is one function; :func:`write_common_traits` writes them all and returns the summary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils.io import atomic_write, write_json, write_safetensors
from ..models.trait_model import TraitModel
from ..viz.plots import plot_information_ratios, plot_layer_ratios, plot_stability
from .common import CommonTraits, stability
from .pca import RowCentredPCA


@dataclass(frozen=True)
class TraitsRun:
    """What a run was asked for: recorded in its summary, and what the optional parts need."""

    target_class: str
    data: str
    n: int
    seed: int = 0
    batch_size: int = 32
    pcs: int = 1  # principal components inverted
    inversion_steps: int | None = None
    stability_sizes: tuple[int, ...] = ()
    repeats: int = 3
    per_layer: bool = False
    layer_mode: str = "fast"


def write_tensors(
    folder: Path, run: TraitsRun, model: TraitModel, found: CommonTraits
) -> list[str]:
    """traits.safetensors (traits, PCs, loadings, fitness), masks.npz, pca.json and its chart."""
    pca, paths = found.pca, [str(p) for p in found.paths]
    write_safetensors(
        folder / "traits.safetensors",
        {
            "traits": found.traits,
            "pcs": torch.from_numpy(pca.components_).float(),
            "loadings": torch.from_numpy(pca.eigenvectors_).float(),
            "fitness": torch.from_numpy(found.fitness).float(),
        },
        metadata={
            "sxai.traits": json.dumps(
                {
                    "paths": paths,
                    "class": run.target_class,
                    "backbone": model.name,
                    "fingerprint": model.fingerprint(),
                }
            )
        },
    )

    def save_masks(target: Path) -> None:
        with open(target, "wb") as handle:
            np.savez_compressed(handle, masks=found.masks, paths=np.asarray(paths))

    atomic_write(folder / "masks.npz", save_masks)
    ratios = pca.explained_variance_ratio_
    write_json(
        folder / "pca.json",
        {
            "information_ratio": [float(r) for r in ratios],
            "cumulative": [float(c) for c in np.cumsum(ratios)],
            "n_components_85": int(pca.n_components_),
            "pcs": [[float(v) for v in row] for row in pca.components_],
        },
    )
    plot_information_ratios(
        ratios,
        folder / "information_ratio.png",
        title=f"{run.target_class}: row-centred PCA of {len(paths)} images ({model.name})",
    )
    return ["traits.safetensors", "pca.json", "masks.npz", "information_ratio.png"]


def write_inversions(
    folder: Path,
    run: TraitsRun,
    model: TraitModel,
    found: CommonTraits,
    inverter: Any,
    progress: bool,
) -> list[str]:
    """inversions/pc1.png …: the inverter's picture of each of the first ``run.pcs`` components."""
    from ..viz.inversion import save_png

    n_pcs = min(max(run.pcs, 1), len(found.paths))
    targets = RowCentredPCA(n_components=n_pcs).fit(found.traits).components_
    images = inverter.invert(
        model,
        torch.from_numpy(targets).float(),
        steps=run.inversion_steps,
        seed=run.seed,
        progress=progress,
    )
    names = [f"pc{i + 1}" for i in range(len(targets))]
    save_png(images, folder / "inversions", names)
    return [f"inversions/{name}.png" for name in names]


def write_stability(
    folder: Path,
    run: TraitsRun,
    model: TraitModel,
    found: CommonTraits,
    candidates: list[Path],
    ga_config: Any,
    progress: bool,
    runner: Any = None,
) -> tuple[list[str], dict]:
    """stability.json and its plot: PC1's spread over repeats at each Ns."""
    result = stability(
        model,
        candidates,
        run.target_class,
        sizes=list(run.stability_sizes),
        repeats=run.repeats,
        seed=run.seed,
        ga_config=ga_config,
        use_ga=ga_config is not None,
        progress=progress,
        batch_size=run.batch_size,
        known=found,
        runner=runner,
    )
    write_json(folder / "stability.json", result.to_dict())
    plot_stability(result, folder / "stability.png", title=f"{run.target_class} ({model.name})")
    summary = {
        "spread_percent": {str(n): result.spreads[n] for n in result.sizes},
        "repeats": result.repeats,
    }
    return ["stability.json", "stability.png"], summary


def write_layers(
    folder: Path, run: TraitsRun, model: TraitModel, found: CommonTraits, progress: bool
) -> list[str]:
    """layers.json and its plot: PC1's information ratio at every conv layer."""
    from .layers import layer_information_ratios

    per_layer = layer_information_ratios(
        model,
        torch.from_numpy(found.images).permute(0, 3, 1, 2),
        mode=run.layer_mode,
        batch_size=run.batch_size,
        progress=progress,
    )
    write_json(
        folder / "layers.json",
        {
            "aggregation": "ratio_mean: mean over spatial positions of λ1/tr(S); "
            "ratio_pooled: Σλ1/Σtr(S) over positions",
            "layers": [r.to_dict() for r in per_layer],
        },
    )
    plot_layer_ratios(
        per_layer, folder / "layers.png", title=f"{run.target_class}: PC1 per layer ({model.name})"
    )
    return ["layers.json", "layers.png"]


def write_common_traits(
    folder: Path,
    run: TraitsRun,
    model: TraitModel,
    found: CommonTraits,
    *,
    candidates: list[Path],
    inverter: Any = None,
    ga_config: Any = None,
    progress: bool = True,
    runner: Any = None,
) -> dict[str, Any]:
    """Write every part of a run into ``folder`` and return the summary (also summary.json).
    ``runner``: how the stability repeats' searches run (see :func:`common_traits`)."""
    files = ["summary.json", *write_tensors(folder, run, model, found)]
    if inverter is not None:
        files += write_inversions(folder, run, model, found, inverter, progress)
    ratios = found.pca.explained_variance_ratio_
    summary: dict[str, Any] = {
        "backbone": model.name,
        "fingerprint": model.fingerprint(),
        "class": run.target_class,
        "data": run.data,
        "n_requested": run.n,
        "n_used": len(found.paths),
        "n_candidates": len(candidates),
        "seed": run.seed,
        "genetic_search": None if ga_config is None else asdict(ga_config),
        "mean_fitness": None if np.isnan(found.fitness).all() else float(np.nanmean(found.fitness)),
        "pc1_information_ratio": float(ratios[0]),
        "n_components_85": int(found.pca.n_components_),
        "inverter": None if inverter is None else inverter.name,
        "inversion_steps": run.inversion_steps,
        "skipped": [{"path": str(p), "error": why} for p, why in found.failures],
    }
    if run.stability_sizes:
        written, summary["stability"] = write_stability(
            folder, run, model, found, candidates, ga_config, progress, runner
        )
        files += written
    if run.per_layer:
        files += write_layers(folder, run, model, found, progress)
    summary["files"] = files
    write_json(folder / "summary.json", summary)
    return summary
