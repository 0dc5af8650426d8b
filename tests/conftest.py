"""Shared fixtures: tiny models that build in milliseconds, seeded RNGs, the shared real data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sxai_plugins import BackboneSpec, get_plugin_manager, hookimpl, register_plugin
from sxai_plugins.models.trait_model import TraitModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SXAI_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "dogs-vs-cats"

torch.set_num_threads(min(2, torch.get_num_threads()))


def make_tiny_model(
    trait_dim: int = 8, classes: tuple[str, ...] = ("cat", "dog"), size: int = 32, seed: int = 0
) -> TraitModel:
    """A two-conv CNN with a GAP head: enough structure for every S-XAI step, built in a millisecond."""
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, trait_dim, 3, stride=2, padding=1),
        nn.ReLU(),
    )
    return TraitModel(
        body,
        trait_dim,
        list(classes),
        name="tiny",
        input_size=(3, size, size),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ).eval()


@pytest.fixture
def tiny_model() -> TraitModel:
    return make_tiny_model()


@pytest.fixture
def one_thread():
    """Many tiny ops: one thread avoids the sync cost that dominates on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def default_model():
    import sxai_plugins

    return sxai_plugins.create_model()


@contextmanager
def _backbone_available(
    name: str, build: Callable[..., TraitModel], description: str
) -> Iterator[str]:
    plugin_name = f"test-backbone-{name}"

    class Plugin:
        @hookimpl
        def sxai_backbones(self) -> list[BackboneSpec]:
            return [BackboneSpec(name, build, description)]

    manager = get_plugin_manager()
    if manager.get_plugin(plugin_name) is None:
        register_plugin(Plugin(), name=plugin_name)
    try:
        yield name
    finally:
        if manager.get_plugin(plugin_name) is not None:
            manager.unregister(name=plugin_name)


@pytest.fixture(scope="session")
def backbone_plugin():
    """``with backbone_plugin(name, build, description):`` makes ``name`` a backbone that
    ``sxai`` commands can build, through a real registered plugin, until the block ends."""
    return _backbone_available


def _call_as_nobody(fn: Callable, args: tuple, results) -> None:
    try:
        if os.geteuid() == 0:  # root ignores file modes: drop to an ordinary user first
            os.setgid(65534)
            os.setuid(65534)
        results.put(("ok", fn(*args)))
    except BaseException as exc:  # handed to the parent, which asserts on it
        results.put(("raised", f"{type(exc).__name__}: {exc}"))


@pytest.fixture
def as_nobody():
    """``as_nobody(fn, *args)`` runs ``fn`` in a forked process as uid 65534 (tests run as root,
    for whom read-only files and folders are writable) and returns ``("ok", result)`` or
    ``("raised", "Type: message")``. Everything ``fn`` needs must be importable by that user or
    imported already; pytest's tmp folders are closed to other users, so use ``open_tmp_path``."""
    import multiprocessing

    def run(fn: Callable, *args):
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_call_as_nobody, args=(fn, args, results))
        child.start()
        try:
            return results.get(timeout=120)
        finally:
            child.join(timeout=30)

    return run


@pytest.fixture
def open_tmp_path():
    """A fresh folder under /tmp that other users may enter (pytest's tmp_path is 0700)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="sxai-test-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path)
