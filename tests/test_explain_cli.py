"""The ``explain``, ``index`` and ``search`` commands, run through ``sxai_plugins.cli.main``."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sxai_plugins import TraitModel, get_plugin_manager, register_plugin
from sxai_plugins.cli.main import main
from sxai_plugins.explain.trust import default_spaces_dir
from sxai_plugins.spaces.space import SemanticSpace

TRAITS = 12
BACKBONE = "tiny_test_cnn"
FIXTURE = Path(__file__).parent / "fixtures" / "terse_template"
KEYS = ("cat.eyes", "cat.nose", "cat.legs", "dog.eyes", "dog.nose", "dog.legs")


def build_tiny(pretrained: bool = True, weights=None, class_names=None) -> TraitModel:
    torch.manual_seed(0)  # the same weights every time, so saved spaces keep fitting
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, TRAITS, 3), nn.ReLU()
    )
    return TraitModel(
        body, TRAITS, class_names or ["cat", "dog"], name=BACKBONE, input_size=(3, 32, 32)
    )


@pytest.fixture(scope="module")
def backbone(backbone_plugin):
    with backbone_plugin(BACKBONE, build_tiny, "a two-layer CNN for tests"):
        yield BACKBONE


def varied_images(n: int, seed: int) -> torch.Tensor:
    """Noise tinted by a random colour per image: the tiny CNN's traits then vary a lot."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * torch.rand(n, 3, 1, 1, generator=g)


@pytest.fixture(scope="module")
def spaces_dir(tmp_path_factory, backbone) -> Path:
    folder = tmp_path_factory.mktemp("spaces")
    model = build_tiny().eval()
    reference = model.traits(varied_images(32, seed=1)).detach()
    for i, key in enumerate(KEYS):
        class_name, concept = key.split(".")
        j = i % 3
        # a dog space reads the same channels as the cat space of its concept with the opposite
        # sign, so ΔP spreads over the whole range and the sentences cover several bands
        sign = 1.0 if class_name == "cat" else -1.0
        space = SemanticSpace(
            class_name,
            concept,
            BACKBONE,
            model.fingerprint(),
            TRAITS,
            torch.tensor([j, j + 4]),
            sign * torch.tensor([1.0, -0.6 + 0.5 * j]),
        )
        space.with_reference(reference @ space.weight_vector()).save(folder / f"{key}.safetensors")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, image in enumerate(varied_images(8, seed=5)):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"pic{i}.png")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def expected_words(record: dict) -> tuple[str, dict[str, str | None]]:
    """The paper's rules, recomputed here from the printed numbers alone."""
    p = {(s["class"], s["concept"]): s["probability"] for s in record["spaces"]}
    cls = record["predicted"]
    deltas = {}
    for (c, concept), value in p.items():
        if c == cls:
            others = [v for (c2, k2), v in p.items() if k2 == concept and c2 != cls]
            deltas[concept] = round(value - max(others, default=0.0), 6)
    dmax = max(deltas.values())
    verdict = "not sure" if dmax < 0.2 else "probably" if dmax < 0.5 else "sure"
    words: dict[str, str | None] = {}
    for concept, d in deltas.items():
        value = p[cls, concept]
        if value < 0.2 or verdict == "not sure":
            words[concept] = None
        elif d < 0.2:
            words[concept] = "a little confusing" if value >= 0.5 else None
        else:
            words[concept] = (
                "obviously" if d >= 0.5 else "something like" if d >= 0.35 else "perhaps"
            )
    return verdict, words


def test_explain_json_sentences_follow_the_printed_numbers(
    capsys, tmp_path, backbone, spaces_dir, images
):
    out_dir = tmp_path / "maps"
    code, out, err = run(
        capsys,
        "explain",
        str(images),
        "--backbone",
        backbone,
        "--spaces",
        str(spaces_dir),
        "--out",
        str(out_dir),
        "--json",
    )
    assert code == 0
    assert "skipped:" in err and "bad.jpg" in err
    records = json.loads(out)
    assert [Path(r["path"]).name for r in records] == [f"pic{i}.png" for i in range(8)]
    verdicts = set()
    for record in records:
        assert set(record) >= {"path", "predicted", "probabilities", "sentence", "spaces", "radar"}
        assert record["predicted"] == max(record["probabilities"], key=record["probabilities"].get)
        assert [s["space"] for s in record["spaces"]] == sorted(KEYS)
        assert all(
            0.0 <= s["probability"] <= 1.0 and isinstance(s["activation"], float)
            for s in record["spaces"]
        )
        assert Path(record["radar"]).is_file() and Path(record["radar"]).parent == out_dir
        verdict, words = expected_words(record)
        verdicts.add(verdict)
        sentence = record["sentence"]
        opening = {
            "not sure": "It may be a {} but I am not sure.",
            "probably": "It is probably a {} mainly",
            "sure": "I am sure it is a {} mainly",
        }[verdict].format(record["predicted"])
        assert sentence.replace(",", "").startswith(opening.replace(",", "")), (sentence, record)
        for concept, word in words.items():
            assert (concept in sentence) == (word is not None), (concept, sentence)
        for word in ("obviously", "something like", "perhaps", "a little confusing"):
            assert (word in sentence) == (word in words.values()), (word, sentence)
    assert len(verdicts) >= 2, verdicts  # the images exercise more than one band
    assert sorted(p.name for p in out_dir.iterdir()) == [f"pic{i}.radar.png" for i in range(8)]


def test_explain_text_output(capsys, tmp_path, backbone, spaces_dir, images):
    code, out, _err = run(
        capsys,
        "explain",
        str(images / "pic1.png"),
        "-b",
        backbone,
        "-s",
        str(spaces_dir),
        "--out",
        str(tmp_path),
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{images / 'pic1.png'}: ")
    assert "cat.eyes" in lines[1] and "dog.legs" in lines[1]
    assert lines[2].strip().split()[0] in ("It", "I")
    assert (tmp_path / "pic1.radar.png").is_file()


def test_explain_top_limits_the_classes_shown(capsys, tmp_path, backbone, spaces_dir, images):
    argv = [
        "explain",
        str(images / "pic1.png"),
        "-b",
        backbone,
        "-s",
        str(spaces_dir),
        "--out",
        str(tmp_path),
    ]
    _code, out, _err = run(capsys, *argv)
    assert out.splitlines()[0].count(",") == 1  # both classes by default (up to 5)
    code, out, _err = run(capsys, *argv, "--top", "1")
    first = out.splitlines()[0]
    assert code == 0 and "," not in first and first.endswith(")")


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_no_images_found_is_an_error(capsys, tmp_path, backbone, spaces_dir, command):
    (tmp_path / "empty").mkdir()
    extra = ["-s", str(spaces_dir), "--out", str(tmp_path / "o")] if command == "explain" else []
    code, out, err = run(capsys, command, str(tmp_path / "empty"), "-b", backbone, *extra)
    assert (
        code == 2
        and out == ""
        and err.startswith(f"sxai: error: no images found in {tmp_path / 'empty'}")
    )


@pytest.fixture
def terse():
    sys.path.insert(0, str(FIXTURE))
    name = "test-terse-template"
    try:
        module = importlib.import_module("sxai_terse_template")
        if get_plugin_manager().get_plugin(name) is None:
            register_plugin(module, name=name)
        yield module
    finally:
        if get_plugin_manager().get_plugin(name) is not None:
            get_plugin_manager().unregister(name=name)
        sys.path.remove(str(FIXTURE))


def test_template_plugin_chosen_by_name(capsys, tmp_path, backbone, spaces_dir, images, terse):
    argv = [
        "explain",
        *(str(images / f"pic{i}.png") for i in (0, 1, 3)),
        "-b",
        backbone,
        "-s",
        str(spaces_dir),
        "--out",
        str(tmp_path),
        "--json",
    ]
    code, out, _ = run(capsys, *argv, "--template", "terse")
    assert code == 0
    terse_records = json.loads(out)
    _, out, _ = run(capsys, *argv)
    english_records = json.loads(out)
    assert len(terse_records) == len(english_records) == 3
    for t, e in zip(terse_records, english_records):
        assert t["spaces"] == e["spaces"]
        assert t["sentence"].startswith(t["predicted"])  # "cat?", "dog (sure: ...)"
        assert not e["sentence"].startswith(e["predicted"])


def test_unknown_template_and_missing_spaces_are_clear_errors(capsys, backbone, images):
    code, _, err = run(
        capsys, "explain", str(images / "pic0.png"), "-b", backbone, "--template", "nope"
    )
    assert code == 2 and "no explanation template named 'nope'" in err and "english" in err
    code, _, err = run(capsys, "explain", str(images / "pic0.png"), "-b", backbone)
    assert code == 2 and "no semantic spaces given" in err and "--spaces" in err


def test_index_then_search_with_contact_sheet(capsys, tmp_path, backbone, spaces_dir, images):
    db = tmp_path / "idx.sqlite"
    code, out, err = run(
        capsys, "index", str(images), "--db", str(db), "-b", backbone, "-s", str(spaces_dir), "-q"
    )
    assert code == 0
    assert "9 images found, 8 scored, 0 unchanged, 1 unreadable" in out
    code, out, _ = run(
        capsys, "index", str(images), "--db", str(db), "-b", backbone, "-s", str(spaces_dir), "-q"
    )
    assert "8 scored" not in out and "0 scored, 9 unchanged" in out

    sheet = tmp_path / "sheet.png"
    code, out, _ = run(
        capsys,
        "search",
        "cat.eyes >= 0.0",
        "--db",
        str(db),
        "--json",
        "--sheet",
        str(sheet),
        "--limit",
        "5",
    )
    assert code == 0
    result = json.loads(out)
    assert result["total"] == 8 and len(result["matches"]) == 5
    shown = [m["probabilities"]["cat.eyes"] for m in result["matches"]]
    assert shown == sorted(shown, reverse=True)  # most extreme first
    with Image.open(sheet) as image:
        assert image.format == "PNG"

    # the CLI answers the query the way the numbers say
    threshold = sorted(m["probabilities"]["dog.nose"] for m in result["matches"])[2]
    code, out, _ = run(
        capsys,
        "search",
        f"dog.nose > {threshold} or predicted = cat",
        "--db",
        str(db),
        "--json",
        "--limit",
        "0",
    )
    everything = run(capsys, "search", "dog.nose >= 0", "--db", str(db), "--json", "--limit", "0")[
        1
    ]
    expected = [
        m["path"]
        for m in json.loads(everything)["matches"]  # the same order: by dog.nose
        if m["probabilities"]["dog.nose"] > threshold or m["predicted"] == "cat"
    ]
    assert [m["path"] for m in json.loads(out)["matches"]] == expected

    code, out, err = run(capsys, "search", "dog.nose >> 0.5", "--db", str(db))
    assert code == 2
    assert "position 10" in err and err.rstrip().endswith(" " * 10 + "^")

    code, out, err = run(
        capsys, "search", "dog.nose > 2", "--db", str(db), "--sheet", str(tmp_path / "x.png")
    )
    assert code == 1 and "0 shown of 0 matches" in out and not (tmp_path / "x.png").exists()


def test_help_documents_the_json(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = capsys.readouterr().out
    assert "--json" in out and "sentence" in out and "activation" in out


@pytest.mark.integration
def test_explain_real_photo_with_bundled_spaces(capsys, tmp_path):
    photo = (
        Path(__file__).resolve().parents[2]
        / "shared"
        / "data"
        / "dogs-vs-cats"
        / "train"
        / "cat"
        / "cat.0.jpg"
    )
    if default_spaces_dir("lite0_catdog") is None or not photo.is_file():
        pytest.skip("the default backbone's bundled spaces or the shared data are not there yet")
    code, out, _ = run(capsys, "explain", str(photo), "--out", str(tmp_path), "--json")
    assert code == 0
    [record] = json.loads(out)
    assert record["predicted"] in ("cat", "dog") and len(record["spaces"]) == 8


# ------------------------------------------------------------------------ adversarial detector
def test_explain_carries_the_stored_detector_flag_and_fpr(
    capsys, tmp_path, backbone, spaces_dir, images
):
    import shutil

    from sxai_plugins.robust.detection import FLAG_SENTENCE, Detector

    folder = tmp_path / "spaces"
    shutil.copytree(spaces_dir, folder)
    argv = [
        "explain",
        str(images),
        "-b",
        backbone,
        "-s",
        str(folder),
        "--out",
        str(tmp_path / "maps"),
    ]
    code, out, _err = run(capsys, *argv, "--json")
    assert code == 0 and all(r["detection"] is None for r in json.loads(out))  # no detector stored
    code, out, _err = run(capsys, *argv)
    assert FLAG_SENTENCE not in out

    # calibrated on the same kind of images (8 images allow a budget of 1/4 on average)
    code, out, err = run(
        capsys,
        "calibrate-detector",
        str(images),
        "-b",
        backbone,
        "-s",
        str(folder),
        "--fpr",
        "0.25",
        "--confidence",
        "0",
    )
    assert code == 0 and (folder / "detector.json").is_file() and "threshold" in out
    stored = Detector.load(folder / "detector.json")
    assert stored.n_calibration == 8 and stored.confidence is None
    code, out, _err = run(capsys, *argv, "--json")
    records = json.loads(out)
    for r in records:
        d = r["detection"]
        assert set(d) == {"flag", "score", "threshold", "fpr"} and d["fpr"] == 0.25
        assert d["flag"] == (d["score"] > d["threshold"])
        assert d["threshold"] == pytest.approx(stored.threshold, abs=1e-6)
    assert sum(r["detection"]["flag"] for r in records) <= 2  # the calibration images themselves

    # a detector whose threshold every image exceeds: text mode says so for each
    Detector(**{**stored.__dict__, "threshold": -1e9}).save(folder)
    code, out, _err = run(capsys, *argv)
    assert code == 0 and out.count(FLAG_SENTENCE) == 8 and "25% of clean images" in out

    # a detector calibrated for other spaces is not applied, and says so
    (folder / "dog.legs.safetensors").unlink()
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0 and all(r["detection"] is None for r in json.loads(out))
    assert "recalibrate" in err and "detection is off" in err
