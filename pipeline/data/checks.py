"""Checks of a COCO-format dataset, for a user's own annotation files and image folders.

Two levels, both raising :class:`~pipeline.errors.DataError` with a message that names the file
(the annotation file, the image file or the image folder) and the record at fault:

* :func:`load_coco_json` parses and validates one annotation file (every dataset is built through
  it): required keys and types, duplicate image, annotation and category ids, an empty category
  list, two categories with the same name, an annotation whose category or image is unknown, a
  malformed bbox, iscrowd or area;
* :func:`check_prepared_splits` checks the splits a prepare stage is about to write into the
  manifest: each annotation file as above, every image file present in its folder and of the size
  its record gives (header only, nothing decoded), at least one image per split, at least one
  usable non-crowd box in the train split, and the same categories (ids and names) in every split.

Category names must be unique, compared exactly as written: ``"Dog"`` and ``"dog"`` (or
``"dog "``) are two names, since nothing in the pipeline folds case or spaces; two categories
called ``"dog"`` are refused (predictions, pictures and reports name classes by their name).

What is kept where (the conventions of the COCO tools):

* evaluation datasets (minival, test-dev: ``build_dataset(train=False)``, and pycocotools'
  ``COCOeval``) keep every listed image, including images without annotations and images whose
  only annotations are crowd regions: detections on them are false positives (outside the crowd
  regions), exactly as the official COCO evaluation counts them;
* the training dataset (``build_dataset(train=True)``) keeps only images with at least one usable
  non-crowd box (:func:`usable_box`), as mmdetection's ``filter_empty_gt`` and detectron2's
  ``filter_empty_annotations`` (which also drops crowd-only images) do: an image without
  annotations, with crowd regions only, or whose boxes are all empty or outside the image is left
  out of training. A train split left with no image is a DataError.

This module imports json, numpy and pycocotools only (no torch), so the prepare stage stays light.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from pipeline.data.coco_source import load_json_file
from pipeline.data.images import MAX_IMAGE_PIXELS, file_name_problem, read_image_size
from pipeline.data.manifest import SplitInfo
from pipeline.errors import DataError, short_repr

_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox")

#: At most this many differences (categories) or problems are spelled out in one message.
_MAX_LISTED = 10


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a JSON number (not a bool) whose float is finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond the float range
        return False


def is_coco_id(value: Any) -> bool:
    """Whether ``value`` is a usable COCO id: an int (not a bool) within int64."""
    return isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63)


def usable_box(bbox: Sequence[float], width: float, height: float) -> tuple[list[float] | None, str | None]:
    """A validated COCO ``[x, y, w, h]`` box clipped to its ``width`` x ``height`` image.

    Returns ``([x1, y1, x2, y2], None)`` for a usable box, or ``(None, why)`` for a box with zero
    or negative width or height, or one lying entirely outside the image (such boxes are skipped
    with a warning by the dataset and do not count as ground truth for training).
    """
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None, f"has a box with zero or negative width/height {list(bbox)}"
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None, f"has a box {list(bbox)} outside its {int(width)}x{int(height)} image"
    return [x1, y1, x2, y2], None


def no_training_image_error(ann_file: Path, n_images: int) -> DataError:
    """The DataError of a train split in which no image has a usable non-crowd box."""
    if n_images == 0:
        return DataError(f"{ann_file}: no image to train on: 'images' is empty")
    return DataError(
        f"{ann_file}: no image to train on: none of its {n_images} image(s) has a usable non-crowd box "
        f"(training leaves out images without annotations, with crowd regions only, or whose boxes are all "
        f"empty or outside the image)"
    )


def _require_keys(records: Any, keys: tuple[str, ...], what: str, ann_file: Path) -> None:
    if not isinstance(records, list):
        raise DataError(f"{ann_file}: '{what}s' must be a list, got {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{ann_file}: {what} #{i} is not an object")
        absent = [k for k in keys if k not in rec]
        if absent:
            ident = f"{what} id {short_repr(rec['id'])}" if "id" in rec else f"{what} #{i}"
            raise DataError(f"{ann_file}: {ident} lacks required key(s) {absent}")


def _check_image_record(img: dict[str, Any], i: int, ann_file: Path) -> None:
    """Refuse an image record whose id, file_name, width or height is unusable, naming it."""
    if not is_coco_id(img["id"]):
        raise DataError(f"{ann_file}: image #{i} has id {short_repr(img['id'])}; need an integer")
    problem = file_name_problem(img["file_name"])
    if problem:
        raise DataError(f"{ann_file}: image id {img['id']} has file_name {short_repr(img['file_name'])}: {problem}")
    w, h = img["width"], img["height"]
    if not (is_coco_id(w) and is_coco_id(h) and w >= 1 and h >= 1 and w * h <= MAX_IMAGE_PIXELS):
        raise DataError(f"{ann_file}: image id {img['id']} has width {short_repr(w)} and height {short_repr(h)}; need "
                        f"positive integers of at most {MAX_IMAGE_PIXELS} pixels together")


def _check_categories(categories: list[dict[str, Any]], ann_file: Path) -> set[int]:
    """Validate the category records (ids, names, both unique); return the category ids."""
    if not categories:
        raise DataError(f"{ann_file}: 'categories' is empty; a detection dataset needs at least one category")
    cat_ids: set[int] = set()
    id_of_name: dict[str, int] = {}
    for i, c in enumerate(categories):
        if not is_coco_id(c["id"]):
            raise DataError(f"{ann_file}: category #{i} has id {short_repr(c['id'])}; need an integer")
        if not isinstance(c["name"], str):
            raise DataError(f"{ann_file}: category id {c['id']} has name {short_repr(c['name'])}; need a string")
        if c["id"] in cat_ids:
            raise DataError(f"{ann_file}: duplicate category id {c['id']}")
        cat_ids.add(c["id"])
        if c["name"] in id_of_name:
            raise DataError(f"{ann_file}: category ids {id_of_name[c['name']]} and {c['id']} have the same name "
                            f"{short_repr(c['name'])}; category names must be unique (compared exactly as written)")
        id_of_name[c["name"]] = c["id"]
    return cat_ids


def validate_coco_dict(data: Any, ann_file: Path) -> None:
    """Raise DataError naming ``ann_file`` and the record unless ``data`` (a parsed annotation
    file) is a usable COCO detection document; see :func:`load_coco_json`."""
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object at the top level, got {type(data).__name__}")
    absent = [k for k in ("images", "categories") if k not in data]
    if absent:
        raise DataError(f"{ann_file}: missing required key(s) {absent}")
    _require_keys(data["images"], _IMAGE_KEYS, "image", ann_file)
    _require_keys(data["categories"], ("id", "name"), "category", ann_file)
    anns = data.get("annotations", [])
    _require_keys(anns, _ANN_KEYS, "annotation", ann_file)

    file_of_image: dict[int, Any] = {}
    for i, img in enumerate(data["images"]):
        _check_image_record(img, i, ann_file)
        if img["id"] in file_of_image:
            raise DataError(f"{ann_file}: duplicate image id {img['id']} (file_name {short_repr(file_of_image[img['id']])} "
                            f"and {short_repr(img['file_name'])})")
        file_of_image[img["id"]] = img["file_name"]
    cat_ids = _check_categories(data["categories"], ann_file)
    image_of_ann: dict[int, Any] = {}
    for i, a in enumerate(anns):
        for key in ("id", "image_id", "category_id"):
            if not is_coco_id(a[key]):
                ident = f"annotation id {a['id']}" if key != "id" else f"annotation #{i}"
                raise DataError(f"{ann_file}: {ident} has {key} {short_repr(a[key])}; need an integer")
        if a["id"] in image_of_ann:
            raise DataError(f"{ann_file}: duplicate annotation id {a['id']} (on image id {image_of_ann[a['id']]} "
                            f"and image id {a['image_id']})")
        image_of_ann[a["id"]] = a["image_id"]
        if a["category_id"] not in cat_ids:
            raise DataError(
                f"{ann_file}: annotation id {a['id']} (image id {a['image_id']}) has unknown category id "
                f"{a['category_id']} (known: {sorted(cat_ids)[:20]})"
            )
        if a["image_id"] not in file_of_image:
            raise DataError(f"{ann_file}: annotation id {a['id']} references unknown image id {a['image_id']}")
        bbox = a["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
            raise DataError(f"{ann_file}: annotation id {a['id']} has a malformed bbox {short_repr(bbox)} "
                            f"(need [x, y, w, h], four finite numbers)")
        if a.get("iscrowd", 0) not in (0, 1) or isinstance(a.get("iscrowd", 0), float):
            raise DataError(f"{ann_file}: annotation id {a['id']} has iscrowd {short_repr(a.get('iscrowd'))}; need 0 or 1")
        if "area" in a and not is_finite_number(a["area"]):
            raise DataError(f"{ann_file}: annotation id {a['id']} has area {short_repr(a['area'])}; need a finite number")


def load_coco_json(ann_file: Path) -> COCO:
    """Parse and validate a COCO annotation file into a pycocotools ``COCO`` index.

    Requires ``images`` and a non-empty ``categories`` (``annotations`` may be absent, as in the
    test-dev image-info file); every image needs id, file_name, height, width; every category an
    id and a name, both unique (names compared exactly); every annotation id, image_id,
    category_id and a 4-number bbox, and must reference a known image and category. Image and
    annotation ids must be unique. Raises :class:`DataError` naming the file and the record.
    """
    ann_file = Path(ann_file)
    data = load_json_file(ann_file)
    validate_coco_dict(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


def _listed(items: list[str]) -> str:
    """``items`` joined with "; ", the first :data:`_MAX_LISTED` of them and a count of the rest."""
    more = len(items) - _MAX_LISTED
    return "; ".join(items[:_MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")


def check_split_images(split: SplitInfo, coco: COCO) -> None:
    """Raise DataError unless every image ``coco`` lists is a readable JPEG/PNG file in
    ``split.img_dir`` whose header declares the size its record gives (no pixel is decoded).

    A missing folder, then missing files (the folder, the first missing file with its image id, and
    how many are missing), then unreadable files, then size mismatches are reported, each with the
    first one found and the count."""
    img_dir = Path(split.img_dir)
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found (split {split.name!r}, whose {len(coco.imgs)} image(s) are "
                        f"listed in {split.ann_file})")
    missing: list[int] = []  # image ids
    unreadable: list[str] = []
    mismatched: list[str] = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        path = img_dir / info["file_name"]
        record = f"image id {image_id}, listed in {split.ann_file}"
        try:
            found = path.is_file()
        except OSError:  # a name the file system refuses: report it as missing
            found = False
        if not found:
            missing.append(image_id)
            continue
        try:
            size = read_image_size(path, record)
        except DataError as e:
            unreadable.append(str(e))
            continue
        if size != (info["width"], info["height"]):
            mismatched.append(f"{path}: header size {size[0]}x{size[1]} differs from the {info['width']}x{info['height']} "
                              f"recorded ({record})")
    if missing:
        image_id = missing[0]
        raise DataError(f"{img_dir}: {len(missing)} of the {len(coco.imgs)} image(s) listed in {split.ann_file} "
                        f"(split {split.name!r}) are missing from this folder; the first is "
                        f"{short_repr(coco.imgs[image_id]['file_name'], 300)} (image id {image_id})")
    if unreadable:
        raise DataError(f"{unreadable[0]}" + (f" (and {len(unreadable) - 1} more unreadable image(s) in {img_dir})"
                                              if len(unreadable) > 1 else ""))
    if mismatched:
        raise DataError(f"{mismatched[0]}" + (f" (and {len(mismatched) - 1} more image(s) in {img_dir} whose size "
                                              f"differs from their record)" if len(mismatched) > 1 else ""))


def _training_images(coco: COCO) -> int:
    """How many images of ``coco`` have at least one usable non-crowd box."""
    count = 0
    for image_id, info in coco.imgs.items():
        for a in coco.imgToAnns.get(image_id, []):
            if not a.get("iscrowd", 0) and usable_box(a["bbox"], info["width"], info["height"])[0] is not None:
                count += 1
                break
    return count


def _category_differences(a: dict[int, str], b: dict[int, str], name_a: str, name_b: str) -> list[str]:
    diffs = []
    for cat_id in sorted(set(a) | set(b)):
        if cat_id not in b:
            diffs.append(f"id {cat_id} ({short_repr(a[cat_id])}) only in {name_a}")
        elif cat_id not in a:
            diffs.append(f"id {cat_id} ({short_repr(b[cat_id])}) only in {name_b}")
        elif a[cat_id] != b[cat_id]:
            diffs.append(f"id {cat_id} is {short_repr(a[cat_id])} in {name_a} but {short_repr(b[cat_id])} in {name_b}")
    return diffs


def check_prepared_splits(splits: list[SplitInfo]) -> None:
    """Raise :class:`DataError` unless ``splits`` (what the prepare stage writes into the manifest)
    form a usable COCO-format dataset.

    For every split: its annotation file parses and validates (:func:`load_coco_json`: unknown
    category or image ids, duplicate ids, an empty category list, two categories with the same
    name, malformed records), it lists at least one image, an annotated split has an
    ``annotations`` list, and every image file exists in ``img_dir`` with the width and height its
    record gives (read from the header, nothing decoded: :func:`check_split_images`). The
    ``train`` split needs at least one image with a usable non-crowd box (the others keep every
    image; see the module docstring). Every split must list the same categories (same ids, same
    names) as the first one.
    """
    reference: tuple[SplitInfo, dict[int, str]] | None = None
    for split in splits:
        ann_file = Path(split.ann_file)
        coco = load_coco_json(ann_file)
        if not coco.imgs:
            raise DataError(f"{ann_file}: 'images' is empty: split {split.name!r} has no image")
        if split.has_annotations and not isinstance(coco.dataset.get("annotations"), list):
            raise DataError(f"{ann_file}: no 'annotations' list, but split {split.name!r} is used as annotated")
        if split.name == "train" and _training_images(coco) == 0:
            raise no_training_image_error(ann_file, len(coco.imgs))
        names = {int(c["id"]): c["name"] for c in coco.dataset["categories"]}
        if reference is None:
            reference = (split, names)
        else:
            first, first_names = reference
            diffs = _category_differences(first_names, names, f"split {first.name!r}", f"split {split.name!r}")
            if diffs:
                raise DataError(f"{first.ann_file} and {ann_file} list different categories ({len(diffs)} "
                                f"difference(s)): {_listed(diffs)}; every split needs the same category ids and names")
        check_split_images(split, coco)
