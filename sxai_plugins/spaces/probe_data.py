"""The training and evaluation material of concept probes: GAP traits of labelled images, of their
concept-masked copies and of control-masked copies, extracted once in batches and cached.

Every row of a :class:`ProbeFeatures` bank is one image the model saw:

- ``original``: a labelled image as it is;
- ``masked``: an annotated image with one concept hidden by one masking (a masker plugin on the
  concept's region at one SLIC segment count, :class:`Masking`);
- ``control``: the same image with a region of about the concept's size hidden by the same
  masking, a region that neither holds nor touches the concept (nor, where there is room, any
  other annotated part). A probe that drops on control copies has learnt "something was masked",
  not "the eyes are gone";
- ``framed_out`` (on request, ``framing=True``): a square crop of the image that leaves the concept
  out of the picture, as a close-up of the face leaves out the legs: a natural-looking image of the
  class without the concept, where a masked copy is an image with a hole. ``framed_in``: a crop of
  the same size that keeps the whole concept, so that a probe cannot read "zoomed in" as "absent".

Images come from COCO concept annotations (points: they can be masked) and, optionally, from
visibility labels without points (``visibility.json``: natural positives and negatives only).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils.errors import SpaceError
from .._utils.io import atomic_write, write_json
from ..data.concepts import AnnotationSet, ConceptAnnotation, concept_region
from ..data.images import load_image, to_array
from ..data.superpixels import slic_segments
from ..models.trait_model import TraitModel, pooled_layers
from ..plugin.manager import get_masker

ORIGINAL, MASKED, CONTROL = "original", "masked", "control"
FRAMED_OUT, FRAMED_IN = "framed_out", "framed_in"
# A framed crop's side is at least this share of the image's shorter side: a smaller crop is a
# patch of fur, not a picture of the animal.
FRAME_MIN_SIDE = 0.45
# Share of the image kept clear between a framed-out crop and the concept's region.
FRAME_CLEARANCE = 0.03
# A control region may overshoot the concept's area by whole superpixels; past this it is too
# different a perturbation to be a fair control.
CONTROL_MAX_AREA_RATIO = 2.0
# Pixels of clearance between a control region and the parts it must not touch.
CONTROL_CLEARANCE_PX = 3


@dataclass(frozen=True)
class Masking:
    """One way to hide a region: a masker plugin applied to regions grown from SLIC superpixels
    at ``n_segments`` (the superpixel masker also fills from those superpixels)."""

    masker: str
    n_segments: int

    @property
    def name(self) -> str:
        return f"{self.masker}@{self.n_segments}"

    @classmethod
    def parse(cls, text: str) -> Masking:
        masker, sep, segments = text.partition("@")
        if not sep or not masker or not segments.isdigit() or int(segments) < 2:
            raise SpaceError(
                f"masking {text!r} is not of the form MASKER@SEGMENTS, e.g. superpixel@20"
            )
        return cls(masker, int(segments))


# Probes train on these; evaluation hides concepts with maskings the probe never saw.
TRAIN_MASKINGS = (Masking("superpixel", 15), Masking("superpixel", 25), Masking("blur", 20))
HELD_OUT_MASKINGS = (Masking("inpaint", 20), Masking("superpixel", 35))


@dataclass
class LabelledImage:
    """An image of a class with, per concept, whether it is visible (None: unknown).

    ``annotation`` is set when the concept geometry is known, which makes masked copies possible.
    """

    path: Path
    class_name: str
    visible: dict[str, bool]
    annotation: ConceptAnnotation | None = None


def labelled_from_annotations(annotations: AnnotationSet) -> list[LabelledImage]:
    """Annotated images with a visibility label for every concept of the set (absent = not
    visible, unless one of the image's annotations was skipped: then unknown)."""
    out = []
    for a in annotations:
        visible = {c: a.has(c) for c in annotations.concepts if a.has(c) or a.complete}
        out.append(LabelledImage(a.image_path, a.class_name, visible, a))
    return out


def load_visibility(path: str | Path, image_root: str | Path | None = None) -> list[LabelledImage]:
    """Visibility labels without points: ``{"train/cat/cat.120.jpg": {"species": "cat",
    "visible": {"eyes": true, ...}}, ...}``, paths relative to ``image_root`` (default: the file's
    folder)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SpaceError(f"{path}: no such visibility file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path}: not a JSON file ({exc})") from exc
    if not isinstance(data, Mapping):
        raise SpaceError(f"{path}: expected an object mapping image paths to labels")
    out = []
    for name, entry in sorted(data.items()):
        try:
            species = str(entry["species"])
            visible = {str(k): bool(v) for k, v in dict(entry["visible"]).items() if v is not None}
        except (KeyError, TypeError, ValueError) as exc:
            raise SpaceError(
                f"{path}: entry {name!r} needs 'species' and a 'visible' object ({exc})"
            ) from exc
        image = root / name
        if not image.is_file():
            raise SpaceError(f"{path}: entry {name!r}: image file {image} is missing")
        out.append(LabelledImage(image, species, visible))
    return out


def merge_labelled(*groups: Sequence[LabelledImage]) -> list[LabelledImage]:
    """One list, each image once (the first source that labels it wins)."""
    seen: set[Path] = set()
    out = []
    for group in groups:
        for item in group:
            key = item.path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def load_labelled(
    annotations: AnnotationSet,
    visibility: str | Path | None = None,
    image_root: str | Path | None = None,
) -> list[LabelledImage]:
    """The labelled images of a concept annotation set and, when given, of a visibility file
    (its paths relative to ``image_root``, default the file's folder), each image once."""
    labelled = labelled_from_annotations(annotations)
    if visibility is not None:
        labelled = merge_labelled(labelled, load_visibility(visibility, image_root))
    return labelled


def stable_seed(*parts: object) -> int:
    """A seed from names that does not change between runs or Python versions (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _adjacency(segments: np.ndarray) -> list[set[int]]:
    n = int(segments.max()) + 1
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in ((segments[:, :-1], segments[:, 1:]), (segments[:-1], segments[1:])):
        differ = a != b
        for u, v in set(zip(a[differ].tolist(), b[differ].tolist())):
            neighbours[u].add(v)
            neighbours[v].add(u)
    return neighbours


def _dilate(region: np.ndarray, pixels: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(region, iterations=pixels) if pixels > 0 and region.any() else region


def control_region(
    segments: np.ndarray,
    concept: np.ndarray,
    avoid: np.ndarray,
    rng: np.random.Generator,
    clearance: int = CONTROL_CLEARANCE_PX,
) -> np.ndarray | None:
    """A connected union of superpixels of about the concept's area that does not touch ``avoid``
    (a boolean region that includes the concept), grown breadth-first in random order from a random
    superpixel; None when no such region reaches half the concept's area."""
    target = int(concept.sum())
    if target == 0:
        return None
    blocked = np.unique(segments[_dilate(avoid | concept, clearance)])
    n = int(segments.max()) + 1
    free = np.ones(n, dtype=bool)
    free[blocked] = False
    sizes = np.bincount(segments.ravel(), minlength=n)
    neighbours = _adjacency(segments)
    starts = np.flatnonzero(free)
    best: list[int] = []
    best_area = 0
    for start in rng.permutation(starts)[:8]:
        chosen, area = [], 0
        queue, seen = deque([int(start)]), {int(start)}
        while queue and area < target:
            label = queue.popleft()
            if area + sizes[label] > CONTROL_MAX_AREA_RATIO * target and chosen:
                continue
            chosen.append(label)
            area += int(sizes[label])
            nxt = [v for v in neighbours[label] if free[v] and v not in seen]
            for v in rng.permutation(nxt).tolist() if nxt else []:
                seen.add(v)
                queue.append(v)
        if abs(area - target) < abs(best_area - target):
            best, best_area = chosen, area
        if area >= target:
            break
    if best_area < 0.5 * target:
        return None
    return np.isin(segments, best)


@dataclass
class ProbeRow:
    """What one row of the bank is (see the module docstring)."""

    image: int  # index into ProbeFeatures.images
    kind: str  # original, masked or control
    concept: str = ""  # masked/control: the concept hidden (control: the one it stands in for)
    masking: str = ""  # masked/control: Masking.name
    area: float = 0.0  # masked/control: the hidden fraction of the image


@dataclass
class ProbeFeatures:
    """GAP traits of originals, masked copies and control copies, with what each row is."""

    images: list[LabelledImage]
    rows: list[ProbeRow]
    traits: torch.Tensor  # len(rows) × C, float32
    concepts: tuple[str, ...]
    maskings: tuple[str, ...]
    meta: dict = field(default_factory=dict)
    # len(rows) × C × h × w float16: the last conv map whose mean is ``traits`` (kept on request)
    maps: torch.Tensor | None = None
    # len(rows) × E: mean- and max-pooled outputs of earlier layers (extracted on request)
    pooled: torch.Tensor | None = None
    pooled_layers: dict[str, int] = field(default_factory=dict)  # layer -> its width in ``pooled``

    def features(self, layers: Sequence[str] = ()) -> torch.Tensor:
        """The rows' probe features: the GAP traits, then the pooled outputs of ``layers`` in order."""
        if not layers:
            return self.traits
        missing = [name for name in layers if name not in self.pooled_layers]
        if missing or self.pooled is None:
            raise SpaceError(
                f"this feature bank holds no pooled outputs of {', '.join(missing or layers)} "
                f"(it has: {', '.join(self.pooled_layers) or 'none'}); extract it with layers=..."
            )
        starts = np.cumsum([0, *self.pooled_layers.values()])
        where = dict(zip(self.pooled_layers, zip(starts[:-1], starts[1:])))
        parts = [self.pooled[:, where[name][0] : where[name][1]] for name in layers]
        return torch.cat([self.traits, *parts], dim=1)

    def column(self, name: str) -> np.ndarray:
        return np.array([getattr(r, name) for r in self.rows])

    def image_column(self, name: str) -> np.ndarray:
        """``name`` of each row's image (class_name, path)."""
        values = [str(getattr(im, name)) for im in self.images]
        return np.array([values[r.image] for r in self.rows])

    def visible(self, concept: str) -> np.ndarray:
        """Per row: 1 visible, 0 not visible, -1 unknown — for the row's image as it is (original)."""
        table = np.array(
            [{True: 1, False: 0}.get(im.visible.get(concept), -1) for im in self.images]
        )
        return table[self.column("image")]

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        payload = {
            "images": [
                {
                    "path": str(im.path),
                    "class_name": im.class_name,
                    "visible": im.visible,
                    "annotated": im.annotation is not None,
                }
                for im in self.images
            ],
            "rows": [asdict(r) for r in self.rows],
            "concepts": list(self.concepts),
            "maskings": list(self.maskings),
            "meta": self.meta,
            "pooled_layers": self.pooled_layers,
        }
        # traits first, rows (the manifest) last: a bank without its manifest is never read
        atomic_write(
            path.with_suffix(".safetensors"),
            lambda tmp: save_file({"traits": self.traits.contiguous()}, str(tmp)),
        )
        if self.maps is not None:
            atomic_write(
                _maps_path(path), lambda tmp: save_file({"maps": self.maps.contiguous()}, str(tmp))
            )
        else:  # maps of an earlier bank at this path would not match these rows
            _maps_path(path).unlink(missing_ok=True)
        if self.pooled is not None:
            atomic_write(
                _pooled_path(path),
                lambda tmp: save_file({"pooled": self.pooled.contiguous()}, str(tmp)),
            )
        else:
            _pooled_path(path).unlink(missing_ok=True)
        write_json(path.with_suffix(".json"), payload)
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        annotated: Mapping[Path, ConceptAnnotation] | None = None,
        maps: bool = False,
    ) -> ProbeFeatures:
        """The bank saved at ``path``; with ``maps``, also its feature maps (a SpaceError when the bank
        was saved without them). Pooled layer outputs load whenever the bank has them."""
        from safetensors.torch import load_file

        path = Path(path)
        if maps and not _maps_path(path).is_file():
            raise SpaceError(f"{path}: saved without feature maps")
        payload = json.loads(path.with_suffix(".json").read_text())
        traits = load_file(str(path.with_suffix(".safetensors")))["traits"]
        annotated = annotated or {}
        images = [
            LabelledImage(
                Path(i["path"]), i["class_name"], dict(i["visible"]), annotated.get(Path(i["path"]))
            )
            for i in payload["images"]
        ]
        rows = [ProbeRow(**r) for r in payload["rows"]]
        if len(rows) != len(traits):
            raise SpaceError(
                f"{path}: {len(rows)} rows but {len(traits)} trait vectors; delete this cache file"
            )
        bank = cls(
            images,
            rows,
            traits,
            tuple(payload["concepts"]),
            tuple(payload["maskings"]),
            payload.get("meta", {}),
        )
        layers = {str(k): int(v) for k, v in payload.get("pooled_layers", {}).items()}
        if layers and _pooled_path(path).is_file():
            bank.pooled = load_file(str(_pooled_path(path)))["pooled"]
            bank.pooled_layers = layers
            if bank.pooled.shape != (len(rows), sum(layers.values())):
                raise SpaceError(
                    f"{path}: pooled layer outputs of shape {tuple(bank.pooled.shape)} do not fit "
                    f"{len(rows)} rows of {sum(layers.values())} values; delete this cache file"
                )
        if maps:
            bank.maps = load_file(str(_maps_path(path)))["maps"]
            if len(bank.maps) != len(rows):
                raise SpaceError(
                    f"{path}: {len(rows)} rows but {len(bank.maps)} feature maps; delete this cache file"
                )
        return bank


def _maps_path(path: Path) -> Path:
    return path.with_name(path.name + ".maps.safetensors")


def _pooled_path(path: Path) -> Path:
    return path.with_name(path.name + ".pooled.safetensors")


def _regions(
    annotation: ConceptAnnotation, image: np.ndarray, concepts: Sequence[str], segments: np.ndarray
) -> dict[str, np.ndarray]:
    size = image.shape[:2]
    return {
        c: concept_region(image, annotation.geometry(c, size), segments=segments)
        for c in concepts
        if annotation.has(c)
    }


def pixel_extent(
    mask: np.ndarray, width: int, height: int
) -> tuple[float, float, float, float] | None:
    """The bounding box (x0, y0, x1, y1) of ``mask``, drawn at any resolution over a whole
    ``width``×``height`` image, in that image's pixels; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    rows, cols = mask.shape
    return (
        xs.min() / cols * width,
        ys.min() / rows * height,
        (xs.max() + 1) / cols * width,
        (ys.max() + 1) / rows * height,
    )


def _square_in(
    lo: float, hi: float, side: float, length: float, centre: float
) -> tuple[float, float]:
    """A span of ``side`` within [lo, hi] (pixels along one axis of ``length``), centred as near
    ``centre`` as it fits."""
    start = min(max(centre - side / 2, lo), hi - side)
    return max(start, 0.0), min(start + side, length)


def framed_boxes(
    region: np.ndarray,
    others: np.ndarray | None,
    width: int,
    height: int,
    min_side: float = FRAME_MIN_SIDE,
    clearance: float = FRAME_CLEARANCE,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(framed-out box, framed-in box) for a concept's ``region`` (a mask over the whole image at
    any resolution; the image is ``width``×``height`` pixels), as (left, top, right, bottom) in
    pixels; None where no square of ``min_side`` of the shorter side fits beside the region.

    The framed-out square lies in the band above, below, left or right of the region
    (``clearance`` of the image away from it), as near the other annotated parts (``others``) as
    it fits, else in the band's middle: of the bands with room, the one whose square holds most of
    the other parts (a close-up of the face, not of the floor), then the largest. The framed-in
    square has the same side and holds the region, centred on it where the image allows."""
    extent = pixel_extent(region, width, height)
    if extent is None:
        return None
    x0, y0, x1, y1 = extent
    rows, cols = region.shape
    gap_x, gap_y = clearance * width, clearance * height
    bands = {  # (x from, x to, y from, y to) of the room beside the region
        "above": (0.0, width, 0.0, y0 - gap_y),
        "below": (0.0, width, y1 + gap_y, height),
        "left": (0.0, x0 - gap_x, 0.0, height),
        "right": (x1 + gap_x, width, 0.0, height),
    }
    if others is not None and others.any():
        oy, ox = np.nonzero(others)
        oy, ox = (oy + 0.5) / rows * height, (ox + 0.5) / cols * width
        cx, cy = ox.mean(), oy.mean()
    else:
        ox = oy = np.zeros(0)
        cx, cy = width / 2, height / 2
    best = None
    for bx0, bx1, by0, by1 in bands.values():
        side = min(bx1 - bx0, by1 - by0)
        if side < min_side * min(width, height):
            continue
        left, right = _square_in(bx0, bx1, side, width, cx)
        top, bottom = _square_in(by0, by1, side, height, cy)
        holds = int(((ox >= left) & (ox < right) & (oy >= top) & (oy < bottom)).sum())
        if best is None or (holds, side) > best[:2]:
            best = (holds, side, (left, top, right, bottom))
    if best is None:
        return None
    _holds, side, out = best
    inside = max(side, x1 - x0, y1 - y0)
    left, right = _square_in(0.0, width, min(inside, width), width, (x0 + x1) / 2)
    top, bottom = _square_in(0.0, height, min(inside, height), height, (y0 + y1) / 2)
    return out, (left, top, right, bottom)


def _copies(
    item: LabelledImage,
    index: int,
    concepts: Sequence[str],
    maskings: Sequence[Masking],
    size: tuple[int, int],
    seed: int,
    framing: bool = False,
) -> Iterator[tuple[ProbeRow, np.ndarray]]:
    """The original, then every masked and control copy of one image (and, with ``framing``, its
    framed-out and framed-in crops per concept)."""
    picture = load_image(item.path)
    image = to_array(picture, size)
    yield ProbeRow(index, ORIGINAL), image
    annotation = item.annotation
    if annotation is None:
        return
    hidden: dict[str, np.ndarray] = {}  # per concept, the union of its regions over the maskings
    segments_by_count: dict[int, np.ndarray] = {}
    for masking in maskings:
        masker = get_masker(masking.masker)
        if masking.n_segments not in segments_by_count:
            segments_by_count[masking.n_segments] = slic_segments(image, masking.n_segments)
        segments = segments_by_count[masking.n_segments]
        regions = _regions(annotation, image, concepts, segments)
        every_part = np.logical_or.reduce(list(regions.values())) if regions else None
        for concept, region in regions.items():
            if not region.any():
                continue
            hidden[concept] = region | hidden.get(concept, False)
            hide = _mask_with(masker, image, region, segments)
            yield ProbeRow(index, MASKED, concept, masking.name, float(region.mean())), hide
            rng = np.random.default_rng(stable_seed(seed, item.path.name, concept, masking.name))
            control = control_region(segments, region, every_part, rng)
            if control is None:  # no room away from every part: keep away from this one only
                control = control_region(segments, region, region, rng)
            if control is not None:
                yield (
                    ProbeRow(index, CONTROL, concept, masking.name, float(control.mean())),
                    _mask_with(masker, image, control, segments),
                )
    if not framing:
        return
    for concept, region in hidden.items():
        others = [r for c, r in hidden.items() if c != concept]
        boxes = framed_boxes(
            region, np.logical_or.reduce(others) if others else None, *picture.size
        )
        if boxes is None:
            continue
        for kind, box in zip((FRAMED_OUT, FRAMED_IN), boxes, strict=True):
            left, top, right, bottom = (round(v) for v in box)
            crop = to_array(picture.crop((left, top, right, bottom)), size)
            area = (right - left) * (bottom - top) / (picture.size[0] * picture.size[1])
            yield ProbeRow(index, kind, concept, "", float(area)), crop


def _mask_with(masker, image: np.ndarray, region: np.ndarray, segments: np.ndarray) -> np.ndarray:
    if getattr(masker, "name", "") == "superpixel":
        return masker.mask(image, region, segments=segments)
    return masker.mask(image, region)


@torch.inference_mode()
def extract_probe_features(
    model: TraitModel,
    images: Sequence[LabelledImage],
    concepts: Sequence[str],
    maskings: Sequence[Masking] = TRAIN_MASKINGS + HELD_OUT_MASKINGS,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    keep_maps: bool = False,
    layers: Sequence[str] = (),
    framing: bool = False,
) -> ProbeFeatures:
    """Traits of every image and of its masked and control copies, in batched forward passes
    (with ``keep_maps``, also the last conv maps whose means they are, in float16; with ``layers``,
    the mean- and max-pooled outputs of those modules of ``model.body`` from the same passes; with
    ``framing``, the framed-out and framed-in crops too).

    The masking (SLIC, maskers) runs on ``workers`` threads while the model scores the previous
    batch; an image that cannot be read is reported and skipped like anywhere else in sxai.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..data.images import ImageLoadError

    size = (model.input_size[1], model.input_size[2])
    device = next(model.parameters()).device
    workers = workers or min(4, os.cpu_count() or 1)
    rows: list[ProbeRow] = []
    traits: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    widths: dict[str, int] = {}
    pending_rows: list[ProbeRow] = []
    pending: list[np.ndarray] = []
    failures: list[str] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).to(device)
        with pooled_layers(model, layers) as captured:
            feature_map = model.feature_map(x.contiguous(memory_format=torch.channels_last))
        traits.append(feature_map.mean(dim=(2, 3)).float().cpu())
        if layers:
            widths.update({name: captured[name].shape[1] for name in layers})
            pooled.append(torch.cat([captured[name].float().cpu() for name in layers], dim=1))
        if keep_maps:
            maps.append(feature_map.to(torch.float16).cpu().contiguous())
        rows.extend(pending_rows)
        pending.clear()
        pending_rows.clear()

    def work(i: int) -> list[tuple[ProbeRow, np.ndarray]] | str:
        try:
            return list(_copies(images[i], i, concepts, maskings, size, seed, framing))
        except ImageLoadError as exc:
            return str(exc)

    # Images go to the pool a window at a time: each yields ~30 copies of 600 kB, and an unbounded
    # queue of finished images would hold gigabytes while the model catches up.
    window = 4 * workers
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(images), desc="masked copies", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(images), window):
            for result in pool.map(work, range(start, min(start + window, len(images)))):
                bar.update(1)
                if isinstance(result, str):
                    failures.append(result)
                    continue
                for row, array in result:
                    pending_rows.append(row)
                    pending.append(array)
                    if len(pending) >= batch_size:
                        flush()
    if pending:
        flush()
    if not rows:
        raise SpaceError("no labelled image could be read: " + "; ".join(failures[:3]))
    return ProbeFeatures(
        list(images),
        rows,
        torch.cat(traits),
        tuple(concepts),
        tuple(m.name for m in maskings),
        {"failures": failures, "seed": seed, "framing": framing},
        torch.cat(maps) if keep_maps else None,
        torch.cat(pooled) if layers else None,
        widths,
    )


def _digest_geometry(digest, geometry) -> None:
    """Every element of a concept's geometry into the cache key: masks and outlines move a
    concept's region as much as points do (an edited masks.coco.json must not reuse a bank)."""
    digest.update(np.ascontiguousarray(geometry.points, dtype=np.float64).tobytes())
    for polygon in geometry.polygons:
        digest.update(b"polygon" + np.ascontiguousarray(polygon, dtype=np.float64).tobytes())
    for mask in geometry.masks:
        digest.update(b"mask" + str(mask.shape).encode() + np.packbits(mask).tobytes())
    for box in geometry.boxes:
        digest.update(b"box" + np.asarray(box, dtype=np.float64).tobytes())


def cached_probe_features(
    model: TraitModel,
    images: Sequence[LabelledImage],
    concepts: Sequence[str],
    maskings: Sequence[Masking] = TRAIN_MASKINGS + HELD_OUT_MASKINGS,
    seed: int = 0,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    maps: bool = False,
    layers: Sequence[str] = (),
    extractor: Callable[..., ProbeFeatures] | None = None,
    framing: bool = False,
) -> ProbeFeatures:
    """:func:`extract_probe_features`, cached under ``cache_dir`` (default ``$SXAI_CACHE`` or
    ~/.cache/sxai) by model weights, head, images (path, size, mtime, labels, geometry), concepts,
    maskings and seed: rebuilding spaces from the same material costs no forward pass. With
    ``maps`` the bank also carries the feature maps (float16, ~1 GB for 8,000 rows of 1280×7×7),
    kept in a file beside the traits; a cache saved without them is extracted again. ``layers``
    likewise: a cache without those layers' pooled outputs is extracted again.
    ``extractor``: what extracts on a cache miss, with :func:`extract_probe_features`'s arguments
    (default: that function, here; ``sxai_plugins.scale.ray_traits.RayExtractor`` spreads the
    images over Ray actors and gives the same bank). ``framing``: the bank also holds the framed
    crops (a bank with them is another cache entry)."""
    digest = hashlib.sha256(model.fingerprint().encode())
    digest.update(model.head.weight.detach().cpu().numpy().tobytes())
    key = [list(concepts), [m.name for m in maskings], seed, 2]
    if framing:  # the crops' geometry is part of what the bank holds
        key.append(["framing", FRAME_MIN_SIDE, FRAME_CLEARANCE])
    digest.update(json.dumps(key).encode())
    for item in images:
        stat = item.path.stat()
        digest.update(
            f"{item.path}|{stat.st_size}|{stat.st_mtime_ns}|{item.class_name}|"
            f"{sorted(item.visible.items())}".encode()
        )
        if item.annotation is not None:
            for c in concepts:
                _digest_geometry(digest, item.annotation.geometry(c))
    folder = Path(cache_dir or os.environ.get("SXAI_CACHE", Path.home() / ".cache" / "sxai"))
    path = folder / f"probe-features-{digest.hexdigest()[:20]}"
    annotated = {im.path: im.annotation for im in images if im.annotation is not None}
    cached = path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file()
    if cached and (not maps or _maps_path(path).is_file()):
        try:
            bank = ProbeFeatures.load(path, annotated, maps=maps)
            if set(layers) <= set(bank.pooled_layers):
                return bank
        except (SpaceError, OSError, ValueError, KeyError) as exc:
            import logging

            logging.getLogger("sxai").warning(
                "ignoring the unreadable feature cache %s (%s)", path, exc
            )
    bank = (extractor or extract_probe_features)(
        model,
        images,
        concepts,
        maskings,
        seed=seed,
        progress=progress,
        keep_maps=maps,
        layers=layers,
        framing=framing,
    )
    bank.save(path)
    return bank


__all__ = [
    "CONTROL",
    "FRAMED_IN",
    "FRAMED_OUT",
    "HELD_OUT_MASKINGS",
    "MASKED",
    "ORIGINAL",
    "TRAIN_MASKINGS",
    "LabelledImage",
    "Masking",
    "ProbeFeatures",
    "ProbeRow",
    "cached_probe_features",
    "control_region",
    "extract_probe_features",
    "framed_boxes",
    "pixel_extent",
    "labelled_from_annotations",
    "load_labelled",
    "load_visibility",
    "merge_labelled",
    "stable_seed",
]
