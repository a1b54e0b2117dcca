"""The prepared-data manifest: where each split's annotation file and images are.

``data/prepared/manifest.json`` is written by the ``prepare`` stage and read by every later
stage, so they never need to know whether the data is synthetic, real COCO or a user's own
COCO-format files::

    {
      "version": 1,
      "source": "synthetic",
      "name": "synthetic",        # optional: the dataset's name in tables and MLflow (default: source)
      "splits": {
        "train":    {"ann_file": "synthetic/annotations/instances_train2017.json",
                     "img_dir": "synthetic/train2017", "has_annotations": true},
        "minival":  {...},
        "test-dev": {...}       # optional: a dataset may have no test-dev split
      },
      "summary": {...}            # optional: counts printed by prepare
    }

``source`` is the prepare stage's ``data.source`` (``synthetic``, ``coco`` or ``files``);
``name`` is what tables and MLflow call the data (``synthetic minival (200 images)``): the source
for synthetic and coco, ``data.files.name`` for ``files``. Manifests written before ``name``
existed load with ``name`` = ``source``. train and minival are always there; test-dev only where
the data has it (a COCO tree without ``test2017/``, a ``files`` dataset without a test-dev file),
and the evaluate stage skips a split the manifest lacks.

Paths inside the manifest's directory are stored relative to it (the prepared folder can
move, e.g. into a ``dvc exp`` temporary copy); others are stored absolute.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DataError, short_repr

SPLIT_NAMES: tuple[str, ...] = ("train", "minival", "test-dev")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class SplitInfo:
    """One split: its COCO annotation file, image directory, and whether the file has annotations
    (false for real COCO test-dev, whose ``image_info`` file lists images only)."""

    name: str
    ann_file: Path
    img_dir: Path
    has_annotations: bool


@dataclass(frozen=True)
class Manifest:
    """The loaded manifest: data source (``"synthetic"``, ``"coco"`` or ``"files"``), splits by
    name (test-dev may be absent), the optional summary written by the prepare stage, and the
    dataset's name as tables and MLflow show it (``""`` given: the source's name)."""

    path: Path
    source: str
    splits: dict[str, SplitInfo]
    summary: dict[str, Any]
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.source)

    def split(self, name: str) -> SplitInfo:
        """The split called ``name``; :class:`DataError` if the manifest has none."""
        if name not in self.splits:
            raise DataError(f"{self.path}: no split {name!r} (have: {sorted(self.splits)})")
        return self.splits[name]


def _store_path(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it, else absolute (POSIX separators)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def write_manifest(
    path: Path,
    source: str,
    splits: Mapping[str, SplitInfo] | Iterable[SplitInfo],
    summary: dict[str, Any] | None = None,
    name: str | None = None,
) -> None:
    """Write the manifest JSON to ``path`` atomically (temporary file + rename).

    ``splits`` is a mapping name -> :class:`SplitInfo` or an iterable of them; split names
    must be among :data:`SPLIT_NAMES`. ``name`` is the dataset's name (default: ``source``).
    """
    path = Path(path)
    items = list(splits.values()) if isinstance(splits, Mapping) else list(splits)
    base = path.parent
    entries: dict[str, Any] = {}
    for s in items:
        if s.name not in SPLIT_NAMES:
            raise DataError(f"{path}: unknown split name {s.name!r} (expected one of {SPLIT_NAMES})")
        entries[s.name] = {
            "ann_file": _store_path(s.ann_file, base),
            "img_dir": _store_path(s.img_dir, base),
            "has_annotations": bool(s.has_annotations),
        }
    doc: dict[str, Any] = {"version": MANIFEST_VERSION, "source": source, "name": name or source,
                           "splits": entries}
    if summary is not None:
        doc["summary"] = summary
    base.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _entry_path(value: Any, path: Path, name: str, key: str) -> str:
    """A manifest path entry: a non-empty string without NUL; DataError naming the split otherwise."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise DataError(f"{path}: split {name!r} has {key} {short_repr(value)}; need a path string")
    return value


def load_manifest(path: Path) -> Manifest:
    """Read a manifest; relative paths resolve against its directory.

    Raises :class:`DataError` naming the file (and the split) when it is missing or unreadable,
    not UTF-8 JSON (line/column), not an object with ``source`` and ``splits``, or a split
    lacks a key or holds a value of the wrong type (paths are strings, ``has_annotations`` a
    bool, split names among :data:`SPLIT_NAMES`, ``name`` a non-empty string where present).
    A manifest without ``name`` (written before it existed) gets ``name`` = ``source``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"{path}: manifest not found; run the prepare stage (python -m pipeline.prepare)") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
        raise DataError(f"{path}: unusable JSON: {e}") from e
    except RecursionError as e:
        raise DataError(f"{path}: JSON nested too deeply to parse") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read the manifest: {e}") from e
    if not isinstance(doc, dict) or "source" not in doc or not isinstance(doc.get("splits"), dict):
        raise DataError(f"{path}: not a manifest (needs 'source' and a 'splits' object)")
    if not isinstance(doc["source"], str):
        raise DataError(f"{path}: 'source' must be a string such as 'synthetic' or 'coco'")
    dataset_name = doc.get("name", doc["source"])
    if "name" in doc and (not isinstance(dataset_name, str) or not dataset_name.strip()):
        raise DataError(f"{path}: 'name' must be a non-empty string (the dataset's name), got {short_repr(dataset_name)}")
    summary = doc.get("summary") or {}
    if not isinstance(summary, dict):
        raise DataError(f"{path}: 'summary' must be an object, got {type(summary).__name__}")
    base = path.parent
    splits: dict[str, SplitInfo] = {}
    for name, entry in doc["splits"].items():
        if name not in SPLIT_NAMES:
            raise DataError(f"{path}: unknown split name {short_repr(name)} (expected one of {SPLIT_NAMES})")
        try:
            ann_file, img_dir, has_ann = entry["ann_file"], entry["img_dir"], entry["has_annotations"]
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: split {name!r} lacks key {e} (needs ann_file, img_dir, has_annotations)") from e
        if not isinstance(has_ann, bool):
            raise DataError(f"{path}: split {name!r} has has_annotations {short_repr(has_ann)}; need true or false")
        ann_file = _entry_path(ann_file, path, name, "ann_file")
        img_dir = _entry_path(img_dir, path, name, "img_dir")
        splits[name] = SplitInfo(name, base / ann_file, base / img_dir, has_ann)
    return Manifest(path=path, source=doc["source"], splits=splits, summary=dict(summary), name=dataset_name)
