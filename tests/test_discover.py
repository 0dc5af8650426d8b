"""Concept discovery on synthetic images with two planted shapes: a cluster per shape, masks that
cover the shape, spaces built from a naming file, and clear errors for bad naming files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from PIL import Image

from sxai_plugins.discover.naming import concept_masks, read_naming, write_masks
from sxai_plugins.discover.run import (
    DiscoverConfig,
    DiscoveryError,
    choose_images,
    discover,
    excluded_paths,
    load_discovery,
    load_segments,
)

SIZE = 64
N_IMAGES = 24
# a fast setting for 64-pixel images: two SLIC scales, small k, no background filter (the tiny
# model's head is untrained, so its class evidence means nothing)
CONFIG = DiscoverConfig(
    n=N_IMAGES,
    scales=(12, 30),
    min_area=0.01,
    pool_size=SIZE,
    pca_dims=8,
    ks=(4, 6, 8),
    background_z=-1e9,
    rank_images=6,
    sheet_crops=8,
    sheet_contexts=4,
)


def _planted(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured grey image with a red disc and a blue square at random places, and their masks."""
    image = 0.45 + 0.08 * rng.standard_normal((SIZE, SIZE, 3))
    image = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    r = 9
    cy, cx = rng.integers(r + 2, SIZE // 2 - 2), rng.integers(r + 2, SIZE - r - 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    top, left = rng.integers(SIZE // 2 + 2, SIZE - 18), rng.integers(2, SIZE - 18)
    square = np.zeros((SIZE, SIZE), dtype=bool)
    square[top : top + 16, left : left + 16] = True
    image[disc] = (0.9, 0.1, 0.1)
    image[square] = (0.1, 0.2, 0.9)
    return np.clip(image, 0, 1), disc, square


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """An ImageFolder root with N_IMAGES planted images of class 'cat', and their true masks."""
    tmp_path = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    truth = {}
    for i in range(N_IMAGES):
        image, disc, square = _planted(rng)
        name = f"img{i:02d}.png"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / name)
        truth[name] = {"disc": disc, "square": square}
    return tmp_path / "data", truth


@pytest.fixture(scope="module")
def discovered(planted, tmp_path_factory) -> Path:
    """One discovery of the planted images (tests that name clusters copy it first)."""
    data, _truth = planted
    out = tmp_path_factory.mktemp("discovered") / "disc"
    torch.set_num_threads(1)
    discover(_tiny(), data, "cat", out, CONFIG, progress=False)
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "disc"))


def _tiny():
    return make_tiny_model(trait_dim=16, size=SIZE)


def _shape_clusters(result, folder, truth) -> dict[str, tuple[str, float, float]]:
    """For each shape, the cluster whose segments lie most inside it: (id, precision, share of
    images in which it finds the shape)."""
    labels, table, assignment = load_segments(folder)
    names = [Path(p).name for p in result.images]
    best = {}
    _shape_clusters.all = {}
    for shape in ("disc", "square"):
        for cid in result.clusters:
            rows = np.flatnonzero(assignment == int(cid[1:]))
            if not len(rows):
                continue
            inside = []
            for i in rows:
                mask = table.mask(labels, i)
                inside.append((mask & truth[names[table.image[i]]][shape]).sum() / mask.sum())
            precision = float(np.mean(np.asarray(inside) > 0.5))
            found = len(np.unique(table.image[rows][np.asarray(inside) > 0.5])) / len(names)
            if precision >= 0.9:
                _shape_clusters.all.setdefault(shape, []).append(cid)
            if shape not in best or precision > best[shape][1]:
                best[shape] = (cid, precision, found)
    return best


def test_discovery_finds_a_cluster_per_planted_shape(tmp_path, planted, one_thread) -> None:
    data, truth = planted
    out = tmp_path / "disc"
    result = discover(_tiny(), data, "cat", out, CONFIG, progress=False)
    best = _shape_clusters(result, out, truth)
    # each shape has its own cluster, nearly all of whose segments lie on the shape, and which
    # finds the shape in most images
    assert best["disc"][0] != best["square"][0]
    for shape, (_cid, precision, found) in best.items():
        assert precision >= 0.9, (shape, best)
        assert found >= 0.7, (shape, best)
    # the outputs a person names clusters from
    assert (out / "index.html").read_text().count("<h3 id=") == len(result.clusters)
    for cid in result.clusters:
        assert Image.open(out / "clusters" / f"{cid}.png").size[0] > 0
    written = json.loads((out / "discovery.json").read_text())
    assert written["k"] == result.k and set(written["clusters"]) == set(result.clusters)
    assert "[names]" in (out / "concepts.toml").read_text()
    # the same seed gives the same discovery
    discover(_tiny(), data, "cat", tmp_path / "again", CONFIG, progress=False)
    assert np.array_equal(load_segments(out)[2], load_segments(tmp_path / "again")[2])


def _name(folder: Path, names: dict[str, str]) -> None:
    lines = ["[names]"] + [f'{k} = "{v}"' for k, v in names.items()]
    (folder / "concepts.toml").write_text("\n".join(lines) + "\n")


def test_masks_of_a_named_cluster_cover_the_planted_shape(
    tmp_path, planted, discovered, one_thread
) -> None:
    from pycocotools import mask as coco_mask

    from sxai_plugins.data.concepts import load_coco
    from sxai_plugins.discover.run import load_discovery

    _data, truth = planted
    out = _copy(discovered, tmp_path)
    result = load_discovery(out)
    best = _shape_clusters(result, out, truth)
    _name(out, {best["disc"][0]: "disc", best["square"][0]: "square"})
    naming = read_naming(out)
    names = [Path(p).name for p in result.images]
    # every segment of the cluster (core 1), and the default: the half nearest its centre
    for core, share in ((1.0, 0.7), (0.5, 0.4)):
        masks = concept_masks(naming, core=core)
        for shape in ("disc", "square"):
            ious = []
            for i, name in enumerate(names):
                mask = masks.get(i, {}).get(shape)
                if mask is None:
                    continue
                gt = truth[name][shape]
                ious.append((mask & gt).sum() / (mask | gt).sum())
            assert len(ious) >= share * N_IMAGES, (shape, core)
            assert np.mean(ious) >= 0.5, (shape, core, np.mean(ious))
    # the COCO file holds the same masks as RLE (pycocotools), and sxai's COCO reader reads it
    path, root = write_masks([naming], tmp_path / "masks.coco.json")
    doc = json.loads(path.read_text())
    ann = next(a for a in doc["annotations"] if "segmentation" in a)
    image = next(im for im in doc["images"] if im["id"] == ann["image_id"])
    rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
    decoded = coco_mask.decode(rle).astype(bool)
    index = names.index(Path(image["file_name"]).name)
    concept = next(c["name"] for c in doc["categories"] if c["id"] == ann["category_id"])
    assert np.array_equal(decoded, masks[index][concept])
    annotations = load_coco(path, root)
    assert set(annotations.concepts) == {"disc", "square"}
    assert len(annotations.images_with("disc", "cat")) == sum("disc" in m for m in masks.values())


def test_two_discoveries_of_the_same_images_give_one_item_per_image(
    tmp_path, planted, discovered, one_thread
) -> None:
    import shutil

    from sxai_plugins.discover.run import load_discovery
    from sxai_plugins.discover.spaces import discovered_annotations, discovered_labelled

    _data, truth = planted
    first = _copy(discovered, tmp_path)
    second = Path(shutil.copytree(discovered, tmp_path / "second"))
    best = _shape_clusters(load_discovery(first), first, truth)
    # one discovery names the disc, the other the square and the disc again
    _name(first, {best["disc"][0]: "disc"})
    _name(second, {best["square"][0]: "square", best["disc"][0]: "disc"})
    alone = {
        shape: discovered_annotations([read_naming(folder)], core=1.0)
        for shape, folder in (("disc", first), ("square", second))
    }
    both = discovered_annotations([read_naming(first), read_naming(second)], core=1.0)
    paths = [a.image_path.resolve() for a in both]
    assert len(paths) == len(set(paths)) == len({a.image_path.resolve() for a in alone["square"]})
    assert set(both.concepts) == {"disc", "square"}
    labelled = {item.path.resolve(): item for item in discovered_labelled(both)}
    assert len(labelled) == len(paths)
    squares = {a.image_path.resolve() for a in alone["square"] if a.has("square")}
    discs = {a.image_path.resolve() for a in alone["disc"] if a.has("disc")}
    for path, item in labelled.items():
        # each image carries what either discovery found in it, and nothing it did not
        assert item.visible.get("square", False) == (path in squares)
        assert item.visible.get("disc", False) == (path in discs)
    # a concept both discoveries name keeps the union of their masks (here the same masks)
    a = next(a for a in both if a.has("disc"))
    single = next(s for s in alone["disc"] if s.image_path.resolve() == a.image_path.resolve())
    merged_mask, single_mask = a.geometry("disc").area_mask(), single.geometry("disc").area_mask()
    assert np.array_equal(merged_mask, single_mask) and len(a.geometry("disc").masks) == 2


def test_an_image_given_two_classes_by_two_discoveries_is_refused(
    tmp_path, planted, discovered
) -> None:
    import shutil

    from sxai_plugins.discover.spaces import discovered_annotations

    first = _copy(discovered, tmp_path)
    second = Path(shutil.copytree(discovered, tmp_path / "second"))
    meta = json.loads((second / "discovery.json").read_text())
    (second / "discovery.json").write_text(json.dumps({**meta, "class": "dog"}))
    cluster = next(iter(meta["clusters"]))
    _name(first, {cluster: "disc"})
    _name(second, {cluster: "disc"})
    with pytest.raises(DiscoveryError, match="discovered as 'cat' in one discovery and as 'dog'"):
        discovered_annotations([read_naming(first), read_naming(second)])


@pytest.fixture
def tiny_backbone(backbone_plugin):
    with backbone_plugin("tiny_discover_net", lambda **_: _tiny(), "tiny CNN") as name:
        yield name


def test_space_discovered_builds_valid_spaces(
    tmp_path, planted, tiny_backbone, capsys, monkeypatch, one_thread
) -> None:
    from sxai_plugins.cli.main import main
    from sxai_plugins.spaces.space import load_spaces

    monkeypatch.setenv("SXAI_CACHE", str(tmp_path / "cache"))
    data, truth = planted
    disc = tmp_path / "disc"
    args = ["discover", "--data", str(data), "--class", "cat", "--out", str(disc), "-b"]
    args += [tiny_backbone, "--n", str(N_IMAGES), "--scales", "12,30", "--k", "4,6,8", "--quiet"]
    assert main([*args, "--pool-size", str(SIZE)]) == 0
    assert "concepts.toml" in capsys.readouterr().out
    written = json.loads((disc / "discovery.json").read_text())
    assert written["config"]["pool_size"] == SIZE
    result_clusters = written["clusters"]
    from sxai_plugins.discover.run import load_discovery

    _shape_clusters(load_discovery(disc), disc, truth)
    # every cluster on the disc (one per SLIC scale) is named after it
    on_disc = _shape_clusters.all["disc"]
    _name(disc, dict.fromkeys(on_disc, "disc"))
    out = tmp_path / "spaces"
    assert (
        main(
            [
                "space",
                "--discovered",
                str(disc),
                "--out",
                str(out),
                "-b",
                tiny_backbone,
                "--folds",
                "2",
                "--mask-core",
                "1",
                "--no-plots",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    spaces = load_spaces([out])
    assert [s.key for s in spaces] == ["cat.disc"]
    space = spaces[0]
    assert space.format_version == 2 and space.probe is not None
    assert space.recipe["discovered"]["clusters"] == on_disc
    assert space.recipe["discovered"]["discoveries"] == {"disc": on_disc}
    assert space.recipe["discovered"]["images"] == N_IMAGES
    assert report["spaces"]["cat.disc"]["n_positive"] >= 8
    assert (disc / "masks.coco.json").is_file()
    assert set(result_clusters) >= set(on_disc)
    # the probe reads the disc: P_s of an image falls when its disc is painted over
    model = _tiny()
    rng = np.random.default_rng(5)
    image, disc_mask, _square = _planted(rng)
    hidden = image.copy()
    hidden[disc_mask] = image[~disc_mask].mean(axis=0)
    x = torch.from_numpy(np.stack([image, hidden]).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        p = space.probability(model(x).traits)
    assert p[0] > p[1]
    # a config brings the recipe (the bundled spaces' kind: pooled layers, control weight) ...
    config = tmp_path / "recipe.toml"
    config.write_text('folds = 2\n[recipe_options]\nlayers = ["1"]\ncontrol_weight = 1.0\n')
    argv = ["space", "--discovered", str(disc), "--config", str(config), "-b", tiny_backbone]
    argv += ["--out", str(tmp_path / "layered"), "--mask-core", "1", "--no-plots", "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    (layered,) = load_spaces([tmp_path / "layered"])
    assert [name for name, _width in layered.layers] == ["1"]
    assert layered.recipe["control_weight"] == 1.0
    # ... but not annotated images, which the named clusters replace
    config.write_text('annotations = "coco.json"\n[recipe_options]\nlayers = ["1"]\n')
    argv[argv.index("--out") + 1] = str(tmp_path / "refused")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{config}: annotations name annotated images, which --discovered replaces" in err
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[names\nc0 = 'x'", "not valid TOML"),
        ('c0 = "eyes"\n', "unknown key(s) ['c0'] at the top level"),
        ('[names]\nc999 = "eyes"\n', "'c999' is not a cluster of this discovery"),
        ("[names]\nc0 = 3\n", "a name must be a quoted string"),
        ('[names]\nc0 = "left eye"\n', "a concept name is one word"),
        ('[names]\nc0 = "cat.eyes"\n', "a concept name is one word"),
        ('[names]\nc0 = ""\n', "no cluster is named"),
        ("title = 'x'\n", "unknown key(s) ['title']"),
        ("", "no [names] table"),
    ],
)
def test_bad_naming_files_are_clear_errors(tmp_path, discovered, text, message) -> None:
    out = _copy(discovered, tmp_path)
    (out / "concepts.toml").write_text(text)
    with pytest.raises(DiscoveryError) as caught:
        read_naming(out)
    assert message in str(caught.value)
    assert str(out / "concepts.toml") in str(caught.value)


def test_missing_discovery_and_naming_files_are_clear_errors(tmp_path, discovered) -> None:
    with pytest.raises(DiscoveryError, match="not a discovery folder"):
        read_naming(tmp_path)
    out = _copy(discovered, tmp_path)
    (out / "concepts.toml").unlink()
    with pytest.raises(DiscoveryError, match="no naming file"):
        read_naming(out)


def test_exclude_files_name_the_images_a_discovery_leaves_out(
    tmp_path, planted, discovered
) -> None:
    data, truth = planted
    folder = data / "cat"
    names = sorted(truth)
    coco = tmp_path / "held-out.coco.json"  # file names relative to the file's folder
    coco.write_text(
        json.dumps(
            {"images": [{"id": 1, "file_name": os.path.relpath(folder / names[0], tmp_path)}]}
        )
    )
    labels = tmp_path / "visibility.json"
    labels.write_text(json.dumps({str(folder / names[1]): {"visible": {"eyes": True}}}))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{os.path.relpath(folder / names[2], tmp_path)}\n\n")
    excluded = excluded_paths([coco, labels, listing])
    assert excluded == {(folder / n).resolve() for n in names[:3]}
    chosen = choose_images(sorted(folder.glob("*.png")), 100, 0, excluded)
    assert len(chosen) == N_IMAGES - 3 and not {p.resolve() for p in chosen} & excluded

    # an earlier discovery, by its folder or its discovery.json: exactly the images it drew
    drawn = {(folder / n).resolve() for n in load_discovery(discovered).images}
    assert len(drawn) == N_IMAGES
    assert excluded_paths([discovered]) == excluded_paths([discovered / "discovery.json"]) == drawn
    with pytest.raises(DiscoveryError, match="every image of the class is excluded"):
        discover(_tiny(), data, "cat", tmp_path / "d", CONFIG, exclude=[discovered], progress=False)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("list.json", "[1, 2]", "expected a COCO file"),
        ("strings.coco.json", '{"images": ["a.jpg"]}', "not COCO image objects"),
    ],
)
def test_bad_exclude_files_are_clear_errors(tmp_path, name, text, message) -> None:
    bad = tmp_path / name
    bad.write_text(text)
    with pytest.raises(DiscoveryError, match=message) as caught:
        excluded_paths([bad])
    assert str(bad) in str(caught.value)


def test_exclude_of_a_missing_file_or_a_folder_that_is_no_discovery_is_refused(tmp_path) -> None:
    with pytest.raises(DiscoveryError, match="cannot read it"):
        excluded_paths([tmp_path / "missing.txt"])
    with pytest.raises(DiscoveryError, match="not a discovery folder"):
        excluded_paths([tmp_path])


def test_a_class_the_model_does_not_know_is_refused(tmp_path, planted) -> None:
    data, _truth = planted
    with pytest.raises(DiscoveryError, match="not one of the model's classes"):
        discover(_tiny(), data, "bird", tmp_path / "d", CONFIG, progress=False)


def test_crop_embedding_also_finds_a_cluster_per_planted_shape(
    tmp_path, planted, one_thread
) -> None:
    from dataclasses import replace

    data, truth = planted
    out = tmp_path / "disc"
    config = replace(CONFIG, embedding="crop", crop_size=SIZE, center=False)
    result = discover(_tiny(), data, "cat", out, config, progress=False)
    best = _shape_clusters(result, out, truth)
    assert best["disc"][0] != best["square"][0]
    for shape, (_cid, precision, found) in best.items():
        assert precision >= 0.9, (shape, best)
        assert found >= 0.7, (shape, best)


def test_space_discovered_reports_a_bad_naming_file_in_one_line(
    tmp_path, discovered, tiny_backbone, capsys
) -> None:
    from sxai_plugins.cli.main import main

    out = _copy(discovered, tmp_path)
    (out / "concepts.toml").write_text('[names]\nc0 = "two words"\n')
    argv = ["space", "--discovered", str(out), "--out", str(tmp_path / "s"), "-b", tiny_backbone]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sxai: error: {out / 'concepts.toml'}: [names] c0 = 'two words'")
    assert err.count("\n") == 1 and not (tmp_path / "s").exists()


def _cropped_truth(result, truth) -> dict[str, dict[str, np.ndarray]]:
    """The planted masks as a zoomed discovery sees them: each image's box, resized to SIZE."""
    from sxai_plugins.discover.run import box_pixels

    out = {}
    for path, box in zip(result.images, result.boxes, strict=True):
        name = Path(path).name
        left, top, right, bottom = box_pixels(box, SIZE, SIZE)
        out[name] = {}
        for shape, mask in truth[name].items():
            region = Image.fromarray(mask[top:bottom, left:right].astype(np.uint8) * 255)
            out[name][shape] = np.asarray(region.resize((SIZE, SIZE), Image.NEAREST)) >= 128
    return out


def test_a_zoomed_discovery_looks_inside_clusters_and_puts_its_masks_back(
    tmp_path, planted, discovered, one_thread
) -> None:
    from sxai_plugins.discover.run import box_pixels, load_discovery
    from sxai_plugins.discover.zoom import zoom_into

    _data, truth = planted
    parent = load_discovery(discovered)
    _shape_clusters(parent, discovered, truth)
    on_disc = _shape_clusters.all["disc"]  # one per SLIC scale
    zoom = zoom_into(discovered, on_disc, margin=0.5, core=1.0)
    # a box per image in which the cluster occurs, square in pixels, holding most of the disc
    assert len(zoom.boxes) >= 0.7 * N_IMAGES
    for path, box in zoom.boxes.items():
        left, top, right, bottom = box_pixels(box, SIZE, SIZE)
        assert abs((right - left) - (bottom - top)) <= 1
        disc = truth[path.name]["disc"]
        assert disc[top:bottom, left:right].sum() >= 0.9 * disc.sum()
        assert (right - left) < SIZE  # a zoom, not the whole image
    # around one segment (the most typical) the square is never larger than around them all
    tight = zoom_into(discovered, on_disc, margin=0.5, core=1.0, around="typical")
    assert set(tight.boxes) == set(zoom.boxes)
    for path, box in tight.boxes.items():
        assert box[2] - box[0] <= zoom.boxes[path][2] - zoom.boxes[path][0] + 1e-9
    with pytest.raises(DiscoveryError, match="zoom around 'middle'"):
        zoom_into(discovered, on_disc, around="middle")
    out = tmp_path / "zoomed"
    result = discover(_tiny(), None, "cat", out, CONFIG, progress=False, zoom=zoom)
    assert sorted(result.images) == sorted(
        p.resolve().relative_to(result.image_root).as_posix() for p in zoom.boxes
    )
    again = load_discovery(out)
    assert again.boxes == result.boxes and again.config["zoom"]["clusters"] == on_disc
    # the disc has a cluster of its own among the crops (most of its segments on the disc: in a
    # crop the disc is large, and some of the segments it is cut into straddle its rim) ...
    cid, precision, found = _shape_clusters(result, out, _cropped_truth(result, truth))["disc"]
    assert precision >= 0.75 and found >= 0.9, (cid, precision, found)
    # ... and its masks, put back into the whole images, cover the planted disc there
    _name(out, {cid: "disc"})
    path, _root = write_masks([read_naming(out)], tmp_path / "masks.coco.json", core=1.0)
    doc = json.loads(path.read_text())
    from pycocotools import mask as coco_mask

    ious = []
    for ann in (a for a in doc["annotations"] if "segmentation" in a):
        image = next(im for im in doc["images"] if im["id"] == ann["image_id"])
        rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
        mask = coco_mask.decode(rle).astype(bool)
        assert mask.shape == (SIZE, SIZE)
        gt = truth[Path(image["file_name"]).name]["disc"]
        ious.append((mask & gt).sum() / (mask | gt).sum())
    assert len(ious) >= 0.7 * len(result.images)
    assert np.mean(ious) >= 0.5, np.mean(ious)


def test_square_box_is_square_in_pixels_widened_and_inside_the_image() -> None:
    from sxai_plugins.discover.run import box_pixels
    from sxai_plugins.discover.zoom import square_box

    mask = np.zeros((100, 100), dtype=bool)
    mask[40:50, 20:40] = True  # 20 wide, 10 high, drawn over a 200 x 400 (h x w) image
    box = square_box(mask, height=200, width=400, margin=0.5, min_side=0.1)
    left, top, right, bottom = box_pixels(box, 400, 200)
    # the mask spans x 80..160 and y 80..100 in image pixels: side 80 * 2 = 160, same centre
    assert (left, top, right, bottom) == (40, 10, 200, 170)
    # near an edge the square shifts inside the image rather than shrinking
    mask[:] = False
    mask[0:5, 95:100] = True
    left, top, right, bottom = box_pixels(square_box(mask, 200, 400, 1.0, 0.1), 400, 200)
    assert (right, top) == (400, 0) and right - left == bottom - top == 60
    # a tiny part gets at least min_side of the shorter side
    mask[:] = False
    mask[50, 50] = True
    left, top, right, bottom = box_pixels(square_box(mask, 200, 400, 0.0, 0.25), 400, 200)
    assert right - left == bottom - top == 50
    assert square_box(np.zeros((4, 4), dtype=bool), 10, 10, 0.2, 0.1) is None


@pytest.mark.parametrize(
    ("zoom", "message"),
    [
        ("{disc}", "write a discovery folder and the clusters"),
        ("{disc}:", "write a discovery folder and the clusters"),
        ("{disc}:c999", "c999 is not a cluster of that discovery"),
        ("{tmp}:c0", "not a discovery folder"),
    ],
)
def test_bad_zoom_arguments_are_clear_errors(
    tmp_path, discovered, tiny_backbone, capsys, zoom, message
) -> None:
    from sxai_plugins.cli.main import main

    argv = ["discover", "--zoom", zoom.format(disc=discovered, tmp=tmp_path)]
    argv += ["--out", str(tmp_path / "z"), "-b", tiny_backbone]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "z").exists()


def test_discover_needs_data_and_class_or_a_zoom(tmp_path, planted, tiny_backbone, capsys) -> None:
    from sxai_plugins.cli.main import main

    data, _truth = planted
    base = ["discover", "--out", str(tmp_path / "z"), "-b", tiny_backbone]
    assert main([*base, "--data", str(data)]) == 2
    assert "give --data DIR and --class NAME" in capsys.readouterr().err
    assert main([*base, "--data", str(data), "--zoom", "x:c0"]) == 2
    assert "leave out --data" in capsys.readouterr().err
