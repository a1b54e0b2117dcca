"""The synthetic COCO generator: layout, determinism, area ranges, crowd, occlusion, masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data_fixtures import tiny_synthetic  # noqa: F401  (fixture)
from pipeline.data.dataset import decode_segmentation
from pipeline.data.synthetic import (
    AREA_LARGE,
    AREA_SMALL,
    CATEGORIES,
    generate_synthetic_coco,
    generate_tiny_synthetic_coco,
    mask_to_polygons,
    mask_to_uncompressed_rle,
)

ANN_FILES = ("instances_train2017.json", "instances_val2017.json", "instances_test-dev2017.json")


def _load(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / name).read_text())


@pytest.fixture(scope="module")
def medium_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 train images: enough for every area range and a few crowd regions."""
    root = tmp_path_factory.mktemp("synthetic_medium") / "coco"
    generate_synthetic_coco(root, num_train=150, num_minival=0, num_testdev=0, seed=3, workers=0)
    return root


def test_layout_matches_coco_2017(tiny_synthetic: Path) -> None:
    root = tiny_synthetic
    assert sorted(p.name for p in (root / "annotations").iterdir()) == sorted(
        [*ANN_FILES, "image_info_test-dev2017.json"]
    )
    counts = {"instances_train2017.json": ("train2017", 16), "instances_val2017.json": ("val2017", 8),
              "instances_test-dev2017.json": ("test2017", 8)}
    all_ids: list[int] = []
    for name, (img_dir, n) in counts.items():
        doc = _load(root, name)
        assert set(doc) == {"info", "licenses", "images", "annotations", "categories"}
        assert len(doc["images"]) == n
        assert sorted(p.name for p in (root / img_dir).iterdir()) == sorted(i["file_name"] for i in doc["images"])
        for img in doc["images"]:
            assert img["file_name"] == f"{img['id']:012d}.jpg"
            with Image.open(root / img_dir / img["file_name"]) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (img["width"], img["height"])
            assert min(img["width"], img["height"]) == 160
            assert 160 <= max(img["width"], img["height"]) <= 224
            all_ids.append(img["id"])
        assert doc["categories"] == CATEGORIES
    assert len(set(all_ids)) == len(all_ids), "image ids must be unique across splits"

    info = _load(root, "image_info_test-dev2017.json")
    assert "annotations" not in info, "the test-dev image-info file lists images and categories only"
    assert info["images"] == _load(root, "instances_test-dev2017.json")["images"]
    assert info["categories"] == CATEGORIES


def test_categories_are_non_contiguous_shapes() -> None:
    ids = [c["id"] for c in CATEGORIES]
    assert len(ids) == 5 and ids != list(range(ids[0], ids[0] + 5))
    assert {c["supercategory"] for c in CATEGORIES} == {"shape"}


def test_same_seed_same_bytes_different_seed_differs(tiny_synthetic: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_tiny_synthetic_coco(again, seed=0)
    files = sorted(p.relative_to(tiny_synthetic) for p in tiny_synthetic.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (tiny_synthetic / rel).read_bytes() == (again / rel).read_bytes(), rel

    other = tmp_path / "other"
    generate_tiny_synthetic_coco(other, seed=1)
    assert (other / "annotations" / ANN_FILES[0]).read_bytes() != (again / "annotations" / ANN_FILES[0]).read_bytes()


def test_worker_processes_give_identical_output(tmp_path: Path) -> None:
    generate_synthetic_coco(tmp_path / "a", 40, 12, 12, seed=5, workers=0)
    generate_synthetic_coco(tmp_path / "b", 40, 12, 12, seed=5, workers=2)
    for p in sorted((tmp_path / "a").rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes(), p


def test_area_ranges_orientations_and_objects_per_image(medium_synthetic: Path) -> None:
    doc = _load(medium_synthetic, "instances_train2017.json")
    areas = np.array([a["area"] for a in doc["annotations"] if not a["iscrowd"]])
    frac = [np.mean(areas < AREA_SMALL), np.mean((areas >= AREA_SMALL) & (areas < AREA_LARGE)), np.mean(areas >= AREA_LARGE)]
    # target about 35 / 45 / 20 %
    assert 0.2 < frac[0] < 0.5 and 0.3 < frac[1] < 0.6 and 0.1 < frac[2] < 0.35, frac
    per_image = np.bincount([a["image_id"] for a in doc["annotations"] if not a["iscrowd"]])
    per_image = per_image[[i["id"] for i in doc["images"]]]
    assert per_image.min() >= 1 and per_image.max() <= 6
    assert all(min(a["bbox"][2], a["bbox"][3]) >= 1 for a in doc["annotations"])
    shapes = {("landscape" if i["width"] > i["height"] else "portrait" if i["width"] < i["height"] else "square")
              for i in doc["images"]}
    assert shapes == {"landscape", "portrait", "square"}


def test_crowd_regions_are_uncompressed_rle(medium_synthetic: Path) -> None:
    doc = _load(medium_synthetic, "instances_train2017.json")
    images = {i["id"]: i for i in doc["images"]}
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert 1 <= len({a["image_id"] for a in crowd}) <= 0.15 * len(images)
    for a in crowd:
        seg = a["segmentation"]
        h, w = images[a["image_id"]]["height"], images[a["image_id"]]["width"]
        assert isinstance(seg["counts"], list) and seg["size"] == [h, w]
        assert sum(seg["counts"]) == h * w
        m = decode_segmentation(seg, h, w)
        assert m.sum() == a["area"]
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        assert a["category_id"] in {c["id"] for c in CATEGORIES}


def test_polygons_decode_to_the_annotated_visible_part(medium_synthetic: Path) -> None:
    doc = _load(medium_synthetic, "instances_train2017.json")
    images = {i["id"]: i for i in doc["images"]}
    by_image: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    occluded = 0
    for image_id, anns in by_image.items():
        h, w = images[image_id]["height"], images[image_id]["width"]
        union = np.zeros((h, w), np.int32)
        for a in anns:
            if not a["iscrowd"]:
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
            m = decode_segmentation(a["segmentation"], h, w)
            ys, xs = np.nonzero(m)
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            assert box == a["bbox"], (a["id"], box, a["bbox"])
            assert m.sum() == a["area"]
            assert a["area"] >= 30
            union += m
        # visible parts never overlap: a pixel belongs to at most one annotation
        assert union.max() <= 1, image_id
        # occlusion happened where a box holds pixels of another annotation painted later
        for i, a in enumerate(anns):
            x, y, bw, bh = a["bbox"]
            for b in anns[i + 1:]:
                mb = decode_segmentation(b["segmentation"], h, w)
                occluded += int(mb[y:y + bh, x:x + bw].any())
    assert occluded >= 10


def test_mask_encoders_round_trip_through_pycocotools() -> None:
    """decode_segmentation decodes with pycocotools (frPyObjects + decode)."""
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 50), bool)
    mask[5:20, 8:30] = True
    mask[25:33, 35:48] = True
    mask[22:24, 3:5] = True  # a 2x2 fragment still makes a valid polygon
    polys = mask_to_polygons(mask)
    assert len(polys) == 3 and all(len(p) >= 6 for p in polys)
    assert np.array_equal(decode_segmentation(polys, 40, 50).astype(bool), mask)

    sparse = rng.random((40, 50)) < 0.1
    rle = mask_to_uncompressed_rle(sparse)
    assert np.array_equal(decode_segmentation(rle, 40, 50).astype(bool), sparse)
    sparse[0, 0] = True  # a mask starting with foreground begins with a zero-length run
    rle = mask_to_uncompressed_rle(sparse)
    assert rle["counts"][0] == 0
    assert np.array_equal(decode_segmentation(rle, 40, 50).astype(bool), sparse)
