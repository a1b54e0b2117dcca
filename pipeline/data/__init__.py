"""Data layer: COCO-format datasets (synthetic, real COCO or the user's own files), transforms,
samplers, collation.

Stages read ``data/prepared/manifest.json`` (:func:`load_manifest`) and build datasets with
:func:`build_dataset`; the ``prepare`` stage (:mod:`pipeline.prepare`) writes the data and
the manifest; :func:`check_prepared_splits` checks a user's COCO-format splits before they go
into it.

Exports are resolved lazily (PEP 562), so ``import pipeline.data.synthetic`` (the prepare
stage and its rendering processes) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# exported name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "check_prepared_splits": ("pipeline.data.checks", "check_prepared_splits"),
    "COCO_ARCHIVES": ("pipeline.data.coco_source", "COCO_ARCHIVES"),
    "check_coco_tree": ("pipeline.data.coco_source", "check_coco_tree"),
    "download_coco": ("pipeline.data.coco_source", "download_coco"),
    "is_online": ("pipeline.data.coco_source", "is_online"),
    "missing_coco_items": ("pipeline.data.coco_source", "missing_coco_items"),
    "prepare_coco": ("pipeline.data.coco_source", "prepare_coco"),
    "collate_detection": ("pipeline.data.collate", "collate_detection"),
    "files_splits": ("pipeline.data.files_source", "files_splits"),
    "CocoDetectionDataset": ("pipeline.data.dataset", "CocoDetectionDataset"),
    "build_dataset": ("pipeline.data.dataset", "build_dataset"),
    "decode_segmentation": ("pipeline.data.dataset", "decode_segmentation"),
    "load_coco_json": ("pipeline.data.checks", "load_coco_json"),
    "SPLIT_NAMES": ("pipeline.data.manifest", "SPLIT_NAMES"),
    "Manifest": ("pipeline.data.manifest", "Manifest"),
    "SplitInfo": ("pipeline.data.manifest", "SplitInfo"),
    "load_manifest": ("pipeline.data.manifest", "load_manifest"),
    "write_manifest": ("pipeline.data.manifest", "write_manifest"),
    "GroupedBatchSampler": ("pipeline.data.samplers", "GroupedBatchSampler"),
    "InferenceSampler": ("pipeline.data.samplers", "InferenceSampler"),
    "SYNTHETIC_CATEGORIES": ("pipeline.data.synthetic", "CATEGORIES"),
    "generate_synthetic_coco": ("pipeline.data.synthetic", "generate_synthetic_coco"),
    "generate_tiny_synthetic_coco": ("pipeline.data.synthetic", "generate_tiny_synthetic_coco"),
    "IMAGENET_MEAN": ("pipeline.data.transforms", "IMAGENET_MEAN"),
    "IMAGENET_STD": ("pipeline.data.transforms", "IMAGENET_STD"),
    "DetectionTransforms": ("pipeline.data.transforms", "DetectionTransforms"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.data' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:
    from pipeline.data.checks import check_prepared_splits, load_coco_json
    from pipeline.data.coco_source import (
        COCO_ARCHIVES,
        check_coco_tree,
        download_coco,
        is_online,
        missing_coco_items,
        prepare_coco,
    )
    from pipeline.data.collate import collate_detection
    from pipeline.data.dataset import CocoDetectionDataset, build_dataset, decode_segmentation
    from pipeline.data.files_source import files_splits
    from pipeline.data.manifest import SPLIT_NAMES, Manifest, SplitInfo, load_manifest, write_manifest
    from pipeline.data.samplers import GroupedBatchSampler, InferenceSampler
    from pipeline.data.synthetic import CATEGORIES as SYNTHETIC_CATEGORIES
    from pipeline.data.synthetic import generate_synthetic_coco, generate_tiny_synthetic_coco
    from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransforms
