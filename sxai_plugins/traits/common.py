"""Common traits of a class (the paper's Fig. 1a and Fig. 2) and the ``sxai traits`` command.

``common_traits`` draws N images of a class at random (seeded), lets the genetic search keep the
superpixels that make the model surest of the class (optional), takes the GAP traits of the
resulting images and runs the row-centred PCA on the N×C matrix: PC1 is the class's common trait.

``stability`` repeats this ``repeats`` times per sample size Ns, each repeat with its own seed and
so its own images, and reports the spread ``e`` of PC1 (``sxai_plugins.traits.pca.spread``; the paper's
Fig. 2d). The images of all repeats are searched and scored once, in one genetic-search call, and
every (Ns, repeat) pair takes its subset from there; a repeat's samples for a smaller Ns are the
first images of its sample for a larger one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils.errors import ImageLoadError, SxaiError
from ..data.images import load_image, to_array
from ..models.trait_model import TraitModel
from .pca import RowCentredPCA, first_pc, spread

log = logging.getLogger("sxai")

__all__ = [
    "CommonTraits",
    "ProcessedImages",
    "Stability",
    "common_traits",
    "process_images",
    "stability",
]


@dataclass
class CommonTraits:
    """What :func:`common_traits` found for one class."""

    traits: torch.Tensor  # N×C GAP traits of the (searched) images
    pca: RowCentredPCA  # fitted on ``traits``; ``pca.pc1`` is the common trait
    masks: np.ndarray  # N×H×W bool: the superpixels kept (all True without the search)
    paths: list[Path]  # the N images, in sample order
    fitness: np.ndarray  # N: target-class probability of each searched image (NaN if unknown)
    images: np.ndarray  # N×H×W×3 float32: what the model saw (the searched images)
    target_class: str = ""
    failures: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class Stability:
    """PC1's spread over repeats, for each sample size."""

    sizes: list[int]
    repeats: int
    spreads: dict[int, float]  # Ns -> e (%)
    pc1: dict[int, np.ndarray]  # Ns -> repeats×C PC1 scores
    samples: dict[int, list[list[Path]]]  # Ns -> the paths of each repeat
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": self.sizes,
            "repeats": self.repeats,
            "spread_percent": {str(n): self.spreads[n] for n in self.sizes},
            "samples": {
                str(n): [[str(p) for p in rep] for rep in self.samples[n]] for n in self.sizes
            },
            "failures": [{"path": str(p), "error": why} for p, why in self.failures],
        }


# ----------------------------------------------------------------------------------------- sampling
class _Loader:
    """Loads images at the model's input size once each; unreadable ones are remembered."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self.images: dict[Path, np.ndarray] = {}
        self.failures: dict[Path, str] = {}

    def ok(self, path: Path) -> bool:
        if path in self.images:
            return True
        if path in self.failures:
            return False
        try:
            self.images[path] = to_array(load_image(path, self.size), self.size)
            return True
        except ImageLoadError as exc:
            # recorded, and reported once by the caller (`sxai traits` prints each, summary.json lists them)
            log.debug("skipped %s", exc)
            self.failures[path] = str(exc)
            return False

    def take(self, order: Sequence[Path], n: int) -> list[Path]:
        """The first ``n`` readable paths of ``order`` (fewer if there are not enough)."""
        chosen: list[Path] = []
        for path in order:
            if len(chosen) == n:
                break
            if self.ok(path):
                chosen.append(path)
        return chosen


def _permutation(paths: Sequence[Path], seed: int) -> list[Path]:
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in order]


def _target_index(model: TraitModel, target_class: str, use_ga: bool) -> int | None:
    if target_class in model.class_names:
        return model.class_names.index(target_class)
    if use_ga:
        shown = ", ".join(model.class_names[:10]) + (" …" if model.num_classes > 10 else "")
        raise SxaiError(
            f"class {target_class!r} is not one of the model's classes ({shown}); the genetic search "
            "maximises that class's probability, so pass a head trained for it (--head, see "
            "`sxai train-head`) or skip the search (use_ga=False / --no-ga)"
        )
    return None


@dataclass
class ProcessedImages:
    """What :func:`process_images` gives for a list of images, in their order."""

    traits: torch.Tensor
    masks: np.ndarray
    fitness: np.ndarray
    images: np.ndarray


def process_images(
    model: TraitModel,
    images: list[np.ndarray],
    target: int | None,
    use_ga: bool,
    ga_config: Any,
    seed: int,
    progress: bool,
    batch_size: int,
    first_index: int = 0,
) -> ProcessedImages:
    """Genetic search (optional), then traits and target probabilities of the resulting images.

    ``first_index``: these images sit at that position of a longer call (see
    ``search_best_superpixels``), so their searches match the ones that call would run.
    """
    height, width = images[0].shape[:2]
    if use_ga:
        from .genetic import GAConfig, search_best_superpixels

        results = search_best_superpixels(
            model,
            images,
            [int(target)] * len(images),
            config=ga_config or GAConfig(),
            seed=seed,
            progress=progress,
            first_index=first_index,
        )
        searched = np.stack([r.image for r in results]).astype(np.float32)
        masks = np.stack([r.kept_mask for r in results]).astype(bool)
    else:
        searched = np.stack(images).astype(np.float32)
        masks = np.ones((len(images), height, width), dtype=bool)
    device, dtype = model.mean.device, model.mean.dtype
    traits, probs = [], []
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(searched), batch_size), desc="traits", unit="batch", disable=not progress
        ):
            batch = torch.from_numpy(searched[start : start + batch_size]).permute(0, 3, 1, 2)
            out = model(batch.to(device=device, dtype=dtype))
            traits.append(out.traits.float().cpu())
            probs.append(out.logits.float().softmax(dim=1).cpu())
    probabilities = torch.cat(probs)
    fitness = (
        probabilities[:, target].numpy().astype(np.float64)
        if target is not None
        else np.full(len(searched), np.nan)
    )
    return ProcessedImages(torch.cat(traits), masks, fitness, searched)


Runner = Callable[..., ProcessedImages]


def _check_paths(paths: Sequence[str | Path]) -> list[Path]:
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise SxaiError(f"common traits need at least 2 images, got {len(paths)}")
    return paths


# -------------------------------------------------------------------------------------- library API
def common_traits(
    model: TraitModel,
    image_paths: Sequence[str | Path],
    target_class: str,
    n: int = 300,
    seed: int = 0,
    ga_config: Any = None,
    use_ga: bool = True,
    progress: bool = True,
    batch_size: int = 32,
    variance: float = 0.85,
    runner: Runner | None = None,
) -> CommonTraits:
    """The common traits of ``n`` images of ``target_class`` drawn at random from ``image_paths``.

    Args:
        model: the network (its GAP output gives the traits).
        image_paths: candidate images of the class.
        target_class: the class whose probability the genetic search maximises (must be one of
            ``model.class_names`` when ``use_ga``).
        n: sample size Ns; an unreadable image is reported, skipped and replaced by the next one
            of the seeded order; fewer than ``n`` are used only if the folder runs out.
        seed: chooses the sample and seeds the genetic search.
        ga_config: a :class:`sxai_plugins.traits.genetic.GAConfig` (default: the paper's settings).
        use_ga: run the superpixel search (the paper does; off, the whole images are used).
        progress: progress bars.
        batch_size: images per forward pass when taking traits.
        variance: the PCA keeps the fewest PCs reaching this cumulative information ratio.
        runner: runs the search and takes the traits, with :func:`process_images`'s arguments
            (default: that function, in this process;
            ``sxai_plugins.scale.ray_traits.RayRunner`` spreads the images over Ray actors).
            The PCA runs here either way.
    """
    paths = _check_paths(image_paths)
    target = _target_index(model, target_class, use_ga)
    loader = _Loader((model.input_size[1], model.input_size[2]))
    chosen = loader.take(_permutation(paths, seed), n)
    if len(chosen) < 2:
        raise SxaiError(f"only {len(chosen)} of {len(paths)} images could be read; need at least 2")
    if len(chosen) < n:
        log.warning(
            "asked for %d images of %s, only %d readable ones exist", n, target_class, len(chosen)
        )
    done = (runner or process_images)(
        model,
        [loader.images[p] for p in chosen],
        target,
        use_ga,
        ga_config,
        seed,
        progress,
        batch_size,
    )
    pca = RowCentredPCA(variance=variance).fit(done.traits)
    return CommonTraits(
        done.traits,
        pca,
        done.masks,
        chosen,
        done.fitness,
        done.images,
        target_class,
        sorted(loader.failures.items()),
    )


def stability(
    model: TraitModel,
    paths: Sequence[str | Path],
    target_class: str,
    sizes: Sequence[int] = (50, 100, 300),
    repeats: int = 3,
    seed: int = 0,
    ga_config: Any = None,
    use_ga: bool = True,
    progress: bool = True,
    batch_size: int = 32,
    known: CommonTraits | None = None,
    runner: Runner | None = None,
) -> Stability:
    """Spread of PC1 over ``repeats`` random samples for each size in ``sizes`` (paper: Ne = 3).

    Repeat ``r`` draws its images with seed ``seed + r``; the genetic search runs once over every
    image any repeat needs (seeded by ``seed``), so repeats sharing an image share its result.
    ``known``: the result of :func:`common_traits` with the same model, seed, search settings and
    class; repeat 0 starts with its sample, so those images' traits are taken from it instead of
    being searched again (the answers are the same either way). ``runner``: as in
    :func:`common_traits`.
    """
    paths = _check_paths(paths)
    sizes = sorted({int(s) for s in sizes})
    if repeats < 2:
        raise SxaiError(f"the spread needs at least 2 repeats, got {repeats}")
    if not sizes or sizes[0] < 2:
        raise SxaiError(f"sample sizes must be at least 2, got {sizes}")
    if sizes[-1] > len(paths):
        raise SxaiError(f"sample size {sizes[-1]} is larger than the {len(paths)} images available")
    target = _target_index(model, target_class, use_ga)
    loader = _Loader((model.input_size[1], model.input_size[2]))
    per_repeat = [loader.take(_permutation(paths, seed + r), sizes[-1]) for r in range(repeats)]
    union = list(dict.fromkeys(p for rep in per_repeat for p in rep))
    reused = 0
    if known is not None and known.target_class == target_class:
        while reused < min(len(union), len(known.paths)) and union[reused] == known.paths[reused]:
            reused += 1
    if reused < len(union):
        done = (runner or process_images)(
            model,
            [loader.images[p] for p in union[reused:]],
            target,
            use_ga,
            ga_config,
            seed,
            progress,
            batch_size,
            first_index=reused,
        )
        traits = torch.cat([known.traits[:reused], done.traits]) if reused else done.traits
    else:
        traits = known.traits[:reused]
    row = {p: i for i, p in enumerate(union)}
    spreads, pcs, samples = {}, {}, {}
    for size in sizes:
        chosen = [rep[:size] for rep in per_repeat]
        if min(len(c) for c in chosen) < size:
            raise SxaiError(f"not enough readable images for a sample of {size}")
        pcs[size] = np.stack([first_pc(traits[[row[p] for p in c]]) for c in chosen])
        spreads[size] = spread(pcs[size])
        samples[size] = chosen
    return Stability(sizes, repeats, spreads, pcs, samples, sorted(loader.failures.items()))
