"""Head training on an ImageFolder, and `sxai predict` on files with a bad one among them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import sxai_plugins as sx
from sxai_plugins.cli.main import main
from sxai_plugins.models.head import load_head_file, train_head


def write_two_class_folder(root, n=12, side=24):
    """Class 'bright' and class 'dark' images: separable by any CNN's traits."""
    rng = np.random.default_rng(0)
    for cls, base in (("bright", 200), ("dark", 30)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = np.clip(base + rng.normal(0, 20, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{cls}{i}.png")
    return root


def test_train_head_writes_weights_and_card(tmp_path) -> None:
    data = write_two_class_folder(tmp_path / "data")
    (data / "dark" / "broken.jpg").write_text("oops")
    model = sx.create_model("resnet10t", pretrained=False)
    out = tmp_path / "head.safetensors"
    result = train_head(
        model, data, out, epochs=30, lr=1e-2, heldout_fraction=0.25, seed=1, progress=False
    )
    card = json.loads(result.card.read_text())
    assert card["classes"] == ["bright", "dark"] and card["seed"] == 1
    assert card["n_images"] == 24 and len(card["heldout"]) == 6
    assert any("broken.jpg" in s for s in card["skipped"])
    assert result.heldout_accuracy == card["heldout_accuracy"] >= 0.8
    state, classes = load_head_file(out)
    assert classes == ["bright", "dark"] and state["weight"].shape == (2, model.trait_dim)

    reloaded = sx.create_model("resnet10t", pretrained=False, head=out)
    assert reloaded.class_names == ["bright", "dark"]
    torch.testing.assert_close(reloaded.head.weight, model.head.weight)


def test_training_is_deterministic(tmp_path) -> None:
    data = write_two_class_folder(tmp_path / "data", n=6)
    model = sx.create_model("resnet10t", pretrained=False)
    a = train_head(model, data, tmp_path / "a.safetensors", seed=3, progress=False)
    b = train_head(model, data, tmp_path / "b.safetensors", seed=3, progress=False)
    assert load_head_file(a.weights)[0]["weight"].equal(load_head_file(b.weights)[0]["weight"])


def test_predict_json_skips_bad_file(tmp_path, capsys) -> None:
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "a.png")
    Image.new("L", (30, 30), 128).save(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_text("not an image")
    assert main(["predict", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == ["a.png", "b.png"]
    for record in records:
        assert set(record) == {"path", "predicted", "probabilities"}
        assert set(record["probabilities"]) == {"cat", "dog"}
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert record["predicted"] == max(record["probabilities"], key=record["probabilities"].get)
    assert "c.jpg" in captured.err


def test_cli_errors_are_one_line(capsys) -> None:
    assert main(["predict", "x.jpg", "--backbone", "nope_net"]) == 2
    assert "unknown backbone 'nope_net'" in capsys.readouterr().err


def test_device_choice_and_its_errors(capsys) -> None:
    from sxai_plugins.cli._args import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(sx.SxaiError, match="not a device torch knows"):
        resolve_device("gpu0")
    for device in ("mps", "meta"):
        with pytest.raises(sx.SxaiError, match=f"{device} is not supported"):
            resolve_device(device)
    if not torch.cuda.is_available():
        with pytest.raises(sx.SxaiError, match="no CUDA GPU; use --device cpu"):
            resolve_device("cuda")
    else:
        with pytest.raises(sx.SxaiError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("command", ["backbones", "predict", "train-head"])
def test_every_command_has_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "usage: sxai" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train-head", "d", "--out", "h", "--heldout", "-0.5"],
            "--heldout: expected a fraction between 0 and 1",
        ),
        (
            ["train-head", "d", "--out", "h", "--heldout", "1.0"],
            "--heldout: expected a fraction between 0 and 1",
        ),
        (
            ["train-head", "d", "--out", "h", "--heldout", "0"],
            "--heldout: expected a fraction between 0 and 1",
        ),
        (
            ["train-head", "d", "--out", "h", "--epochs", "-1"],
            "--epochs: expected a positive integer, got '-1'",
        ),
        (
            ["train-head", "d", "--out", "h", "--epochs", "0"],
            "--epochs: expected a positive integer, got '0'",
        ),
        (
            ["train-head", "d", "--out", "h", "--batch-size", "0"],
            "--batch-size: expected a positive integer",
        ),
        (
            ["train-head", "d", "--out", "h", "--lr", "nan"],
            "--lr: expected a finite number, got 'nan'",
        ),
        (
            ["train-head", "d", "--out", "h", "--lr", "inf"],
            "--lr: expected a finite number, got 'inf'",
        ),
        (["train-head", "d", "--out", "h", "--lr", "-0.1"], "--lr: expected a positive number"),
        (["train-head", "d", "--out", "h", "--lr", "fast"], "--lr: expected a number, got 'fast'"),
        (["predict", "x.jpg", "--top", "-1"], "--top: expected a positive integer, got '-1'"),
        (
            ["predict", "x.jpg", "--batch-size", "2.5"],
            "--batch-size: expected an integer, got '2.5'",
        ),
        (["explain", "x.jpg", "--top", "0"], "--top: expected a positive integer, got '0'"),
        (
            ["search", "cat.eyes > 0", "--db", "i.db", "--limit", "-5"],
            "--limit: expected 0 or a positive integer",
        ),
        (["predict", "x.jpg", "--device", "mps"], "--device: 'mps': sxai runs on cpu or cuda"),
        (["predict", "x.jpg", "--device", "meta"], "--device: 'meta': sxai runs on cpu or cuda"),
        (["predict", "x.jpg", "--device", "gpu0"], "--device: 'gpu0' is not a device torch knows"),
    ],
)
def test_numeric_and_device_arguments_are_checked_when_parsed(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {message}" in err and "Traceback" not in err
