"""Fuzzing space files as a hostile Hub repository could write them: any metadata and any
safetensors header either loads as a space with sane numbers or raises sxai's own SpaceError —
never another exception, never NaN out."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from sxai_plugins._utils.errors import SpaceError
from sxai_plugins.spaces.space import METADATA_KEY, SemanticSpace, SpaceSet

TRAIT_DIM = 6
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.sampled_from([2**20 + 1, 10**12]),
    st.none(),
    st.text(max_size=4),
    st.booleans(),
    st.lists(st.floats(), max_size=2),
)
names = st.one_of(
    st.sampled_from(
        ["cat", "eyes", "dog.nose", "../x", "/abs", "a b", "", ".", "ok-1_2", "x" * 101, "é"]
    ),
    st.text(max_size=12),
    st.integers(),
    st.none(),
)


def reference():
    return st.one_of(
        st.none(),
        numbers,
        st.fixed_dictionaries(
            {"mu": numbers, "sigma": numbers, "a_min": numbers, "a_max": numbers, "n": numbers},
            optional={"qq_r2": numbers, "extra": numbers},
        ),
    )


def probe():
    return st.one_of(
        st.none(),
        numbers,
        st.fixed_dictionaries(
            {
                "bias": numbers,
                "calibration": st.one_of(
                    numbers, st.fixed_dictionaries({"slope": numbers, "intercept": numbers})
                ),
            },
            optional={"feature": names},
        ),
    )


metadata = st.fixed_dictionaries(
    {
        "format_version": st.one_of(st.sampled_from([1, 2]), numbers),
        "class_name": names,
        "concept": names,
        "backbone": st.one_of(st.just("tiny"), numbers),
        "fingerprint": st.one_of(st.just("abc"), numbers),
        "trait_dim": st.one_of(st.just(TRAIT_DIM), numbers),
    },
    optional={
        "reference": reference(),
        "probe": probe(),
        "recipe": st.one_of(st.dictionaries(st.text(max_size=3), numbers), numbers),
        "evaluation": st.one_of(st.dictionaries(st.text(max_size=3), numbers), numbers),
        "n_images": numbers,
        "masker": names,
    },
)

tensor_values = st.lists(
    st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=8
)
index_values = st.lists(st.integers(-3, 9), min_size=0, max_size=8)


def _check_sane(space: SemanticSpace) -> None:
    """A loaded space gives finite probabilities in [0, 1] on any finite traits."""
    traits = torch.tensor(
        np.random.default_rng(0).normal(0, 3, (5, space.trait_dim)), dtype=torch.float32
    )
    if space.probe is None and space.reference is None:
        return
    p = SpaceSet([space]).probabilities(traits)
    assert torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert math.isfinite(float(space.activation(traits).sum()))


@SETTINGS
@given(
    meta=metadata,
    indices=index_values,
    delta=tensor_values,
    weight=st.one_of(st.none(), tensor_values),
    scale=st.one_of(st.none(), tensor_values),
)
def test_any_metadata_loads_sanely_or_raises_space_error(
    tmp_path, meta, indices, delta, weight, scale
) -> None:
    path = tmp_path / "space.safetensors"
    tensors = {
        "indices": torch.tensor(indices, dtype=torch.int64),
        "delta": torch.tensor(delta, dtype=torch.float32),
    }
    if weight is not None:
        tensors["weight"] = torch.tensor(weight, dtype=torch.float32)
    if scale is not None:
        tensors["scale"] = torch.tensor(scale, dtype=torch.float32)
    _load_sanely_or_refuse(path, tensors, meta)


def _load_sanely_or_refuse(path, tensors: dict, meta: dict) -> SemanticSpace | None:
    """Write the file, load it: a SpaceError naming the file (None), or a space with sane numbers."""
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    try:
        space = SemanticSpace.load(path)
    except SpaceError as exc:
        assert str(path) in str(exc)
        return None
    _check_sane(space)
    return space


@SETTINGS
@given(
    header=st.one_of(
        st.binary(max_size=64),
        st.dictionaries(
            st.text(max_size=8),
            st.one_of(
                st.dictionaries(
                    st.sampled_from(["dtype", "shape", "data_offsets"]),
                    st.one_of(st.text(max_size=4), st.lists(st.integers(-2, 40), max_size=3)),
                ),
                st.text(max_size=6),
            ),
            max_size=4,
        ),
    ),
    body=st.binary(max_size=64),
    claimed=st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_any_safetensors_header_raises_space_error(tmp_path, header, body, claimed) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if claimed is None else claimed
    path = tmp_path / "space.safetensors"
    path.write_bytes(struct.pack("<Q", length) + raw + body)
    try:
        space = SemanticSpace.load(path)
    except SpaceError:
        return
    _check_sane(space)  # a header that happens to be valid still needs its sxai metadata


def _valid(version: int) -> tuple[dict, dict]:
    meta = {
        "format_version": version,
        "class_name": "cat",
        "concept": "eyes",
        "backbone": "tiny",
        "fingerprint": "abc",
        "trait_dim": TRAIT_DIM,
        "recipe": {},
        "evaluation": {},
    }
    tensors = {"indices": torch.tensor([1, 4]), "delta": torch.tensor([0.5, -1.0])}
    if version == 1:
        meta["reference"] = {
            "mu": 0.0,
            "sigma": 1.0,
            "a_min": -2.0,
            "a_max": 2.0,
            "n": 10,
            "qq_r2": 0.98,
        }
    else:
        meta["probe"] = {
            "bias": 0.1,
            "calibration": {"slope": 1.5, "intercept": -0.2},
            "feature": "gap",
        }
        tensors["weight"] = torch.linspace(-1, 1, TRAIT_DIM)
        tensors["scale"] = torch.ones(TRAIT_DIM)
    return meta, tensors


FIELDS = [
    ("format_version",),
    ("class_name",),
    ("concept",),
    ("trait_dim",),
    ("reference", "mu"),
    ("reference", "sigma"),
    ("reference", "a_min"),
    ("reference", "a_max"),
    ("reference", "n"),
    ("reference", "qq_r2"),
    ("probe", "bias"),
    ("probe", "calibration", "slope"),
    ("probe", "calibration", "intercept"),
    ("probe", "feature"),
    ("recipe",),
    ("evaluation",),
]


@SETTINGS
@given(
    version=st.sampled_from([1, 2]),
    field=st.sampled_from(FIELDS),
    value=st.one_of(numbers, names),
    tensor=st.sampled_from(["", "indices", "delta", "weight", "scale"]),
    values=tensor_values,
    ints=index_values,
)
def test_a_valid_space_with_one_field_spoilt_loads_sanely_or_raises_space_error(
    tmp_path, version, field, value, tensor, values, ints
) -> None:
    meta, tensors = _valid(version)
    target = meta
    for key in field[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key, {}), dict) else {}
    target[field[-1]] = value
    if tensor and (tensor in tensors or version == 2):
        tensors[tensor] = (
            torch.tensor(ints, dtype=torch.int64)
            if tensor == "indices"
            else torch.tensor(values, dtype=torch.float32)
        )
    space = _load_sanely_or_refuse(tmp_path / "space.safetensors", tensors, meta)
    if space is not None:
        assert (
            space.class_name == meta["class_name"]
            and space.format_version == meta["format_version"]
        )


def test_the_unspoilt_spaces_load(tmp_path) -> None:
    for version in (1, 2):
        meta, tensors = _valid(version)
        save_file(
            tensors, str(tmp_path / "s.safetensors"), metadata={METADATA_KEY: json.dumps(meta)}
        )
        _check_sane(SemanticSpace.load(tmp_path / "s.safetensors"))
