"""Bad input in a user's own COCO-format dataset (issue 16, item 5): every case is a DataError
whose message names the file (annotation file, image file or image folder) and the record.

Each test writes a tiny hand-made COCO file and PNG/JPEG images into tmp_path. Covered: an unknown
category id, duplicate image / annotation ids, an image whose size differs from its record
(decode path and header-only split check), an empty category list, two categories with the same
name, an image folder missing images, a train split left without images by the training filter,
splits whose categories differ; and which images evaluation and training keep.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image

from pipeline.data import check_prepared_splits, load_coco_json
from pipeline.data.dataset import CocoDetectionDataset, build_dataset
from pipeline.data.manifest import SplitInfo
from pipeline.errors import DataError
from tests.conftest import REPO
from tests.data_fixtures import COCO_MINI, ann_record, image_record, write_coco, write_image

CATS = [{"supercategory": "x", "id": 3, "name": "a"}, {"supercategory": "x", "id": 8, "name": "b"}]
DATA_CFG = {"train_scales": [[64, 48]], "test_scale": [64, 48]}


def _split(tmp_path: Path, name: str = "train", ann: str = "train.json", img_dir: str = "img",
           has_annotations: bool = True) -> SplitInfo:
    return SplitInfo(name, tmp_path / ann, tmp_path / img_dir, has_annotations)


def _images(tmp_path: Path, sizes: dict[str, tuple[int, int]], img_dir: str = "img") -> list[dict]:
    """Write one image per ``name: (width, height)`` (PNG, or JPEG for .jpg); return their records (ids 1..)."""
    records = []
    for i, (name, (w, h)) in enumerate(sizes.items(), start=1):
        path = tmp_path / img_dir / name
        if path.suffix == ".jpg":
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (w, h), (90, 120, 30)).save(path, format="JPEG")
        else:
            write_image(path, w, h, seed=i)
        records.append(image_record(i, name, w, h))
    return records


def _message(fn) -> str:
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert len(msg) <= 2000 and "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------- case 1: unknown category id

def test_unknown_category_id_names_file_annotation_image_and_category(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.png": (20, 30)})
    ann = write_coco(tmp_path / "train.json", imgs, [ann_record(1, 1, 3, [1, 1, 5, 5]), ann_record(7, 2, 99, [1, 1, 5, 5])])
    for fn in (lambda: load_coco_json(ann), lambda: CocoDetectionDataset(ann, tmp_path / "img"),
               lambda: check_prepared_splits([_split(tmp_path)])):
        msg = _message(fn)
        assert msg.startswith(f"{ann}: annotation id 7 (image id 2) has unknown category id 99 (known: [3, 8])"), msg


# --------------------------------------------------------------------------- case 2: duplicate ids

def test_duplicate_image_id_names_file_id_and_both_file_names(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.png": (20, 30)})
    imgs[1]["id"] = 1
    ann = write_coco(tmp_path / "train.json", imgs, [])
    msg = _message(lambda: load_coco_json(ann))
    assert msg == f"{ann}: duplicate image id 1 (file_name 'a.png' and 'b.png')"


def test_duplicate_annotation_id_names_file_id_and_images(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.png": (20, 30)})
    ann = write_coco(tmp_path / "train.json", imgs, [ann_record(4, 1, 3, [1, 1, 5, 5]), ann_record(4, 2, 8, [1, 1, 5, 5])])
    msg = _message(lambda: check_prepared_splits([_split(tmp_path)]))
    assert msg == f"{ann}: duplicate annotation id 4 (on image id 1 and image id 2)"


def test_duplicate_category_id_names_file_and_id(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30)})
    ann = write_coco(tmp_path / "train.json", imgs, [], categories=[{"id": 3, "name": "a"}, {"id": 3, "name": "b"}])
    assert _message(lambda: load_coco_json(ann)) == f"{ann}: duplicate category id 3"


# --------------------------------------------------------------------------- case 3: size differs from the record

def test_decoded_size_differing_from_record_names_image_file_id_and_annotation_file(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.jpg": (24, 16)})
    imgs[1].update(width=25)  # the JPEG is 24 x 16
    ann = write_coco(tmp_path / "train.json", imgs, [ann_record(1, 1, 3, [1, 1, 5, 5])])
    ds = CocoDetectionDataset(ann, tmp_path / "img")
    ds[0]
    msg = _message(lambda: ds[1])
    assert msg == (f"{tmp_path / 'img' / 'b.jpg'}: decoded size 24x16 differs from the 25x16 recorded "
                   f"(image id 2, listed in {ann})")


def test_split_check_reads_every_header_and_names_the_first_mismatch(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.jpg": (24, 16), "c.png": (10, 12)})
    imgs[1].update(height=17)
    imgs[2].update(width=11, height=13)
    ann = write_coco(tmp_path / "train.json", imgs, [ann_record(1, 1, 3, [1, 1, 5, 5])])
    msg = _message(lambda: check_prepared_splits([_split(tmp_path)]))
    assert msg == (f"{tmp_path / 'img' / 'b.jpg'}: header size 24x16 differs from the 24x17 recorded (image id 2, "
                   f"listed in {ann}) (and 1 more image(s) in {tmp_path / 'img'} whose size differs from their record)")


def test_split_check_names_an_unreadable_image(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.png": (20, 30)})
    (tmp_path / "img" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ann = write_coco(tmp_path / "train.json", imgs, [ann_record(1, 1, 3, [1, 1, 5, 5])])
    msg = _message(lambda: check_prepared_splits([_split(tmp_path)]))
    assert msg.startswith(f"{tmp_path / 'img' / 'b.png'}: cannot decode image (image id 2, listed in {ann})"), msg


# --------------------------------------------------------------------------- case 4: no category

def test_empty_category_list_names_the_file(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30)})
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps({"images": imgs, "annotations": [], "categories": []}))
    for fn in (lambda: load_coco_json(ann), lambda: check_prepared_splits([_split(tmp_path)])):
        assert _message(fn) == f"{ann}: 'categories' is empty; a detection dataset needs at least one category"


# --------------------------------------------------------------------------- case 5: category names collide

def test_two_categories_with_the_same_name_name_both_ids_and_the_file(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30)})
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}]
    ann = write_coco(tmp_path / "train.json", imgs, [], categories=cats)
    msg = _message(lambda: CocoDetectionDataset(ann, tmp_path / "img"))
    assert msg == (f"{ann}: category ids 1 and 5 have the same name 'dog'; category names must be unique "
                   f"(compared exactly as written)")


def test_names_differing_in_case_or_spaces_are_distinct(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30)})
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "Dog"}, {"id": 3, "name": "dog "}]
    ann = write_coco(tmp_path / "train.json", imgs, [ann_record(1, 1, 2, [1, 1, 5, 5])], categories=cats)
    assert CocoDetectionDataset(ann, tmp_path / "img").class_names == ["dog", "Dog", "dog "]


# --------------------------------------------------------------------------- case 6: images missing

def test_folder_missing_images_names_folder_first_file_id_and_count(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.png": (20, 30), "c.png": (20, 20), "d.png": (8, 8)})
    (tmp_path / "img" / "b.png").unlink()
    (tmp_path / "img" / "d.png").unlink()
    ann = write_coco(tmp_path / "train.json", imgs, [ann_record(1, 1, 3, [1, 1, 5, 5])])
    msg = _message(lambda: check_prepared_splits([_split(tmp_path)]))
    assert msg == (f"{tmp_path / 'img'}: 2 of the 4 image(s) listed in {ann} (split 'train') are missing from "
                   f"this folder; the first is 'b.png' (image id 2)")


def test_missing_image_folder_is_named(tmp_path: Path) -> None:
    ann = write_coco(tmp_path / "train.json", [image_record(1, "a.png", 4, 4)], [ann_record(1, 1, 3, [1, 1, 2, 2])])
    msg = _message(lambda: check_prepared_splits([_split(tmp_path, img_dir="nowhere")]))
    assert msg == f"{tmp_path / 'nowhere'}: image folder not found (split 'train', whose 1 image(s) are listed in {ann})"


# --------------------------------------------------------------------------- case 7: nothing left to train on

def test_train_split_without_a_usable_box_names_the_file_and_why(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.png": (20, 30), "c.png": (20, 20)})
    anns = [ann_record(1, 1, 3, [2, 2, 10, 8], iscrowd=1),  # crowd only
            ann_record(2, 2, 8, [5, 5, 0, 4]),  # degenerate
            ann_record(3, 2, 8, [100, 100, 5, 5])]  # outside its image; c.png has none
    ann = write_coco(tmp_path / "train.json", imgs, anns)
    expected = (f"{ann}: no image to train on: none of its 3 image(s) has a usable non-crowd box (training leaves "
                f"out images without annotations, with crowd regions only, or whose boxes are all empty or outside "
                f"the image)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped boxes warn
        assert _message(lambda: build_dataset(_split(tmp_path), DATA_CFG, train=True, seed=0)) == expected
        assert _message(lambda: check_prepared_splits([_split(tmp_path)])) == expected
        # The same file evaluates: every image is kept.
        assert len(build_dataset(_split(tmp_path), DATA_CFG, train=False, seed=0)) == 3
        check_prepared_splits([_split(tmp_path, name="minival")])


def test_split_without_images_is_refused(tmp_path: Path) -> None:
    ann = write_coco(tmp_path / "val.json", [], [])
    (tmp_path / "img").mkdir()
    msg = _message(lambda: check_prepared_splits([_split(tmp_path, name="minival", ann="val.json")]))
    assert msg == f"{ann}: 'images' is empty: split 'minival' has no image"
    assert _message(lambda: CocoDetectionDataset(ann, tmp_path / "img", filter_empty_gt=True)) == (
        f"{ann}: no image to train on: 'images' is empty")


def test_evaluation_keeps_every_image_training_only_those_with_a_usable_box(tmp_path: Path) -> None:
    """COCO's conventions: evaluation (pycocotools) keeps images without annotations and crowd-only
    images; training keeps images with at least one usable non-crowd box (mmdetection's
    filter_empty_gt, detectron2's filter of empty and crowd-only images)."""
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.png": (20, 30), "c.png": (20, 20), "d.png": (30, 30)})
    anns = [ann_record(1, 1, 3, [2, 2, 10, 8]), ann_record(2, 2, 8, [1, 1, 6, 6], iscrowd=1),
            ann_record(3, 4, 8, [4, 4, 10, 10]), ann_record(4, 4, 3, [0, 0, 30, 30], iscrowd=1)]
    ann = write_coco(tmp_path / "train.json", imgs, anns)  # c.png (id 3) has no annotation
    test = build_dataset(_split(tmp_path), DATA_CFG, train=False, seed=0)
    assert test.ids == [1, 2, 3, 4] and len(test) == 4
    _, crowd_only = test[1]
    assert crowd_only["image_id"] == 2 and crowd_only["boxes"].shape == (0, 4)
    assert crowd_only["ignore_boxes"].shape == (1, 4)
    assert test.annotated_boxes(1)[2].tolist() == [[1.0, 1.0, 7.0, 7.0]]  # original pixels
    _, empty = test[2]
    assert empty["image_id"] == 3 and empty["boxes"].shape == (0, 4) and empty["ignore_boxes"].shape == (0, 4)

    train = build_dataset(_split(tmp_path), DATA_CFG, train=True, seed=0)
    assert train.ids == [1, 4] and len(train) == 2 and len(train.aspect_ratios()) == 2
    _, target = train[1]
    assert target["image_id"] == 4 and len(target["labels"]) == 1 and len(target["ignore_boxes"]) == 1
    assert CocoDetectionDataset(ann, tmp_path / "img").ids == [1, 2, 3, 4]  # the default keeps every image


# --------------------------------------------------------------------------- case 8: splits with other classes

def test_splits_with_different_categories_name_both_files_and_the_differences(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30)})
    box = [ann_record(1, 1, 3, [1, 1, 5, 5])]
    train = write_coco(tmp_path / "train.json", imgs, box, categories=CATS)
    write_coco(tmp_path / "val.json", imgs, box, categories=CATS)
    test = write_coco(tmp_path / "test.json", imgs, None,
                      categories=[{"id": 3, "name": "a"}, {"id": 8, "name": "B"}, {"id": 9, "name": "c"}])
    splits = [_split(tmp_path), _split(tmp_path, "minival", "val.json"),
              _split(tmp_path, "test-dev", "test.json", has_annotations=False)]
    msg = _message(lambda: check_prepared_splits(splits))
    assert msg == (f"{train} and {test} list different categories (2 difference(s)): id 8 is 'b' in split 'train' but "
                   f"'B' in split 'test-dev'; id 9 ('c') only in split 'test-dev'; every split needs the same category "
                   f"ids and names")
    write_coco(tmp_path / "val.json", imgs, [ann_record(1, 1, 8, [1, 1, 5, 5])], categories=CATS[1:])
    msg = _message(lambda: check_prepared_splits(splits[:2]))
    assert msg.startswith(f"{train} and {tmp_path / 'val.json'} list different categories (1 difference(s)): "
                          f"id 3 ('a') only in split 'train';"), msg


# --------------------------------------------------------------------------- a good dataset, fast and light

def test_good_splits_pass_and_an_annotated_split_needs_annotations(tmp_path: Path) -> None:
    imgs = _images(tmp_path, {"a.png": (40, 30), "b.jpg": (24, 16)})
    write_coco(tmp_path / "train.json", imgs, [ann_record(1, 1, 3, [1, 1, 5, 5])])
    test = write_coco(tmp_path / "test.json", imgs, None)
    check_prepared_splits([_split(tmp_path), _split(tmp_path, "test-dev", "test.json", has_annotations=False)])
    msg = _message(lambda: check_prepared_splits([_split(tmp_path, "minival", "test.json")]))
    assert msg == f"{test}: no 'annotations' list, but split 'minival' is used as annotated"


def test_coco_mini_passes_quickly() -> None:
    splits = [SplitInfo("train", COCO_MINI / "annotations" / "instances_train2017.json", COCO_MINI / "train2017", True),
              SplitInfo("minival", COCO_MINI / "annotations" / "instances_val2017.json", COCO_MINI / "val2017", True)]
    start = time.perf_counter()
    check_prepared_splits(splits)
    assert time.perf_counter() - start < 10  # headers only: ~0.02 s here


def test_checks_import_no_torch() -> None:
    code = ("import sys; import pipeline.data.checks; from pipeline.data import check_prepared_splits; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
