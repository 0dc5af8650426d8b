"""Reading images: any PIL mode converted to RGB, bad files reported with their path and skipped."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .._utils.errors import ImageLoadError

if TYPE_CHECKING:  # torch is imported where tensors are made: decoding alone does not need it
    import torch

log = logging.getLogger("sxai")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any mode to RGB: transparency composited on ``background``, CMYK/palette/grey converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGB", image.size, background)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1.0)
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
    if image.mode == "F":
        # Pillow would clip floats to 0..255 bytes, so a 0-1 float image would become black
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError("a float image with NaN or infinite pixels")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:  # not 0-1 intensities: stretch the range as for 16-bit images
            array = (array - low) / max(high - low, np.finfo(np.float32).eps)
        image = Image.fromarray(np.round(array * 255).astype(np.uint8))
    return image.convert("RGB")


def load_image(
    path: str | Path, size: tuple[int, int] | None = None, data: bytes | None = None
) -> Image.Image:
    """An RGB PIL image, or :class:`ImageLoadError` naming the file and the problem.

    ``size`` = (H, W), the size the image will be resized to: a JPEG at least four times as large
    on both sides is decoded at 1/2, 1/4 or 1/8 scale (never below twice ``size``), which bounds
    the memory a huge photo takes. Images over Pillow's pixel limit are refused, not decoded.
    ``data``: the file's bytes, read already (from object storage, say); ``path`` then only names
    the image in errors.
    """
    path = Path(path) if data is None else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as image:
                if size is not None and image.format == "JPEG":
                    image.draft(None, (2 * size[1], 2 * size[0]))
                image.load()
                return to_rgb(image)
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{path}: no such file") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: refused, too many pixels to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"{path}: not an image PIL can read (wrong extension or corrupt)"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"{path}: unreadable image ({exc}); re-save or remove it") from exc


def to_tensor(image: Image.Image | np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``3×H×W`` float tensor in [0, 1]; ``size`` = (H, W) resizes the whole image (no crop, as the
    paper rescaled every image to 224×224, so superpixels and concepts at the border survive)."""
    import torch

    if isinstance(image, np.ndarray):
        array = image.astype(np.float32)
        if array.max() > 1.0:
            array = array / 255.0
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        if size is not None and tuple(tensor.shape[1:]) != tuple(size):
            tensor = torch.nn.functional.interpolate(
                tensor[None], size=size, mode="bilinear", antialias=True, align_corners=False
            )[0].clamp(0, 1)
        return tensor
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    array = np.array(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """``H×W×3`` float32 array in [0, 1] (the layout maskers and superpixels work on)."""
    return to_tensor(image, size).permute(1, 2, 0).numpy()


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` by extension, sorted for determinism."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageLoadError(f"{folder}: not a folder")
    if not recursive:
        return sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    # Path.glob("**") does not enter symlinked folders (Python 3.11); os.walk does when asked, and
    # remembering each folder's (device, inode) stops link loops and double visits
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        found.extend(
            Path(root) / name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(p for p in found if p.is_file())


def expand_paths(items: Iterable[str | Path], require: bool = False) -> list[Path]:
    """Files as given, folders expanded to the images inside them. With ``require``, finding no
    image at all is an :class:`ImageLoadError` (a command that would print nothing says why)."""
    items = list(items)
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        paths.extend(list_images(item) if item.is_dir() else [item])
    if require and not paths:
        shown = ", ".join(str(i) for i in items[:3]) + (", …" if len(items) > 3 else "")
        raise ImageLoadError(
            f"no images found in {shown} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
            "in sub-folders too)"
        )
    return paths


@dataclass
class LoadedBatch:
    paths: list[Path]
    images: torch.Tensor  # B×3×H×W in [0, 1]


def iter_batches(
    paths: Sequence[str | Path],
    size: tuple[int, int],
    batch_size: int = 32,
    failures: list[tuple[Path, str]] | None = None,
) -> Iterator[LoadedBatch]:
    """Load and resize images in batches; an unreadable file is skipped, and the rest of the batch
    still runs. It is recorded in ``failures`` when given (the caller reports it, once), else
    logged as a warning."""
    import torch

    ok_paths: list[Path] = []
    tensors: list[torch.Tensor] = []
    for path in paths:
        try:
            tensors.append(to_tensor(load_image(path, size), size))
            ok_paths.append(Path(path))
        except ImageLoadError as exc:
            if failures is not None:
                failures.append((Path(path), str(exc)))
            else:
                log.warning("skipped %s", exc)
            continue
        if len(tensors) == batch_size:
            yield LoadedBatch(ok_paths, torch.stack(tensors))
            ok_paths, tensors = [], []
    if tensors:
        yield LoadedBatch(ok_paths, torch.stack(tensors))


def image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """torchvision ImageFolder layout: ``root/<class>/<image>``; classes sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ImageLoadError(f"{root}: not a folder (expected root/<class>/<images>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ImageLoadError(f"{root}: no class folders inside (expected root/<class>/<images>)")
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        for path in list_images(root / name):
            paths.append(path)
            labels.append(index)
    return paths, labels, classes


# ------------------------------------------------------------------------------------------ the CLI
def class_images(data: str | Path, target_class: str) -> list[Path]:
    """``DATA/<class>`` of an ImageFolder root, else the images directly inside ``DATA``."""
    data = Path(data)
    if not data.is_dir():
        raise ImageLoadError(f"{data}: not a folder")
    if (data / target_class).is_dir():
        paths = list_images(data / target_class)
    else:
        subfolders = sorted(
            d.name for d in data.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        paths = list_images(data, recursive=False)
        if not paths and subfolders:
            raise ImageLoadError(
                f"{data} has no folder {target_class!r} (found {', '.join(subfolders)}); "
                "pass an ImageFolder root holding DATA/<class>/ or a folder of images of the class"
            )
    if not paths:
        raise ImageLoadError(f"{data}: no images found for class {target_class!r}")
    return paths
