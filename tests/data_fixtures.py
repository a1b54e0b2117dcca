"""Shared helpers and fixtures of the data-layer tests (tests/test_data_*.py).

Import fixtures by name into a test module (``from tests.data_fixtures import tiny_synthetic``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.data.synthetic import generate_tiny_synthetic_coco

COCO_MINI = Path(__file__).resolve().parent / "data" / "coco_mini"

INFO = {"description": "test", "url": "", "version": "1.0", "year": 2017, "contributor": "test",
        "date_created": "2017/09/01"}
LICENSES = [{"url": "", "id": 1, "name": "test"}]


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` (parents created); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def image_record(image_id: int, file_name: str, width: int, height: int) -> dict[str, Any]:
    """A COCO ``images`` entry."""
    return {"license": 1, "file_name": file_name, "coco_url": "", "height": height, "width": width,
            "date_captured": "", "flickr_url": "", "id": image_id}


def ann_record(ann_id: int, image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0,
               segmentation: Any = None) -> dict[str, Any]:
    """A COCO ``annotations`` entry; the segmentation defaults to the box as a polygon."""
    x, y, w, h = bbox
    if segmentation is None:
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {"segmentation": segmentation, "area": float(w * h), "iscrowd": iscrowd, "image_id": image_id,
            "bbox": bbox, "category_id": category_id, "id": ann_id}


def write_coco(path: Path, images: list[dict], annotations: list[dict] | None,
               categories: list[dict] | None = None) -> Path:
    """Write a COCO annotation file (no ``annotations`` key when ``annotations`` is None)."""
    doc: dict[str, Any] = {"info": INFO, "licenses": LICENSES, "images": images,
                           "categories": categories or [{"supercategory": "x", "id": 3, "name": "a"},
                                                        {"supercategory": "x", "id": 8, "name": "b"}]}
    if annotations is not None:
        doc["annotations"] = annotations
    return write_json(path, doc)


def write_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """Write a random PNG image of the given PIL mode; return its pixels as stored."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif mode == "RGBA":
        arr = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    else:  # "L" and "P" take one channel of indices / grey levels
        arr = rng.integers(0, 256, (height, width), dtype=np.uint8)
    im = Image.fromarray(arr, "L" if mode == "P" else mode)
    if mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.save(path)
    return np.asarray(im)


def build_coco_tree(root: Path) -> Path:
    """A complete (tiny) COCO 2017 tree at ``root`` made from the coco_mini files.

    train2017 / val2017 are the coco_mini images; test2017 holds the val images again and
    ``image_info_test-dev2017.json`` lists them without annotations, like real test-dev.
    """
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        shutil.copytree(COCO_MINI / split, root / split)
        name = f"instances_{split}.json"
        shutil.copy(COCO_MINI / "annotations" / name, root / "annotations" / name)
    shutil.copytree(COCO_MINI / "val2017", root / "test2017")
    val = json.loads((COCO_MINI / "annotations" / "instances_val2017.json").read_text())
    write_json(root / "annotations" / "image_info_test-dev2017.json",
               {"info": val["info"], "licenses": val["licenses"], "images": val["images"], "categories": val["categories"]})
    return root


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 / 8 / 8 image synthetic dataset (seed 0), generated once per test module."""
    root = tmp_path_factory.mktemp("synthetic") / "coco"
    generate_tiny_synthetic_coco(root, seed=0)
    return root
