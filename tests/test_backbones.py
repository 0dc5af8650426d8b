"""Every installed backbone builds, and its traits are the GAP of its last conv map."""

from __future__ import annotations

import pytest
import torch

import sxai_plugins as sx
from sxai_plugins import TraitOutput
from sxai_plugins._utils.errors import BackboneError, BackboneNotFoundError, WeightsError
from sxai_plugins.models import load_weights_file
from sxai_plugins.plugin.manager import FIRST_PARTY_BACKBONES, plugin_failures

# Every installed backbone, as timm's tests run over list_models(), plus one through the generic
# timm adapter. Random weights and a 64 px input keep it fast (AlexNet and VGG need >= 64 px).
INSTALLED = sorted(sx.list_backbones())
LOAD_FAILURES = plugin_failures()  # the engine skips a plugin that fails to load, with a warning
GENERIC = ["resnet18"]
SIDE = 64
TRAIT_WIDTHS = {
    "vgg16": 512,
    "vgg19": 512,
    "vgg19_bn": 512,
    "alexnet": 256,
    "tf_efficientnet_lite0": 1280,
    "lite0_catdog": 1280,
    "resnet18": 512,
}


def test_every_installed_plugin_loads_and_the_first_party_backbones_are_installed() -> None:
    # a plugin skipped for failing to load, or a first-party plugin missing (make test installs
    # them), must fail here, not quietly shorten the list the test below runs over
    assert LOAD_FAILURES == []
    assert set(FIRST_PARTY_BACKBONES) | {"lite0_catdog", "tf_efficientnet_lite0"} <= set(INSTALLED)


@pytest.mark.parametrize("name", INSTALLED + GENERIC)
def test_backbone_builds_and_its_traits_are_gap_of_last_conv_map(name: str) -> None:
    model = sx.create_model(name, pretrained=False, class_names=["a", "b", "c"])
    x = torch.rand(2, 3, SIDE, SIDE)
    maps: list[
        torch.Tensor
    ] = []  # the body's conv map, caught in the one forward pass (Lite0's take 2 s here)
    hook = model.body.register_forward_hook(lambda _module, _inputs, output: maps.append(output))
    with torch.no_grad():
        out = model(x)
    hook.remove()
    (feature_map,) = maps
    assert isinstance(out, TraitOutput)
    assert out.logits.shape == (2, 3)
    assert out.traits.shape == (2, model.trait_dim)
    assert feature_map.shape[:2] == (2, model.trait_dim)
    assert model.trait_dim == TRAIT_WIDTHS.get(name, model.trait_dim)
    torch.testing.assert_close(out.traits, feature_map.mean(dim=(2, 3)))
    torch.testing.assert_close(out.logits, model.head(out.traits))
    config = model.data_config
    assert config["input_size"] == model.input_size and len(config["input_size"]) == 3
    assert config["input_size"][0] == 3 and min(config["input_size"][1:]) >= SIDE
    assert len(config["mean"]) == len(config["std"]) == 3 and min(config["std"]) > 0


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
        assert (
            str(path) in message
            and "bias (2,), weight (2, 1280)" in message
            and "--head" in message
        )
        assert "conv_stem" not in message and "conv1" not in message


def test_lite0_weights_in_an_unknown_layout_name_the_files_own_keys(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"stem.w": torch.zeros(3), "stem.b": torch.zeros(3)}, str(path))
    with pytest.raises(
        WeightsError, match=r"other\.safetensors: has 2 tensors \('stem\.b', 'stem\.w'\)"
    ):
        sx.create_model("lite0_catdog", weights=path)
    own = sx.create_model("tf_efficientnet_lite0", pretrained=False).body.model.state_dict()
    renamed = {f"layer{i:03d}": tensor for i, tensor in enumerate(own.values())}
    renamed["layer000"] = torch.zeros(5)  # right count, wrong shape
    path = tmp_path / "other.pth"  # torch.save keeps the order, as the package's file does
    torch.save(renamed, path)
    with pytest.raises(
        WeightsError,
        match=r"other\.pth: tensor 'layer000' has shape \(5,\), but .* 'conv_stem.weight'",
    ):
        sx.create_model("lite0_catdog", weights=path)


def test_no_network_fails_fast_with_the_good_message(tmp_path, monkeypatch) -> None:
    """Without HF_HUB_OFFLINE, huggingface_hub retried for about a minute before this message."""
    import time

    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for variable in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(variable, raising=False)
    start = time.monotonic()
    with pytest.raises(
        WeightsError, match=r"'resnet18' \(cannot connect to http://127.0.0.1:9\).*--weights"
    ):
        sx.create_model("resnet18")
    assert time.monotonic() - start < 15
    assert constants.HF_HUB_OFFLINE is False  # the offline switch was for that one call


def test_alexnet_takes_torchvision_weights_through_timms_loader(tmp_path) -> None:
    import timm
    import torchvision

    tv = torchvision.models.AlexNet().eval()
    state = {k: v for k, v in tv.state_dict().items() if k.startswith("features.")}
    state["classifier.1.weight"] = torch.zeros(
        2, 2
    )  # torchvision's MLP: dropped with the classifier
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    x = torch.rand(1, 3, 64, 64)
    timm_model = timm.create_model(
        "alexnet", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), tv.features(x).mean(dim=(2, 3)))
    model = sx.create_model("alexnet", weights=path, class_names=["a", "b"])
    assert all(
        torch.equal(model.body.model.state_dict()[k], v)
        for k, v in state.items()
        if k.startswith("features.")
    )


def test_alexnet_offline_names_the_url_and_what_to_pass(monkeypatch) -> None:
    from urllib.error import URLError

    import timm.models._builder

    def offline(url, *args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", offline)
    with pytest.raises(
        WeightsError, match=r"'alexnet' from https://download\.pytorch\.org/.*URLError.*--weights"
    ):
        sx.create_model("alexnet", pretrained=True)
