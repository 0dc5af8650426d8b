"""PGD through Captum, the detection rules as data, and the ``adversarial`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sxai_plugins._utils.errors import SxaiError
from sxai_plugins.cli.main import main
from sxai_plugins.models.trait_model import TraitModel
from sxai_plugins.robust.adversarial import (
    PAPER_RULE,
    DetectionRule,
    evaluate_detection,
    heldout_files,
    pgd_attack,
)
from sxai_plugins.spaces.space import SemanticSpace, SpaceSet

SIZE = 16
BACKBONE = "adv_test_cnn"


def small_model(pretrained: bool = True, weights=None, class_names=None) -> TraitModel:
    torch.manual_seed(0)  # same weights every build, so saved spaces keep fitting
    body = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU()
    )
    model = TraitModel(
        body,
        4,
        class_names or ["cat", "dog"],
        name=BACKBONE,
        input_size=(3, SIZE, SIZE),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    with (
        torch.no_grad()
    ):  # the class is trait 0 vs. trait 1: both classes occur, and can be flipped
        model.head.weight.copy_(torch.tensor([[10.0, -10.0, 0, 0], [-10.0, 10.0, 0, 0]]))
        model.head.bias.zero_()
    return model.eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g)


def spaces_for(model: TraitModel) -> SpaceSet:
    ref = model.traits(images(32, seed=9)).detach()
    out = []
    for i, key in enumerate(("cat.eyes", "dog.eyes")):
        class_name, concept = key.split(".")
        space = SemanticSpace(
            class_name,
            concept,
            BACKBONE,
            model.fingerprint(),
            4,
            torch.tensor([i, i + 2]),
            torch.tensor([1.0, 0.5]),
        )
        out.append(space.with_reference(ref @ space.weight_vector()))
    return SpaceSet(out)


# ---------------------------------------------------------------------------------------- PGD
@pytest.mark.parametrize("eps", [0.05, 0.01, 0.005])
def test_pgd_stays_in_the_ball_and_in_the_unit_box(eps):
    model = small_model()
    x = images(6)
    x[0] = 0.0  # corners of the box: the projection must not leave [0, 1]
    x[1] = 1.0
    labels = model.logits(x).argmax(1)
    adv = pgd_attack(model, x, labels, eps, steps=4)
    assert adv.shape == x.shape and not adv.requires_grad
    assert float((adv - x).abs().max()) <= eps + 1e-7
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - x).abs().max()) > 0.5 * eps  # it did move


def test_one_pgd_step_is_a_signed_cross_entropy_gradient_step():
    model = small_model()
    x = images(4)
    labels = model.logits(x).argmax(1)
    xg = x.clone().requires_grad_()
    loss = nn.functional.cross_entropy(model.logits(xg), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    expected = (x + 0.02 * grad.sign()).clamp(x - 0.01, x + 0.01).clamp(0, 1)
    torch.testing.assert_close(
        pgd_attack(model, x, labels, 0.01, steps=1, step_size=0.02), expected
    )


def test_pgd_raises_the_loss_of_the_label_and_leaves_weights_alone():
    model = small_model()
    x = images(8)
    labels = model.logits(x).argmax(1)
    flags = [p.requires_grad for p in model.parameters()]
    adv = pgd_attack(model, x, labels, 0.05, steps=5)
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        before, after = loss(model.logits(x), labels), loss(model.logits(adv), labels)
    assert float(after) > float(before)
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ValueError, match="eps must be positive"):
        pgd_attack(model, x, labels, 0.0)


# -------------------------------------------------------------------------------------- rules
def flags(rule: DetectionRule, *rows: list[float], dtype=torch.float64) -> list[bool]:
    return rule.flags(torch.tensor(rows, dtype=dtype)).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paper_rule_edges(dtype):
    assert flags(PAPER_RULE, [0.99, 0.1], dtype=dtype) == [False]  # exactly 0.99 is not above it
    assert flags(PAPER_RULE, [0.9901, 0.1], dtype=dtype) == [True]
    assert flags(PAPER_RULE, [0.95, 0.1], dtype=dtype) == [False]  # one above 0.9 is not enough
    assert flags(PAPER_RULE, [0.95, 0.91], dtype=dtype) == [True]  # two above 0.9
    assert flags(PAPER_RULE, [0.9, 0.95], dtype=dtype) == [False]  # exactly 0.9 is not above it
    assert flags(PAPER_RULE, [0.9, 0.9, 0.9], dtype=dtype) == [False]
    assert flags(PAPER_RULE, [0.99, 0.99], dtype=dtype) == [True]  # 0.99 still counts above 0.9
    assert flags(PAPER_RULE, [1.0, 0.0], [0.0, 0.0], dtype=dtype) == [True, False]


def test_configurable_rule():
    rule = DetectionRule("loose", single=0.8, multi=0.5, count=3)
    assert flags(rule, [0.8, 0.6, 0.4]) == [False]  # 0.8 is not above 0.8; two above 0.5 < 3
    assert flags(rule, [0.81, 0.0, 0.0]) == [True]
    assert flags(rule, [0.6, 0.6, 0.6]) == [True]
    assert DetectionRule.parse("single=0.8, multi=0.5,count=3", name="loose") == rule
    assert DetectionRule.parse("multi=0.5") == DetectionRule("custom", 0.99, 0.5, 2)
    for bad in ("single=high", "bogus=1", "count=0", "scope=mine"):
        with pytest.raises(SxaiError):
            DetectionRule.parse(bad)


def test_predicted_scope_reads_only_the_predicted_class_spaces():
    rule = DetectionRule("own", scope="predicted")
    p = torch.tensor([[0.995, 0.2], [0.995, 0.2]])
    assert rule.flags(p, ["cat", "dog"], ["cat", "dog"]).tolist() == [True, False]
    assert PAPER_RULE.flags(p, ["cat", "dog"], ["cat", "dog"]).tolist() == [True, True]
    with pytest.raises(ValueError, match="needs space_classes"):
        rule.flags(p)


# --------------------------------------------------------------------------------- evaluation
@pytest.fixture
def folder(tmp_path):
    model = small_model()
    x = images(6, seed=3)
    pred = model.logits(x).argmax(1).tolist()
    for i, (image, y) in enumerate(zip(x, pred)):
        # class folders from the model's own predictions, one image filed wrongly on purpose
        name = model.class_names[1 - y if i == 0 else y]
        (tmp_path / name).mkdir(exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / name / f"im{i}.png")
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    return tmp_path


def test_evaluate_detection_counts(folder):
    model = small_model()
    paths = sorted(folder.rglob("*.png"))
    always, never = DetectionRule("always", single=-1.0), DetectionRule("never", single=2, multi=2)
    report = evaluate_detection(
        model,
        spaces_for(model),
        paths,
        eps=[0.3, 0.001],
        steps=3,
        rules=[PAPER_RULE, always, never],
        progress=False,
    )
    assert report.n_images == 6 and report.labels == "folders" and len(report.skipped) == 1
    assert report.n_correct <= 5  # the image filed under the wrong class never counts
    strong, weak = report.results
    assert strong.n_attacked == report.n_correct
    assert strong.attack_success_rate == 1.0  # ε = 0.3 flips this tiny model every time
    assert weak.n_success <= strong.n_success
    rules = {r.rule: r for r in strong.rules}
    assert rules["always"].detection_rate == 1.0 and rules["always"].false_positive_rate == 1.0
    assert rules["never"].detected == 0 and rules["never"].false_positives == 0
    assert 0.0 <= rules["paper"].detection_rate <= 1.0
    table = report.table()
    assert "| pgd | 0.3 | 100.0% (" in table
    assert f"| 100.0% ({strong.n_success}/{strong.n_success}) | 100.0% (6/6) |" in table  # "always"
    assert strong.n_clean == 6  # false positives are counted over every clean image


def test_evaluate_without_class_folders_uses_predictions(tmp_path):
    model = small_model()
    for i, image in enumerate(images(3, seed=4)):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"x{i}.png")
    report = evaluate_detection(
        model, spaces_for(model), sorted(tmp_path.glob("*.png")), eps=[0.3], steps=2, progress=False
    )
    assert report.labels == "predictions" and report.n_correct == 3


def test_heldout_files_from_a_card(tmp_path):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "a.jpg").write_bytes(b"x")
    card = tmp_path / "cards" / "head.json"
    card.parent.mkdir()
    card.write_text(json.dumps({"data": "data", "heldout": ["cat/a.jpg"]}))  # relative to a parent
    assert heldout_files(card) == [tmp_path / "data" / "cat" / "a.jpg"]
    assert heldout_files(card, data_root=tmp_path / "elsewhere") == [
        tmp_path / "elsewhere" / "cat" / "a.jpg"
    ]
    card.write_text(json.dumps({"data": "nowhere", "heldout": ["cat/a.jpg"]}))
    with pytest.raises(SxaiError, match="--data-root"):
        heldout_files(card)


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture
def backbone(backbone_plugin):
    with backbone_plugin(BACKBONE, small_model, "a tiny CNN for adversarial tests"):
        yield BACKBONE


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["adversarial", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--heldout-card" in text and "0.99" in text and "--rule" in text


def test_cli_adversarial_run(backbone, folder, tmp_path, capsys):
    spaces = tmp_path / "spaces"
    for space in spaces_for(small_model()):
        space.save(spaces / f"{space.key}.safetensors")
    code = main(
        [
            "adversarial",
            "--data",
            str(folder),
            "-b",
            backbone,
            "--spaces",
            str(spaces),
            "--eps",
            "0.3,0.01",
            "--steps",
            "2",
            "--n",
            "0",
            "--rule",
            "single=-1",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0 and "broken.png" in captured.err
    assert [r["eps"] for r in report["results"]] == [0.3, 0.01]
    assert [r["rule"] for r in report["results"][0]["rules"]] == ["paper", "custom"]
    assert report["results"][0]["rules"][1]["false_positive_rate"] == 1.0

    code = main(
        [
            "adversarial",
            "--data",
            str(folder),
            "-b",
            backbone,
            "--spaces",
            str(spaces),
            "--eps",
            "0.3",
            "--steps",
            "1",
            "--n",
            "3",
            "-q",
        ]
    )
    text = capsys.readouterr().out
    assert (
        code == 0
        and "| pgd | 0.3 |" in text
        and "3 images" in text
        and "no calibrated detector" in text
    )


def test_cli_adversarial_needs_images_for_other_backbones(backbone, capsys):
    code = main(["adversarial", "-b", backbone])
    assert code == 2 and "--data DIR" in capsys.readouterr().err


def test_rates_over_nothing_read_n_a_in_the_table_and_null_in_json():
    from sxai_plugins._utils.io import dumps_json
    from sxai_plugins.robust.adversarial import AdversarialReport, EpsilonResult, RuleResult

    nan = float("nan")
    report = AdversarialReport(
        n_images=3,
        n_correct=0,
        labels="folders",
        steps=4,
        step_size_factor=2.5,
        rules=[DetectionRule()],
        results=[EpsilonResult(0.01, 0, 0, nan, [RuleResult("paper", 0, nan, 0, nan)], nan, nan)],
    )
    row = report.table().splitlines()[-1]
    assert "nan" not in row.lower()
    assert row == "| pgd | 0.01 | n/a (0/0) | n/a (n/a / n/a) | – | – | n/a (0/0) | n/a (0/0) |"
    record = json.loads(
        dumps_json(report.to_dict()), parse_constant=lambda c: pytest.fail(f"JSON has {c}")
    )
    assert record["results"][0]["attack_success_rate"] is None
    assert record["results"][0]["rules"][0]["detection_rate"] is None


def test_json_output_never_carries_nan_or_infinity():
    from sxai_plugins._utils.io import dumps_json

    data = {
        "a": float("nan"),
        "b": [float("inf"), -float("inf"), 0.5, np.float64("nan"), np.float32("inf")],
        "c": (1, "x", None, np.float32(0.25)),
    }
    strict = json.loads(dumps_json(data), parse_constant=lambda c: pytest.fail(f"JSON has {c}"))
    assert strict == {"a": None, "b": [None, None, 0.5, None, None], "c": [1, "x", None, 0.25]}


def test_cli_adversarial_with_a_calibrated_detector_adaptive_attack_and_roc(
    backbone, folder, tmp_path_factory, capsys
):
    tmp_path = tmp_path_factory.mktemp("outside")  # `folder` is the test's tmp_path: keep out of it
    spaces = tmp_path / "spaces"
    for space in spaces_for(small_model()):
        space.save(spaces / f"{space.key}.safetensors")
    calibration = tmp_path / "clean"
    calibration.mkdir()
    for i, image in enumerate(images(40, seed=11)):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(calibration / f"c{i}.png")
    roc, cache = tmp_path / "roc.png", tmp_path / "cache"
    argv = [
        "adversarial",
        "--data",
        str(folder),
        "-b",
        backbone,
        "--spaces",
        str(spaces),
        "--eps",
        "0.3",
        "--steps",
        "2",
        "--n",
        "0",
        "--calibration",
        str(calibration),
        "--fpr",
        "0.1",
        "--confidence",
        "0",
        "--adaptive",
        "--score-aware",
        "--roc",
        str(roc),
        "--cache",
        str(cache),
        "--json",
    ]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert roc.is_file() and roc.read_bytes()[:4] == b"\x89PNG"
    assert report["detector"]["n_calibration"] == 40 and report["detector"]["fpr"] == 0.1
    assert [(r["attack"], r["eps"]) for r in report["results"]] == [
        ("pgd", 0.3),
        ("adaptive", 0.3),
        ("score-aware", 0.3),
    ]
    for r in report["results"]:
        assert r["n_clean"] == 6 and 0 <= r["false_positive_rate"] <= 1 and r["score"] == "gap"
        assert r["detection_rate"] is None or 0 <= r["detection_rate"] <= 1
        assert r["auc"] is None or 0 <= r["auc"] <= 1
    cached = sorted(p.name.split("-")[0] for p in cache.iterdir())
    assert cached == [
        "adaptive",
        "pgd",
        "score",
    ]  # one batch of each attack, reused by the next run
    stamp = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamp
    assert again["results"] == report["results"]

    # the false-positive rate is never measured on calibration images
    code = main(
        [
            "adversarial",
            "--data",
            str(folder),
            "-b",
            backbone,
            "--spaces",
            str(spaces),
            "--eps",
            "0.3",
            "--steps",
            "1",
            "--n",
            "0",
            "--calibration",
            str(folder),
            "--fpr",
            "0.5",
            "-q",
        ]
    )
    assert code != 0 and "used to calibrate" in capsys.readouterr().err
