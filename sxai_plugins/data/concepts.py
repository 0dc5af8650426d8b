"""Concept annotations (which images show a concept, and where) and concept regions.

Sources
-------
``load_coco(path, image_root, concept_map=None)`` reads a COCO-format file:

* **keypoints** of an animal annotation (``category_id`` = the class, e.g. ``cat``). A concept is a
  group of keypoint names, taken from ``concept_map`` when given, else from the file's non-standard
  top-level ``concepts`` key (``{"eyes": ["eye_1", "eye_2"]}``), else one concept per keypoint name.
  A keypoint counts when its visibility flag is 2; 1 ("labelled but not visible" in COCO) and 0 do
  not. ``keypoints`` may also be a non-standard dict ``{name: [x, y, v]}``.
* **polygons / RLE masks / boxes** (``segmentation`` as polygons, uncompressed or compressed RLE;
  ``bbox``) of a *concept annotation*: one whose category is a concept (its name is a concept of
  the concept map, or its ``supercategory`` is ``"concept"``), or any annotation carrying a
  non-standard ``"concept": "eyes"`` key. The class of the image comes from its animal
  annotation(s); a concept annotation's own category may also be the class when ``concept`` is set.

``load_mask_folder(mask_root, image_root)`` reads binary mask PNGs (non-zero / >= 128 = inside):
either ``mask_root/<image stem>_<concept>.png`` or ``mask_root/<concept>/<image stem>.png``. The
image is found under ``image_root`` by stem, and its class is its parent folder's name (ImageFolder
layout) unless ``class_name`` is given. Every image with at least one mask file is annotated; for
such an image a concept with no file (or an empty mask) is *not visible*.

Coordinates are COCO's: continuous pixels, x to the right, y down, pixel ``(row, col)`` covering
``[col, col+1) × [row, row+1)``; sizes are ``(H, W)`` as in :func:`sxai_plugins.data.images.to_tensor`.

Bad entries (a point or polygon outside its image, an unknown keypoint name, a missing image file,
an unknown image or category id, a mask of the wrong size) are reported with a warning naming the
file and the annotation/image id, skipped, and collected in ``AnnotationSet.problems``. An image
with a skipped annotation is never used as a negative (its concept may just have been dropped).
Images listed with no annotation (no animal) are neither positives nor negatives.

Regions
-------
``concept_region(image, geometry)`` applies the paper's rule: SLIC with 20 superpixels, and the
superpixels containing one of the concept's points or covered more than half by its mask/box form
the region. ``mode="disc"`` uses discs around the points (plus the raw masks/boxes) instead.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._utils.errors import SxaiError
from .images import IMAGE_SUFFIXES, load_image, to_array

Size = tuple[int, int]  # (H, W)
_EXIF_ORIENTATION = 0x0112
_VISIBLE_FLAG = 2


class ConceptAnnotationError(SxaiError, ValueError):
    """An annotation file cannot be used at all, or a concept/class name is unknown."""


class AnnotationWarning(UserWarning):
    """One annotation or image was skipped; the message names the file and the id."""


@dataclass(frozen=True)
class AnnotationProblem:
    """A skipped entry: where it came from and why."""

    source: str
    message: str
    image_id: int | str | None = None
    annotation_id: int | str | None = None

    def __str__(self) -> str:
        where = [
            f"image {self.image_id}" if self.image_id is not None else "",
            f"annotation {self.annotation_id}" if self.annotation_id is not None else "",
        ]
        label = ", ".join(w for w in where if w)
        return f"{self.source}: {label + ': ' if label else ''}{self.message}"


@dataclass
class ConceptGeometry:
    """Where one concept lies in one image, in the pixel frame ``size`` = (H, W).

    ``points`` is ``N×2`` (x, y); ``polygons`` a list of ``K×2`` (x, y) outlines; ``masks`` a list of
    boolean ``H×W`` arrays; ``boxes`` a list of COCO ``(x, y, w, h)``.
    """

    size: Size
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    polygons: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def visible(self) -> bool:
        return bool(len(self.points) or self.polygons or self.masks or self.boxes)

    def merged(self, other: ConceptGeometry) -> ConceptGeometry:
        """Both geometries' elements together (same frame)."""
        if tuple(other.size) != tuple(self.size):
            raise ConceptAnnotationError(
                f"cannot merge geometries of sizes {self.size} and {other.size}"
            )
        return ConceptGeometry(
            self.size,
            np.concatenate([self.points, other.points]).reshape(-1, 2),
            self.polygons + other.polygons,
            self.masks + other.masks,
            self.boxes + other.boxes,
        )

    def scaled(self, size: Size) -> ConceptGeometry:
        """The same geometry in an image resized (squashed, no crop) to ``size`` = (H, W)."""
        h0, w0 = self.size
        h1, w1 = int(size[0]), int(size[1])
        factor = np.array([w1 / w0, h1 / h0])
        masks = []
        for mask in self.masks:
            # Bilinear then threshold keeps thin parts better than nearest neighbour on downscaling.
            resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((w1, h1), Image.BILINEAR)
            masks.append(np.asarray(resized) >= 128)
        return ConceptGeometry(
            (h1, w1),
            self.points * factor,
            [poly * factor for poly in self.polygons],
            masks,
            [
                (x * factor[0], y * factor[1], w * factor[0], h * factor[1])
                for x, y, w, h in self.boxes
            ],
        )

    def area_mask(self) -> np.ndarray:
        """Boolean ``H×W`` union of the polygons, masks and boxes (points are not areas)."""
        from skimage.draw import polygon as draw_polygon

        h, w = self.size
        out = np.zeros((h, w), dtype=bool)
        for poly in self.polygons:
            # Pixel centres sit at +0.5 in COCO's continuous frame, at integers in skimage's.
            rr, cc = draw_polygon(poly[:, 1] - 0.5, poly[:, 0] - 0.5, shape=(h, w))
            out[rr, cc] = True
        for mask in self.masks:
            out |= mask
        for x, y, bw, bh in self.boxes:
            r0, r1 = max(int(np.floor(y)), 0), min(int(np.ceil(y + bh)), h)
            c0, c1 = max(int(np.floor(x)), 0), min(int(np.ceil(x + bw)), w)
            out[r0:r1, c0:c1] = True
        return out

    def point_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the pixels holding the points."""
        h, w = self.size
        cols = np.clip(np.floor(self.points[:, 0]).astype(int), 0, w - 1)
        rows = np.clip(np.floor(self.points[:, 1]).astype(int), 0, h - 1)
        return rows, cols


@dataclass
class ConceptAnnotation:
    """One annotated image: its class and the geometry of each concept (original pixel frame).

    ``concepts`` holds visible concepts only; ``complete`` is False when one of the image's
    annotations was skipped, which keeps the image out of every negative set.
    """

    image_path: Path
    image_id: int | str
    class_name: str
    width: int
    height: int
    concepts: dict[str, ConceptGeometry] = field(default_factory=dict)
    complete: bool = True

    @property
    def size(self) -> Size:
        return (self.height, self.width)

    def has(self, concept: str) -> bool:
        geometry = self.concepts.get(concept)
        return geometry is not None and geometry.visible

    def geometry(self, concept: str, size: Size | None = None) -> ConceptGeometry:
        """The concept's geometry, scaled to ``size`` = (H, W) when given (empty if not visible)."""
        geometry = self.concepts.get(concept, ConceptGeometry(self.size))
        return geometry.scaled(size) if size is not None else geometry

    def load(self, size: Size | None = (224, 224)) -> np.ndarray:
        """The image as ``H×W×3`` float32 in [0, 1], squashed to ``size`` (the model's input)."""
        return to_array(load_image(self.image_path), size)


@dataclass
class AnnotationSet:
    """Annotated images of one source, with the problems met while reading it."""

    source: str
    annotations: list[ConceptAnnotation]
    concepts: tuple[str, ...]
    problems: list[AnnotationProblem] = field(default_factory=list)
    unannotated: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self) -> Iterator[ConceptAnnotation]:
        return iter(self.annotations)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(sorted({a.class_name for a in self.annotations}))

    def _check(self, concept: str, class_name: str | None) -> None:
        if concept not in self.concepts:
            raise ConceptAnnotationError(
                f"{self.source}: unknown concept {concept!r}; known: {', '.join(self.concepts) or 'none'}"
            )
        if class_name is not None and class_name not in self.class_names:
            raise ConceptAnnotationError(
                f"{self.source}: no annotated image of class {class_name!r}; "
                f"classes: {', '.join(self.class_names) or 'none'}"
            )

    def images_with(self, concept: str, class_name: str | None = None) -> list[ConceptAnnotation]:
        """Annotated images (of ``class_name`` if given) where ``concept`` is visible."""
        self._check(concept, class_name)
        return [
            a
            for a in self.annotations
            if a.has(concept) and (class_name is None or a.class_name == class_name)
        ]

    def images_without(
        self, concept: str, class_name: str | None = None
    ) -> list[ConceptAnnotation]:
        """Annotated, complete images (of ``class_name`` if given) where ``concept`` is not visible."""
        self._check(concept, class_name)
        return [
            a
            for a in self.annotations
            if a.complete
            and not a.has(concept)
            and (class_name is None or a.class_name == class_name)
        ]

    def counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        """class -> concept -> (visible, not visible)."""
        return {
            cls: {
                c: (len(self.images_with(c, cls)), len(self.images_without(c, cls)))
                for c in self.concepts
            }
            for cls in self.class_names
        }

    def summary(self) -> str:
        """A plain-text table of :meth:`counts` (visible / not visible)."""
        lines = [f"{'class':<10}" + "".join(f"{c:>14}" for c in self.concepts)]
        for cls, row in self.counts().items():
            lines.append(f"{cls:<10}" + "".join(f"{f'{v} / {n}':>14}" for v, n in row.values()))
        return "\n".join(lines)


class _Reporter:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[AnnotationProblem] = []

    def __call__(self, message: str, image_id: Any = None, annotation_id: Any = None) -> None:
        problem = AnnotationProblem(self.source, message, image_id, annotation_id)
        self.problems.append(problem)
        warnings.warn(f"{problem}; skipped", AnnotationWarning, stacklevel=3)


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """A COCO RLE (``{"size": [h, w], "counts": [...] or "str"}``) as a boolean ``h×w`` mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = _rle_counts_from_string(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(f"RLE runs sum to {int(counts.sum())}, not {h}×{w} = {h * w}")
    # Runs alternate 0,1,0,... over the pixels in column-major (Fortran) order.
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


def _rle_counts_from_string(text: str) -> list[int]:
    """pycocotools' compressed counts: 5-bit groups (+48, bit 5 = more, bit 4 of the last = sign),
    each run after the second stored as the difference to the run two before."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("compressed RLE string ends inside a number")
            c = ord(text[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def _display_size(path: Path) -> Size:
    """(H, W) of an image as :func:`load_image` will return it (EXIF rotation applied)."""
    with Image.open(path) as image:
        w, h = image.size
        if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
            w, h = h, w
    return h, w


def _inside(xy: np.ndarray, size: Size) -> bool:
    h, w = size
    return bool(((xy[:, 0] >= 0) & (xy[:, 0] <= w) & (xy[:, 1] >= 0) & (xy[:, 1] <= h)).all())


def _keypoint_table(
    ann: Mapping[str, Any], names: Sequence[str]
) -> dict[str, tuple[float, float, int]]:
    """name -> (x, y, v) from a standard flat list or the non-standard dict form."""
    raw = ann["keypoints"]
    if isinstance(raw, Mapping):
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"unknown keypoint name(s) {unknown}; the category has {list(names)}")
        return {k: (float(v[0]), float(v[1]), int(v[2])) for k, v in raw.items()}
    if len(raw) != 3 * len(names):
        raise ValueError(f"{len(raw)} keypoint values, expected 3 × {len(names)} ({list(names)})")
    return {
        n: (float(raw[3 * i]), float(raw[3 * i + 1]), int(raw[3 * i + 2]))
        for i, n in enumerate(names)
    }


def _segmentation(ann: Mapping[str, Any], size: Size) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(polygons, masks) of an annotation's ``segmentation``; ValueError when it is unusable."""
    seg = ann.get("segmentation")
    if not seg:
        return [], []
    if isinstance(seg, Mapping):
        if tuple(int(v) for v in seg["size"]) != tuple(size):
            raise ValueError(
                f"RLE size {list(seg['size'])} differs from the image's (H, W) {list(size)}"
            )
        mask = decode_rle(seg)
        return ([], [mask]) if mask.any() else ([], [])
    polygons = []
    for flat in seg:
        poly = np.asarray(flat, dtype=float).reshape(-1, 2)
        if len(poly) < 3:
            raise ValueError("a polygon needs at least 3 points")
        if not _inside(poly, size):
            raise ValueError(f"polygon reaches outside the {size[1]}×{size[0]} image")
        polygons.append(poly)
    return polygons, []


def _box(ann: Mapping[str, Any], size: Size) -> list[tuple[float, float, float, float]]:
    bbox = ann.get("bbox")
    if not bbox:
        return []
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0 or not _inside(np.array([[x, y], [x + w, y + h]]), size):
        raise ValueError(f"box {list(bbox)} is empty or outside the {size[1]}×{size[0]} image")
    return [(x, y, w, h)]


def load_coco(
    path: str | Path,
    image_root: str | Path,
    concept_map: Mapping[str, Sequence[str]] | None = None,
    check_images: bool = True,
) -> AnnotationSet:
    """Read a COCO annotation file into an :class:`AnnotationSet` (see the module docstring).

    ``image_root`` is the folder that the images' ``file_name`` are relative to. ``concept_map``
    maps concept -> keypoint names and overrides the file's ``concepts`` key. With
    ``check_images`` every image file must exist and have the size the file states.
    """
    path = Path(path)
    data = _read_coco_json(path)
    report = _Reporter(str(path))
    vocabulary = _CocoConcepts.read(data, concept_map, report)
    images = _coco_images(data["images"], Path(image_root), check_images, report)
    annotated, incomplete, class_votes = _attach_annotations(data, images, vocabulary, report)
    result, unannotated = [], []
    for image_id, record in images.items():
        if image_id not in annotated:
            if image_id not in incomplete:  # no animal in it: neither positive nor negative
                unannotated.append(record.image_path)
            continue
        classes = sorted(set(class_votes.get(image_id, [])))
        if len(classes) != 1:
            why = (
                f"animals of several classes {classes}"
                if classes
                else "concept annotations but no animal (class) annotation"
            )
            report(f"{why}; cannot tell the image's class", image_id=image_id)
            continue
        record.class_name = classes[0]
        record.complete = image_id not in incomplete
        record.concepts = {c: g for c, g in record.concepts.items() if g.visible}
        result.append(record)
    return AnnotationSet(
        str(path), result, tuple(vocabulary.concepts), report.problems, unannotated
    )


def _read_coco_json(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConceptAnnotationError(f"{path}: no such annotation file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConceptAnnotationError(f"{path}: not a JSON file ({exc})") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("images"), list):
        raise ConceptAnnotationError(f"{path}: not a COCO file (no 'images' list)")
    return data


@dataclass
class _CocoConcepts:
    """A COCO file's categories and what they say of concepts."""

    categories: dict[Any, Mapping[str, Any]]  # id -> category
    concept_map: dict[str, list[str]]  # concept -> keypoint names
    concept_categories: set[Any]  # ids of the categories that are concepts, not classes
    concepts: list[str]  # every concept, in the map's order then the categories'

    @classmethod
    def read(
        cls,
        data: Mapping[str, Any],
        concept_map: Mapping[str, Sequence[str]] | None,
        report: _Reporter,
    ) -> _CocoConcepts:
        categories = {c["id"]: c for c in data.get("categories", [])}
        keypoint_names = sorted({n for c in categories.values() for n in c.get("keypoints") or []})
        if concept_map is None:
            concept_map = data.get("concepts") or {n: [n] for n in keypoint_names}
        concept_map = {str(k): list(v) for k, v in concept_map.items()}
        for concept, names in concept_map.items():
            unknown = [n for n in names if n not in keypoint_names]
            # A pure polygon/box file has no keypoints at all: then the map just names the concepts.
            if unknown and keypoint_names:
                report(
                    f"concept {concept!r} names unknown keypoint(s) {unknown}; "
                    f"keypoints in the file: {keypoint_names}"
                )
        concept_categories = {
            cid
            for cid, c in categories.items()
            if c.get("name") in concept_map or c.get("supercategory") == "concept"
        }
        concepts = list(concept_map)
        for cid in sorted(concept_categories):
            if categories[cid]["name"] not in concepts:
                concepts.append(categories[cid]["name"])
        return cls(categories, concept_map, concept_categories, concepts)


def _coco_images(
    entries: Sequence[Mapping[str, Any]], image_root: Path, check_images: bool, report: _Reporter
) -> dict[Any, ConceptAnnotation]:
    """An empty record per usable image entry (the others reported), by image id."""
    images: dict[Any, ConceptAnnotation] = {}
    for entry in entries:
        image_id = entry.get("id")
        image_path = image_root / str(entry.get("file_name", ""))
        try:
            size = (int(entry["height"]), int(entry["width"])) if "width" in entry else None
            if check_images or size is None:
                if not image_path.is_file():
                    raise ValueError(f"image file {image_path} is missing")
                actual = _display_size(image_path)
                if size is not None and actual != size:
                    raise ValueError(
                        f"{image_path} is {actual[1]}×{actual[0]}, the file says "
                        f"{size[1]}×{size[0]}"
                    )
                size = actual
        except (ValueError, KeyError, OSError) as exc:
            report(str(exc), image_id=image_id)
            continue
        images[image_id] = ConceptAnnotation(image_path, image_id, "", size[1], size[0])
    return images


def _attach_annotations(
    data: Mapping[str, Any],
    images: dict[Any, ConceptAnnotation],
    vocabulary: _CocoConcepts,
    report: _Reporter,
) -> tuple[set[Any], set[Any], dict[Any, list[str]]]:
    """Add every annotation's concept geometry to its image's record; returns the ids of the
    annotated images, of those with an unreadable annotation, and each image's class votes."""
    annotated: set[Any] = set()
    incomplete: set[Any] = set()
    class_votes: dict[Any, list[str]] = defaultdict(list)
    skipped_images = {e.get("id") for e in data["images"]} - set(images)
    for ann in data.get("annotations", []):
        image_id, ann_id = ann.get("image_id"), ann.get("id")
        if image_id in skipped_images:
            continue  # the image itself was already reported
        record = images.get(image_id)
        category = vocabulary.categories.get(ann.get("category_id"))
        try:
            if record is None:
                raise ValueError(f"refers to image id {image_id}, which is not in 'images'")
            if category is None:
                raise ValueError(f"unknown category id {ann.get('category_id')}")
            class_name, geometries = _read_annotation(
                ann, category, vocabulary.concept_map, vocabulary.concept_categories, record.size
            )
        except (ValueError, KeyError, TypeError) as exc:
            report(str(exc), image_id=image_id, annotation_id=ann_id)
            if record is not None:
                incomplete.add(image_id)
            continue
        annotated.add(image_id)
        if class_name is not None:
            class_votes[image_id].append(class_name)
        for concept, geometry in geometries.items():
            old = record.concepts.get(concept)
            record.concepts[concept] = old.merged(geometry) if old else geometry
    return annotated, incomplete, class_votes


def _read_annotation(
    ann: Mapping[str, Any],
    category: Mapping[str, Any],
    concept_map: Mapping[str, Sequence[str]],
    concept_categories: set[Any],
    size: Size,
) -> tuple[str | None, dict[str, ConceptGeometry]]:
    """(class name or None for a concept-category annotation, concept -> geometry)."""
    concept = ann.get("concept")
    if category["id"] in concept_categories:
        concept, class_name = concept or category["name"], None
    else:
        class_name = category["name"]
    geometries: dict[str, ConceptGeometry] = {}
    if concept is not None:
        polygons, masks = _segmentation(ann, size)
        boxes = [] if polygons or masks else _box(ann, size)
        geometries[str(concept)] = ConceptGeometry(size, np.zeros((0, 2)), polygons, masks, boxes)
    if ann.get("keypoints"):
        table = _keypoint_table(ann, category.get("keypoints") or [])
        outside = [
            n for n, (x, y, v) in table.items() if v > 0 and not _inside(np.array([[x, y]]), size)
        ]
        if outside:
            raise ValueError(f"keypoint(s) {outside} outside the {size[1]}×{size[0]} image")
        for name, names in concept_map.items():
            xy = [table[n][:2] for n in names if n in table and table[n][2] == _VISIBLE_FLAG]
            if xy:
                extra = ConceptGeometry(size, np.asarray(xy, dtype=float))
                geometries[name] = geometries[name].merged(extra) if name in geometries else extra
    return class_name, geometries


def load_mask_folder(
    mask_root: str | Path,
    image_root: str | Path,
    concepts: Sequence[str] | None = None,
    class_name: str | None = None,
) -> AnnotationSet:
    """Read concept mask PNGs (``<stem>_<concept>.png`` or ``<concept>/<stem>.png``).

    ``concepts`` restricts and disambiguates the flat layout (a stem may contain ``_``: the longest
    known concept suffix wins; without ``concepts`` the text after the last ``_`` is the concept).
    The class of an image is ``class_name`` or the name of the image's parent folder.
    """
    mask_root, image_root = Path(mask_root), Path(image_root)
    if not mask_root.is_dir():
        raise ConceptAnnotationError(f"{mask_root}: no such mask folder")
    report = _Reporter(str(mask_root))
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(image_root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and mask_root not in p.parents:
            by_stem[p.stem].append(p)

    found: dict[str, dict[str, Path]] = defaultdict(dict)
    for png in sorted(mask_root.rglob("*.png")):
        rel = png.relative_to(mask_root)
        if len(rel.parts) == 2:
            concept, stem = rel.parts[0], png.stem
        else:
            known = sorted(concepts or [], key=len, reverse=True)
            match = next((c for c in known if png.stem.endswith("_" + c)), None)
            if match is None and concepts is None and "_" in png.stem:
                match = png.stem.rsplit("_", 1)[1]
            if match is None:
                report(f"{rel} names no known concept (expected <stem>_<concept>.png)")
                continue
            concept, stem = match, png.stem[: -len(match) - 1]
        if concepts is not None and concept not in concepts:
            continue
        found[stem][concept] = png

    names = (
        list(concepts) if concepts is not None else sorted({c for d in found.values() for c in d})
    )
    result = []
    for stem, files in sorted(found.items()):
        candidates = by_stem.get(stem, [])
        if len(candidates) != 1:
            why = "no image" if not candidates else f"{len(candidates)} images"
            report(f"{why} with stem {stem!r} under {image_root}", image_id=stem)
            continue
        image_path = candidates[0]
        size = _display_size(image_path)
        record = ConceptAnnotation(
            image_path, stem, class_name or image_path.parent.name, size[1], size[0]
        )
        for concept, png in files.items():
            with Image.open(png) as im:
                mask = np.asarray(im.convert("L"))
            if mask.shape != size:
                report(
                    f"mask {png.name} is {mask.shape[1]}×{mask.shape[0]}, image is "
                    f"{size[1]}×{size[0]}",
                    image_id=stem,
                )
                record.complete = False
                continue
            # Masks saved as 0/1 and as 0/255 are both common.
            mask = mask > 0 if mask.max() <= 1 else mask >= 128
            if mask.any():
                record.concepts[concept] = ConceptGeometry(size, masks=[mask])
        result.append(record)
    return AnnotationSet(str(mask_root), result, tuple(names), report.problems)


def superpixels(image: np.ndarray, n_segments: int = 20, compactness: float = 10.0) -> np.ndarray:
    """SLIC labels (``H×W`` int, consecutive from 0) of an ``H×W×3`` image in [0, 1], as in the
    paper (CIELAB k-means); the project's one SLIC setup, :func:`sxai_plugins.data.superpixels.slic_segments`."""
    from .superpixels import slic_segments

    return slic_segments(np.asarray(image, dtype=np.float64), n_segments, compactness)


def concept_region(
    image: np.ndarray,
    geometry: ConceptGeometry,
    n_segments: int = 20,
    *,
    mode: str = "superpixel",
    segments: np.ndarray | None = None,
    compactness: float = 10.0,
    min_overlap: float = 0.5,
    radius: float | None = None,
) -> np.ndarray:
    """Boolean ``H×W`` region of a concept in ``image`` (the array the model will be fed).

    ``geometry`` must be in the image's frame (``annotation.geometry(concept, image.shape[:2])``).
    ``mode="superpixel"`` (the paper's): the SLIC superpixels (``segments``, or computed with
    ``n_segments``) that contain a point, or whose pixels are more than ``min_overlap`` covered by
    the concept's masks/boxes; a mask too small to cover any superpixel that much selects the one
    it covers most. ``mode="disc"``: discs of ``radius`` pixels (default 6% of the shorter side)
    around the points, plus the masks/boxes themselves. A concept that is not visible gives an
    empty region.
    """
    h, w = image.shape[:2]
    if tuple(geometry.size) != (h, w):
        raise ConceptAnnotationError(
            f"geometry is in a {geometry.size[1]}×{geometry.size[0]} frame, the image is {w}×{h}; "
            "scale it first with geometry.scaled(image.shape[:2])"
        )
    area = geometry.area_mask()
    rows, cols = geometry.point_pixels()
    if mode == "disc":
        radius = 0.06 * min(h, w) if radius is None else radius
        yy, xx = np.mgrid[0:h, 0:w]
        for r, c in zip(rows, cols):
            area |= (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
        return area
    if mode != "superpixel":
        raise ConceptAnnotationError(f"unknown region mode {mode!r}; use 'superpixel' or 'disc'")
    if not geometry.visible:
        return np.zeros((h, w), dtype=bool)
    if segments is None:
        segments = superpixels(image, n_segments, compactness)
    elif segments.shape != (h, w):
        raise ConceptAnnotationError(f"segments are {segments.shape}, the image is {(h, w)}")
    chosen = set(np.unique(segments[rows, cols]).tolist())
    if area.any():
        labels, sizes = np.unique(segments, return_counts=True)
        covered = np.bincount(segments[area], minlength=labels.max() + 1)[labels]
        fraction = covered / sizes
        chosen |= set(labels[fraction > min_overlap].tolist())
        if not (fraction > min_overlap).any():
            chosen.add(int(labels[np.argmax(covered)]))
    return np.isin(segments, sorted(chosen))
