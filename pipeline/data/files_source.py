"""Your own COCO-format dataset: ``data.source: files``, explicit annotation files and image folders.

``params['data']['files']``::

    name: my-dataset                  # how tables and MLflow name the data ("": the train file's stem)
    train:    {ann_file: path/to/train.json, img_dir: path/to/train_images}    # required
    minival:  {ann_file: path/to/val.json,   img_dir: path/to/val_images}      # required
    test-dev: {ann_file: "", img_dir: ""}                                      # optional

Each split is a COCO annotation file (a JSON object with ``images`` and ``categories``, and
``annotations`` for train and minival) and the folder its ``file_name`` entries are relative to.
Relative paths resolve against the workspace root (:func:`pipeline.paths.workspace_root`, as
``data.coco.root`` does). test-dev is optional (``null``, or both paths empty): a test-dev file
with an ``annotations`` key is scored by the evaluate stage; one without (an image-info file, as
COCO's own test-dev) is only predicted and written as a submission file.

Nothing is copied: :func:`files_splits` checks the files and returns manifest splits with their
absolute paths (as the ``coco`` source does). Bad settings raise :class:`ConfigError` naming the
``data.files`` key; bad files raise :class:`DataError` naming the file, the key that points at it
and the record at fault. The checks here are the cheap ones that catch a wrong path or a wrong
file early (every listed image exists, a few have the recorded size, every split has the train
file's categories); the dataset validates every record when it is built
(:func:`pipeline.data.dataset.load_coco_json`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.data.coco_source import check_listed_images, load_json_file
from pipeline.data.manifest import SplitInfo
from pipeline.errors import ConfigError, DataError, short_repr

#: The splits of ``data.files`` in manifest order, and the ones it must have.
FILES_SPLITS: tuple[str, ...] = ("train", "minival", "test-dev")
REQUIRED_SPLITS: tuple[str, ...] = ("train", "minival")
SPLIT_KEYS: tuple[str, ...] = ("ann_file", "img_dir")
FILES_KEYS: tuple[str, ...] = ("name", *FILES_SPLITS)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def refuse_unknown_keys(mapping: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """:class:`ConfigError` naming ``params.yaml: <where>`` and the keys of ``mapping`` not in ``allowed``."""
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise ConfigError(f"params.yaml: {where} has unknown key(s) {', '.join(short_repr(k) for k in unknown)} "
                          f"(expected {', '.join(allowed)})")


def split_paths(cfg: Any, split: str, base: Path) -> tuple[Path, Path] | None:
    """``(ann_file, img_dir)`` of ``data.files.<split>``, resolved against ``base`` where relative;
    None when the split is not given (``null``, or both paths empty). :class:`ConfigError` naming
    the key when it is not a mapping of ``ann_file`` and ``img_dir`` path strings, has other keys,
    or gives one path without the other."""
    where = f"data.files.{split}"
    entry = cfg.get(split) if isinstance(cfg, dict) else None
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ConfigError(f"params.yaml: {where} must be a mapping {{ann_file: <COCO annotation JSON>, "
                          f"img_dir: <image folder>}}, got {short_repr(entry)}")
    refuse_unknown_keys(entry, SPLIT_KEYS, where)
    values = {k: entry.get(k) for k in SPLIT_KEYS}
    for k, v in values.items():
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"params.yaml: {where}.{k} must be a path string, got {short_repr(v)}")
        if isinstance(v, str) and "\0" in v:
            raise ConfigError(f"params.yaml: {where}.{k} holds a NUL character")
    if all(_empty(v) for v in values.values()):
        return None
    for k, v in values.items():
        if _empty(v):
            raise ConfigError(f"params.yaml: {where}.{k} is empty; {where} needs both ann_file (the COCO "
                              f"annotation JSON) and img_dir (the folder of its images)")
    paths = tuple(Path(values[k].strip()).expanduser() for k in SPLIT_KEYS)
    ann_file, img_dir = (Path(os.path.abspath(p if p.is_absolute() else base / p)) for p in paths)
    return ann_file, img_dir


def dataset_name(cfg: dict[str, Any], train_ann_file: Path) -> str:
    """``data.files.name`` stripped, or, when empty or absent, the train annotation file's stem
    (``train.json`` -> ``train``). :class:`ConfigError` when it is not a string."""
    name = cfg.get("name")
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise ConfigError(f"params.yaml: data.files.name must be a string (the dataset's name), got {short_repr(name)}")
    return name.strip() or Path(train_ann_file).stem


def check_split(split: str, ann_file: Path, img_dir: Path, need_annotations: bool) -> tuple[SplitInfo, dict]:
    """Check one split's files; return its :class:`SplitInfo` (absolute paths; ``has_annotations``:
    whether the file has an ``annotations`` key) and its categories by id.

    :class:`DataError` naming the file and the ``data.files`` key when the file or folder does not
    exist, the file is not a COCO JSON object with ``images`` and ``categories`` (and
    ``annotations`` where ``need_annotations``), a category lacks an integer id, or an image it
    lists is absent or not of its recorded size (:func:`check_listed_images`)."""
    where = f"data.files.{split}"
    if not ann_file.is_file():
        what = "is a folder, not a file" if ann_file.is_dir() else "file not found"
        raise DataError(f"{ann_file}: {what} ({where}.ann_file)")
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found ({where}.img_dir)")
    data = load_json_file(ann_file)
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a COCO JSON object at the top level, got {type(data).__name__} "
                        f"({where}.ann_file)")
    keys = ("images", "categories", "annotations") if need_annotations else ("images", "categories")
    absent = [k for k in keys if k not in data]
    if absent:
        why = " (train and minival need annotations)" if "annotations" in absent else ""
        raise DataError(f"{ann_file}: missing required key(s) {absent}{why} ({where}.ann_file)")
    cats = data["categories"]
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{ann_file}: 'categories' must be a non-empty list ({where}.ann_file)")
    by_id: dict[int, Any] = {}
    for i, c in enumerate(cats):
        cid = c.get("id") if isinstance(c, dict) else None
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(f"{ann_file}: category #{i} has no integer 'id': {short_repr(c)} ({where}.ann_file)")
        by_id[cid] = c.get("name")
    if "annotations" in data and not isinstance(data["annotations"], list):
        raise DataError(f"{ann_file}: 'annotations' must be a list, got {type(data['annotations']).__name__} "
                        f"({where}.ann_file)")
    check_listed_images(ann_file, data["images"], img_dir, every_file=True)
    info = SplitInfo(split, ann_file.resolve(), img_dir.resolve(), "annotations" in data)
    return info, by_id


def files_splits(cfg: Any, base: Path) -> tuple[str, list[SplitInfo]]:
    """The dataset name and manifest splits (train, minival, and test-dev where given) of
    ``data.files`` (``cfg``), relative paths resolved against ``base`` (the workspace root).

    :class:`ConfigError` naming the key when ``cfg`` is not a mapping, has unknown keys, or
    train or minival is not given (the default params.yaml leaves them empty); :class:`DataError`
    as :func:`check_split`, and when a split's category ids differ from the train file's (the
    model's labels come from train)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"params.yaml: data.files must be a mapping {{name, train, minival, test-dev}} for "
                          f"data.source: files, got {short_repr(cfg)}")
    refuse_unknown_keys(cfg, FILES_KEYS, "data.files")
    paths = {split: split_paths(cfg, split, Path(base)) for split in FILES_SPLITS}
    for split in REQUIRED_SPLITS:
        if paths[split] is None:
            raise ConfigError(f"params.yaml: data.files.{split} is empty; data.source: files needs "
                              f"data.files.{split}: {{ann_file: <COCO annotation JSON>, img_dir: <image folder>}} "
                              f"for train and minival (test-dev is optional)")
    splits: list[SplitInfo] = []
    train_cats: dict[int, Any] = {}
    for split in FILES_SPLITS:
        if paths[split] is None:
            continue
        ann_file, img_dir = paths[split]
        info, cats = check_split(split, ann_file, img_dir, need_annotations=split in REQUIRED_SPLITS)
        if split == "train":
            train_cats = cats
        elif sorted(cats) != sorted(train_cats):
            extra, lacking = sorted(set(cats) - set(train_cats)), sorted(set(train_cats) - set(cats))
            raise DataError(f"{ann_file}: its category ids differ from the train file's ({paths['train'][0]}): "
                            f"{'not in train: ' + str(extra[:20]) if extra else ''}"
                            f"{'; ' if extra and lacking else ''}"
                            f"{'missing here: ' + str(lacking[:20]) if lacking else ''} "
                            f"(data.files.{split}.ann_file; every split must list the train file's categories)")
        splits.append(info)
    return dataset_name(cfg, paths["train"][0]), splits
