"""``frozen``: every temporary change it makes to a model is undone, even when the body raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sxai_plugins._utils.torch import frozen


def mixed_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Linear(2, 2))
    model.train()
    model[1].eval()  # a submodule in another mode than its parent must come back as it was
    model[0].bias.requires_grad_(False)
    return model


def state(model: nn.Module) -> tuple[list[bool], list[bool]]:
    return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


@pytest.mark.parametrize("eval_mode", [True, False])
def test_frozen_restores_grads_and_modes_even_when_the_body_raises(eval_mode: bool) -> None:
    model = mixed_model()
    before = state(model)
    with pytest.raises(RuntimeError, match="boom"), frozen(model, eval_mode=eval_mode):
        assert not any(p.requires_grad for p in model.parameters())
        assert (
            all(not m.training for m in model.modules())
            if eval_mode
            else state(model)[1] == before[1]
        )
        raise RuntimeError("boom")
    assert state(model) == before
    with frozen(model, eval_mode=eval_mode):
        pass
    assert state(model) == before


def test_frozen_gives_input_gradients_only() -> None:
    model = nn.Linear(3, 1)
    x = torch.rand(2, 3, requires_grad=True)
    with frozen(model):
        model(x).sum().backward()
    assert x.grad is not None and model.weight.grad is None
    assert model.weight.requires_grad and model.training
