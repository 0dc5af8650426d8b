"""Common traits of a class (the paper's Fig. 1a and Fig. 2) and the ``sxai traits`` command.

``common_traits`` draws N images of a class at random (seeded), lets the genetic search keep the
superpixels that make the model surest of the class (optional), takes the GAP traits of the
resulting images and runs the row-centred PCA on the N×C matrix: PC1 is the class's common trait.

``stability`` repeats this ``repeats`` times per sample size Ns, each repeat with its own seed and
so its own images, and reports the spread ``e`` of PC1 (``sxai_plugins.pca.spread``; the paper's
Fig. 2d). The images of all repeats are searched and scored once, in one genetic-search call, and
every (Ns, repeat) pair takes its subset from there; a repeat's samples for a smaller Ns are the
first images of its sample for a larger one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils.errors import ImageLoadError, SxaiError
from .._utils.io import atomic_folder, atomic_write, dumps_json, write_json, write_safetensors
from ..cli.main import add_model_args, command, model_from_args, positive_int, positive_list
from ..data.images import list_images, load_image, to_array
from ..models.trait_model import TraitModel
from .pca import RowCentredPCA, first_pc, spread

log = logging.getLogger("sxai")

__all__ = ["CommonTraits", "Stability", "class_images", "common_traits", "plot_information_ratios",
           "plot_stability", "stability"]


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
            "samples": {str(n): [[str(p) for p in rep] for rep in self.samples[n]] for n in self.sizes},
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
class _Processed:
    traits: torch.Tensor
    masks: np.ndarray
    fitness: np.ndarray
    images: np.ndarray


def _process(
    model: TraitModel,
    images: list[np.ndarray],
    target: int | None,
    use_ga: bool,
    ga_config: Any,
    seed: int,
    progress: bool,
    batch_size: int,
    first_index: int = 0,
) -> _Processed:
    """Genetic search (optional), then traits and target probabilities of the resulting images.

    ``first_index``: these images sit at that position of a longer call (see
    ``search_best_superpixels``), so their searches match the ones that call would run.
    """
    height, width = images[0].shape[:2]
    if use_ga:
        try:
            from .genetic import GAConfig, search_best_superpixels
        except ImportError as exc:  # pragma: no cover - the module ships with the core
            raise SxaiError("the genetic search (sxai_plugins.genetic) is not available; "
                            "skip it with use_ga=False / --no-ga") from exc
        results = search_best_superpixels(model, images, [int(target)] * len(images),
                                          config=ga_config or GAConfig(), seed=seed, progress=progress,
                                          first_index=first_index)
        searched = np.stack([r.image for r in results]).astype(np.float32)
        masks = np.stack([r.kept_mask for r in results]).astype(bool)
    else:
        searched = np.stack(images).astype(np.float32)
        masks = np.ones((len(images), height, width), dtype=bool)
    device, dtype = model.mean.device, model.mean.dtype
    traits, probs = [], []
    with torch.inference_mode():
        for start in tqdm(range(0, len(searched), batch_size), desc="traits", unit="batch",
                          disable=not progress):
            batch = torch.from_numpy(searched[start : start + batch_size]).permute(0, 3, 1, 2)
            out = model(batch.to(device=device, dtype=dtype))
            traits.append(out.traits.float().cpu())
            probs.append(out.logits.float().softmax(dim=1).cpu())
    probabilities = torch.cat(probs)
    fitness = (probabilities[:, target].numpy().astype(np.float64) if target is not None
               else np.full(len(searched), np.nan))
    return _Processed(torch.cat(traits), masks, fitness, searched)


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
        ga_config: a :class:`sxai_plugins.genetic.GAConfig` (default: the paper's settings).
        use_ga: run the superpixel search (the paper does; off, the whole images are used).
        progress: progress bars.
        batch_size: images per forward pass when taking traits.
        variance: the PCA keeps the fewest PCs reaching this cumulative information ratio.
    """
    paths = _check_paths(image_paths)
    target = _target_index(model, target_class, use_ga)
    loader = _Loader((model.input_size[1], model.input_size[2]))
    chosen = loader.take(_permutation(paths, seed), n)
    if len(chosen) < 2:
        raise SxaiError(f"only {len(chosen)} of {len(paths)} images could be read; need at least 2")
    if len(chosen) < n:
        log.warning("asked for %d images of %s, only %d readable ones exist", n, target_class, len(chosen))
    done = _process(model, [loader.images[p] for p in chosen], target, use_ga, ga_config, seed,
                    progress, batch_size)
    pca = RowCentredPCA(variance=variance).fit(done.traits)
    return CommonTraits(done.traits, pca, done.masks, chosen, done.fitness, done.images, target_class,
                        sorted(loader.failures.items()))


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
) -> Stability:
    """Spread of PC1 over ``repeats`` random samples for each size in ``sizes`` (paper: Ne = 3).

    Repeat ``r`` draws its images with seed ``seed + r``; the genetic search runs once over every
    image any repeat needs (seeded by ``seed``), so repeats sharing an image share its result.
    ``known``: the result of :func:`common_traits` with the same model, seed, search settings and
    class; repeat 0 starts with its sample, so those images' traits are taken from it instead of
    being searched again (the answers are the same either way).
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
        done = _process(model, [loader.images[p] for p in union[reused:]], target, use_ga, ga_config,
                        seed, progress, batch_size, first_index=reused)
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


# ------------------------------------------------------------------------------------------ figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: str | Path) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def plot_information_ratios(ratios: np.ndarray, path: str | Path, shown: int = 10, title: str = "") -> Path:
    """Bar chart of the first ``shown`` information ratios with the cumulative ratio (paper Fig. 2c)."""
    plt = _pyplot()
    ratios = np.asarray(ratios, dtype=np.float64)[:shown] * 100
    x = np.arange(1, len(ratios) + 1)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.bar(x, ratios, color="tab:blue")
    for xi, value in zip(x, ratios):
        ax.annotate(f"{value:.1f}%", (xi, value), ha="center", va="bottom", fontsize=8)
    ax.plot(x, np.cumsum(ratios), "kx--", label="cumulative")
    ax.axhline(85, color="grey", lw=0.8, ls=":", label="85%")
    ax.set_xticks(x, [f"PC{i}" for i in x])
    ax.set_ylim(0, 108)  # room for the labels above a dominant PC1
    ax.set_ylabel("information ratio (%)")
    ax.set_title(title or "Row-centred PCA of the GAP traits")
    ax.legend()
    return _save_figure(fig, path)


def plot_stability(result: Stability, path: str | Path, title: str = "") -> Path:
    """Spread e of PC1 against the sample size Ns (paper Fig. 2d)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    values = [result.spreads[n] for n in result.sizes]
    ax.plot(result.sizes, values, "o-")
    for n, e in zip(result.sizes, values):
        ax.annotate(f"{e:.1f}%", (n, e), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xticks(result.sizes)
    ax.set_xlabel("number of samples Ns")
    ax.set_ylabel(f"spread e of PC1 (%), {result.repeats} repeats")
    ax.set_title(title or "Stability of the common traits")
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


# ------------------------------------------------------------------------------------------ the CLI
def class_images(data: str | Path, target_class: str) -> list[Path]:
    """``DATA/<class>`` of an ImageFolder root, else the images directly inside ``DATA``."""
    data = Path(data)
    if not data.is_dir():
        raise ImageLoadError(f"{data}: not a folder")
    if (data / target_class).is_dir():
        paths = list_images(data / target_class)
    else:
        subfolders = sorted(d.name for d in data.iterdir() if d.is_dir() and not d.name.startswith("."))
        paths = list_images(data, recursive=False)
        if not paths and subfolders:
            raise ImageLoadError(
                f"{data} has no folder {target_class!r} (found {', '.join(subfolders)}); "
                "pass an ImageFolder root holding DATA/<class>/ or a folder of images of the class"
            )
    if not paths:
        raise ImageLoadError(f"{data}: no images found for class {target_class!r}")
    return paths


@command
def _traits(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "traits", help="common traits of a class: row-centred PCA of GAP traits, inversions, stability",
        description="Draw N images of a class, keep the superpixels that make the model surest of it "
                    "(genetic search), run the row-centred PCA on their GAP traits and visualise the "
                    "first PCs. Writes OUT (a folder, created atomically): summary.json, "
                    "traits.safetensors (traits, pcs, loadings, fitness), pca.json (information ratios, "
                    "PCs), masks.npz (kept superpixels), information_ratio.png, inversions/pcK.png, and "
                    "with --stability stability.json/.png, with --per-layer layers.json/.png.",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, help="ImageFolder root (uses DATA/<class>) or a folder of images")
    p.add_argument("--class", dest="target_class", metavar="CLASS", required=True, help="the class, e.g. cat")
    p.add_argument("--n", type=positive_int, default=300, help="sample size Ns (default 300, the paper's)")
    p.add_argument("--out", "-o", required=True, help="results folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ga", action="store_true", help="skip the genetic superpixel search")
    p.add_argument("--ga-mode", choices=("paper", "fast"), default="paper",
                   help="paper: 50 genomes × 50 generations; fast: occlusion-seeded, early stop")
    p.add_argument("--invert", default="tv",
                   help="feature inverter for the PCs: tv (paper), fourier, another plugin's, or none")
    p.add_argument("--inversion-steps", type=positive_int, help="default: the inverter's own (tv 4000, fourier 512)")
    p.add_argument("--pcs", type=positive_int, default=3, help="how many leading PCs to invert (default 3)")
    p.add_argument("--stability", type=positive_list(int), metavar="N1,N2,...",
                   help="also measure PC1's spread for these sample sizes (e.g. 50,100,300)")
    p.add_argument("--repeats", type=positive_int, default=3, help="repeats per size for --stability (paper: 3)")
    p.add_argument("--per-layer", action="store_true", help="row-centred PCA of every block's maps too")
    p.add_argument("--layer-mode", choices=("blocks", "conv"), default="blocks")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass when taking traits")
    p.add_argument("--ga-batch-size", type=positive_int, default=50,
                   help="genomes per forward pass in the genetic search (default 50; a GPU wants 500 or "
                        "more); changes speed, not the search's answers")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout at the end")
    p.set_defaults(handler=_run_traits)


def _run_traits(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SxaiError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if args.n < 2:
        raise SxaiError(f"--n must be at least 2, got {args.n}")
    inverter = None
    if args.invert != "none":
        from ..plugin.manager import get_feature_inverter

        inverter = get_feature_inverter(args.invert)
    model = model_from_args(args)
    paths = class_images(args.data, args.target_class)
    ga_config = None
    if not args.no_ga:
        from .genetic import GAConfig

        ga_config = GAConfig(mode=args.ga_mode, batch_size=args.ga_batch_size)
    progress = not args.json

    found = common_traits(model, paths, args.target_class, n=args.n, seed=args.seed, ga_config=ga_config,
                          use_ga=not args.no_ga, progress=progress, batch_size=args.batch_size)
    for _path, why in found.failures:
        print(f"skipped: {why}", file=sys.stderr)
    with atomic_folder(out) as tmp:
        summary = _write_results(tmp, out, args, model, found, inverter, ga_config, paths, progress)
    if args.json:
        print(dumps_json(summary))
    else:
        ratios = found.pca.explained_variance_ratio_
        print(f"{len(found.paths)} images of {args.target_class}: PC1 {100 * ratios[0]:.1f}%, "
              f"{found.pca.n_components_} PCs reach 85%; wrote {out}")
        if "stability" in summary:
            shown = ", ".join(f"Ns={n}: {e:.2f}%" for n, e in summary["stability"]["spread_percent"].items())
            print(f"spread of PC1: {shown}")
    return 0


def _write_results(tmp: Path, out: Path, args: argparse.Namespace, model: TraitModel, found: CommonTraits,
                   inverter: Any, ga_config: Any, candidates: list[Path], progress: bool) -> dict[str, Any]:
    pca = found.pca
    paths = [str(p) for p in found.paths]
    files = ["summary.json", "traits.safetensors", "pca.json", "masks.npz", "information_ratio.png"]
    write_safetensors(
        tmp / "traits.safetensors",
        {"traits": found.traits, "pcs": torch.from_numpy(pca.components_).float(),
         "loadings": torch.from_numpy(pca.eigenvectors_).float(),
         "fitness": torch.from_numpy(found.fitness).float()},
        metadata={"sxai.traits": json.dumps({"paths": paths, "class": args.target_class,
                                              "backbone": model.name, "fingerprint": model.fingerprint()})},
    )
    masks = found.masks

    def _save_masks(target: Path) -> None:
        with open(target, "wb") as handle:
            np.savez_compressed(handle, masks=masks, paths=np.asarray(paths))

    atomic_write(tmp / "masks.npz", _save_masks)
    ratios = pca.explained_variance_ratio_
    write_json(tmp / "pca.json", {
        "information_ratio": [float(r) for r in ratios],
        "cumulative": [float(c) for c in np.cumsum(ratios)],
        "n_components_85": int(pca.n_components_),
        "pcs": [[float(v) for v in row] for row in pca.components_],
    })
    plot_information_ratios(ratios, tmp / "information_ratio.png",
                            title=f"{args.target_class}: row-centred PCA of {len(paths)} images ({model.name})")

    inversions: list[str] = []
    if inverter is not None:
        from ..viz.inversion import save_png

        n_pcs = min(max(args.pcs, 1), len(paths))
        targets = RowCentredPCA(n_components=n_pcs).fit(found.traits).components_
        images = inverter.invert(model, torch.from_numpy(targets).float(), steps=args.inversion_steps,
                                 seed=args.seed, progress=progress)
        names = [f"pc{i + 1}" for i in range(len(targets))]
        save_png(images, tmp / "inversions", names)
        inversions = [f"inversions/{name}.png" for name in names]
        files += inversions

    summary: dict[str, Any] = {
        "backbone": model.name,
        "fingerprint": model.fingerprint(),
        "class": args.target_class,
        "data": str(args.data),
        "n_requested": args.n,
        "n_used": len(paths),
        "n_candidates": len(candidates),
        "seed": args.seed,
        "genetic_search": None if ga_config is None else asdict(ga_config),
        "mean_fitness": None if np.isnan(found.fitness).all() else float(np.nanmean(found.fitness)),
        "pc1_information_ratio": float(ratios[0]),
        "n_components_85": int(pca.n_components_),
        "inverter": None if inverter is None else inverter.name,
        "inversion_steps": args.inversion_steps,
        "skipped": [{"path": str(p), "error": why} for p, why in found.failures],
    }
    if args.stability:
        result = stability(model, candidates, args.target_class, sizes=args.stability, repeats=args.repeats,
                           seed=args.seed, ga_config=ga_config, use_ga=ga_config is not None,
                           progress=progress, batch_size=args.batch_size, known=found)
        write_json(tmp / "stability.json", result.to_dict())
        plot_stability(result, tmp / "stability.png", title=f"{args.target_class} ({model.name})")
        files += ["stability.json", "stability.png"]
        summary["stability"] = {"spread_percent": {str(n): result.spreads[n] for n in result.sizes},
                                "repeats": result.repeats}
    if args.per_layer:
        from .layers import layer_information_ratios, plot_layer_ratios

        per_layer = layer_information_ratios(
            model, torch.from_numpy(found.images).permute(0, 3, 1, 2), mode=args.layer_mode,
            batch_size=args.batch_size, progress=progress)
        write_json(tmp / "layers.json", {
            "aggregation": "ratio_mean: mean over spatial positions of λ1/tr(S); "
                           "ratio_pooled: Σλ1/Σtr(S) over positions",
            "layers": [r.to_dict() for r in per_layer],
        })
        plot_layer_ratios(per_layer, tmp / "layers.png", title=f"{args.target_class}: PC1 per layer ({model.name})")
        files += ["layers.json", "layers.png"]
    summary["files"] = files
    write_json(tmp / "summary.json", summary)
    return summary
