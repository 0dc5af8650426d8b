"""``sxai traits --engine ray`` and ``sxai space --engine ray``: per-image work on Ray actors.

Each image's genetic search is independent of the others': image ``k`` draws from child ``k``
of ``SeedSequence(seed)`` whatever else is searched with it
(:func:`~sxai_plugins.traits.genetic.search_best_superpixels`'s ``first_index``). So the
images are cut into blocks, each block is one batched search on one actor (the model loaded
once per actor, on a GPU when asked), and the driver gathers the blocks in order and runs the
PCA: the same traits and PCA as the local run.

The masked/unmasked feature extraction of ``sxai space`` is spread the same way: blocks of
labelled images, each extracted by :func:`~sxai_plugins.spaces.probe_data.extract_probe_features`
on an actor, gathered in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.trait_model import TraitModel
from ..traits.common import ProcessedImages, process_images
from ._ray import FaultDrill, Workers, plan_workers, put_model, ray_session


def _actor_model(ref, workers: Workers) -> TraitModel:
    import ray

    torch.set_num_threads(workers.threads)
    return ray.get(ref).to(workers.device).eval()


def _blocks(n: int, block_size: int | None, concurrency: int) -> list[tuple[int, int]]:
    size = block_size or max(1, min(32, math.ceil(n / (4 * concurrency))))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


class _TraitsActor:
    """Searches blocks of images: one :func:`process_images` call per block."""

    def __init__(self, refs: list, workers: Workers, settings: dict, fault_marker: str | None):
        import ray

        self.model = _actor_model(refs[0], workers)
        self.images = ray.get(refs[1])
        self.settings = settings
        self.drill = FaultDrill(fault_marker, at=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.drill.tick()
        out: dict[str, list] = {"index": [], "traits": [], "masks": [], "fitness": [], "images": []}
        for start, stop in zip(batch["start"], batch["stop"]):
            start, stop = int(start), int(stop)
            done = process_images(
                self.model,
                list(self.images[start:stop]),
                progress=False,
                first_index=self.settings["first_index"] + start,
                **{k: v for k, v in self.settings.items() if k != "first_index"},
            )
            out["index"].append(np.arange(start, stop))
            out["traits"].append(done.traits.numpy())
            out["masks"].append(done.masks)
            out["fitness"].append(done.fitness)
            out["images"].append(done.images)
        return {k: np.concatenate(v) for k, v in out.items()}


@dataclass
class RayRunner:
    """A ``runner`` for :func:`~sxai_plugins.traits.common.common_traits` and
    :func:`~sxai_plugins.traits.common.stability` that searches blocks of ``block_size``
    images on Ray actors (default: about four blocks per actor, at most 32 images each).

    ``address``, ``concurrency``, ``num_gpus_per_worker`` as for ``index_with_ray``;
    ``fault_marker``: tests only (:class:`~sxai_plugins.scale._ray.FaultDrill`)."""

    block_size: int | None = None
    concurrency: int | None = None
    num_gpus_per_worker: float = 0
    address: str | None = None
    fault_marker: str | None = None

    def __call__(
        self,
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
        settings = {
            "target": target,
            "use_ga": use_ga,
            "ga_config": ga_config,
            "seed": seed,
            "batch_size": batch_size,
            "first_index": first_index,
        }
        with ray_session(self.address) as ray:
            workers = plan_workers(ray, self.concurrency, self.num_gpus_per_worker)
            refs = [put_model(ray, model), ray.put(np.stack(images))]
            blocks = _blocks(len(images), self.block_size, workers.concurrency)
            ds = ray.data.from_items(
                [{"start": a, "stop": b} for a, b in blocks], override_num_blocks=len(blocks)
            ).map_batches(
                _TraitsActor,
                batch_size=1,
                batch_format="numpy",
                fn_constructor_args=(refs, workers, settings, self.fault_marker),
                compute=ray.data.ActorPoolStrategy(size=workers.concurrency),
                num_gpus=workers.num_gpus or None,
                num_cpus=1 if workers.num_gpus == 0 else None,
            )
            parts: dict[str, list] = {}
            with tqdm(
                total=len(images), desc="genetic search (ray)", unit="img", disable=not progress
            ) as bar:
                for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                    for key, value in batch.items():
                        parts.setdefault(key, []).append(value)
                    bar.update(len(batch["index"]))
        joined = {k: np.concatenate(v) for k, v in parts.items()}
        order = np.argsort(joined["index"], kind="stable")
        if not np.array_equal(joined["index"][order], np.arange(len(images))):
            raise RuntimeError("the Ray actors returned other images than were sent")
        return ProcessedImages(
            torch.from_numpy(np.ascontiguousarray(joined["traits"][order])),
            joined["masks"][order].astype(bool),
            joined["fitness"][order].astype(np.float64),
            joined["images"][order].astype(np.float32),
        )


# --------------------------------------------------------------------------------- space
class _ProbeActor:
    """Extracts the traits of blocks of labelled images and their masked and control copies."""

    def __init__(self, refs: list, workers: Workers, settings: dict):
        import ray

        self.model = _actor_model(refs[0], workers)
        self.images = ray.get(refs[1])
        self.settings = settings
        self.threads = workers.threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        from .._utils.errors import ImageLoadError, SpaceError
        from ..data.images import load_image
        from ..spaces.probe_data import extract_probe_features

        starts, payloads = [], []
        for start, stop in zip(batch["start"], batch["stop"]):
            block = self.images[int(start) : int(stop)]
            try:
                bank = extract_probe_features(
                    self.model, block, progress=False, workers=self.threads, **self.settings
                )
                part = (
                    bank.rows,
                    bank.traits.numpy(),
                    None if bank.maps is None else bank.maps.numpy(),
                    bank.meta["failures"],
                    None if bank.pooled is None else bank.pooled.numpy(),
                    bank.pooled_layers,
                )
            except SpaceError:  # no image of this block could be read: say which, per image
                failures = []
                for item in block:
                    try:
                        load_image(item.path)
                    except ImageLoadError as exc:
                        failures.append(str(exc))
                part = ([], None, None, failures, None, {})
            starts.append(int(start))
            payloads.append(pickle.dumps(part))
        return {"start": np.array(starts), "part": np.array(payloads, dtype=object)}


@dataclass
class RayExtractor:
    """An ``extractor`` for :func:`~sxai_plugins.spaces.probe_data.cached_probe_features`:
    :func:`~sxai_plugins.spaces.probe_data.extract_probe_features` over blocks of ``block_size``
    labelled images on Ray actors, gathered in order (the same bank as one local call)."""

    block_size: int | None = None
    concurrency: int | None = None
    num_gpus_per_worker: float = 0
    address: str | None = None

    def __call__(
        self,
        model: TraitModel,
        images: list,
        concepts,
        maskings,
        batch_size: int = 64,
        seed: int = 0,
        progress: bool = True,
        keep_maps: bool = False,
        layers=(),
        framing: bool = False,
    ):
        import pickle

        from .._utils.errors import SpaceError
        from ..spaces.probe_data import ProbeFeatures, ProbeRow

        settings = {
            "concepts": tuple(concepts),
            "maskings": tuple(maskings),
            "batch_size": batch_size,
            "seed": seed,
            "keep_maps": keep_maps,
            "layers": tuple(layers),
            "framing": framing,
        }
        images = list(images)
        with ray_session(self.address) as ray:
            workers = plan_workers(ray, self.concurrency, self.num_gpus_per_worker)
            refs = [put_model(ray, model), ray.put(images)]
            blocks = _blocks(len(images), self.block_size, workers.concurrency)
            ds = ray.data.from_items(
                [{"start": a, "stop": b} for a, b in blocks], override_num_blocks=len(blocks)
            ).map_batches(
                _ProbeActor,
                batch_size=1,
                batch_format="numpy",
                fn_constructor_args=(refs, workers, settings),
                compute=ray.data.ActorPoolStrategy(size=workers.concurrency),
                num_gpus=workers.num_gpus or None,
                num_cpus=1 if workers.num_gpus == 0 else None,
            )
            parts: dict[int, tuple] = {}
            with tqdm(
                total=len(blocks), desc="masked copies (ray)", unit="block", disable=not progress
            ) as bar:
                for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                    for start, part in zip(batch["start"], batch["part"]):
                        parts[int(start)] = pickle.loads(part)
                        bar.update(1)
        if sorted(parts) != [a for a, _ in blocks]:
            raise RuntimeError("the Ray actors returned other blocks than were sent")
        rows, traits, maps, pooled, failures = [], [], [], [], []
        widths: dict[str, int] = {}
        for start in sorted(parts):
            block_rows, block_traits, block_maps, block_failures, block_pooled, block_widths = (
                parts[start]
            )
            rows += [
                ProbeRow(start + r.image, r.kind, r.concept, r.masking, r.area) for r in block_rows
            ]
            if block_traits is not None:
                traits.append(torch.from_numpy(block_traits))
                if block_maps is not None:
                    maps.append(torch.from_numpy(block_maps))
                if block_pooled is not None:
                    pooled.append(torch.from_numpy(block_pooled))
                    widths.update(block_widths)
            failures += block_failures
        if not rows:
            raise SpaceError("no labelled image could be read: " + "; ".join(failures[:3]))
        return ProbeFeatures(
            images,
            rows,
            torch.cat(traits),
            tuple(concepts),
            tuple(m.name for m in maskings),
            {"failures": failures, "seed": seed, "framing": framing},
            torch.cat(maps) if keep_maps else None,
            torch.cat(pooled) if layers else None,
            widths,
        )
