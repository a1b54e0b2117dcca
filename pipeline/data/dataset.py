"""COCO-format detection dataset (real COCO and the synthetic set read through the same code).

Labels are contiguous: ``cat_ids = sorted(category ids)`` and label ``i`` is category
``cat_ids[i]`` (COCO's ids 1..90 with gaps become 0..79). Annotations are validated once,
when the dataset is built (:func:`pipeline.data.checks.load_coco_json`): an unknown category or
image id, a duplicate image, annotation or category id, an empty category list, two categories
with the same name, a malformed JSON file or a record without its required keys raises
:class:`DataError` naming the file and the record; a box with zero or negative width or height
(or lying outside its image) is skipped with a warning naming the file and the annotation.
``iscrowd`` annotations become ignore regions. An image file that is missing, undecodable or of
another size than its record is a DataError naming the image file, the image id and the
annotation file when the sample is read.

Which images are kept (as the COCO tools keep them; see :mod:`pipeline.data.checks`):
evaluation datasets (``build_dataset(train=False)``) keep every listed image, including images
without annotations and crowd-only images; the training dataset (``build_dataset(train=True)``,
``filter_empty_gt=True``) keeps only images with at least one usable non-crowd box, and a train
split left without any image is a DataError naming the file.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from pipeline.data.checks import is_coco_id as _is_id
from pipeline.data.checks import is_finite_number as _finite
from pipeline.data.checks import load_coco_json, no_training_image_error, usable_box
from pipeline.data.images import decode_rgb
from pipeline.data.manifest import SplitInfo
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransforms
from pipeline.errors import ConfigError, DataError, short_repr

__all__ = ["CocoDetectionDataset", "build_dataset", "decode_segmentation", "load_coco_json"]


@dataclass
class _ImageTargets:
    """Validated annotations of one image, in original pixel coordinates."""

    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N]
    ann_ids: list[int]  # [N] annotation ids (for masks)
    ignore_boxes: np.ndarray  # float32 [M, 4] xyxy, iscrowd regions


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


class CocoDetectionDataset(torch.utils.data.Dataset):
    """Images and targets of one COCO annotation file.

    ``dataset[idx]`` returns ``(image, target)``: image FloatTensor [3, H, W] (normalised by
    the transforms), target a dict with

    * ``boxes`` FloatTensor [N, 4]: xyxy pixels in the transformed image
      (COCO ``[x, y, w, h]`` -> ``x, y, x + w, y + h``, no +1);
    * ``labels`` LongTensor [N] in 0..C-1;
    * ``ann_ids`` LongTensor [N]: the annotation id of each box (errors name the record);
    * ``ignore_boxes`` FloatTensor [M, 4]: iscrowd regions, same coordinates;
    * ``masks`` UInt8Tensor [N, H, W] (only with ``with_masks``): decoded at the original size,
      then resized (nearest) and flipped with the image;
    * ``image_id`` int; ``orig_size`` (h0, w0); ``img_size`` (h, w) after resizing;
    * ``scale_factor`` FloatTensor [2] = (sx, sy) original -> resized; ``flipped`` bool.

    ``filter_empty_gt`` (what :func:`build_dataset` sets for training, like mmdetection's option
    of that name) keeps only the images with at least one usable non-crowd box (images without
    annotations, with crowd regions only, or whose boxes are all skipped are left out;
    :class:`DataError` naming the file if no image is left); without it every listed image is kept,
    as COCO evaluation needs.

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
        filter_empty_gt: bool = False,
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
        self.filter_empty_gt = bool(filter_empty_gt)
        if self.filter_empty_gt:
            keep = [k for k, t in enumerate(self._targets) if len(t.labels)]
            if not keep:
                raise no_training_image_error(self.ann_file, len(self.ids))
            self.ids = [self.ids[k] for k in keep]
            self._targets = [self._targets[k] for k in keep]

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
            box, problem = usable_box(a["bbox"], w_img, h_img)
            if box is None:
                warnings.warn(f"{self.ann_file}: annotation id {a['id']} (image id {image_id}) {problem}; skipped",
                              stacklevel=2)
                continue
            if a.get("iscrowd", 0):
                ignore.append(box)
            else:
                boxes.append(box)
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
            "ann_ids": torch.tensor(t.ann_ids, dtype=torch.int64),
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
    file directly). Training datasets keep only the images with a usable non-crowd box
    (``filter_empty_gt``); test datasets keep every image, as COCO evaluation does.
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
        filter_empty_gt=train,
    )
