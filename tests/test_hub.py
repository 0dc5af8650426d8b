"""spaces_hub against a real HTTP Hub endpoint on loopback (tests/hub_server.py), real safetensors files."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hub_server import HubServer
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub import constants as hf_constants
from torch import nn

import spaces_hub
from spaces_hub.card import render_card
from spaces_hub.layout import check_name, parse_index
from spaces_hub.safety import check_safetensors_header
from sxai_plugins._utils.errors import SpaceError, SxaiError
from sxai_plugins.cli.main import main
from sxai_plugins.models.trait_model import TraitModel
from sxai_plugins.spaces.space import SemanticSpace, SpaceSet

C = 16
REPO = "sxai-test/catdog-spaces"
SPACE_FILE = "spaces/cat.eyes.safetensors"


# ---------------------------------------------------------------------------------------- fixtures
def tiny_model(seed: int = 0, trait_dim: int = C) -> TraitModel:
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, trait_dim, 3, padding=1), nn.ReLU()
    )
    return TraitModel(
        body, trait_dim, ["cat", "dog"], name=f"tiny{seed}", input_size=(3, 32, 32)
    ).eval()


def make_spaces(model: TraitModel, concepts=("eyes", "ears"), seed: int = 0) -> list[SemanticSpace]:
    """Spaces on the model's real traits, with reference distributions fitted by ``Reference.fit``."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        reference = model.traits(
            torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        )
    spaces = []
    for class_name in model.class_names:
        for concept in concepts:
            indices = rng.choice(model.trait_dim, size=5, replace=False)
            space = SemanticSpace(
                class_name,
                concept,
                model.name,
                model.fingerprint(),
                model.trait_dim,
                indices=indices,
                delta=rng.normal(size=5),
                masker="box",
                n_images=12,
                recipe={"n_ssn": 5, "seed": seed},
            )
            spaces.append(space.with_reference(space.activation(reference)))
    return spaces


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = HubServer(tmp_path / "hub").start()
    # spaces_hub reads HF_ENDPOINT at call time: the tests exercise that path, not endpoint=.
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.stop()


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def spaces(model):
    return make_spaces(model)


def probe_traits(trait_dim: int = C) -> torch.Tensor:
    return torch.rand(6, trait_dim, generator=torch.Generator().manual_seed(1)) * 3


def assert_same_probabilities(expected: list[SemanticSpace], got: list[SemanticSpace]) -> None:
    by_key = {s.key: s for s in got}
    assert sorted(by_key) == sorted(s.key for s in expected)
    traits = probe_traits(expected[0].trait_dim)
    want = SpaceSet(expected).probabilities(traits)
    have = SpaceSet([by_key[s.key] for s in expected]).probabilities(traits)
    assert torch.equal(want, have)


def round_trip(spaces: list[SemanticSpace], cache_dir: Path, repo_id: str = REPO, **pull_kwargs):
    """Push ``spaces`` then pull them into ``cache_dir``; also usable with the bundled default spaces."""
    spaces_hub.push(spaces, repo_id)
    pulled = spaces_hub.pull(repo_id, cache_dir=cache_dir, **pull_kwargs)
    assert_same_probabilities(spaces, pulled)
    return pulled


def commit_files(hub: HubServer, files: dict[str, bytes], repo_id: str = REPO) -> None:
    """Change the repo behind sxai's back, through the Hub API like anyone with write access."""
    api = HfApi(endpoint=hub.url)
    api.create_commit(
        repo_id, [CommitOperationAdd(p, b) for p, b in files.items()], commit_message="edit"
    )


def stored(hub: HubServer, path: str, repo_id: str = REPO, rev: str = "main") -> bytes:
    return hub.read_blob(hub.repos[repo_id].commits[hub.resolve(repo_id, rev)][path])


def index_with(hub: HubServer, path: str, data: bytes) -> bytes:
    """The stored index, with ``path``'s sha256 and size set to those of ``data`` (a consistent lie)."""
    import hashlib

    index = json.loads(stored(hub, "spaces.json"))
    for entry in index["files"]:
        if entry["path"] == path:
            entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return json.dumps(index).encode()


def served(hub: HubServer, name: str) -> list[tuple[str, str]]:
    return [r for r in hub.requests if r[1].endswith("/" + name)]


class Exploding:
    """Unpickling this writes a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


# ---------------------------------------------------------------------------------------- round trip
def test_round_trip_gives_identical_probabilities_in_one_commit(hub, spaces, model, tmp_path):
    pulled = round_trip(spaces, tmp_path / "cache", model=model)
    commits = [r for r in hub.requests if r[0] == "POST" and "/commit/" in r[1]]
    assert len(commits) == 1
    files = set(hub.repos[REPO].commits[hub.resolve(REPO, "main")])
    assert {"spaces.json", "README.md", SPACE_FILE, "spaces/dog.ears.safetensors"} <= files
    index = json.loads(stored(hub, "spaces.json"))
    assert index["format_version"] == spaces_hub.FORMAT_VERSION
    assert (index["backbone"], index["fingerprint"], index["trait_dim"]) == (
        "tiny0",
        model.fingerprint(),
        C,
    )
    assert index["classes"] == ["cat", "dog"] and index["concepts"] == ["ears", "eyes"]
    assert all(e["size"] == len(stored(hub, e["path"])) for e in index["files"])
    assert [s.reference for s in pulled] == [
        s.reference for s in sorted(spaces, key=lambda s: s.key)
    ]


def test_second_push_replaces_the_set_and_deletes_stale_files(hub, model, tmp_path, recwarn):
    spaces_hub.push(make_spaces(model, concepts=("eyes", "ears", "nose")), REPO)
    smaller = make_spaces(model, concepts=("eyes",), seed=3)
    pulled = round_trip(smaller, tmp_path / "cache")
    assert sorted(s.key for s in pulled) == ["cat.eyes", "dog.eyes"]
    tree = hub.repos[REPO].commits[hub.resolve(REPO, "main")]
    assert sorted(p for p in tree if p.startswith("spaces/")) == [
        SPACE_FILE,
        "spaces/dog.eyes.safetensors",
    ]
    assert not [w for w in recwarn if "does not list" in str(w.message)]


def test_push_to_a_branch_leaves_main_alone(hub, model, tmp_path):
    spaces_hub.push(make_spaces(model), REPO)
    spaces_hub.push(make_spaces(model, concepts=("tail",)), REPO, revision="dev")
    main_keys = sorted(s.key for s in spaces_hub.pull(REPO, cache_dir=tmp_path / "c"))
    dev_keys = sorted(
        s.key for s in spaces_hub.pull(REPO, revision="dev", cache_dir=tmp_path / "c")
    )
    assert main_keys == ["cat.ears", "cat.eyes", "dog.ears", "dog.eyes"]
    assert dev_keys == ["cat.tail", "dog.tail"]


# ---------------------------------------------------------------------------------------- offline
def test_pull_works_offline_from_the_cache(hub, spaces, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    round_trip(spaces, cache)
    hub.stop()
    n_requests = len(hub.requests)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert_same_probabilities(spaces, spaces_hub.pull(REPO, cache_dir=cache))
    assert len(hub.requests) == n_requests
    with pytest.raises(spaces_hub.HubUnreachableError, match=REPO):
        spaces_hub.pull(REPO, cache_dir=tmp_path / "empty-cache")


def test_pull_falls_back_to_the_cache_when_the_hub_is_down(hub, spaces, tmp_path):
    cache = tmp_path / "cache"
    round_trip(spaces, cache)
    hub.stop()
    assert_same_probabilities(spaces, spaces_hub.pull(REPO, cache_dir=cache))


# ---------------------------------------------------------------------------------------- safety
def test_pickles_in_the_repo_are_never_downloaded_or_opened(hub, spaces, tmp_path):
    spaces_hub.push(spaces, REPO)
    marker = tmp_path / "unpickled.txt"
    evil = pickle.dumps(Exploding(marker))
    index = json.loads(stored(hub, "spaces.json"))
    index["files"].append({"path": "evil.pkl", "sha256": "0" * 64, "size": len(evil)})
    commit_files(
        hub, {"evil.pkl": evil, "weights.bin": evil, "spaces.json": json.dumps(index).encode()}
    )
    with pytest.warns(UserWarning) as caught:
        pulled = spaces_hub.pull(REPO, cache_dir=tmp_path / "cache")
    text = " ".join(str(w.message) for w in caught)
    assert "evil.pkl" in text and "weights.bin" in text
    assert_same_probabilities(spaces, pulled)
    assert served(hub, "evil.pkl") == [] and served(hub, "weights.bin") == []
    assert not marker.exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name in ("evil.pkl", "weights.bin")]


def test_a_tampered_space_file_is_refused_by_name_and_dropped_from_the_cache(hub, spaces, tmp_path):
    spaces_hub.push(spaces, REPO)
    data = bytearray(stored(hub, SPACE_FILE))
    data[-1] ^= 0x01  # a flipped bit in the tensor data: the header is still valid
    commit_files(hub, {SPACE_FILE: bytes(data)})
    cache = tmp_path / "cache"
    with pytest.raises(spaces_hub.IntegrityError, match=rf"{SPACE_FILE}.*sha256") as info:
        spaces_hub.pull(REPO, cache_dir=cache)
    assert "\n" not in str(info.value)
    assert not list(cache.rglob("cat.eyes.safetensors"))


@pytest.mark.parametrize(
    "kind", ["offsets beyond the file", "header longer than the file", "pickle"]
)
def test_a_safetensors_header_that_lies_is_refused_before_parsing(hub, spaces, tmp_path, kind):
    spaces_hub.push(spaces, REPO)
    marker = tmp_path / "unpickled.txt"
    if kind == "offsets beyond the file":
        header = json.dumps(
            {"indices": {"dtype": "I64", "shape": [5], "data_offsets": [0, 4000]}}
        ).encode()
        crafted = struct.pack("<Q", len(header)) + header + bytes(40)
    elif kind == "header longer than the file":
        crafted = struct.pack("<Q", 1 << 40) + b"{}"
    else:
        crafted = pickle.dumps(Exploding(marker))
    # The index vouches for the crafted bytes, so only the header check stands in the way.
    commit_files(hub, {SPACE_FILE: crafted, "spaces.json": index_with(hub, SPACE_FILE, crafted)})
    with pytest.raises(
        spaces_hub.IntegrityError, match=rf"{SPACE_FILE}: not a valid safetensors file"
    ):
        spaces_hub.pull(REPO, cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_an_index_of_a_newer_format_is_refused(hub, spaces, tmp_path):
    spaces_hub.push(spaces, REPO)
    index = json.loads(stored(hub, "spaces.json"))
    index["format_version"] = spaces_hub.FORMAT_VERSION + 1
    commit_files(hub, {"spaces.json": json.dumps(index).encode()})
    with pytest.raises(spaces_hub.SpacesIndexError, match="newer.*upgrade sxai"):
        spaces_hub.pull(REPO, cache_dir=tmp_path / "cache")
    assert served(hub, "cat.eyes.safetensors") == []


def test_a_space_that_disagrees_with_its_index_is_refused(hub, spaces, model, tmp_path):
    spaces_hub.push(spaces, REPO)
    other = make_spaces(tiny_model(seed=5))[0]  # cat.eyes, another backbone fingerprint
    other.save(tmp_path / "other.safetensors")
    data = (tmp_path / "other.safetensors").read_bytes()
    commit_files(hub, {SPACE_FILE: data, "spaces.json": index_with(hub, SPACE_FILE, data)})
    with pytest.raises(
        spaces_hub.IntegrityError, match=rf"{SPACE_FILE} disagrees with spaces.json"
    ):
        spaces_hub.pull(REPO, cache_dir=tmp_path / "cache")


MB = 1 << 20


def sent_when_settled(hub: HubServer, path: str) -> int:
    """Bytes the server wrote for ``path``, once its handler has stopped writing."""
    last, deadline = -1, time.monotonic() + 5
    while hub.sent.get(path) != last and time.monotonic() < deadline:
        last = hub.sent.get(path)
        time.sleep(0.2)
    return hub.sent[path]


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "no-content-length"])
@pytest.mark.parametrize("path", [SPACE_FILE, "spaces.json"])
def test_a_file_larger_than_allowed_is_cut_off_while_downloading(
    hub, spaces, tmp_path, path, announced
):
    """The server sends 150 MB after the real bytes (HEAD still says the real size): the
    download stops within huggingface_hub's 10 MB read chunk of the limit, not after 150 MB."""
    spaces_hub.push(spaces, REPO)
    hub.oversize[path] = (150 * MB, announced)
    cache = tmp_path / "cache"
    with pytest.raises(spaces_hub.DownloadError, match=rf"{path}.*download stopped") as info:
        spaces_hub.pull(REPO, cache_dir=cache)
    assert "\n" not in str(info.value)
    assert sent_when_settled(hub, path) < 40 * MB
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > MB]


def test_an_oversized_cached_file_is_refused_and_evicted(hub, spaces, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    round_trip(spaces, cache)
    blob = next(p for p in cache.rglob("cat.eyes.safetensors")).resolve()
    blob.write_bytes(blob.read_bytes() + bytes(1000))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(spaces_hub.DownloadError, match=rf"cached {SPACE_FILE} has"):
        spaces_hub.pull(REPO, cache_dir=cache)
    assert not blob.exists()


def forged(data: bytes, **metadata: object) -> bytes:
    """A real space file with fields of its ``sxai.space`` metadata replaced (tensors untouched)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["sxai.space"])
    meta.update(metadata)
    header["__metadata__"]["sxai.space"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors keeps the data section 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def listing(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def hostile_names(sandbox: Path) -> list[tuple[str, str]]:
    return [
        (f"{sandbox}/victim/x", "./../model"),
        ("../../..", "eyes"),
        ("cat", "../../../x"),
        ("cat/..", "eyes"),
        (".hidden", "eyes"),
        ("cat", "eyes\\.."),
    ]


@pytest.mark.parametrize("liar", ["space file", "space file and index"])
@pytest.mark.parametrize("case", range(6))
def test_pull_out_refuses_hostile_names_and_writes_nothing(
    hub, spaces, tmp_path, capsys, liar, case
):
    sandbox = tmp_path / "sandbox"
    (sandbox / "victim").mkdir(parents=True)
    (sandbox / "victim" / "model.safetensors").write_bytes(b"precious")
    class_name, concept = hostile_names(sandbox)[case]
    spaces_hub.push(spaces, REPO)
    data = forged(stored(hub, SPACE_FILE), class_name=class_name, concept=concept)
    index = json.loads(index_with(hub, SPACE_FILE, data))
    if liar == "space file and index":
        entry = next(e for e in index["files"] if e["path"] == SPACE_FILE)
        entry.update(class_name=class_name, concept=concept)
    commit_files(hub, {SPACE_FILE: data, "spaces.json": json.dumps(index).encode()})
    before = listing(sandbox)
    code = main(
        ["hub", "pull", REPO, "--cache-dir", str(tmp_path / "cache"), "--out", str(sandbox / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sxai: error:") and err.count("\n") == 1
    assert SPACE_FILE in err if liar == "space file" else "not a safe name" in err
    assert listing(sandbox) == before


def test_pull_out_does_not_follow_a_link_out_of_the_folder(hub, spaces, tmp_path, capsys):
    sandbox = tmp_path / "sandbox"
    (sandbox / "out").mkdir(parents=True)
    (sandbox / "victim.safetensors").write_bytes(b"precious")
    (sandbox / "out" / "dog.eyes.safetensors").symlink_to(sandbox / "victim.safetensors")
    spaces_hub.push(spaces, REPO)
    before = listing(sandbox)
    code = main(
        ["hub", "pull", REPO, "--cache-dir", str(tmp_path / "cache"), "--out", str(sandbox / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "outside" in err and "dog.eyes.safetensors" in err
    assert listing(sandbox) == before


@pytest.mark.parametrize("name", ["cat", "golden_retriever", "left-eye", "v1.2", "A9"])
def test_safe_names_pass(name):
    assert check_name(name, "class name", "here") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a..b",
        ".cat",
        "cat.",
        "a/b",
        "/abs",
        "a\\b",
        "a b",
        "x" * 101,
        "caf\u00e9",
        "a\x00b",
        None,
        3,
    ],
)
def test_unsafe_names_are_refused_with_the_reason(name):
    with pytest.raises(spaces_hub.HubError, match="not a safe name"):
        check_name(name, "class name", "here")


# ---------------------------------------------------------------------------------------- bad input
def test_unknown_repo_and_missing_revision_are_one_line_errors(hub, spaces, tmp_path):
    with pytest.raises(spaces_hub.HubRepoNotFoundError, match="sxai-test/nope") as info:
        spaces_hub.pull("sxai-test/nope", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)
    spaces_hub.push(spaces, REPO)
    with pytest.raises(
        spaces_hub.HubRevisionNotFoundError, match=rf"{REPO}@v9.*no such revision"
    ) as info:
        spaces_hub.pull(REPO, revision="v9", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_a_repo_without_an_index_is_not_a_space_set(hub, tmp_path):
    HfApi(endpoint=hub.url).create_repo(REPO)
    commit_files(hub, {"config.json": b"{}"})
    with pytest.raises(
        spaces_hub.SpacesIndexError, match=rf"{REPO}@main: the repository has no spaces.json"
    ):
        spaces_hub.pull(REPO, cache_dir=tmp_path / "cache")


def test_no_network_is_a_clear_error_for_push_and_pull(spaces, tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(spaces_hub.HubUnreachableError, match=rf"{REPO}@main: cannot reach"):
        spaces_hub.pull(REPO, cache_dir=tmp_path / "cache")
    with pytest.raises(spaces_hub.HubUnreachableError, match=rf"{REPO}: cannot reach .* to push"):
        spaces_hub.push(spaces, REPO)


def test_a_partial_download_leaves_nothing_in_the_cache(hub, spaces, tmp_path):
    spaces_hub.push(spaces, REPO)
    hub.short_paths.add(SPACE_FILE)
    cache = tmp_path / "cache"
    with pytest.raises(spaces_hub.DownloadError, match=rf"{SPACE_FILE} did not complete"):
        spaces_hub.pull(REPO, cache_dir=cache)
    oid = hub.repos[REPO].commits[hub.resolve(REPO, "main")][SPACE_FILE]
    # huggingface_hub keeps its (empty) lock files; no blob, temporary file or snapshot entry may stay.
    blobs = [p.name for p in cache.rglob("blobs/*")]
    assert oid not in blobs and not [b for b in blobs if b.endswith(".incomplete")]
    assert not list(cache.rglob("*.incomplete")) and not list(cache.rglob("cat.eyes.safetensors"))
    hub.short_paths.clear()
    assert_same_probabilities(spaces, spaces_hub.pull(REPO, cache_dir=cache))


def test_spaces_of_another_backbone_are_refused_unless_forced(hub, spaces, tmp_path):
    spaces_hub.push(spaces, REPO)
    other = tiny_model(seed=1)
    with pytest.raises(SpaceError, match="weights"):
        spaces_hub.pull(REPO, cache_dir=tmp_path / "cache", model=other)
    assert served(hub, "cat.eyes.safetensors") == []  # refused before downloading any space
    assert len(spaces_hub.pull(REPO, cache_dir=tmp_path / "cache", model=other, force=True)) == 4
    with pytest.raises(SpaceError, match="trait channels"):
        spaces_hub.pull(
            REPO, cache_dir=tmp_path / "cache", model=tiny_model(trait_dim=8), force=True
        )


def test_push_needs_write_credentials_when_the_hub_asks(hub, spaces, tmp_path):
    hub.write_token = "hf_right"
    with pytest.raises(spaces_hub.HubAuthError, match=rf"{REPO}: .*refused the credentials"):
        spaces_hub.push(spaces, REPO, token="hf_wrong")
    spaces_hub.push(spaces, REPO, token="hf_right")
    assert len(spaces_hub.pull(REPO, cache_dir=tmp_path / "cache")) == 4


def test_push_refuses_sets_that_do_not_share_a_backbone(model):
    mixed = make_spaces(model)[:1] + make_spaces(tiny_model(seed=2))[1:2]
    with pytest.raises(spaces_hub.HubError, match="do not share one backbone"):
        spaces_hub.push(mixed, REPO)


# ---------------------------------------------------------------------------------------- resolve
def test_resolve_spaces_takes_local_files_folders_and_hub_sources(hub, spaces, model, tmp_path):
    spaces_hub.push(spaces[:2], REPO)
    folder = tmp_path / "local"
    spaces[2].save(folder / "a.safetensors")
    spaces[3].save(tmp_path / "b.safetensors")
    got = spaces_hub.resolve_spaces(
        [str(folder), tmp_path / "b.safetensors", f"hf://{REPO}@main"],
        model=model,
        cache_dir=tmp_path / "cache",
    )
    assert [s.key for s in got] == [
        spaces[2].key,
        spaces[3].key,
        *sorted(s.key for s in spaces[:2]),
    ]
    with pytest.raises(SpaceError):
        spaces_hub.resolve_spaces([str(folder)], model=tiny_model(seed=1))
    for bad in ("hf://datasets/a/b", "hf://a", f"hf://{REPO}/spaces.json"):
        with pytest.raises(spaces_hub.HubError, match="hf://owner/name"):
            spaces_hub.resolve_spaces([bad])


# ---------------------------------------------------------------------------------------- card, header
def test_card_lists_spaces_figures_plots_and_how_to_load(spaces, tmp_path):
    spaces[0].evaluation = {"accuracy": 0.91234, "auc": {"concept": 0.8}}
    card = render_card(spaces, REPO, ["plots/cat.eyes.png", "notes.txt"])
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "sxai" and "tiny0" in front["tags"]
    assert "| accuracy | auc.concept |" in card and "0.9123" in card
    assert f'spaces_hub.pull("{REPO}", model=model)' in card
    assert (
        "![plots/cat.eyes.png](plots/cat.eyes.png)" in card and "[`notes.txt`](notes.txt)" in card
    )
    assert "- masker: box" in card and "- seed: 0" in card


def test_card_names_the_base_model_where_known(spaces):
    def front(backbone: str) -> dict:
        card = render_card([dataclasses.replace(s, backbone=backbone) for s in spaces], REPO)
        return yaml.safe_load(card.split("---")[1])

    assert front("vgg19")["base_model"] == "timm/vgg19.tv_in1k"  # timm's hub weights for the name
    assert "base_model" not in front("tiny0")  # not a timm model
    assert "base_model" not in front("tf_efficientnet_lite0")  # sxai serves it with other weights


def test_extra_files_are_uploaded_listed_and_not_read_back(hub, spaces, tmp_path):
    plot = tmp_path / "cat.png"
    plot.write_bytes(b"\x89PNG not really")
    spaces_hub.push(spaces, REPO, extra_files={"plots/cat.png": plot})
    index = json.loads(stored(hub, "spaces.json"))
    assert [e["path"] for e in index["extra_files"]] == ["plots/cat.png"]
    assert "![plots/cat.png]" in stored(hub, "README.md").decode()
    spaces_hub.pull(REPO, cache_dir=tmp_path / "cache")
    assert served(hub, "cat.png") == []
    with pytest.raises(spaces_hub.HubError, match="written by push itself"):
        spaces_hub.push(spaces, REPO, extra_files={"spaces/x.safetensors": plot})


def test_header_check_accepts_real_space_files(spaces, tmp_path):
    path = spaces[0].save(tmp_path / "s.safetensors")
    header = check_safetensors_header(path, "s")
    assert set(header) == {"__metadata__", "indices", "delta"}


def test_index_parser_ignores_unsafe_paths_and_rejects_malformed_entries():
    good = {
        "path": SPACE_FILE,
        "sha256": "a" * 64,
        "size": 10,
        "class_name": "cat",
        "concept": "eyes",
    }
    base = {"format_version": 1, "backbone": "b", "fingerprint": "f", "trait_dim": C}
    index = parse_index(
        json.dumps(
            {
                **base,
                "files": [
                    good,
                    {**good, "path": "../../etc/x.safetensors"},
                    {**good, "path": "evil.pkl"},
                ],
            }
        ).encode(),
        "r",
    )
    assert [f.path for f in index.files] == [SPACE_FILE]
    assert index.ignored == ["../../etc/x.safetensors", "evil.pkl"]
    for broken in (
        {**base, "files": [{**good, "sha256": "xyz"}]},
        {**base, "files": []},
        [1, 2],
        {**base},
        {**base, "files": [{**good, "class_name": "dog"}]},
        {**base, "files": [{**good, "concept": 7}]},
    ):
        with pytest.raises(spaces_hub.SpacesIndexError):
            parse_index(
                json.dumps({**broken} if isinstance(broken, dict) else broken).encode(), "r"
            )


# ---------------------------------------------------------------------------------------- CLI
def test_cli_push_and_pull(hub, spaces, tmp_path, capsys):
    folder = tmp_path / "spaces"
    for space in spaces:
        space.save(folder / f"{space.key}.safetensors")
    assert main(["hub", "push", str(folder), "--repo", REPO, "--message", "first set"]) == 0
    assert REPO in capsys.readouterr().out
    out_dir = tmp_path / "pulled"
    assert (
        main(
            [
                "hub",
                "pull",
                f"hf://{REPO}",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--out",
                str(out_dir),
                "--json",
            ]
        )
        == 0
    )
    records = json.loads(capsys.readouterr().out)
    assert sorted(r["key"] for r in records) == sorted(s.key for s in spaces)
    assert_same_probabilities(
        spaces, [SemanticSpace.load(p) for p in sorted(out_dir.glob("*.safetensors"))]
    )
    assert main(["hub", "pull", "sxai-test/nope", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sxai: error:") and "sxai-test/nope" in err and "\n" not in err


def test_cli_warnings_are_one_line_without_python_source(hub, spaces, tmp_path):
    spaces_hub.push(spaces, REPO)
    commit_files(hub, {"notes.bin": b"not listed in the index"})
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sxai_plugins",
            "hub",
            "pull",
            REPO,
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sxai: warning:") and "notes.bin" in lines[0]
    assert ".py:" not in proc.stderr and "warn(" not in proc.stderr


def test_errors_are_sxai_errors():
    for cls in (
        spaces_hub.HubError,
        spaces_hub.IntegrityError,
        spaces_hub.SpacesIndexError,
        spaces_hub.HubUnreachableError,
        spaces_hub.DownloadError,
    ):
        assert issubclass(cls, SxaiError)


@pytest.mark.integration
def test_default_spaces_round_trip_give_identical_probabilities_on_the_examples(
    hub, tmp_path, default_model
) -> None:
    """The eight bundled spaces, pushed and pulled into an empty cache, score the bundled example
    images exactly as the local files do (one forward pass, then each set's probabilities)."""
    from sxai_plugins.data.examples import example_images
    from sxai_plugins.explain.trust import default_spaces_dir
    from sxai_plugins.models.inference import score_paths
    from sxai_plugins.spaces.space import load_spaces

    local = load_spaces([default_spaces_dir(default_model.name)])
    assert len(local) == 8
    spaces_hub.push(local, "sxai/lite0-catdog-spaces")
    cache = tmp_path / "empty-cache"
    pulled = spaces_hub.pull("sxai/lite0-catdog-spaces", cache_dir=cache, model=default_model)
    assert sorted(s.key for s in pulled) == sorted(s.key for s in local)
    layers = SpaceSet(local).layer_names  # what the bundled probes read besides the traits
    assert layers
    with default_model.pooling(layers):
        features = score_paths(default_model, example_images(), progress=False).features(layers)
    by_key = {s.key: s for s in pulled}
    want = SpaceSet(local).probabilities(features)
    have = SpaceSet([by_key[s.key] for s in local]).probabilities(features)
    assert all(by_key[s.key].layers == s.layers for s in local)
    assert torch.equal(want, have)
    assert want.shape == (6, 8)


@pytest.mark.parametrize(
    "reference, message",
    [
        (
            {"mu": float("nan"), "sigma": 1.0, "a_min": -1.0, "a_max": 1.0, "n": 10, "qq_r2": 0.9},
            "reference mu",
        ),
        (
            {"mu": 0.0, "sigma": 0.0, "a_min": -1.0, "a_max": 1.0, "n": 10, "qq_r2": 0.9},
            "sigma must be positive",
        ),
        (
            {"mu": 0.0, "sigma": -2.0, "a_min": -1.0, "a_max": 1.0, "n": 10, "qq_r2": 0.9},
            "sigma must be positive",
        ),
        (
            {"mu": "0", "sigma": 1.0, "a_min": -1.0, "a_max": 1.0, "n": 10, "qq_r2": 0.9},
            "must be a number",
        ),
        (
            {"mu": 0.0, "sigma": 1.0, "a_min": 1.0, "a_max": -1.0, "n": 10, "qq_r2": 0.9},
            "must be below a_max",
        ),
    ],
)
def test_pulled_spaces_with_bad_numbers_are_refused_and_nothing_is_written(
    hub, spaces, tmp_path, capsys, reference, message
):
    """A hostile repo writes its own hashes: only loading can catch NaN, σ ≤ 0 or strings where
    numbers belong (which made ``explain`` print NaN or 'I am sure … obviously' before)."""
    spaces_hub.push(spaces, REPO)
    data = forged(stored(hub, SPACE_FILE), reference=reference)
    commit_files(hub, {SPACE_FILE: data, "spaces.json": index_with(hub, SPACE_FILE, data)})
    out = tmp_path / "out"
    code = main(["hub", "pull", REPO, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and SPACE_FILE.split("/")[-1] in err
    assert not out.exists() or not any(out.iterdir())
