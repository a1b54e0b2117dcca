"""A synthetic COCO-format detection dataset: coloured shapes on noisy textured backgrounds.

:func:`generate_synthetic_coco` writes exactly the COCO 2017 layout::

    out_dir/train2017/000000000001.jpg ...
    out_dir/val2017/*.jpg                      (minival)
    out_dir/test2017/*.jpg                     (test-dev)
    out_dir/annotations/instances_train2017.json
    out_dir/annotations/instances_val2017.json
    out_dir/annotations/image_info_test-dev2017.json   images + categories only, like real COCO
    out_dir/annotations/instances_test-dev2017.json    synthetic only: with annotations

so every later stage reads it through the same code path as real COCO.

The scene model:

* five shape categories with non-contiguous COCO ids (:data:`CATEGORIES`), supercategory
  ``"shape"``;
* images with a short side of 160 px and a long side of 160..224 px, landscape, portrait or
  square; backgrounds are a smooth colour gradient plus low-contrast blurred blobs plus
  pixel noise;
* categories differ in shape and in colour: each category draws its hue from its own band
  (:data:`HUE_BAND_DEGREES` wide around ``72° x category index``, so neighbouring bands
  overlap at their edges) with random saturation and brightness, choosing among a few
  such candidates the one that contrasts most with what lies under it. Real categories
  differ in appearance as well as outline; with colour independent of the category, a
  half-width ResNet-18 Faster R-CNN trained for 750 iterations classified the shapes at
  chance (minival AP50 0.13, classification of matched boxes 25 %), so the default
  pipeline could not compare detectors at a CPU budget;
* 1-6 objects per image whose mask areas follow the COCO area ranges (small < 32^2,
  medium 32^2..96^2, large > 96^2 pixels), smallest side about 10 px;
* occlusion: objects are painted in order and later ones cover earlier ones. Annotations
  describe the visible part (own mask minus the masks painted after it). A placement that
  would leave an earlier object less than 50 % visible, below :data:`MIN_VISIBLE_PIXELS`,
  in a smaller COCO area range than its whole shape, or with a hole (which a COCO polygon
  cannot represent) is re-drawn elsewhere or dropped before it is painted, so every painted
  object is annotated and the area-range mix stays as sampled (about 35 / 45 / 20 %);
* crowd regions: in about 5 % of images a cluster of many tiny same-category shapes is
  annotated as one ``iscrowd=1`` annotation with an uncompressed RLE, as in COCO.

Polygons are traced on the visible bitmap upsampled x2 (``cv2.findContours`` then
``cv2.approxPolyDP`` with a 0.3 px tolerance) and mapped back to pixel-edge coordinates,
so that ``pycocotools`` decodes them to exactly the visible bitmap; ``bbox`` is the tight box
of that bitmap, ``area`` its pixel count.

Everything is drawn from ``np.random.default_rng([seed, split_index, image_index])``: two
runs with the same arguments write byte-identical JSON and JPEG files.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CATEGORIES: list[dict[str, Any]] = [
    {"supercategory": "shape", "id": 2, "name": "ellipse"},
    {"supercategory": "shape", "id": 3, "name": "rectangle"},
    {"supercategory": "shape", "id": 5, "name": "triangle"},
    {"supercategory": "shape", "id": 7, "name": "hexagon"},
    {"supercategory": "shape", "id": 11, "name": "star"},
]
CATEGORY_KINDS: tuple[str, ...] = tuple(c["name"] for c in CATEGORIES)
_KIND_TO_ID: dict[str, int] = {c["name"]: c["id"] for c in CATEGORIES}

INFO: dict[str, Any] = {
    "description": "detlab synthetic shapes (COCO 2017 layout)",
    "url": "",
    "version": "1.0",
    "year": 2017,
    "contributor": "detlab",
    "date_created": "2017/09/01",
}
LICENSES: list[dict[str, Any]] = [
    {"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 1.0 Public Domain Dedication"}
]

# (split name in the manifest, image directory, annotation file stem)
SPLITS: tuple[tuple[str, str, str], ...] = (
    ("train", "train2017", "instances_train2017"),
    ("minival", "val2017", "instances_val2017"),
    ("test-dev", "test2017", "instances_test-dev2017"),
)
TEST_DEV_INFO_FILE = "image_info_test-dev2017.json"

SHORT_SIDE = 160
LONG_SIDE_RANGE = (160, 224)  # inclusive; square images use 160, others 176..224 (w/h >= 1.1)
AREA_SMALL = 32**2
AREA_LARGE = 96**2
# Probability of drawing a small / medium / large target area. Occlusion and the image size
# push objects into smaller ranges, so these are tuned to land near 35 / 45 / 20 % of the
# visible areas (see the summary printed by the prepare stage).
AREA_RANGE_PROBS = (0.30, 0.43, 0.27)
MIN_OBJECT_SIDE = 10.0  # pixels, the smaller side of an object's box before occlusion
MIN_VISIBLE_FRACTION = 0.50
HUE_BAND_DEGREES = 100.0  # width of a category's hue band; centres are 72 degrees apart
MIN_VISIBLE_PIXELS = 30
CROWD_PROB = 0.05
LARGE_FIRST_PROB = 0.75  # probability that an image's objects are painted largest first
JPEG_QUALITY = 90


@dataclass
class _Object:
    """One painted object: full mask, visible mask (bool [H, W]), COCO category id, crowd flag."""

    mask: np.ndarray
    visible: np.ndarray
    category_id: int
    iscrowd: bool
    full_area: int


def _shape_polygon(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices [P, 2] (x, y) of a shape centred near 0 with radius about 1, randomly rotated."""
    if kind == "ellipse":
        t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
        aspect = rng.uniform(0.45, 1.0)
        pts = np.stack([np.cos(t), aspect * np.sin(t)], axis=1)
    elif kind == "rectangle":
        aspect = rng.uniform(0.4, 1.0)
        pts = np.array([[-1.0, -aspect], [1.0, -aspect], [1.0, aspect], [-1.0, aspect]])
    elif kind == "triangle":
        ang = np.deg2rad(90.0 + 120.0 * np.arange(3) + rng.uniform(-15.0, 15.0, 3))
        pts = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    elif kind == "hexagon":
        ang = np.deg2rad(60.0 * np.arange(6))
        pts = np.stack([np.cos(ang), np.sin(ang)], axis=1) * np.array([1.0, rng.uniform(0.75, 1.0)])
    elif kind == "star":
        inner = rng.uniform(0.42, 0.55)
        ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        pts = np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    theta = rng.uniform(0.0, 2.0 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return pts @ rot.T


def _polygon_area(pts: np.ndarray) -> float:
    """Shoelace area of a polygon [P, 2]."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _rasterize(pts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fill polygon [P, 2] (pixel units, continuous) into a bool mask [height, width]."""
    mask = np.zeros((height, width), np.uint8)
    # cv2 samples at pixel centres (integer coordinates); shift the continuous polygon by
    # -0.5 so pixel (i, j) is filled when its centre (i + 0.5, j + 0.5) is inside.
    fixed = np.round((pts - 0.5) * 16.0).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _sample_target_area(rng: np.random.Generator, height: int, width: int) -> float:
    """A mask area in pixels from the COCO small / medium / large ranges (log-uniform inside)."""
    bucket = rng.choice(3, p=AREA_RANGE_PROBS)
    lo, hi = [(70.0, AREA_SMALL), (AREA_SMALL, AREA_LARGE), (AREA_LARGE * 1.2, 0.62 * height * width)][bucket]
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _place_shape(
    kind: str, area: float, rng: np.random.Generator, height: int, width: int
) -> np.ndarray | None:
    """Scale a random ``kind`` polygon to ``area`` px^2 and place it inside the image.

    Returns the vertices [P, 2] in pixels, or None where it cannot fit.
    """
    pts = _shape_polygon(kind, rng)
    pts = pts * math.sqrt(area / _polygon_area(pts))
    size = pts.max(axis=0) - pts.min(axis=0)
    if size.min() < MIN_OBJECT_SIDE:
        pts = pts * (MIN_OBJECT_SIDE / size.min())
        size = pts.max(axis=0) - pts.min(axis=0)
    limit = np.array([width - 2.0, height - 2.0])
    if np.any(size > limit):
        pts = pts * float(np.min(limit / size))
        size = pts.max(axis=0) - pts.min(axis=0)
        if size.min() < MIN_OBJECT_SIDE:
            return None
    lo = 1.0 - pts.min(axis=0)
    hi = np.array([width - 1.0, height - 1.0]) - pts.max(axis=0)
    return pts + rng.uniform(lo, np.maximum(lo, hi))


def _has_hole(mask: np.ndarray) -> bool:
    """True where a bool mask has a hole: filling its outer contours adds pixels."""
    m = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(m)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return int(filled.sum()) != int(m.sum())


def area_range(area: float) -> int:
    """COCO area range of an area in pixels: 0 small (< 32^2), 1 medium (< 96^2), 2 large."""
    return 0 if area < AREA_SMALL else 1 if area < AREA_LARGE else 2


def _visible_ok(visible: np.ndarray, full_area: int, iscrowd: bool) -> bool:
    """Whether an object's visible part is large enough, in the same COCO area range as the
    whole object, and (for polygons) hole-free."""
    count = int(visible.sum())
    if count < MIN_VISIBLE_PIXELS or count < MIN_VISIBLE_FRACTION * full_area:
        return False
    if not iscrowd and area_range(count) != area_range(full_area):
        return False
    return iscrowd or not _has_hole(visible)


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (lists of x0, y0, x1, y1, ... in pixel-edge coordinates) of a bool mask [H, W].

    The mask is upsampled x2 before ``cv2.findContours`` so the traced boundary runs a
    quarter pixel inside the pixel edges; ``pycocotools`` decodes the polygons back to the
    same pixels (for hole-free masks). Every polygon has at least 3 points.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    x0, y0 = max(int(xs.min()) - 1, 0), max(int(ys.min()) - 1, 0)
    crop = mask[y0 : int(ys.max()) + 2, x0 : int(xs.max()) + 2].astype(np.uint8)
    up = cv2.resize(crop, (crop.shape[1] * 2, crop.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        c = cv2.approxPolyDP(c, 0.6, True).reshape(-1, 2).astype(np.float64)
        if len(c) < 3:
            continue
        c = (c + 0.5) / 2.0 + np.array([x0, y0], np.float64)
        polygons.append([round(float(v), 2) for v in c.reshape(-1)])
    return polygons


def mask_to_uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE ``{"counts": [...], "size": [h, w]}`` of a bool mask [H, W].

    Counts are run lengths over the column-major flattened mask, starting with a run of zeros.
    """
    h, w = mask.shape
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).astype(int).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(h), int(w)]}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Textured background float32 [H, W, 3], RGB 0..255: gradient + low-contrast blobs."""
    c0 = rng.uniform(25.0, 230.0, 3)
    c1 = np.clip(c0 + rng.uniform(-90.0, 90.0, 3), 0.0, 255.0)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] + (c1 - c0)[None, None, :] * t[..., None]
    blobs = np.zeros((height, width, 3), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(8, 50)), int(rng.integers(8, 50)))
        colour = tuple(float(v) for v in rng.uniform(-22.0, 22.0, 3))
        cv2.ellipse(blobs, center, axes, float(rng.uniform(0, 180)), 0, 360, colour, thickness=-1)
    blobs = cv2.GaussianBlur(blobs, (0, 0), sigmaX=float(rng.uniform(3.0, 7.0)))
    coarse = rng.normal(0.0, 8.0, (6, 6, 3)).astype(np.float32)
    coarse = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return (img + blobs + coarse).astype(np.float32)


def _category_colour(rng: np.random.Generator, kind: str, under: np.ndarray) -> np.ndarray:
    """An RGB colour [3] of category ``kind``'s hue band, the most contrasting of 8 candidates
    with the mean colour of ``under`` [K, 3]."""
    centre = 72.0 * CATEGORY_KINDS.index(kind)
    hues = (centre + rng.uniform(-HUE_BAND_DEGREES / 2, HUE_BAND_DEGREES / 2, 8)) % 360.0
    sat = rng.uniform(0.55, 1.0, 8)
    val = rng.uniform(0.35, 1.0, 8)
    # HSV -> RGB (vectorised), 0..255
    h6 = hues / 60.0
    c = val * sat
    x = c * (1.0 - np.abs(h6 % 2.0 - 1.0))
    zero = np.zeros_like(c)
    sector = np.floor(h6).astype(int) % 6
    table = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x)]
    rgb = np.stack([np.choose(sector, [t[k] for t in table]) for k in range(3)], axis=1)
    candidates = (rgb + (val - c)[:, None]) * 255.0
    ref = under.mean(axis=0) if len(under) else np.full(3, 128.0)
    return candidates[int(np.argmax(np.linalg.norm(candidates - ref[None, :], axis=1)))]


def _paint(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator, kind: str) -> None:
    """Paint ``mask`` (bool [H, W]) onto ``canvas`` [H, W, 3] in a softly shaded colour of ``kind``'s band."""
    colour = _category_colour(rng, kind, canvas[mask])
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (xs * np.cos(theta) + ys * np.sin(theta)) / max(h, w)
    shade = rng.uniform(-25.0, 25.0)
    canvas[ys, xs] = np.clip(colour[None, :] + shade * ramp[:, None], 0.0, 255.0)


def _crowd_mask(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """Union mask (bool [H, W]) of a cluster of 10-25 tiny shapes of one kind, and that kind."""
    kind = CATEGORY_KINDS[int(rng.integers(0, len(CATEGORY_KINDS)))]
    region = rng.uniform(28.0, 56.0, 2)
    origin = rng.uniform([2.0, 2.0], [width - region[0] - 2.0, height - region[1] - 2.0])
    mask = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(10, 26))):
        pts = _shape_polygon(kind, rng)
        pts = pts * math.sqrt(rng.uniform(10.0, 36.0) / _polygon_area(pts))
        pts = pts - pts.min(axis=0)
        span = np.maximum(region - (pts.max(axis=0)), 0.0)
        pts = pts + origin + rng.uniform(0.0, 1.0, 2) * span
        mask |= _rasterize(pts, height, width)
    return mask, kind


def render_image(rng: np.random.Generator, crowd_prob: float = CROWD_PROB) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one synthetic scene.

    Returns the image (uint8 [H, W, 3], RGB) and its annotations as dicts with keys
    ``category_id``, ``iscrowd``, ``bbox`` ([x, y, w, h] pixels), ``area`` (visible pixels)
    and ``segmentation`` (polygons, or an uncompressed RLE for crowd regions); ids are
    assigned by the caller.
    """
    orientation = rng.choice(3, p=[0.45, 0.35, 0.20])  # landscape, portrait, square
    long_side = SHORT_SIDE if orientation == 2 else int(rng.integers(LONG_SIDE_RANGE[0] + 16, LONG_SIDE_RANGE[1] + 1))
    width, height = (long_side, SHORT_SIDE) if orientation == 0 else (SHORT_SIDE, long_side)
    canvas = _background(rng, height, width)

    n_objects = int(rng.integers(1, 7))
    plan: list[tuple[str, float, bool]] = [
        (CATEGORY_KINDS[int(rng.integers(0, len(CATEGORY_KINDS)))], _sample_target_area(rng, height, width), False)
        for _ in range(n_objects)
    ]
    if rng.random() < LARGE_FIRST_PROB:
        # Mostly paint back to front: larger shapes first, smaller ones over them.
        plan.sort(key=lambda p: -p[1])
    if rng.random() < crowd_prob:
        # never first: the first shape always finds room, so every image has an object
        plan.insert(int(rng.integers(1, n_objects + 1)), ("crowd", 0.0, True))

    objects: list[_Object] = []
    for kind, area, iscrowd in plan:
        for _attempt in range(8):
            if iscrowd:
                mask, kind_used = _crowd_mask(rng, height, width)
            else:
                pts = _place_shape(kind, area, rng, height, width)
                if pts is None:
                    continue
                mask, kind_used = _rasterize(pts, height, width), kind
            full_area = int(mask.sum())
            if full_area < MIN_VISIBLE_PIXELS:
                continue
            updates = []
            for i, obj in enumerate(objects):
                if not (obj.visible & mask).any():
                    continue
                vis = obj.visible & ~mask
                if not _visible_ok(vis, obj.full_area, obj.iscrowd):
                    break
                updates.append((i, vis))
            else:
                for i, vis in updates:
                    objects[i].visible = vis
                objects.append(_Object(mask, mask.copy(), _KIND_TO_ID[kind_used], iscrowd, full_area))
                _paint(canvas, mask, rng, kind_used)
                break

    sigma = rng.uniform(3.0, 8.0)
    canvas += rng.normal(0.0, sigma, canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    anns: list[dict[str, Any]] = []
    for obj in objects:
        ys, xs = np.nonzero(obj.visible)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        seg: Any = mask_to_uncompressed_rle(obj.visible) if obj.iscrowd else mask_to_polygons(obj.visible)
        anns.append(
            {
                "segmentation": seg,
                "area": float(len(xs)),
                "iscrowd": int(obj.iscrowd),
                "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                "category_id": obj.category_id,
            }
        )
    return image, anns


def _split_stats(anns: list[dict[str, Any]], n_images: int) -> dict[str, Any]:
    """Counts of a split: images, instances (non-crowd), crowd regions, COCO area-range histogram."""
    hist = {"small": 0, "medium": 0, "large": 0}
    for a in anns:
        if a["iscrowd"]:
            continue
        hist[("small", "medium", "large")[area_range(a["area"])]] += 1
    return {
        "images": n_images,
        "instances": sum(1 for a in anns if not a["iscrowd"]),
        "crowd": sum(1 for a in anns if a["iscrowd"]),
        "area_hist": hist,
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write compact JSON (as COCO ships it) via a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


def _render_and_write(job: tuple[int, int, int, int, str, float]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Render image ``i`` of split ``split_index``, write its JPEG; return its image record and annotations.

    ``job`` = (seed, split_index, i, image_id, image directory, crowd probability). A
    module-level function so a process pool can run it.
    """
    seed, split_index, i, image_id, img_dir, crowd_prob = job
    image, anns = render_image(np.random.default_rng([seed, split_index, i]), crowd_prob)
    file_name = f"{image_id:012d}.jpg"
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"cv2 could not encode {file_name} as JPEG")
    (Path(img_dir) / file_name).write_bytes(buf.tobytes())
    record = {
        "license": 1,
        "file_name": file_name,
        "coco_url": "",
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "date_captured": "2017-01-01 00:00:00",
        "flickr_url": "",
        "id": image_id,
    }
    return record, anns


def generate_synthetic_coco(
    out_dir: Path,
    num_train: int = 2000,
    num_minival: int = 200,
    num_testdev: int = 200,
    seed: int = 0,
    crowd_prob: float = CROWD_PROB,
    workers: int = 1,
) -> dict[str, Any]:
    """Write a synthetic dataset in the COCO 2017 layout under ``out_dir`` (see the module doc).

    Image ids run 1..N across train, minival and test-dev in that order (unique across
    splits), as do annotation ids. ``workers`` > 1 renders in that many spawned processes
    (the calling script then needs an ``if __name__ == "__main__":`` guard, as
    ``pipeline.prepare`` has); 0 or 1 renders in this process. The output does not depend on it.
    Returns a summary ``{"out_dir": str, "seed": int, "splits": {split: {"images",
    "instances", "crowd", "area_hist": {"small", "medium", "large"}}}}``.
    """
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {"train": num_train, "minival": num_minival, "test-dev": num_testdev}
    jobs: list[tuple[int, int, int, int, str, float]] = []
    image_id = 0
    for split_index, (split, img_dir_name, _stem) in enumerate(SPLITS):
        (out_dir / img_dir_name).mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            image_id += 1
            jobs.append((seed, split_index, i, image_id, str(out_dir / img_dir_name), crowd_prob))

    if workers > 1 and len(jobs) >= 64:
        # spawn, not fork: the caller may hold threads (torch, OpenMP) that fork would copy.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = list(pool.map(_render_and_write, jobs, chunksize=32))
    else:
        results = [_render_and_write(job) for job in jobs]

    summary: dict[str, Any] = {"out_dir": str(out_dir), "seed": seed, "splits": {}}
    ann_id, start = 0, 0
    for split, _img_dir_name, ann_stem in SPLITS:
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for record, anns in results[start : start + counts[split]]:
            images.append(record)
            for a in anns:
                ann_id += 1
                annotations.append({**a, "image_id": record["id"], "id": ann_id})
        start += counts[split]
        base = {"info": INFO, "licenses": LICENSES, "images": images}
        _write_json(
            out_dir / "annotations" / f"{ann_stem}.json",
            {**base, "annotations": annotations, "categories": CATEGORIES},
        )
        if split == "test-dev":
            _write_json(out_dir / "annotations" / TEST_DEV_INFO_FILE, {**base, "categories": CATEGORIES})
        summary["splits"][split] = _split_stats(annotations, len(images))
    return summary


def generate_tiny_synthetic_coco(out_dir: Path, seed: int = 0, crowd_prob: float = CROWD_PROB) -> dict[str, Any]:
    """A 16 / 8 / 8 image synthetic dataset for tests (same layout as :func:`generate_synthetic_coco`), in-process."""
    return generate_synthetic_coco(
        out_dir, num_train=16, num_minival=8, num_testdev=8, seed=seed, crowd_prob=crowd_prob, workers=0
    )
