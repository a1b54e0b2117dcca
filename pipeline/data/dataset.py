"""COCO-format detection dataset (real COCO and the synthetic set read through the same code).

Labels are contiguous: ``cat_ids = sorted(category ids)`` and label ``i`` is category
``cat_ids[i]`` (COCO's ids 1..90 with gaps become 0..79). Annotations are validated once,
when the dataset is built: an unknown category or image id, a malformed JSON file or a
record without its required keys raises :class:`DataError` naming the file and the record;
a box with zero or negative width or height (or lying outside its image) is skipped with a
warning naming the file and the annotation. ``iscrowd`` annotations become ignore regions.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.data.coco_source import load_json_file
from pipeline.data.images import MAX_IMAGE_PIXELS, decode_rgb, file_name_problem
from pipeline.data.manifest import SplitInfo
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransforms
from pipeline.errors import ConfigError, DataError, short_repr

_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


@dataclass
class _ImageTargets:
    """Validated annotations of one image, in original pixel coordinates."""

    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N]
    ann_ids: list[int]  # [N] annotation ids (for masks)
    ignore_boxes: np.ndarray  # float32 [M, 4] xyxy, iscrowd regions


def _finite(value: Any) -> bool:
    """Whether ``value`` is a JSON number (not a bool) whose float is finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond the float range
        return False


def _is_id(value: Any) -> bool:
    """Whether ``value`` is a usable COCO id: an int (not a bool) within int64."""
    return isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63)


def _rle_counts(counts: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in Python).

    Raises ValueError for a character outside the encoding or a string that ends inside a number.
    """
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("compressed RLE ends inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE holds {counts[p]!r}, outside its alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_rle(segmentation: dict[str, Any], height: int, width: int) -> None:
    """Raise ValueError unless the RLE's run lengths are non-negative and cover height x width
    pixels exactly (pycocotools' decoder writes past its buffer otherwise)."""
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(_is_id(c) for c in counts):
            raise ValueError("uncompressed RLE counts must be integers")
        runs = counts
    elif isinstance(counts, str):
        runs = _rle_counts(counts)
    else:
        raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE run lengths do not cover the {width}x{height} image exactly")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to uint8 [height, width].

    Polygons with fewer than 3 points are ignored. Raises ValueError for an unusable
    segmentation (no valid polygon, a coordinate that is not a finite number or lies far
    outside the image, an RLE of another size or whose runs do not cover the image, an
    unknown format): these never reach pycocotools' C code, which trusts its input.
    """
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            raise ValueError("no polygon with at least 3 points")
        reach = 2 * max(height, width)  # rasterising walks every pixel between two points
        for p in polys:
            if not all(_finite(v) and -reach <= v <= reach for v in p):
                raise ValueError(f"polygon coordinates must be finite numbers within [-{reach}, {reach}]")
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in polys], height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not isinstance(size, list) or size != [height, width]:
            raise ValueError(f"RLE size {size!r} differs from the image size {[height, width]}")
        _check_rle(segmentation, height, width)
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
    else:
        raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")
    with warnings.catch_warnings():
        # pycocotools 2.0.x under numpy 2 warns about its __array__ signature on every decode
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.asarray(mask_utils.decode(rle), dtype=np.uint8)


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
    if not _is_id(img["id"]):
        raise DataError(f"{ann_file}: image #{i} has id {short_repr(img['id'])}; need an integer")
    problem = file_name_problem(img["file_name"])
    if problem:
        raise DataError(f"{ann_file}: image id {img['id']} has file_name {short_repr(img['file_name'])}: {problem}")
    w, h = img["width"], img["height"]
    if not (_is_id(w) and _is_id(h) and w >= 1 and h >= 1 and w * h <= MAX_IMAGE_PIXELS):
        raise DataError(f"{ann_file}: image id {img['id']} has width {short_repr(w)} and height {short_repr(h)}; need "
                        f"positive integers of at most {MAX_IMAGE_PIXELS} pixels together")


def load_coco_json(ann_file: Path) -> COCO:
    """Parse and validate a COCO annotation file into a pycocotools ``COCO`` index.

    Requires ``images`` and ``categories`` (``annotations`` may be absent, as in the test-dev
    image-info file); every image needs id, file_name, height, width; every annotation id,
    image_id, category_id and a 4-number bbox, and must reference a known image and category.
    """
    ann_file = Path(ann_file)
    data = load_json_file(ann_file)
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object at the top level, got {type(data).__name__}")
    absent = [k for k in ("images", "categories") if k not in data]
    if absent:
        raise DataError(f"{ann_file}: missing required key(s) {absent}")
    _require_keys(data["images"], _IMAGE_KEYS, "image", ann_file)
    _require_keys(data["categories"], ("id", "name"), "category", ann_file)
    if not data["categories"]:
        raise DataError(f"{ann_file}: 'categories' is empty")
    anns = data.get("annotations", [])
    _require_keys(anns, _ANN_KEYS, "annotation", ann_file)

    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        _check_image_record(img, i, ann_file)
        if img["id"] in image_ids:
            raise DataError(f"{ann_file}: duplicate image id {img['id']}")
        image_ids.add(img["id"])
    cat_ids: set[int] = set()
    for i, c in enumerate(data["categories"]):
        if not _is_id(c["id"]):
            raise DataError(f"{ann_file}: category #{i} has id {short_repr(c['id'])}; need an integer")
        if not isinstance(c["name"], str):
            raise DataError(f"{ann_file}: category id {c['id']} has name {short_repr(c['name'])}; need a string")
        if c["id"] in cat_ids:
            raise DataError(f"{ann_file}: duplicate category id {c['id']}")
        cat_ids.add(c["id"])
    ann_ids: set[int] = set()
    for i, a in enumerate(anns):
        for key in ("id", "image_id", "category_id"):
            if not _is_id(a[key]):
                ident = f"annotation id {a['id']}" if key != "id" else f"annotation #{i}"
                raise DataError(f"{ann_file}: {ident} has {key} {short_repr(a[key])}; need an integer")
        if a["id"] in ann_ids:
            raise DataError(f"{ann_file}: duplicate annotation id {a['id']}")
        ann_ids.add(a["id"])
        if a["category_id"] not in cat_ids:
            raise DataError(
                f"{ann_file}: annotation id {a['id']} (image id {a['image_id']}) has unknown category id "
                f"{a['category_id']} (known: {sorted(cat_ids)[:20]})"
            )
        if a["image_id"] not in image_ids:
            raise DataError(f"{ann_file}: annotation id {a['id']} references unknown image id {a['image_id']}")
        bbox = a["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
            raise DataError(f"{ann_file}: annotation id {a['id']} has a malformed bbox {short_repr(bbox)} "
                            f"(need [x, y, w, h], four finite numbers)")
        if a.get("iscrowd", 0) not in (0, 1) or isinstance(a.get("iscrowd", 0), float):
            raise DataError(f"{ann_file}: annotation id {a['id']} has iscrowd {short_repr(a.get('iscrowd'))}; need 0 or 1")
        if "area" in a and not _finite(a["area"]):
            raise DataError(f"{ann_file}: annotation id {a['id']} has area {short_repr(a['area'])}; need a finite number")

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


class CocoDetectionDataset(torch.utils.data.Dataset):
    """Images and targets of one COCO annotation file.

    ``dataset[idx]`` returns ``(image, target)``: image FloatTensor [3, H, W] (normalised by
    the transforms), target a dict with

    * ``boxes`` FloatTensor [N, 4]: xyxy pixels in the transformed image
      (COCO ``[x, y, w, h]`` -> ``x, y, x + w, y + h``, no +1);
    * ``labels`` LongTensor [N] in 0..C-1;
    * ``ignore_boxes`` FloatTensor [M, 4]: iscrowd regions, same coordinates;
    * ``masks`` UInt8Tensor [N, H, W] (only with ``with_masks``): decoded at the original size,
      then resized (nearest) and flipped with the image;
    * ``image_id`` int; ``orig_size`` (h0, w0); ``img_size`` (h, w) after resizing;
    * ``scale_factor`` FloatTensor [2] = (sx, sy) original -> resized; ``flipped`` bool.

    All randomness of sample ``idx`` comes from ``np.random.default_rng([seed, epoch, idx])``,
    so it does not depend on the number of DataLoader workers and is reproduced after a
    resume; call :meth:`set_epoch` before each epoch (before the DataLoader's iterator is
    created; persistent workers would keep the old epoch).
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transforms: DetectionTransforms | None = None,
        with_masks: bool = False,
        seed: int = 0,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        self.transforms = transforms if transforms is not None else DetectionTransforms()
        self.with_masks = with_masks
        self.seed = int(seed)
        self.epoch = 0
        self.coco = load_coco_json(self.ann_file)
        self.cat_ids: list[int] = sorted(self.coco.cats)
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = dict(enumerate(self.cat_ids))
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.ids: list[int] = sorted(self.coco.imgs)
        self.has_annotations = "annotations" in self.coco.dataset
        self._targets: list[_ImageTargets] = [self._build_targets(i) for i in self.ids]

    @property
    def num_classes(self) -> int:
        """Number of categories C (labels are 0..C-1)."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random transforms ``__getitem__`` draws."""
        self.epoch = int(epoch)

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, in dataset order (from the JSON, no decoding)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def _build_targets(self, image_id: int) -> _ImageTargets:
        """Valid boxes/labels and crowd boxes of one image; warn about and skip degenerate boxes."""
        info = self.coco.imgs[image_id]
        w_img, h_img = float(info["width"]), float(info["height"])
        boxes, labels, ann_ids, ignore = [], [], [], []
        for a in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = (float(v) for v in a["bbox"])
            if w <= 0 or h <= 0:
                warnings.warn(
                    f"{self.ann_file}: annotation id {a['id']} (image id {image_id}) has a box with zero or "
                    f"negative width/height {a['bbox']}; skipped",
                    stacklevel=2,
                )
                continue
            x1, y1 = min(max(x, 0.0), w_img), min(max(y, 0.0), h_img)
            x2, y2 = min(max(x + w, 0.0), w_img), min(max(y + h, 0.0), h_img)
            if x2 <= x1 or y2 <= y1:
                warnings.warn(
                    f"{self.ann_file}: annotation id {a['id']} (image id {image_id}) has a box {a['bbox']} outside "
                    f"its {int(w_img)}x{int(h_img)} image; skipped",
                    stacklevel=2,
                )
                continue
            if a.get("iscrowd", 0):
                ignore.append([x1, y1, x2, y2])
            else:
                boxes.append([x1, y1, x2, y2])
                labels.append(self.cat_id_to_label[a["category_id"]])
                ann_ids.append(a["id"])
        return _ImageTargets(
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            ann_ids=ann_ids,
            ignore_boxes=np.asarray(ignore, np.float32).reshape(-1, 4),
        )

    def annotated_boxes(self, idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``idx``'s annotations in original pixels, before any transform: (boxes float32
        [N, 4] xyxy, labels int64 [N] in 0..C-1, crowd boxes float32 [M, 4])."""
        t = self._targets[idx]
        return t.boxes, t.labels, t.ignore_boxes

    def load_image(self, idx: int) -> np.ndarray:
        """Decode image ``idx`` as uint8 [H0, W0, 3] RGB (:func:`pipeline.data.images.decode_rgb`:
        grayscale, palette, RGBA, CMYK and 16-bit images are converted; the size recorded in the
        annotation file is checked against the header before any pixel is decoded)."""
        image_id = self.ids[idx]
        info = self.coco.imgs[image_id]
        path = self.img_dir / info["file_name"]
        try:
            found = path.is_file()
        except OSError as e:  # e.g. a name the file system refuses
            raise DataError(f"{short_repr(str(path), 300)}: cannot look up the image file (image id {image_id}, "
                            f"listed in {self.ann_file}): {e.strerror}") from e
        if not found:
            raise DataError(f"{path}: image file not found (image id {image_id}, listed in {self.ann_file})")
        return decode_rgb(path, record=f"image id {image_id}, listed in {self.ann_file}",
                          expected_size=(info["width"], info["height"]))

    def _masks(self, t: _ImageTargets, height: int, width: int) -> np.ndarray:
        """Instance masks uint8 [N, height, width] of the valid non-crowd annotations."""
        masks = np.zeros((len(t.ann_ids), height, width), np.uint8)
        for i, ann_id in enumerate(t.ann_ids):
            ann = self.coco.anns[ann_id]
            try:
                masks[i] = decode_segmentation(ann.get("segmentation"), height, width)
            except (ValueError, TypeError, OverflowError) as e:
                raise DataError(f"{self.ann_file}: annotation id {ann_id} (image id {self.coco.anns[ann_id]['image_id']}): "
                                f"unusable segmentation: {e}") from e
        return masks

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image = self.load_image(idx)
        h0, w0 = image.shape[:2]
        t = self._targets[idx]
        target: dict[str, Any] = {
            "boxes": t.boxes,
            "labels": torch.from_numpy(t.labels.copy()),
            "ignore_boxes": t.ignore_boxes,
            "image_id": int(self.ids[idx]),
            "orig_size": (h0, w0),
        }
        if self.with_masks:
            target["masks"] = self._masks(t, h0, w0)
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        return self.transforms(image, target, rng)


def build_dataset(split: SplitInfo, data_cfg: dict[str, Any], train: bool, seed: int) -> CocoDetectionDataset:
    """Dataset of a manifest split with the transforms of a model's ``data`` configuration.

    ``data_cfg`` keys: ``train_scales`` ([[long, short], ...], needed when ``train``),
    ``test_scale`` ([long, short], needed otherwise), ``multiscale_mode`` ("value"),
    ``flip_ratio`` (0.5), ``mean``/``std`` (ImageNet, RGB 0..255), ``with_masks`` (False),
    ``size_divisor`` (used by the collate function, not here). Test datasets use
    ``test_scale``, never flip and never decode masks (evaluation reads the annotation
    file directly).
    """
    key = "train_scales" if train else "test_scale"
    if key not in data_cfg:
        raise ConfigError(f"data configuration lacks {key!r} (have: {sorted(data_cfg)})")
    try:
        if train:
            transforms = DetectionTransforms(
                scales=[tuple(s) for s in data_cfg["train_scales"]],
                multiscale_mode=data_cfg.get("multiscale_mode", "value"),
                flip_ratio=float(data_cfg.get("flip_ratio", 0.5)),
                mean=data_cfg.get("mean", IMAGENET_MEAN),
                std=data_cfg.get("std", IMAGENET_STD),
            )
        else:
            transforms = DetectionTransforms(
                scales=[tuple(data_cfg["test_scale"])],
                flip_ratio=0.0,
                mean=data_cfg.get("mean", IMAGENET_MEAN),
                std=data_cfg.get("std", IMAGENET_STD),
            )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"data configuration: {e}") from e
    return CocoDetectionDataset(
        split.ann_file,
        split.img_dir,
        transforms=transforms,
        with_masks=bool(data_cfg.get("with_masks", False)) and train,
        seed=seed,
    )
