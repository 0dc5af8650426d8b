"""The HTML report (``sxai_plugins.viz.report.build_report`` and ``sxai report``)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sxai_plugins import (
    PluginNotFoundError,
    SpaceError,
    SxaiError,
    TraitModel,
    get_explanation_template,
)
from sxai_plugins.cli.main import main
from sxai_plugins.data.examples import example_images
from sxai_plugins.data.images import load_image, to_tensor
from sxai_plugins.explain.trust import assess
from sxai_plugins.spaces.space import SemanticSpace, SpaceSet
from sxai_plugins.viz.report import build_report

TRAITS = 10
BACKBONE = "tiny_report_cnn"
# Space names are validated on load (letters, digits, '_', '-', '.'), but free-text fields such as
# the masker's name still come from the file: they must never reach the page unescaped.
EVIL = "<img src=x onerror=alert(1)>"
# (key, SSN indices, Δ): channel 1 is shared by cat.eyes and cat.nose
SPACES = [
    ("cat.eyes", [0, 1], [1.0, 0.5]),
    ("cat.nose", [1, 2], [0.8, -0.4]),
    ("dog.ears", [3, 4], [-1.0, 0.7]),
    ("dog.eyes", [5, 6, 7], [0.9, 0.3, -0.2]),
]
EVALUATION = {
    "n_eval": 8,
    "fraction_original_above_masked": 0.875,
    "auroc_original_vs_masked": 0.8125,
    "auroc_visible_vs_not": float("nan"),
    "n_natural_negatives": 0,
    "qq_r2": 0.9731,
}


def build_tiny(
    pretrained: bool = True, weights=None, class_names=None, seed: int = 0
) -> TraitModel:
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, TRAITS, 3), nn.ReLU()
    )
    return TraitModel(
        body, TRAITS, class_names or ["cat", "dog"], name=BACKBONE, input_size=(3, 32, 32)
    ).eval()


@pytest.fixture(scope="module")
def backbone(backbone_plugin):
    with backbone_plugin(BACKBONE, build_tiny, "a two-layer CNN for the report tests"):
        yield BACKBONE


@pytest.fixture(scope="module")
def model() -> TraitModel:
    return build_tiny()


def varied_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * torch.rand(n, 3, 1, 1, generator=g)


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def plot_png(path: Path, title: str) -> None:
    """A small real matplotlib plot, like the ones `sxai space` draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.4, 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(np.random.default_rng(0).normal(size=200), bins=15)
    ax.set_title(title, fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=60)


def write_spaces(folder: Path, model: TraitModel, with_extras: bool = True) -> Path:
    reference = model.traits(varied_images(24, seed=1)).detach()
    spaces = []
    for key, indices, delta in SPACES:
        class_name, concept = key.split(".", 1)
        space = SemanticSpace(
            class_name,
            concept,
            BACKBONE,
            model.fingerprint(),
            TRAITS,
            torch.tensor(indices),
            torch.tensor(delta),
            masker=EVIL if key == "dog.ears" else "superpixel",
            n_images=12,
            recipe={"mode": "paper"},
            evaluation=dict(EVALUATION),
        )
        space.with_reference(reference @ space.weight_vector()).save(folder / f"{key}.safetensors")
        spaces.append(space)
    if not with_extras:
        return folder
    (folder / "report.json").write_text(
        json.dumps(
            {
                "backbone": BACKBONE,
                "fingerprint": model.fingerprint(),
                "recipe": "paper",
                "annotations": "concepts.coco.json",
                "reference": "train",
                "spaces": {
                    s.key: {
                        "ssn": s.indices.tolist(),
                        "delta": s.delta.tolist(),
                        **EVALUATION,
                        "fraction_original_above_masked": 0.5 + 0.1 * i,
                    }
                    for i, s in enumerate(spaces)
                },
                "shared_channels": {"1": ["cat.eyes", "cat.nose"]},
            }
        )
    )
    rng = np.random.default_rng(3)
    for i, space in enumerate(spaces):
        plot_png(folder / "plots" / f"{space.key}.distribution.png", space.key)
        for end in ("low", "high"):
            save_png(
                rng.integers(0, 255, (40, 90, 3), dtype=np.uint8),
                folder / "plots" / f"{space.key}.{end}.png",
            )
        if i == 0:  # only one space has an inversion, as when --invert was not given for a rebuild
            save_png(
                rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                folder / "plots" / f"{space.key}.inversion.png",
            )
    return folder


@pytest.fixture(scope="module")
def spaces_dir(tmp_path_factory, model) -> Path:
    return write_spaces(tmp_path_factory.mktemp("spaces"), model)


@pytest.fixture(scope="module")
def traits_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("traits")
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "backbone": BACKBONE,
                "class": "cat <&> kitten",
                "n_used": 6,
                "seed": 0,
                "genetic_search": None,
                "pc1_information_ratio": 0.4321,
                "n_components_85": 3,
                "inverter": "fourier",
                "stability": {"spread_percent": {"5": 2.5, "20": 0.75}, "repeats": 3},
            }
        )
    )
    (folder / "pca.json").write_text(
        json.dumps(
            {"information_ratio": [0.4321, 0.3, 0.2], "cumulative": [0.4321, 0.7321, 0.9321]}
        )
    )
    plot_png(folder / "information_ratio.png", "ratios")
    rng = np.random.default_rng(4)
    for k in (10, 2, 1):
        save_png(
            rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), folder / "inversions" / f"pc{k}.png"
        )
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, image in enumerate(varied_images(3, seed=5)):
        save_png(
            (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), folder / f"pic{i}.png"
        )
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory, model, spaces_dir, traits_dir, images) -> tuple[Path, list]:
    failures: list = []
    out = build_report(
        model,
        spaces_dir,
        tmp_path_factory.mktemp("out") / "sub" / "report.html",
        traits_dir=traits_dir,
        examples=[images],
        progress=False,
        failures=failures,
    )
    return out, failures


def img_sources(page: str) -> list[str]:
    return re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)


# ------------------------------------------------------------------------------------ content
def test_report_shows_model_spaces_traits_and_examples(report, model, spaces_dir, images):
    path, failures = report
    page = path.read_text(encoding="utf-8")
    assert path.name == "report.html" and page.startswith("<!DOCTYPE html>")
    assert f"S-XAI report: {BACKBONE}" in page and model.fingerprint() in page
    # one section per space, evaluation figures from report.json (they override the space file's)
    sections = re.split(r'<h2 id="space-\d+">', page)[1:]
    assert len(sections) == len(SPACES)
    for i, (key, indices, delta) in enumerate(SPACES):  # files load sorted by name: the same order
        section = sections[i].split("<h2")[0]
        assert section.startswith(f"Space {html.escape(key)}</h2>")
        for channel, d in zip(indices, delta):
            assert f'<td class="n">{channel}</td><td class="n">{d:.4f}</td>' in section
        assert f'<td class="n">{0.5 + 0.1 * i:.3f}</td>' in section
    assert "0.812" in page and "0.973" in page  # AUROC and Q-Q R² to 3 decimals; NaN shows as n/a
    assert "n/a" in page
    # the shared channel 1 (cat.eyes, cat.nose) is listed in the shared-channels table
    shared = page.split('id="shared"')[1].split('id="examples"')[0]
    assert re.search(r'<td class="n">1</td><td>cat\.eyes, cat\.nose</td>', shared)
    # common traits: settings, stability, PCs; inversions ordered pc1, pc2, pc10
    traits = page.split('id="traits"')[1].split('id="space-0"')[0]
    assert "0.432" in traits and "2.50" in traits and "0.75" in traits
    assert [m for m in re.findall(r"<figcaption>(PC\d+)</figcaption>", traits)] == [
        "PC1",
        "PC2",
        "PC10",
    ]
    assert "No stability of PC1 plot" in traits and "No PC1 per layer plot" in traits
    # the inversion is shown for the first space only, the others carry a note
    assert page.count("inversion of the space&#x27;s SSN target</figcaption>") == 1
    assert page.count("build the spaces with --invert fourier") == len(SPACES) - 1
    # examples: three cards, the bad file noted and returned
    examples = page.split('id="examples"')[1]
    assert examples.count('class="example"') == 3
    assert [p.name for p, _ in failures] == ["bad.jpg"] and "skipped bad.jpg" in examples
    # each card's sentence is the english template's sentence for the same assessment
    spaces = SpaceSet(SemanticSpace.load(p) for p in sorted(spaces_dir.glob("*.safetensors")))
    template = get_explanation_template("english")
    for name in ("pic0.png", "pic1.png", "pic2.png"):
        batch = to_tensor(load_image(images / name), (32, 32))[None]
        [assessment] = assess(model, spaces, batch)
        sentence = (
            template.render(assessment)
            .replace("'", "&#x27;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
        )
        assert f'<p class="sentence">{sentence}</p>' in examples
        assert f"<b>{assessment.predicted}</b>" in examples


def test_report_is_self_contained(report):
    page = report[0].read_text(encoding="utf-8")
    sources = img_sources(page)
    # 4 distribution + 8 contact sheets + 1 inversion + 4 traits plots + 3×(thumbnail + radar)
    assert len(sources) == 4 + 8 + 1 + 4 + 6
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # no external or relative references
    assert "url(" not in page


def test_report_is_deterministic(report, tmp_path, model, spaces_dir, traits_dir, images):
    again = build_report(
        model,
        spaces_dir,
        tmp_path / "again.html",
        traits_dir=traits_dir,
        examples=[images],
        progress=False,
    )
    assert again.read_bytes() == report[0].read_bytes()


def test_text_is_escaped(report):
    page = report[0].read_text(encoding="utf-8")
    assert EVIL not in page  # neither the masker named in the space file ...
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "cat <&> kitten" not in page  # ... nor a string from the traits summary.json
    assert "cat &lt;&amp;&gt; kitten" in page
    assert len(img_sources(page)) == page.count("<img")  # every <img> tag is one of ours


# ------------------------------------------------------------------------------ missing pieces
def test_missing_optional_pieces_are_noted(tmp_path, model):
    bare = write_spaces(tmp_path / "bare", model, with_extras=False)
    out = build_report(model, bare, tmp_path / "bare.html", progress=False)
    page = out.read_text(encoding="utf-8")
    assert "report.json is missing" in page
    assert "No common-traits folder given" in page
    assert "No example images given" in page
    assert page.count(".distribution.png is missing") == len(SPACES)
    # no reference sheets at all: no section of notes about them
    assert (
        "Reference images at both ends" not in page
        and ".low.png" not in page
        and ".high.png" not in page
    )
    # the command the page suggests is one the CLI accepts
    suggested = re.search(r"run `(sxai traits [^`]*)`", page).group(1)
    assert suggested == "sxai traits --data DATA --class CLASS --out DIR"
    from sxai_plugins.cli.main import build_parser

    assert build_parser().parse_args(suggested.split()[1:]).command == "traits"
    assert "<img" not in page
    # the evaluation figures then come from the space files themselves
    assert "0.875" in page


def test_unreadable_plot_and_bad_json_are_noted(tmp_path, model, spaces_dir):
    broken = tmp_path / "broken"
    shutil.copytree(spaces_dir, broken)
    (broken / "plots" / "cat.eyes.distribution.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (broken / "report.json").write_text("{ truncated")
    traits = tmp_path / "traits"
    traits.mkdir()
    page = build_report(
        model, broken, tmp_path / "r.html", traits_dir=traits, progress=False
    ).read_text(encoding="utf-8")
    assert "cat.eyes.distribution.png is unreadable" in page
    assert "report.json could not be read" in page
    assert "summary.json is missing" in page and "information_ratio.png is missing" in page
    assert all(s.startswith("data:image/png;base64,") for s in img_sources(page))


def test_required_inputs_raise_clear_errors(tmp_path, model, spaces_dir):
    with pytest.raises(SpaceError, match="not a folder"):
        build_report(model, tmp_path / "nowhere", tmp_path / "r.html")
    with pytest.raises(SxaiError, match="sxai traits --out"):
        build_report(model, spaces_dir, tmp_path / "r.html", traits_dir=tmp_path / "nowhere")
    other = build_tiny(seed=1)
    with pytest.raises(SpaceError, match="weights"):
        build_report(other, spaces_dir, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    page = build_report(other, spaces_dir, tmp_path / "r.html", force=True).read_text(
        encoding="utf-8"
    )
    assert "report.json was written for weights" in page  # the mismatch is flagged in the page


def test_written_atomically(tmp_path, model, spaces_dir):
    out = tmp_path / "report.html"
    out.write_text("old report")
    before = os.stat(out).st_ino
    with pytest.raises(PluginNotFoundError):
        build_report(model, spaces_dir, out, examples=[tmp_path], template="no-such-template")
    assert out.read_text() == "old report"  # a failed build leaves the old page as it was
    build_report(model, spaces_dir, out, progress=False)
    assert os.stat(out).st_ino != before  # replaced by a rename, never rewritten in place
    assert out.read_text(encoding="utf-8").endswith("</html>\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary files left


# ------------------------------------------------------------------------------------------ CLI
def test_cli_report(tmp_path, backbone, spaces_dir, images, capsys):
    out = tmp_path / "cli.html"
    rc = main(
        [
            "report",
            "--backbone",
            backbone,
            "--spaces",
            str(spaces_dir),
            "--examples",
            str(images / "pic0.png"),
            str(images / "bad.jpg"),
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and f"wrote {out}" in captured.out
    assert "skipped:" in captured.err and "bad.jpg" in captured.err
    assert out.read_text(encoding="utf-8").count('class="example"') == 1


def test_cli_report_defaults_to_the_bundled_examples(tmp_path, backbone, spaces_dir):
    out = tmp_path / "cli.html"
    assert main(["report", "-b", backbone, "-s", str(spaces_dir), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.count('class="example"') == len(example_images()) == 6
    assert (
        main(["report", "-b", backbone, "-s", str(spaces_dir), "-o", str(out), "--examples"]) == 0
    )
    assert "No example images given" in out.read_text(encoding="utf-8")


def test_cli_report_without_bundled_spaces_is_an_error(tmp_path, backbone, capsys):
    assert main(["report", "-b", backbone, "-o", str(tmp_path / "x.html")]) == 2
    assert "none is bundled" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MARK_DECODED = (
    "<script>window.addEventListener('load',()=>{for(const i of document.images)"
    "i.setAttribute('data-decoded',i.complete&&i.naturalWidth>0?'yes':'no')});</script>"
)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"
)
def test_renders_in_headless_chromium(report, tmp_path):
    page = report[0].read_text(encoding="utf-8")
    n_images = len(img_sources(page))
    # a copy with a tiny script that marks decoded images; the page itself has no script
    marked = tmp_path / "marked.html"
    marked.write_text(page.replace("</body>", MARK_DECODED + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", marked.as_uri()).stdout
    assert dom.count('data-decoded="yes"') == n_images > 0
    assert 'data-decoded="no"' not in dom
    # the page as written (it has no script): it draws text and pictures, not a blank screen
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", report[0].as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
