"""Image reading: every PIL mode becomes RGB; a bad file in a batch is reported and skipped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sxai_plugins.errors import ImageLoadError
from sxai_plugins.images import image_folder, iter_batches, load_image, to_tensor


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16", "1"])
def test_modes_are_converted_to_rgb(tmp_path, mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
        np.arange(600, dtype=np.uint16).reshape(20, 30) * 50)
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
