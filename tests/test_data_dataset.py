"""CocoDetectionDataset on real COCO files (coco_mini), synthetic data and broken inputs."""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from pipeline.data.collate import collate_detection
from pipeline.data.dataset import CocoDetectionDataset, build_dataset
from pipeline.data.manifest import SplitInfo
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransforms, rescale_size
from pipeline.errors import ConfigError, DataError
from tests.data_fixtures import (  # noqa: F401  (tiny_synthetic is a fixture)
    COCO_MINI,
    ann_record,
    image_record,
    tiny_synthetic,
    write_coco,
    write_image,
)

TRAIN_JSON = COCO_MINI / "annotations" / "instances_train2017.json"
VAL_JSON = COCO_MINI / "annotations" / "instances_val2017.json"
DATA_CFG = {"train_scales": [[224, 120], [224, 160]], "multiscale_mode": "range", "flip_ratio": 0.5,
            "test_scale": [200, 128], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "size_divisor": 32, "with_masks": True}


# --------------------------------------------------------------------------- real COCO files

def test_label_mapping_round_trip_on_non_contiguous_ids() -> None:
    ds = CocoDetectionDataset(TRAIN_JSON, COCO_MINI / "train2017")
    raw = json.loads(TRAIN_JSON.read_text())
    cat_ids = sorted(c["id"] for c in raw["categories"])
    assert ds.cat_ids == cat_ids and len(cat_ids) == 80 and cat_ids[-1] == 90  # 1..90 with gaps
    assert ds.num_classes == 80
    assert all(ds.label_to_cat_id[ds.cat_id_to_label[c]] == c for c in cat_ids)
    assert sorted(ds.cat_id_to_label.values()) == list(range(80))
    assert ds.cat_id_to_label[90] == 79 and ds.label_to_cat_id[11] == 13  # id 12 is one of COCO's gaps

    for idx in range(len(ds)):
        _, target = ds[idx]
        anns = [a for a in raw["annotations"] if a["image_id"] == target["image_id"]]
        expected = Counter(a["category_id"] for a in anns if not a["iscrowd"])
        got = Counter(ds.label_to_cat_id[int(l)] for l in target["labels"])
        assert got == expected
        assert target["labels"].dtype == torch.int64
        assert len(target["ignore_boxes"]) == sum(a["iscrowd"] for a in anns)


def test_boxes_are_xyxy_without_plus_one_and_crowd_is_ignored() -> None:
    ds = CocoDetectionDataset(TRAIN_JSON, COCO_MINI / "train2017")
    idx = ds.ids.index(159269)  # portrait image with a crowd region
    image, target = ds[idx]
    anns = [a for a in ds.coco.imgToAnns[159269]]
    boxes = [a["bbox"] for a in anns if not a["iscrowd"]]
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32)
    assert torch.allclose(target["boxes"], expected)
    x, y, w, h = next(a["bbox"] for a in anns if a["iscrowd"])
    assert torch.allclose(target["ignore_boxes"], torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32))
    assert image.shape == (3, 640, 427)
    assert target["orig_size"] == (640, 427) and target["img_size"] == (640, 427)
    assert torch.equal(target["scale_factor"], torch.tensor([1.0, 1.0])) and target["flipped"] is False


def test_masks_from_polygons_and_follow_the_resize() -> None:
    t = DetectionTransforms(scales=[(320, 200)], flip_ratio=1.0)
    ds = CocoDetectionDataset(VAL_JSON, COCO_MINI / "val2017", transforms=t, with_masks=True)
    for idx in range(len(ds)):
        image, target = ds[idx]
        h, w = target["img_size"]
        assert image.shape == (3, h, w) and max(h, w) <= 320 and min(h, w) <= 200
        masks = target["masks"]
        assert masks.shape == (len(target["boxes"]), h, w) and masks.dtype == torch.uint8
        for m, box in zip(masks, target["boxes"]):
            if m.sum() < 20:
                continue
            ys, xs = torch.nonzero(m, as_tuple=True)
            mask_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            # COCO boxes are the polygons' extents; after a ~0.5x resize and a flip they agree within 3 px
            assert torch.allclose(mask_box, box, atol=3.0), (mask_box, box)


def test_image_info_file_without_annotations_gives_empty_targets(tmp_path: Path) -> None:
    raw = json.loads(VAL_JSON.read_text())
    info = write_coco(tmp_path / "image_info_test-dev2017.json", raw["images"], None, raw["categories"])
    ds = CocoDetectionDataset(info, COCO_MINI / "val2017", with_masks=True)
    assert not ds.has_annotations and len(ds) == 3
    _, target = ds[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["ignore_boxes"].shape == (0, 4) and target["masks"].shape[0] == 0


def test_aspect_ratios_from_json() -> None:
    ds = CocoDetectionDataset(VAL_JSON, COCO_MINI / "val2017")
    expected = [ds.coco.imgs[i]["width"] / ds.coco.imgs[i]["height"] for i in sorted(ds.coco.imgs)]
    assert ds.aspect_ratios() == expected
    assert any(r < 1 for r in expected) and any(r >= 1 for r in expected)


# --------------------------------------------------------------------------- determinism

def _flat(sample: tuple[torch.Tensor, dict]) -> tuple:
    image, target = sample
    return image.sum().item(), target["img_size"], target["flipped"], target["boxes"].tolist()


def test_randomness_depends_on_seed_epoch_index_not_on_workers(tiny_synthetic: Path) -> None:
    split = SplitInfo("train", tiny_synthetic / "annotations" / "instances_train2017.json",
                      tiny_synthetic / "train2017", True)
    ds = build_dataset(split, DATA_CFG, train=True, seed=7)
    ds.set_epoch(3)
    direct = [_flat(ds[i]) for i in range(len(ds))]
    assert len({d[1] for d in direct}) > 1 and {d[2] for d in direct} == {True, False}

    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=lambda b: b)
    via_workers = [_flat(s) for batch in loader for s in batch]
    assert via_workers == direct

    ds.set_epoch(4)
    assert [_flat(ds[i]) for i in range(len(ds))] != direct
    fresh = build_dataset(split, DATA_CFG, train=True, seed=7)  # e.g. after a resume
    fresh.set_epoch(3)
    assert [_flat(fresh[i]) for i in range(len(fresh))] == direct


def test_build_dataset_train_and_test(tiny_synthetic: Path) -> None:
    split = SplitInfo("minival", tiny_synthetic / "annotations" / "instances_val2017.json",
                      tiny_synthetic / "val2017", True)
    train = build_dataset(split, DATA_CFG, train=True, seed=0)
    assert train.with_masks and train.transforms.flip_ratio == 0.5
    assert train.transforms.scales == [(224, 120), (224, 160)] and train.transforms.multiscale_mode == "range"
    assert train.cat_ids == [2, 3, 5, 7, 11]

    test = build_dataset(split, DATA_CFG, train=False, seed=0)
    assert not test.with_masks and test.transforms.flip_ratio == 0.0 and test.transforms.scales == [(200, 128)]
    for epoch in range(3):
        test.set_epoch(epoch)
        samples = [test[i] for i in range(len(test))]
        assert not any(t["flipped"] for _, t in samples)
        for _, t in samples:
            h0, w0 = t["orig_size"]
            assert t["img_size"] == rescale_size(w0, h0, 200, 128)[::-1]
    images, sizes, targets = collate_detection(samples, size_divisor=32)
    assert images.shape[0] == len(samples) and images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0

    with pytest.raises(ConfigError, match="train_scales"):
        build_dataset(split, {"test_scale": [200, 128]}, train=True, seed=0)
    with pytest.raises(ConfigError, match="range"):
        build_dataset(split, {**DATA_CFG, "train_scales": [[224, 160]]}, train=True, seed=0)


# --------------------------------------------------------------------------- bad input

def _one_image_dataset(tmp_path: Path, anns: list[dict], mode: str = "RGB", w: int = 40, h: int = 30,
                       **kwargs) -> CocoDetectionDataset:
    write_image(tmp_path / "img" / "a.png", w, h, mode)
    ann_file = write_coco(tmp_path / "ann.json", [image_record(1, "a.png", w, h)], anns)
    return CocoDetectionDataset(ann_file, tmp_path / "img", **kwargs)


def test_unknown_category_id_names_file_annotation_and_category(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        _one_image_dataset(tmp_path, [ann_record(1, 1, 3, [1, 1, 5, 5]), ann_record(7, 1, 99, [1, 1, 5, 5])])
    msg = str(e.value)
    assert str(tmp_path / "ann.json") in msg and "annotation id 7" in msg and "category id 99" in msg


def test_missing_image_file_names_path_and_image_id(tmp_path: Path) -> None:
    ann_file = write_coco(tmp_path / "ann.json", [image_record(42, "nothere.jpg", 40, 30)], [])
    ds = CocoDetectionDataset(ann_file, tmp_path)
    with pytest.raises(DataError) as e:
        ds[0]
    assert str(tmp_path / "nothere.jpg") in str(e.value) and "image id 42" in str(e.value)


def test_undecodable_image_names_path_and_image_id(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ann_file = write_coco(tmp_path / "ann.json", [image_record(5, "broken.jpg", 40, 30)], [])
    ds = CocoDetectionDataset(ann_file, tmp_path)
    with pytest.raises(DataError) as e:
        ds[0]
    assert str(tmp_path / "broken.jpg") in str(e.value) and "image id 5" in str(e.value)


def test_size_mismatch_between_json_and_image_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 40, 30)
    ann_file = write_coco(tmp_path / "ann.json", [image_record(3, "a.png", 50, 30)], [])
    with pytest.raises(DataError, match="image id 3"):
        CocoDetectionDataset(ann_file, tmp_path)[0]


def test_degenerate_boxes_are_skipped_with_one_warning_each(tmp_path: Path) -> None:
    anns = [ann_record(1, 1, 3, [2, 2, 10, 8]), ann_record(2, 1, 8, [5, 5, 0, 4]), ann_record(3, 1, 8, [5, 5, 6, -1]),
            ann_record(4, 1, 3, [100, 100, 5, 5])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _one_image_dataset(tmp_path, anns, with_masks=True)
        for _ in range(3):
            _, target = ds[0]
    messages = [str(w.message) for w in caught]
    for ann_id in (2, 3, 4):
        hits = [m for m in messages if f"annotation id {ann_id} " in m]
        assert len(hits) == 1, messages
        assert str(tmp_path / "ann.json") in hits[0]
    assert not any("annotation id 1 " in m for m in messages)
    assert target["boxes"].tolist() == [[2.0, 2.0, 12.0, 10.0]] and target["labels"].tolist() == [0]
    assert target["masks"].shape == (1, 30, 40) and target["masks"].sum() == 80


def test_image_without_annotations_is_kept_with_empty_targets(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 40, 30)
    write_image(tmp_path / "b.png", 20, 30)
    ann_file = write_coco(tmp_path / "ann.json", [image_record(1, "a.png", 40, 30), image_record(2, "b.png", 20, 30)],
                          [ann_record(1, 1, 3, [2, 2, 10, 8])])
    ds = CocoDetectionDataset(ann_file, tmp_path, with_masks=True)
    assert len(ds) == 2
    image, target = ds[1]
    assert image.shape == (3, 30, 20) and target["image_id"] == 2
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["ignore_boxes"].shape == (0, 4) and target["masks"].shape == (0, 30, 20)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_palette_become_rgb(tmp_path: Path, mode: str) -> None:
    ds = _one_image_dataset(tmp_path, [], mode=mode, transforms=DetectionTransforms(mean=(0, 0, 0), std=(1, 1, 1)))
    rgb = ds.load_image(0)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    image, _ = ds[0]
    assert image.shape == (3, 30, 40)
    assert torch.equal(image, torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1))
    if mode == "L":
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "ann.json"
    bad.write_text('{\n  "images": [],\n  "categories": [,]\n}\n')
    with pytest.raises(DataError) as e:
        CocoDetectionDataset(bad, tmp_path)
    assert str(bad) in str(e.value) and "line 3, column 18" in str(e.value)


def test_missing_keys_are_named(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match=r"missing required key\(s\) \['categories'\]"):
        CocoDetectionDataset(f, tmp_path)
    f.write_text(json.dumps({"images": [{"id": 4, "file_name": "x.jpg", "width": 3}],
                             "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DataError, match=r"image id 4 lacks required key\(s\) \['height'\]"):
        CocoDetectionDataset(f, tmp_path)
    f.write_text(json.dumps({"images": [image_record(1, "x.jpg", 3, 3)], "categories": [{"id": 1, "name": "a"}],
                             "annotations": [{"id": 9, "image_id": 1, "category_id": 1}]}))
    with pytest.raises(DataError, match=r"annotation id 9 lacks required key\(s\) \['bbox'\]"):
        CocoDetectionDataset(f, tmp_path)


def test_compressed_rle_segmentation_decodes(tmp_path: Path) -> None:
    m = np.zeros((30, 40), np.uint8)
    m[3:9, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    ds = _one_image_dataset(tmp_path, [ann_record(1, 1, 8, [5, 3, 20, 6], segmentation=rle)], with_masks=True)
    _, target = ds[0]
    assert np.array_equal(target["masks"][0].numpy(), m) and target["labels"].tolist() == [1]


def test_annotation_of_unknown_image_and_unusable_segmentation(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="annotation id 5 references unknown image id 2"):
        _one_image_dataset(tmp_path, [ann_record(5, 2, 3, [1, 1, 4, 4])])
    ds = _one_image_dataset(tmp_path, [ann_record(6, 1, 3, [1, 1, 4, 4], segmentation=[[1, 1, 4, 4]])], with_masks=True)
    with pytest.raises(DataError, match="annotation id 6"):
        ds[0]
