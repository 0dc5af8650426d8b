"""Every installed backbone builds, and its traits are the GAP of its last conv map."""

from __future__ import annotations

import pytest
import torch

import sxai_plugins as sx
from sxai_plugins._utils.errors import BackboneError, BackboneNotFoundError, WeightsError
from sxai_plugins.models import load_weights_file

# (name, input side): small inputs keep random-weight builds fast; AlexNet/VGG need >= 64 px.
BACKBONES = [
    ("vgg16", 64), ("vgg19", 64), ("vgg19_bn", 64), ("alexnet", 96),
    ("tf_efficientnet_lite0", 64), ("lite0_catdog", 64), ("resnet18", 64),
]


@pytest.mark.parametrize(("name", "side"), BACKBONES)
def test_backbone_traits_are_gap_of_last_conv_map(name: str, side: int) -> None:
    # the first-party plugins are installed with the tests (make test): a missing one must fail
    model = sx.create_model(name, pretrained=False, class_names=["a", "b", "c"])
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        out = model(x)
        feature_map = model.feature_map(x)
    assert out.logits.shape == (2, 3)
    assert out.traits.shape == (2, model.trait_dim)
    assert feature_map.shape[:2] == (2, model.trait_dim)
    torch.testing.assert_close(out.traits, feature_map.mean(dim=(2, 3)))
    torch.testing.assert_close(out.logits, model.head(out.traits))
    assert model.data_config["input_size"] == model.input_size


def test_trait_widths_match_the_architectures() -> None:
    expected = {"vgg19": 512, "alexnet": 256, "tf_efficientnet_lite0": 1280, "resnet18": 512}
    for name, width in expected.items():
        assert sx.create_model(name, pretrained=False, class_names=["a", "b"]).trait_dim == width


def test_vgg_has_no_mlp_pre_logits() -> None:
    model = sx.create_model("vgg19", pretrained=False, class_names=["a", "b"])
    assert not any(k.startswith("model.pre_logits") for k in model.body.state_dict())


def test_unknown_backbone_lists_the_available_ones() -> None:
    with pytest.raises(BackboneNotFoundError) as info:
        sx.create_model("no_such_net")
    message = str(info.value)
    assert "no_such_net" in message and "lite0_catdog" in message


def test_non_cnn_timm_model_is_refused() -> None:
    with pytest.raises(BackboneError, match="not a CNN"):
        sx.create_model("test_vit", pretrained=False)


def test_weights_file_that_does_not_fit_names_the_tensor(tmp_path) -> None:
    from safetensors.torch import save_file

    model = sx.create_model("resnet18", pretrained=False, class_names=["a", "b"])
    state = model.body.model.state_dict()
    state["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError) as info:
        sx.create_model("resnet18", weights=path, class_names=["a", "b"])
    message = str(info.value)
    assert "conv1.weight" in message and "(8, 3, 7, 7)" in message and "(64, 3, 7, 7)" in message


def test_local_weights_file_round_trip(tmp_path) -> None:
    from safetensors.torch import save_file

    source = sx.create_model("resnet18", pretrained=False, class_names=["a", "b"])
    torch.nn.init.constant_(source.body.model.conv1.weight, 0.01)
    state = dict(source.body.model.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # a timm checkpoint's classifier is ignored
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    loaded = sx.create_model("resnet18", weights=path, class_names=["a", "b"])
    assert loaded.fingerprint() == source.fingerprint()
    assert load_weights_file(path)["conv1.weight"].shape == (64, 3, 7, 7)


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        sx.create_model("resnet18", weights=tmp_path / "nope.pth")


def test_default_model_classes_and_offline_weights() -> None:
    model = sx.create_model()
    assert model.name == sx.DEFAULT_BACKBONE
    assert model.class_names == ["cat", "dog"]
    assert model.trait_dim == 1280
    assert model.data_config["mean"] == pytest.approx((0.5, 0.5, 0.5))
    imagenet = sx.create_model("tf_efficientnet_lite0")
    assert imagenet.num_classes == 1000 and "tabby" in imagenet.class_names[281]
    assert imagenet.fingerprint() == model.fingerprint()


def test_a_head_file_given_as_weights_says_to_use_head(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "head.safetensors"
    save_file({"weight": torch.zeros(2, 1280), "bias": torch.zeros(2)}, str(path))
    for backbone in ("lite0_catdog", "resnet18"):
        with pytest.raises(WeightsError) as info:
            sx.create_model(backbone, weights=path)
        message = str(info.value)
        assert str(path) in message and "bias (2,), weight (2, 1280)" in message and "--head" in message
        assert "conv_stem" not in message and "conv1" not in message


def test_lite0_weights_in_an_unknown_layout_name_the_files_own_keys(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"stem.w": torch.zeros(3), "stem.b": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match=r"other\.safetensors: has 2 tensors \('stem\.b', 'stem\.w'\)"):
        sx.create_model("lite0_catdog", weights=path)
    own = sx.create_model("tf_efficientnet_lite0", pretrained=False).body.model.state_dict()
    renamed = {f"layer{i:03d}": tensor for i, tensor in enumerate(own.values())}
    renamed["layer000"] = torch.zeros(5)  # right count, wrong shape
    path = tmp_path / "other.pth"  # torch.save keeps the order, as the package's file does
    torch.save(renamed, path)
    with pytest.raises(WeightsError, match=r"other\.pth: tensor 'layer000' has shape \(5,\), but .* 'conv_stem.weight'"):
        sx.create_model("lite0_catdog", weights=path)


def test_no_network_fails_fast_with_the_good_message(tmp_path, monkeypatch) -> None:
    """Without HF_HUB_OFFLINE, huggingface_hub retried for about a minute before this message."""
    import time

    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    start = time.monotonic()
    with pytest.raises(WeightsError, match=r"'resnet18' \(cannot connect to http://127.0.0.1:9\).*--weights"):
        sx.create_model("resnet18")
    assert time.monotonic() - start < 15
    assert constants.HF_HUB_OFFLINE is False  # the offline switch was for that one call
