"""The Ray engine on a real local Ray instance: the same rows as the local engine, incremental
reruns, a killed actor losing or duplicating nothing, and the same common traits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("duckdb")

import pyarrow.parquet as pq  # noqa: E402

from sxai_plugins import load_space_set  # noqa: E402
from sxai_plugins.scale.ray_index import index_with_ray  # noqa: E402
from sxai_plugins.search.index import SearchIndex, index_folder  # noqa: E402
from sxai_plugins.search.parquet import FAILURES, IMAGES, ParquetIndex  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module: 2 CPUs, no dashboard, no network."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        object_store_memory=300 * 2**20,
    )
    yield ray
    ray.shutdown()


def _link(paths, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        (folder / path.name).symlink_to(path.resolve())


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory):
    from conftest import DATA

    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    images = sorted((DATA / "unlabeled").glob("*.jpg"))
    if len(images) < 220:
        pytest.skip("fewer than 220 shared unlabelled images")
    folder = tmp_path_factory.mktemp("scale") / "images"
    _link(images[:200], folder)
    (folder / "not-an-image.jpg").write_bytes(b"plain text, not a JPEG")
    (folder / "truncated.jpg").write_bytes(images[0].read_bytes()[:600])
    return folder, images[200:220]


def _rows(where: Path) -> dict[str, tuple]:
    """path -> (predicted, class probabilities, P_s, A_s) from an SQLite index or a dataset."""
    if where.is_dir():
        files = sorted(str(p) for p in (where / IMAGES).glob("*.parquet"))
        table = pq.read_table(files)
        rows = table.to_pylist()
    else:
        with SearchIndex(where) as index:
            cursor = index.db.execute("SELECT * FROM images")
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]

    def values(row: dict, prefix: str) -> np.ndarray:
        keys = [k for k in row if k[0] == prefix and k[1:].isdigit()]
        return np.array([row[k] for k in sorted(keys, key=lambda k: int(k[1:]))])

    return {
        r["path"]: (
            r["predicted"],
            values(r, "c"),
            values(r, "p"),
            values(r, "a"),
            r["mtime_ns"],
            r["size"],
        )
        for r in rows
    }


def _failures(where: Path) -> list[tuple[str, str]]:
    if where.is_dir():
        with ParquetIndex(where) as index:
            return index.failures()
    with SearchIndex(where) as index:
        return index.db.execute("SELECT path, error FROM failures ORDER BY path").fetchall()


def _paths_in(dataset: Path) -> Counter:
    found: Counter = Counter()
    for folder in (IMAGES, FAILURES):
        for file in (dataset / folder).glob("*.parquet"):
            found.update(pq.read_table(file, columns=["path"])["path"].to_pylist())
    return found


def _assert_same(sqlite: Path, dataset: Path, scheme: str = "") -> None:
    """The same rows and failures; ``scheme``: the dataset's paths are URIs (``file://``)."""
    local = {f"{scheme}{path}": row for path, row in _rows(sqlite).items()}
    remote = _rows(dataset)
    assert sorted(remote) == sorted(local)
    for path, (predicted, classes, probs, acts, mtime, size) in local.items():
        r = remote[path]
        assert r[0] == predicted, path
        np.testing.assert_allclose(r[1], classes, atol=1e-5, rtol=0)
        np.testing.assert_allclose(r[2], probs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(r[3], acts, atol=1e-4, rtol=1e-5)
        assert (r[4], r[5]) == (mtime, size)
    # errors name the file as the index does: by path, or by URI
    assert _failures(dataset) == [
        (f"{scheme}{p}", f"{scheme}{why}") for p, why in _failures(sqlite)
    ]


def test_ray_engine_matches_the_local_engine_then_reruns_only_new_files_through_a_killed_actor(
    local_ray, shared_folder, default_model, tmp_path
):
    folder, extra = shared_folder
    model = default_model
    spaces = load_space_set([], model)
    sqlite, dataset = tmp_path / "index.sqlite", tmp_path / "dataset"

    local = index_folder(model, spaces, folder, sqlite, batch_size=32, progress=False)
    remote = index_with_ray(model, spaces, folder, dataset, batch_size=32, progress=False)
    assert (remote.found, remote.scored, remote.unchanged) == (202, 200, 0)
    assert sorted(remote.failed) == sorted(local.failed) and len(remote.failed) == 2
    _assert_same(sqlite, dataset)
    assert ParquetIndex(dataset).meta == SearchIndex(sqlite).meta

    # 20 new images; the first scoring actor kills its own process on its second batch: Ray
    # restarts it and retries the lost work, and every image still lands exactly once
    _link(extra, folder)
    marker = tmp_path / "killed"
    rerun = index_with_ray(
        model, spaces, folder, dataset, batch_size=4, progress=False, fault_marker=str(marker)
    )
    assert marker.is_file(), "the drill did not kill an actor"
    assert int(marker.read_text()) > 0
    assert (rerun.found, rerun.scored, rerun.unchanged, rerun.failed) == (222, 20, 202, [])
    counts = _paths_in(dataset)
    assert set(counts.values()) == {1} and len(counts) == 222
    local_rerun = index_folder(model, spaces, folder, sqlite, batch_size=32, progress=False)
    assert local_rerun.scored == 20
    _assert_same(sqlite, dataset)

    # nothing new: nothing scored, Ray not even asked
    again = index_with_ray(model, spaces, folder, dataset, progress=False)
    assert (again.scored, again.unchanged) == (0, 222)


def test_changed_and_removed_files_leave_one_row_each_through_a_filesystem_uri(local_ray, tmp_path):
    from PIL import Image
    from test_search import tiny_model, tiny_spaces, write_images

    model = tiny_model()
    spaces = tiny_spaces(model)
    paths = write_images(tmp_path / "images", 12)
    (tmp_path / "images" / "broken.png").write_bytes(b"junk")
    uri = (tmp_path / "images").resolve().as_uri()  # file:///…: read through pyarrow.fs
    dataset = tmp_path / "dataset"
    first = index_with_ray(model, spaces, uri, dataset, batch_size=4, progress=False)
    assert (first.scored, len(first.failed)) == (12, 1)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(paths[3])  # changed
    paths[5].unlink()  # removed
    second = index_with_ray(model, spaces, uri, dataset, batch_size=4, progress=False)
    assert (second.scored, second.unchanged, second.removed) == (1, 11, 1)
    counts = _paths_in(dataset)
    assert set(counts.values()) == {1} and len(counts) == 12
    assert paths[5].resolve().as_uri() not in counts
    assert paths[3].resolve().as_uri() in counts
    sqlite = tmp_path / "index.sqlite"
    index_folder(model, spaces, tmp_path / "images", sqlite, batch_size=4, progress=False)
    _assert_same(sqlite, dataset, scheme="file://")


def _tiny_backbone(pretrained: bool = True, weights=None, class_names=None):
    from test_search import tiny_model

    return tiny_model()


def test_the_command_line_indexes_with_ray_and_searches_the_dataset(
    local_ray, tmp_path, capsys, backbone_plugin
):
    import json

    from test_search import tiny_model, tiny_spaces, write_images

    from sxai_plugins.cli.main import main

    images = tmp_path / "images"
    write_images(images, 6)
    (images / "broken.png").write_bytes(b"junk")
    for space in tiny_spaces(tiny_model()):
        space.save(tmp_path / "spaces" / f"{space.key}.safetensors")
    out = tmp_path / "dataset"
    common = [str(images), "--backbone", "tiny", "--spaces", str(tmp_path / "spaces")]
    with backbone_plugin("tiny", _tiny_backbone, "a tiny CNN for the Ray engine's tests"):
        assert main(["index", *common, "--engine", "ray", "--db", str(out)]) == 2
        assert "pass --out DATASET_DIR" in capsys.readouterr().err
        assert main(["index", *common, "--db", str(tmp_path / "x.db"), "--concurrency", "2"]) == 2
        assert "only apply with --engine ray" in capsys.readouterr().err
        assert main(["index", *common, "--engine", "ray", "--out", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert f"{out}: 7 images found, 6 scored, 0 unchanged, 1 unreadable, 0 removed" in captured.out
    assert "skipped:" in captured.err and "broken.png" in captured.err
    assert main(["search", "predicted = cat or predicted = dog", "--db", str(out), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["total"] == 6
    assert sorted(m["path"] for m in found["matches"]) == sorted(
        str(p.resolve()) for p in images.glob("img*.png")
    )


def test_traits_on_ray_give_the_local_traits_and_pca(local_ray, tmp_path):
    from conftest import make_tiny_model
    from test_search import write_images

    from sxai_plugins.scale.ray_traits import RayRunner
    from sxai_plugins.traits.common import common_traits, stability
    from sxai_plugins.traits.genetic import GAConfig

    model = make_tiny_model()
    paths = write_images(tmp_path / "cat", 10, seed=3)
    config = GAConfig(population=6, generations=3, n_segments=8, batch_size=16)
    runs = {
        name: common_traits(
            model, paths, "cat", n=8, seed=5, ga_config=config, progress=False, runner=runner
        )
        for name, runner in (("local", None), ("ray", RayRunner(block_size=3)))
    }
    local, remote = runs["local"], runs["ray"]
    assert remote.paths == local.paths and len(local.paths) == 8
    np.testing.assert_array_equal(remote.masks, local.masks)
    assert not local.masks.all()  # the search removed superpixels
    np.testing.assert_allclose(remote.fitness, local.fitness, rtol=1e-6)
    np.testing.assert_allclose(remote.traits.numpy(), local.traits.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        remote.pca.explained_variance_ratio_, local.pca.explained_variance_ratio_, atol=1e-9
    )
    np.testing.assert_allclose(np.abs(remote.pca.pc1), np.abs(local.pca.pc1), atol=1e-6)
    # the stability repeats' searches (offset by the images reused from the run above) go through
    # the same runner; its first actor kills itself on its first block, and Ray retries the block
    kwargs = dict(sizes=[3, 5], repeats=2, seed=5, ga_config=config, progress=False, known=local)
    a = stability(model, paths, "cat", **kwargs)
    marker = tmp_path / "killed"
    b = stability(
        model, paths, "cat", runner=RayRunner(block_size=2, fault_marker=str(marker)), **kwargs
    )
    assert marker.is_file()
    assert b.spreads == pytest.approx(a.spreads, abs=1e-9)
    for size in (3, 5):
        np.testing.assert_allclose(b.pc1[size], a.pc1[size], atol=1e-6)


def test_space_features_on_ray_equal_the_local_extraction(local_ray, shared_data, tmp_path):
    from conftest import make_tiny_model

    from sxai_plugins.data.concepts import load_coco
    from sxai_plugins.scale.ray_traits import RayExtractor
    from sxai_plugins.spaces.probe_data import (
        LabelledImage,
        Masking,
        extract_probe_features,
        labelled_from_annotations,
    )

    model = make_tiny_model(size=48)
    annotations = load_coco(shared_data / "concepts.coco.json", shared_data)
    labelled = labelled_from_annotations(annotations)
    images = [*labelled[:3], *labelled[-3:]]  # cats and dogs
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    images.insert(2, LabelledImage(tmp_path / "junk.jpg", "cat", {"eyes": True}))
    concepts, maskings = (
        ("eyes", "ears"),
        [Masking.parse("superpixel@15"), Masking.parse("blur@20")],
    )
    local = extract_probe_features(model, images, concepts, maskings, seed=3, progress=False)
    remote = RayExtractor(block_size=2)(model, images, concepts, maskings, seed=3, progress=False)
    assert remote.rows == local.rows and len(local.rows) > 3 * len(images)
    np.testing.assert_allclose(remote.traits.numpy(), local.traits.numpy(), atol=1e-5)
    assert remote.meta == local.meta and len(local.meta["failures"]) == 1
    assert [im.path for im in remote.images] == [im.path for im in images]


def test_the_space_command_on_ray_builds_the_local_spaces(
    local_ray, tmp_path, backbone_plugin, capsys, monkeypatch
):
    import torch
    from conftest import make_tiny_model
    from test_probes import _synthetic_dataset

    from sxai_plugins.cli.main import main
    from sxai_plugins.spaces.space import load_spaces

    coco = _synthetic_dataset(tmp_path / "data")
    config = tmp_path / "space.toml"
    config.write_text("[recipe_options]\ncs = [0.01, 0.1]\nfolds = 2\n")
    built = {}
    with backbone_plugin("tiny_ray_net", lambda **_: make_tiny_model(trait_dim=16), "tiny CNN"):
        for engine in ("local", "ray"):
            monkeypatch.setenv("SXAI_CACHE", str(tmp_path / f"cache-{engine}"))  # both extract
            out = tmp_path / f"spaces-{engine}"
            args = ["space", "--config", str(config), "--annotations", str(coco), "--out", str(out)]
            args += ["-b", "tiny_ray_net", "--class", "cat", "--class", "dog", "--folds", "3"]
            assert main([*args, "--no-plots", "--json", "--engine", engine]) == 0
            capsys.readouterr()
            built[engine] = {s.key: s for s in load_spaces([out])}
        tuned = [*args, "--recipe", "tuned", "--reference", str(tmp_path / "data"), "--no-plots"]
        assert main([*tuned, "--engine", "ray"]) == 2
        assert "probe recipe only" in capsys.readouterr().err
    assert sorted(built["ray"]) == sorted(built["local"]) == ["cat.eyes", "dog.eyes"]
    for key, space in built["local"].items():
        other = built["ray"][key]
        torch.testing.assert_close(other.probe.weight, space.probe.weight, atol=1e-5, rtol=1e-4)
        numbers = {k for k, v in space.evaluation.items() if isinstance(v, float)}
        assert {k: other.evaluation[k] for k in numbers} == pytest.approx(
            {k: space.evaluation[k] for k in numbers}, abs=1e-4
        )
        rest = {k: v for k, v in space.evaluation.items() if k not in numbers}
        assert {k: other.evaluation[k] for k in rest} == rest
