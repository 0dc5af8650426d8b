"""Temporary changes to a model, each made through one context manager that undoes it on exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def frozen(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Switch off every parameter's gradient (and, with ``eval_mode``, put the model in eval mode).

    Only input gradients are then computed: autograd skips every weight-gradient kernel. On exit,
    even when the body raises, each parameter's ``requires_grad`` and each submodule's ``training``
    flag are what they were before.
    """
    grads = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        if eval_mode:
            model.eval()
        yield model
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training
