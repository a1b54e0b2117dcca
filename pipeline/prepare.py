"""DVC stage ``prepare``: make the dataset and write ``data/prepared/manifest.json``.

    python -m pipeline.prepare [--params params.yaml] [--out data/prepared]

``params['data']``::

    source: synthetic            # synthetic | coco | files
    synthetic: {num_train: 2000, num_minival: 200, num_testdev: 200, seed: 0}
    coco: {root: data/coco2017, download: false, archives: [{url, md5, extract}, ...]}
    files: {name: my-dataset, train: {ann_file, img_dir}, minival: {ann_file, img_dir}, test-dev: ...}

``synthetic`` generates the dataset into ``<out>/synthetic/`` (COCO 2017 layout; test-dev
with annotations). ``coco`` checks the tree at ``root`` (relative paths are relative to the
repository root), downloading the official archives where required parts are absent and
downloading is allowed, and writes a manifest pointing at it (absolute paths; real test-dev has
no annotations; a tree without ``test2017/`` gets no test-dev split, with a note saying how to
add it). ``files`` checks the user's own COCO-format annotation files and image folders
(:mod:`pipeline.data.files_source`; relative paths are relative to the repository root) and
writes a manifest pointing at them; test-dev is optional there, and scored when its file has
annotations. The manifest's ``name`` is the source's name, or ``data.files.name`` for ``files``.

Everything is written into a temporary directory beside ``<out>`` that replaces ``<out>``
by a rename at the end, so a killed run never leaves a half-written dataset. A short
summary (images, instances, crowd regions and the COCO area-range histogram per split) is
printed and stored in the manifest.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from pipeline.config import load_params
from pipeline.data.coco_source import COCO_ARCHIVES, load_json_file, missing_test_dev_items, prepare_coco
from pipeline.data.checks import check_prepared_splits, is_finite_number
from pipeline.data.files_source import files_splits
from pipeline.data.manifest import SPLIT_NAMES, Manifest, SplitInfo, load_manifest, write_manifest
from pipeline.data.synthetic import SPLITS, TEST_DEV_INFO_FILE, area_range, generate_synthetic_coco
from pipeline.errors import ConfigError, DataError, short_repr
from pipeline.paths import PARAMS_FILE, PREPARED_DIR, workspace_root

MANIFEST_NAME = "manifest.json"
#: The values of ``data.source``.
SOURCES: tuple[str, ...] = ("synthetic", "coco", "files")


def _file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, first 16 hex digits, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def summarize_split(split: SplitInfo) -> dict[str, Any]:
    """Images, instances (non-crowd), crowd regions and area-range histogram of one split, and
    ``ann_sha256`` (the annotation file's sha256, first 16 hex digits): the manifest changes when
    the file does, so a `dvc repro -f prepare` after an edit of a user's annotation file (no DVC
    dependency: it lies outside the repository) re-runs every stage that read it.

    Raises :class:`DataError` naming the file (and the annotation) when it is not a COCO
    object with lists of images and annotations, or an annotation's ``area`` is not a number.
    """
    data = load_json_file(split.ann_file)
    if not isinstance(data, dict):
        raise DataError(f"{split.ann_file}: expected a JSON object at the top level, got {type(data).__name__}")
    images = data.get("images", [])
    anns = data.get("annotations", []) if split.has_annotations else []
    for key, value in (("images", images), ("annotations", anns)):
        if not isinstance(value, list):
            raise DataError(f"{split.ann_file}: '{key}' must be a list, got {type(value).__name__}")
    hist = {"small": 0, "medium": 0, "large": 0}
    crowd = 0
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise DataError(f"{split.ann_file}: annotation #{i} is not an object")
        area = a.get("area", 0.0)
        if not is_finite_number(area):
            raise DataError(f"{split.ann_file}: annotation {short_repr(a.get('id', f'#{i}'))} has area "
                            f"{short_repr(area)}; need a finite number")
        if a.get("iscrowd", 0):
            crowd += 1
        else:
            hist[("small", "medium", "large")[area_range(float(area))]] += 1
    return {
        "images": len(images),
        "has_annotations": split.has_annotations,
        "instances": sum(hist.values()),
        "crowd": crowd,
        "area_hist": hist,
        "ann_sha256": _file_sha256(split.ann_file),
    }


def format_summary(source: str, out_dir: Path, summary: dict[str, dict[str, Any]], name: str | None = None) -> str:
    """A small text table of :func:`summarize_split` results; a split the data lacks (test-dev of
    a COCO tree without ``test2017/``, of a ``files`` dataset without a test-dev file) shows as
    absent. ``name``: the dataset's name where it is not the source's."""
    label = source if not name or name == source else f"{name} ({source})"
    lines = [
        f"prepared {label} data -> {out_dir / MANIFEST_NAME}",
        f"{'split':<10}{'images':>8}{'instances':>11}{'crowd':>7}{'small':>8}{'medium':>8}{'large':>8}",
    ]
    for name, s in summary.items():
        if s["has_annotations"]:
            h = s["area_hist"]
            lines.append(
                f"{name:<10}{s['images']:>8}{s['instances']:>11}{s['crowd']:>7}"
                f"{h['small']:>8}{h['medium']:>8}{h['large']:>8}"
            )
        else:
            lines.append(f"{name:<10}{s['images']:>8}{'(no annotations)':>42}")
    for absent in (n for n in SPLIT_NAMES if n not in summary):
        lines.append(f"{absent:<10}{'-':>8}{'(absent: evaluate skips it)':>42}")
    return "\n".join(lines)


def _require(cfg: Any, key: str, where: str) -> Any:
    if not isinstance(cfg, dict) or key not in cfg:
        raise ConfigError(f"params.yaml: missing {where}.{key}")
    return cfg[key]


def _synthetic_splits(root: Path) -> list[SplitInfo]:
    """Manifest splits of a synthetic tree at ``root`` (test-dev with annotations)."""
    return [
        SplitInfo(name, root / "annotations" / f"{stem}.json", root / img_dir, True) for name, img_dir, stem in SPLITS
    ]


def coco_splits(root: Path) -> list[SplitInfo]:
    """Manifest splits of a real COCO 2017 tree (minival = val2017; test-dev without annotations,
    only where the tree has its parts, ``test2017/`` and the image-info file)."""
    splits = [
        SplitInfo("train", root / "annotations" / "instances_train2017.json", root / "train2017", True),
        SplitInfo("minival", root / "annotations" / "instances_val2017.json", root / "val2017", True),
    ]
    if not missing_test_dev_items(root):
        splits.append(SplitInfo("test-dev", root / "annotations" / TEST_DEV_INFO_FILE, root / "test2017", False))
    return splits


def coco_archives(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """``data.coco.archives`` (the official ones where absent or empty), checked: a list of
    mappings with ``url`` and ``md5``; :class:`ConfigError` naming the entry otherwise."""
    archives = cfg.get("archives") or COCO_ARCHIVES
    if not isinstance(archives, list):
        raise ConfigError(f"params.yaml: data.coco.archives must be a list of {{url, md5}}, got {short_repr(archives)}")
    for i, a in enumerate(archives):
        if not isinstance(a, dict) or not all(isinstance(a.get(k), str) and a.get(k) for k in ("url", "md5")):
            raise ConfigError(f"params.yaml: data.coco.archives[{i}] must be a mapping with url and md5 strings, "
                              f"got {short_repr(a)}")
    return archives


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary siblings of ``out`` left by killed runs (their process is gone)."""
    for p in out.parent.glob(f".{out.name}.*-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def prepare(data_cfg: dict[str, Any], out: Path, workers: int | None = None, progress: bool = True) -> Manifest:
    """Build the dataset described by ``data_cfg`` (``params['data']``) and its manifest in ``out``.

    Returns the loaded manifest (its ``summary`` holds the per-split counts).
    """
    out = Path(out).absolute()
    source = _require(data_cfg, "source", "data")
    if source not in SOURCES:
        raise ConfigError(f"params.yaml: data.source must be 'synthetic', 'coco' or 'files', got {short_repr(source)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    name = source
    try:
        if source == "synthetic":
            cfg = _require(data_cfg, "synthetic", "data")
            keys = ("num_train", "num_minival", "num_testdev", "seed")
            counts = {k: int(_require(cfg, k, "data.synthetic")) for k in keys}
            if min(counts.values()) < 0:
                raise ConfigError(f"params.yaml: data.synthetic values must be >= 0, got {counts}")
            generate_synthetic_coco(
                tmp / "synthetic",
                num_train=counts["num_train"],
                num_minival=counts["num_minival"],
                num_testdev=counts["num_testdev"],
                seed=counts["seed"],
                workers=min(2, os.cpu_count() or 1) if workers is None else workers,
            )
            splits = _synthetic_splits(tmp / "synthetic")
        elif source == "coco":
            cfg = _require(data_cfg, "coco", "data")
            root = _require(cfg, "root", "data.coco")
            if not isinstance(root, str) or not root.strip():
                raise ConfigError(f"params.yaml: data.coco.root must be a path (the COCO 2017 tree), got {short_repr(root)}")
            root = Path(root).expanduser()
            root = root if root.is_absolute() else workspace_root() / root  # the workspace's tree, also from a `dvc exp` copy
            root = Path(os.path.abspath(root))  # `..` folded, for the messages; symlinks kept
            prepare_coco(root, download=bool(cfg.get("download", False)), archives=coco_archives(cfg),
                         progress=progress)
            splits = coco_splits(root.resolve())
        else:
            # the user's own files; relative paths are the workspace's, also from a `dvc exp` copy
            name, splits = files_splits(_require(data_cfg, "files", "data"), workspace_root())
            # every record, every image header, unique category names, something to train on
            check_prepared_splits(splits)
        summary = {s.name: summarize_split(s) for s in splits}
        write_manifest(tmp / MANIFEST_NAME, source, splits, summary=summary, name=name)

        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if old.exists() and not out.exists():
            os.rename(old, out)  # put the previous dataset back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_manifest(out / MANIFEST_NAME)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry of the prepare stage; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameters file (default: params.yaml)")
    parser.add_argument("--out", type=Path, default=PREPARED_DIR, help="output directory (default: data/prepared)")
    parser.add_argument("--workers", type=int, default=None, help="processes for synthetic rendering (default: up to 2)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        manifest = prepare(_require(params, "data", "(top level)"), args.out, workers=args.workers)
    except (ConfigError, DataError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(manifest.source, Path(args.out), manifest.summary, name=manifest.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
