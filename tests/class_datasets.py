"""Tiny hand-rendered COCO datasets with any number of categories, for the tests of training on
any number of classes (tests/test_any_num_classes.py) and of fine-tuning (tests/test_finetune.py).

:func:`write_class_dataset` draws filled rectangles and triangles, one colour per category, on a
plain background with PIL and writes a COCO annotation file whose categories have the ids and
names given, in the order given (non-contiguous, not 1-based, unsorted: the dataset sorts them
into contiguous labels), with polygon segmentations (masks for D2Det's mask preset and Dense
RepPoints), and a manifest whose three splits all read it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data import SplitInfo, write_manifest

#: (id, name) of the datasets of tests/test_any_num_classes.py: one category, and three given
#: out of order with ids that are neither contiguous nor 1-based
ONE_CLASS = [(7, "kite")]
THREE_CLASSES = [(42, "bolt"), (5, "nut"), (19, "washer")]

_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 30), (200, 40, 220), (30, 210, 220)]


def _shape(rng: np.random.Generator, width: int, height: int, triangle: bool) -> list[float]:
    """A polygon [x0, y0, x1, y1, ...] of 18 to ~45 % of the image's short side, inside the image."""
    short = min(width, height)
    w = float(rng.integers(int(0.18 * short), int(0.45 * short) + 1))
    h = float(rng.integers(int(0.18 * short), int(0.45 * short) + 1))
    x = float(rng.integers(1, int(width - w - 1)))
    y = float(rng.integers(1, int(height - h - 1)))
    if triangle:
        return [x, y + h, x + w / 2, y, x + w, y + h]
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def write_class_dataset(root: Path, categories: list[tuple[int, str]], num_images: int = 4,
                        size: tuple[int, int] = (128, 96), objects_per_image: int = 3, seed: int = 0) -> Path:
    """Write images, ``annotations.json`` and ``manifest.json`` under ``root``; return the manifest.

    Args:
        categories: (COCO id, name) of every category, written in this order.
        num_images: images (ids 101, 102, ...), each ``size`` (width, height) pixels, landscape.
        objects_per_image: objects drawn per image; the categories take turns, so each appears.
    """
    root = Path(root)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    turn = 0
    for i in range(num_images):
        image_id = 101 + i
        canvas = Image.new("RGB", size, (120, 120, 120))
        draw = ImageDraw.Draw(canvas)
        for _ in range(objects_per_image):
            k = turn % len(categories)
            turn += 1
            polygon = _shape(rng, width, height, triangle=bool(k % 2))
            draw.polygon(polygon, fill=_COLOURS[k % len(_COLOURS)])
            xs, ys = polygon[0::2], polygon[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append({"id": 1000 + len(annotations), "image_id": image_id, "category_id": categories[k][0],
                                "bbox": box, "area": box[2] * box[3] / (2.0 if k % 2 else 1.0), "iscrowd": 0,
                                "segmentation": [polygon]})
        name = f"{image_id:06d}.png"
        canvas.save(img_dir / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    doc = {"info": {"description": "tests/class_datasets.py"}, "licenses": [], "images": images,
           "annotations": annotations,
           "categories": [{"id": c, "name": n, "supercategory": "test"} for c, n in categories]}
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps(doc))
    manifest = root / "manifest.json"
    write_manifest(manifest, "handmade", {
        name: SplitInfo(name, ann_file, img_dir, True) for name in ("train", "minival", "test-dev")})
    return manifest
