"""Output locations are checked before any work: one-line errors, and the model is never built."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import sxai_plugins.cli.explain  # noqa: F401  (imported before forking: the child user cannot read the venv)
import sxai_plugins.models.head  # noqa: F401
import sxai_plugins.search.index  # noqa: F401
import sxai_plugins.viz.report  # noqa: F401
from sxai_plugins import TraitModel
from sxai_plugins.cli.main import main

BACKBONE = "tiny_output_cnn"
BUILT: list[str] = []


def build_tiny(pretrained: bool = True, weights=None, class_names=None) -> TraitModel:
    BUILT.append(BACKBONE)
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
    return TraitModel(body, 4, class_names or ["cat", "dog"], name=BACKBONE, input_size=(3, 16, 16))


@pytest.fixture(scope="module", autouse=True)
def backbone(backbone_plugin):
    with backbone_plugin(BACKBONE, build_tiny, "a one-layer CNN for tests"):
        yield BACKBONE


def cli(*argv: str) -> tuple[int, str, int]:
    """(exit status, stderr, models built) of one sxai command."""
    BUILT.clear()
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue(), len(BUILT)


def commands(place: Path) -> dict[str, list]:
    images = place / "images"
    return {
        "index --db": ["index", images, "--db", place / "out" / "index.db", "-b", BACKBONE],
        "explain --out": ["explain", images, "--out", place / "out" / "radar", "-b", BACKBONE],
        "report --out": [
            "report",
            "--out",
            place / "out" / "report.html",
            "-b",
            BACKBONE,
            "--examples",
        ],
        "train-head --out": [
            "train-head",
            place / "data",
            "--out",
            place / "out" / "head.safetensors",
            "-b",
            BACKBONE,
        ],
        "discover --out": [
            "discover",
            "--data",
            place / "data",
            "--class",
            "cat",
            "--out",
            place / "out" / "disc",
            "-b",
            BACKBONE,
        ],
    }


@pytest.fixture
def place(open_tmp_path) -> Path:
    (open_tmp_path / "images").mkdir()
    (open_tmp_path / "data" / "cat").mkdir(parents=True)
    for path in (open_tmp_path / "images" / "a.png", open_tmp_path / "data" / "cat" / "a.png"):
        Image.new("RGB", (16, 16), (200, 100, 0)).save(path)
    (open_tmp_path / "out").mkdir()
    return open_tmp_path


@pytest.mark.parametrize(
    "command", ["index --db", "explain --out", "report --out", "train-head --out", "discover --out"]
)
def test_a_read_only_output_folder_is_refused_before_any_work(place, as_nobody, command):
    (place / "out").chmod(0o555)
    status, outcome = as_nobody(cli, *commands(place)[command])
    assert status == "ok", outcome
    code, err, built = outcome
    flag = command.split()[1]
    assert code == 2 and built == 0
    assert err.startswith(f"sxai: error: {flag} {place / 'out'}") and "cannot write in" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "command, make, why",
    [
        ("index --db", "folder", "is a folder"),
        ("explain --out", "file", "exists and is a file"),
        ("report --out", "folder", "is a folder"),
        ("train-head --out", "folder", "is a folder"),
        ("discover --out", "file", "exists and is a file"),
    ],
)
def test_an_output_of_the_wrong_kind_is_refused_before_any_work(place, command, make, why):
    argv = commands(place)[command]
    target = Path(argv[argv.index(command.split()[1]) + 1])
    if make == "folder":
        target.mkdir()
    else:
        target.write_text("a file in the way")
    code, err, built = cli(*argv)
    assert (code, built) == (2, 0)
    assert (
        err.startswith(f"sxai: error: {command.split()[1]} {target}: {why}")
        and err.count("\n") == 1
    )
