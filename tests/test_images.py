"""Image reading: every PIL mode becomes RGB; a bad file in a batch is reported and skipped."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sxai_plugins._utils.errors import ImageLoadError
from sxai_plugins.data.images import (
    expand_paths,
    image_folder,
    iter_batches,
    list_images,
    load_image,
    to_tensor,
)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16", "1"])
def test_modes_are_converted_to_rgb(tmp_path, mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    image = (
        rgb.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 50)
    )
    suffix = ".tiff" if mode in ("CMYK", "I;16") else ".png"
    path = tmp_path / f"img{suffix}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (30, 20)


def test_transparent_pixels_become_background(tmp_path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]


def test_unreadable_files_have_clear_errors(tmp_path) -> None:
    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"fake\.jpg.*not an image"):
        load_image(tmp_path / "fake.jpg")
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.jpg")
    truncated.write_bytes((tmp_path / "ok.jpg").read_bytes()[:100])
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        load_image(truncated)


def test_batch_skips_bad_file_and_keeps_the_rest(tmp_path) -> None:
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        if i == 2:
            path.write_bytes(b"\x89PNG garbage")
        else:
            Image.new("RGB", (10, 12), (i * 40, 0, 0)).save(path)
        paths.append(path)
    failures: list = []
    batches = list(iter_batches(paths, (8, 8), batch_size=2, failures=failures))
    loaded = [p.name for b in batches for p in b.paths]
    assert loaded == ["0.png", "1.png", "3.png", "4.png"]
    assert [p.name for p, _ in failures] == ["2.png"]
    assert all(b.images.shape[1:] == (3, 8, 8) for b in batches)


def test_to_tensor_squashes_whole_image_into_range() -> None:
    tensor = to_tensor(Image.new("RGB", (100, 50), (255, 0, 0)), (32, 32))
    assert tensor.shape == (3, 32, 32)
    assert float(tensor[0].min()) == 1.0 and float(tensor[1].max()) == 0.0


def test_image_folder_layout(tmp_path) -> None:
    for cls in ("dog", "cat"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "a.jpg")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    paths, labels, classes = image_folder(tmp_path)
    assert classes == ["cat", "dog"]
    assert labels == [0, 1] and [p.parent.name for p in paths] == ["cat", "dog"]
    with pytest.raises(ImageLoadError, match="no class folders"):
        image_folder(tmp_path / "cat")


def bomb_png(path, side: int = 20_000) -> None:
    """A valid PNG header claiming side × side pixels (400 Mpx), and no pixel data: 57 bytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_an_unreadable_file(tmp_path) -> None:
    bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageLoadError, match=r"bomb\.png: refused, too many pixels"):
        load_image(tmp_path / "bomb.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    failures: list = []
    batches = list(
        iter_batches([tmp_path / "bomb.png", tmp_path / "ok.png"], (8, 8), failures=failures)
    )
    assert [p.name for b in batches for p in b.paths] == ["ok.png"]
    assert [p.name for p, _ in failures] == ["bomb.png"]


def test_a_large_jpeg_is_decoded_at_reduced_size(tmp_path) -> None:
    Image.new("RGB", (2000, 1600), (200, 30, 30)).save(tmp_path / "big.jpg", quality=90)
    # 1/8 scale: the smallest JPEG reduction still at least twice the 32 × 32 model input
    assert load_image(tmp_path / "big.jpg", (32, 32)).size == (250, 200)
    assert load_image(tmp_path / "big.jpg", (512, 512)).size == (2000, 1600)  # not 4× larger: full
    assert load_image(tmp_path / "big.jpg").size == (2000, 1600)


@pytest.mark.parametrize("value", [0.25, 0.8])
def test_a_float_tiff_in_0_1_keeps_its_brightness(tmp_path, value: float) -> None:
    Image.fromarray(np.full((10, 12), value, np.float32), "F").save(tmp_path / "f.tif")
    pixels = np.asarray(load_image(tmp_path / "f.tif"))
    assert pixels.shape == (10, 12, 3) and np.all(pixels == round(value * 255))


def test_a_float_tiff_with_nan_is_refused_with_the_reason(tmp_path) -> None:
    array = np.full((10, 12), 0.5, np.float32)
    array[3, 3] = np.nan
    Image.fromarray(array, "F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageLoadError, match=r"nan\.tif.*NaN or infinite"):
        load_image(tmp_path / "nan.tif")


def test_images_in_symlinked_folders_are_found_once_and_loops_end(tmp_path) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(root / "real" / "a.png")
    Image.new("RGB", (8, 8)).save(elsewhere / "b.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # a cycle back to the top
    found = list_images(root)
    assert [p.relative_to(root).as_posix() for p in found] == ["linked/b.png", "real/a.png"]
    assert expand_paths([root]) == found


def test_no_images_at_all_is_an_error_when_required(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    assert expand_paths([tmp_path]) == []
    with pytest.raises(ImageLoadError, match="no images found in"):
        expand_paths([tmp_path], require=True)
