"""Concept annotations (COCO keypoints / polygons / RLE / boxes, mask folders) and concept regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sxai_plugins.data.concepts import (
    AnnotationWarning,
    ConceptAnnotationError,
    ConceptGeometry,
    concept_region,
    decode_rle,
    load_coco,
    load_mask_folder,
    superpixels,
)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dogs-vs-cats"
KEYPOINTS = ["eye_1", "eye_2", "nose"]
W, H = 40, 30


def _image(path: Path, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _coco(tmp_path: Path, images: list[dict], annotations: list[dict], **extra) -> Path:
    for entry in images:
        if not entry.pop("missing", False):
            _image(tmp_path / entry["file_name"], (entry["width"], entry["height"]))
    categories = extra.pop(
        "categories",
        [
            {"id": 1, "name": "cat", "keypoints": KEYPOINTS},
            {"id": 2, "name": "dog", "keypoints": KEYPOINTS},
        ],
    )
    path = tmp_path / "ann.json"
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": categories, **extra}
        )
    )
    return path


def _img(i: int, **kw) -> dict:
    return {"id": i, "file_name": f"img{i}.png", "width": W, "height": H, **kw}


def _kp(ann_id: int, image_id: int, cat: int, eyes: int, nose: int = 0, **kw) -> dict:
    eye_values = [10, 10, 2, 20, 10, 2] if eyes == 2 else [10, 10, eyes, 20, 10, eyes]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "keypoints": eye_values + [15, 20, nose],
        **kw,
    }


def test_keypoints_positives_negatives_and_unannotated(tmp_path):
    path = _coco(
        tmp_path,
        [_img(1), _img(2), _img(3), _img(4), _img(5)],
        [
            _kp(1, 1, 1, eyes=2, nose=2),
            _kp(2, 2, 1, eyes=0),
            _kp(3, 3, 2, eyes=2),
            _kp(4, 5, 1, eyes=1),
        ],  # v=1: labelled but not visible, as COCO defines it
        concepts={"eyes": ["eye_1", "eye_2"], "nose": ["nose"]},
    )
    s = load_coco(path, tmp_path)
    assert s.concepts == ("eyes", "nose")
    assert s.problems == []
    assert [a.image_id for a in s.images_with("eyes", "cat")] == [1]
    assert [a.image_id for a in s.images_without("eyes", "cat")] == [2, 5]
    assert [a.image_id for a in s.images_with("eyes", "dog")] == [3]
    assert [a.image_id for a in s.images_without("nose")] == [2, 3, 5]
    assert s.unannotated == [tmp_path / "img4.png"]  # no animal: neither positive nor negative
    assert s.counts() == {
        "cat": {"eyes": (1, 2), "nose": (1, 2)},
        "dog": {"eyes": (1, 0), "nose": (0, 1)},
    }
    eyes = s.images_with("eyes")[0].geometry("eyes")
    np.testing.assert_array_equal(eyes.points, [[10, 10], [20, 10]])
    assert eyes.size == (H, W)
    with pytest.raises(ConceptAnnotationError, match="unknown concept 'tail'"):
        s.images_with("tail")
    with pytest.raises(ConceptAnnotationError, match="class 'horse'"):
        s.images_without("eyes", "horse")


def test_caller_concept_map_overrides_and_default_is_one_concept_per_keypoint(tmp_path):
    path = _coco(tmp_path, [_img(1)], [_kp(1, 1, 1, eyes=2)], concepts={"eyes": ["eye_1", "eye_2"]})
    s = load_coco(path, tmp_path, concept_map={"left_eye": ["eye_1"], "face": ["eye_2", "nose"]})
    assert s.concepts == ("left_eye", "face")
    a = s.annotations[0]
    np.testing.assert_array_equal(a.geometry("left_eye").points, [[10, 10]])
    np.testing.assert_array_equal(a.geometry("face").points, [[20, 10]])

    path = _coco(tmp_path, [_img(1)], [_kp(1, 1, 1, eyes=2)])
    assert load_coco(path, tmp_path).concepts == ("eye_1", "eye_2", "nose")


def test_polygon_rle_and_box_concept_annotations(tmp_path):
    categories = [
        {"id": 1, "name": "cat"},
        {"id": 2, "name": "dog"},
        {"id": 10, "name": "eyes", "supercategory": "concept"},
    ]
    rle = {"size": [H, W], "counts": [H * 5, H * 2, H * (W - 7)]}  # columns 5 and 6
    path = _coco(
        tmp_path,
        [_img(1), _img(2), _img(3), _img(4)],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, W, H]},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 10,
                "segmentation": [[10, 5, 20, 5, 20, 15, 10, 15]],
            },
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, W, H]},
            {"id": 4, "image_id": 2, "category_id": 10, "segmentation": rle},
            # a non-standard `concept` key on a class annotation: the box is the nose
            {"id": 5, "image_id": 3, "category_id": 1, "concept": "nose", "bbox": [2, 3, 4, 5]},
            {"id": 6, "image_id": 4, "category_id": 2, "bbox": [0, 0, W, H]},
        ],
        categories=categories,
    )
    s = load_coco(path, tmp_path, concept_map={"eyes": [], "nose": []})
    assert s.problems == []
    assert [a.image_id for a in s.images_with("eyes")] == [1, 2]
    assert [a.image_id for a in s.images_without("eyes")] == [3, 4]
    assert [a.image_id for a in s.images_with("nose", "cat")] == [3]

    square = np.zeros((H, W), bool)
    square[5:15, 10:20] = True
    np.testing.assert_array_equal(s.annotations[0].geometry("eyes").area_mask(), square)
    columns = np.zeros((H, W), bool)
    columns[:, 5:7] = True
    np.testing.assert_array_equal(s.annotations[1].geometry("eyes").area_mask(), columns)
    box = np.zeros((H, W), bool)
    box[3:8, 2:6] = True
    np.testing.assert_array_equal(s.annotations[2].geometry("nose").area_mask(), box)


def test_decode_compressed_rle_hand_encoded():
    # counts [0, 40, 10, 30] in pycocotools' string form: "0", "X1" (40 = 8 + 1·32),
    # ":" (10), "F" (30 stored as 30 - 40 = -10, sign bit set)
    mask = decode_rle({"size": [8, 10], "counts": "0X1:F"})
    expected = np.zeros(80, bool)
    expected[:40] = True
    expected[50:] = True
    np.testing.assert_array_equal(mask, expected.reshape((8, 10), order="F"))
    with pytest.raises(ValueError, match="sum to"):
        decode_rle({"size": [8, 9], "counts": [0, 40, 10, 30]})


def test_bad_entries_are_reported_with_ids_and_skipped(tmp_path):
    images = [_img(1), _img(2), _img(3), _img(4, missing=True), _img(5), _img(6)]
    annotations = [
        _kp(1, 1, 1, eyes=2),
        {
            "id": 2,
            "image_id": 2,
            "category_id": 1,
            "keypoints": [10, 10, 2, W + 5, 10, 2, 0, 0, 0],
        },  # eye_2 outside the 40×30 image
        {
            "id": 3,
            "image_id": 3,
            "category_id": 1,
            "keypoints": {"eye_1": [10, 10, 2], "whisker": [1, 1, 2]},
        },  # unknown keypoint name
        _kp(4, 4, 1, eyes=2),  # its image file is missing
        _kp(5, 99, 1, eyes=2),  # unknown image id
        _kp(6, 5, 7, eyes=2),  # unknown category
        _kp(7, 6, 2, eyes=0),  # fine: a dog negative
        {
            "id": 8,
            "image_id": 6,
            "category_id": 2,
            "concept": "eyes",
            "segmentation": {"size": [H + 1, W], "counts": [H * W + W]},
        },  # RLE of the wrong size
    ]
    path = _coco(tmp_path, images, annotations, concepts={"eyes": ["eye_1", "eye_2"]})
    with pytest.warns(AnnotationWarning) as caught:
        s = load_coco(path, tmp_path)
    problems = {(p.image_id, p.annotation_id): p.message for p in s.problems}
    assert "outside" in problems[(2, 2)]
    assert "whisker" in problems[(3, 3)]
    assert "missing" in problems[(4, None)]
    assert "not in 'images'" in problems[(99, 5)]
    assert "category id 7" in problems[(5, 6)]
    assert "RLE size" in problems[(6, 8)]
    assert len(s.problems) == 6 and len(caught) == 6
    assert all(str(path) in str(w.message) for w in caught)
    assert any(str(p).startswith(f"{path}: image 2, annotation 2: ") for p in s.problems)
    # image 6 lost its eye annotation, so it cannot count as "eyes not visible"
    assert [a.image_id for a in s] == [1, 6]
    assert s.images_without("eyes", "dog") == []
    assert [a.image_id for a in s.images_with("eyes", "cat")] == [1]


def test_concept_map_naming_an_unknown_keypoint_is_reported(tmp_path):
    path = _coco(tmp_path, [_img(1)], [_kp(1, 1, 1, eyes=2)], concepts={"eyes": ["eye_1", "eye_3"]})
    with pytest.warns(AnnotationWarning, match="eye_3"):
        s = load_coco(path, tmp_path)
    assert len(s.problems) == 1
    np.testing.assert_array_equal(s.annotations[0].geometry("eyes").points, [[10, 10]])


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(ConceptAnnotationError, match="no such annotation file"):
        load_coco(tmp_path / "nope.json", tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ConceptAnnotationError, match="not a JSON file"):
        load_coco(tmp_path / "x.json", tmp_path)
    (tmp_path / "y.json").write_text("[]")
    with pytest.raises(ConceptAnnotationError, match="not a COCO file"):
        load_coco(tmp_path / "y.json", tmp_path)


def test_geometry_scaling_to_the_model_input():
    mask = np.zeros((30, 40), bool)
    mask[:, :20] = True
    g = ConceptGeometry(
        (30, 40),
        np.array([[10.0, 15.0]]),
        [np.array([[0.0, 0.0], [40.0, 0.0], [40.0, 30.0]])],
        [mask],
        [(4, 3, 8, 6)],
    )
    s = g.scaled((60, 20))  # (H, W): twice as tall, half as wide
    assert s.size == (60, 20)
    np.testing.assert_allclose(s.points, [[5.0, 30.0]])
    np.testing.assert_allclose(s.polygons[0], [[0, 0], [20, 0], [20, 60]])
    assert s.boxes == [(2.0, 6.0, 4.0, 12.0)]
    assert s.masks[0].shape == (60, 20)
    assert s.masks[0][:, :10].all() and not s.masks[0][:, 10:].any()


def _quadrants() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((48, 64, 3), np.float32)
    segments = np.zeros((48, 64), np.int64)
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)]
    for k, (r, c) in enumerate([(0, 0), (0, 32), (24, 0), (24, 32)]):
        image[r : r + 24, c : c + 32] = colours[k]
        segments[r : r + 24, c : c + 32] = k
    return image, segments


def test_region_superpixels_containing_points_or_mostly_covered():
    image, segments = _quadrants()
    g = ConceptGeometry((48, 64), np.array([[5.0, 5.0]]))
    np.testing.assert_array_equal(concept_region(image, g, segments=segments), segments == 0)

    mostly = np.zeros((48, 64), bool)
    mostly[24:48, 32:60] = True  # 28/32 of quadrant 3, plus nothing else
    g = ConceptGeometry((48, 64), np.array([[40.0, 5.0]]), masks=[mostly])
    np.testing.assert_array_equal(
        concept_region(image, g, segments=segments), (segments == 1) | (segments == 3)
    )

    small = np.zeros((48, 64), bool)
    small[30:33, 2:5] = True  # far under half of any superpixel: the most covered one is taken
    g = ConceptGeometry((48, 64), masks=[small])
    np.testing.assert_array_equal(concept_region(image, g, segments=segments), segments == 2)

    assert not concept_region(image, ConceptGeometry((48, 64)), segments=segments).any()


def test_region_with_slic_and_disc_mode():
    image, quadrants = _quadrants()
    segments = superpixels(image)
    assert segments.min() == 0
    g = ConceptGeometry((48, 64), np.array([[50.0, 10.0]]))
    region = concept_region(image, g)
    assert region[10, 50]
    assert not region[quadrants != 1].any()  # SLIC follows the colour edges
    np.testing.assert_array_equal(region, concept_region(image, g, segments=segments))

    disc = concept_region(image, g, mode="disc", radius=3)
    assert disc.sum() == 29  # lattice points within radius 3 of a pixel
    assert disc[10, 50] and disc[10, 53] and not disc[10, 54]

    with pytest.raises(ConceptAnnotationError, match="scale it first"):
        concept_region(image, ConceptGeometry((30, 40), np.array([[1.0, 1.0]])))
    with pytest.raises(ConceptAnnotationError, match="unknown region mode"):
        concept_region(image, g, mode="lasso")


def test_mask_folder_both_layouts(tmp_path):
    for name in ["cat/a_1.png", "cat/b.png", "dog/c.png", "dog/d.png"]:
        _image(tmp_path / "images" / name)
    masks = tmp_path / "masks"
    (masks / "eyes").mkdir(parents=True)
    eye = np.zeros((H, W), np.uint8)
    eye[2:5, 3:9] = 255
    Image.fromarray(eye).save(masks / "a_1_eyes.png")  # flat layout, stem with an underscore
    Image.fromarray((eye > 0).astype(np.uint8)).save(masks / "eyes" / "c.png")  # 0/1 mask
    Image.fromarray(np.zeros((H, W), np.uint8)).save(masks / "eyes" / "d.png")  # empty: not visible
    Image.fromarray(eye).save(masks / "b_nose.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "eyes" / "b.png")  # wrong size

    with pytest.warns(AnnotationWarning, match="5×5"):
        s = load_mask_folder(masks, tmp_path / "images", concepts=["eyes", "nose"])
    assert s.concepts == ("eyes", "nose")
    assert [a.image_id for a in s.images_with("eyes")] == ["a_1", "c"]
    assert [a.image_id for a in s.images_without("eyes", "dog")] == ["d"]
    assert s.images_without("eyes", "cat") == []  # b's eye mask was unusable
    assert [a.image_id for a in s.images_with("nose", "cat")] == ["b"]
    a = s.images_with("eyes", "cat")[0]
    assert a.class_name == "cat"
    np.testing.assert_array_equal(a.geometry("eyes").area_mask(), eye > 0)


@pytest.mark.skipif(not (SHARED / "concepts.coco.json").is_file(), reason="shared data absent")
def test_real_shared_annotations_load():
    s = load_coco(SHARED / "concepts.coco.json", SHARED)
    assert s.problems == []
    assert s.concepts == ("eyes", "nose", "ears", "legs")
    assert len(s) == 240 and s.class_names == ("cat", "dog")
    counts = s.counts()
    for cls in ("cat", "dog"):
        for concept, (visible, hidden) in counts[cls].items():
            assert visible + hidden == 120, (cls, concept)
            assert visible >= 80, (cls, concept)  # every concept mostly visible ...
    assert counts["cat"]["legs"][1] > 0 and counts["dog"]["legs"][1] > 0  # ... with negatives
    a = s.images_with("eyes", "cat")[0]
    image = a.load((224, 224))
    region = concept_region(image, a.geometry("eyes", (224, 224)))
    rows, cols = a.geometry("eyes", (224, 224)).point_pixels()
    assert region[rows, cols].all() and region.mean() < 0.5
