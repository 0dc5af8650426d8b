"""Every command that reads images, over one folder of bad and odd files beside two good images.

Unreadable files (truncated, empty, text, decompression bomb) must each be reported on exactly
one line and skipped; odd but valid ones (CMYK, 16-bit, RGBA, float TIFF, a file name that is
not UTF-8) must be scored like the good images. JSON output must be strict JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_images import bomb_png
from torch import nn

from sxai_plugins import TraitModel
from sxai_plugins.cli.main import main
from sxai_plugins.spaces.space import SemanticSpace

BACKBONE = "tiny_bad_inputs_cnn"
TRAITS = 6
NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
UNREADABLE = ["bomb.png", "empty.jpg", "text.jpg", "truncated.jpg"]
SCORED = sorted(
    ["good.png", "good.jpg", "cmyk.jpg", "gray16.png", "rgba.png", "float.tif", NON_UTF8]
)


def build_tiny(pretrained: bool = True, weights=None, class_names=None) -> TraitModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, TRAITS, 3, stride=2), nn.ReLU())
    return TraitModel(
        body, TRAITS, class_names or ["cat", "dog"], name=BACKBONE, input_size=(3, 16, 16)
    )


@pytest.fixture(scope="module")
def backbone(backbone_plugin):
    with backbone_plugin(BACKBONE, build_tiny, "a one-layer CNN for tests"):
        yield BACKBONE


@pytest.fixture(scope="module")
def spaces_dir(tmp_path_factory, backbone) -> Path:
    folder = tmp_path_factory.mktemp("spaces")
    model = build_tiny().eval()
    reference = model.traits(
        torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ).detach()
    for i, key in enumerate(["cat.eyes", "cat.nose", "dog.eyes", "dog.nose"]):
        class_name, concept = key.split(".")
        space = SemanticSpace(
            class_name,
            concept,
            BACKBONE,
            model.fingerprint(),
            TRAITS,
            torch.tensor([i, (i + 2) % TRAITS]),
            torch.tensor([1.0, -0.5]),
        )
        space.with_reference(reference @ space.weight_vector()).save(folder / f"{key}.safetensors")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    rgb.save(folder / "good.png")
    rgb.save(folder / "good.jpg", quality=90)
    rgb.save(folder / NON_UTF8)
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (20, 20))).astype(np.uint16)).save(
        folder / "gray16.png"
    )
    rgb.convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.random((20, 20), dtype=np.float32), "F").save(folder / "float.tif")
    (folder / "truncated.jpg").write_bytes((folder / "good.jpg").read_bytes()[:200])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    bomb_png(folder / "bomb.png")
    assert sorted(os.listdir(folder)) == sorted(UNREADABLE + SCORED)
    return folder


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def strict_json(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"output JSON has {c}"))


def assert_one_line_per_unreadable_file(err: str) -> None:
    lines = err.splitlines()
    for name in UNREADABLE:
        assert sum(name in line for line in lines) == 1, (name, err)
    assert len(lines) == len(UNREADABLE), err


def names(paths) -> list[str]:
    return sorted(Path(p).name for p in paths)


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_predict_and_explain_score_the_good_files_and_report_each_bad_one_once(
    capsys, tmp_path, backbone, spaces_dir, folder, command
):
    extra = ["-s", spaces_dir, "--out", tmp_path / "radar"] if command == "explain" else []
    code, out, err = run(capsys, command, folder, "-b", backbone, "--json", *extra)
    assert code == 0
    assert_one_line_per_unreadable_file(err)
    records = strict_json(out)
    assert names(r["path"] for r in records) == SCORED
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in records)


def test_text_output_prints_a_name_that_is_not_utf8(capsys, backbone, folder):
    code, out, err = run(capsys, "predict", folder / NON_UTF8, "-b", backbone)
    assert code == 0 and err == ""
    assert out.startswith(str(folder / "caf\\xe9.png") + ": ")


def test_index_then_search_over_the_same_folder(capsys, tmp_path, backbone, spaces_dir, folder):
    db = tmp_path / "index.sqlite"
    argv = ["index", folder, "--db", db, "-b", backbone, "-s", spaces_dir, "-q"]
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert_one_line_per_unreadable_file(err)
    assert (
        f"{len(SCORED) + len(UNREADABLE)} images found, {len(SCORED)} scored, 0 unchanged, "
        f"{len(UNREADABLE)} unreadable" in out
    )
    # the rerun (it used to crash on the name that is not UTF-8) finds everything known
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == "" and f"0 scored, {len(SCORED) + len(UNREADABLE)} unchanged" in out
    code, out, err = run(capsys, "search", "cat.eyes >= 0", "--db", db, "--json", "--limit", "0")
    assert code == 0 and err == ""
    result = strict_json(out)
    assert result["total"] == len(SCORED) and names(m["path"] for m in result["matches"]) == SCORED
    code, out, err = run(capsys, "search", "cat.eyes >= 0", "--db", db, "--limit", "0")
    assert code == 0 and "caf\\xe9.png" in out


def test_report_examples_show_the_good_files_and_report_each_bad_one_once(
    capsys, tmp_path, backbone, spaces_dir, folder
):
    out = tmp_path / "report.html"
    code, _out, err = run(
        capsys, "report", "-b", backbone, "-s", spaces_dir, "--examples", folder, "--out", out
    )
    assert code == 0
    assert_one_line_per_unreadable_file(err)
    assert out.read_text(encoding="utf-8").count('class="example"') == len(SCORED)
