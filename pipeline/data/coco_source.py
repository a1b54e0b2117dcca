"""The real COCO 2017 tree: check it, and download the official archives where it is absent.

A complete tree (``data.coco.root`` in params.yaml) is::

    root/train2017/*.jpg  root/val2017/*.jpg  root/test2017/*.jpg
    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json
    root/annotations/image_info_test-dev2017.json

:func:`download_coco` fetches archives into ``root/downloads/`` with HTTP Range resume of a
``.part`` file, verifies each archive's md5, and extracts it into ``root``. It never deletes
or overwrites a file the user already has: extraction skips members that exist, and writes
each new member through a temporary name so an interrupted extraction leaves no partial file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.data.images import file_name_problem, read_image_size
from pipeline.errors import DataError, short_repr

COCO_ARCHIVES: list[dict[str, Any]] = [
    {"url": "http://images.cocodataset.org/zips/train2017.zip", "md5": "cced6f7f71b7629ddf16f17bbcfab6b2", "extract": True},
    {"url": "http://images.cocodataset.org/zips/val2017.zip", "md5": "442b8da7639aecaf257c1dceb8ba8c80", "extract": True},
    {"url": "http://images.cocodataset.org/zips/test2017.zip", "md5": "77ad2c53ac5d0aea611d422c0938fb35", "extract": True},
    {
        "url": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        "md5": "f4bbac642086de4f52a3fdda2de5fa2c",
        "extract": True,
    },
    {
        "url": "http://images.cocodataset.org/annotations/image_info_test2017.zip",
        "md5": "85da7065e5e600ebfee8af1edb634eb5",
        "extract": True,
    },
]

IMAGE_DIRS: tuple[str, ...] = ("train2017", "val2017", "test2017")
# annotation file -> (image directory it describes, keys it must have)
ANNOTATION_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "instances_train2017.json": ("train2017", ("images", "annotations", "categories")),
    "instances_val2017.json": ("val2017", ("images", "annotations", "categories")),
    "image_info_test-dev2017.json": ("test2017", ("images", "categories")),
}
_CHUNK = 1 << 20


def missing_coco_items(root: Path) -> list[str]:
    """The parts of the COCO 2017 tree under ``root`` that do not exist (``"train2017/"``,
    ``"annotations/instances_val2017.json"``, ...), in a fixed order; empty when complete."""
    root = Path(root)
    missing = [f"{d}/" for d in IMAGE_DIRS if not (root / d).is_dir()]
    missing += [f"annotations/{f}" for f in ANNOTATION_FILES if not (root / "annotations" / f).is_file()]
    return missing


def load_json_file(path: Path) -> Any:
    """Parse a JSON file; raise :class:`DataError` naming the file (and line/column) on failure:
    a missing or unreadable file, malformed JSON, text that is not UTF-8, an integer literal
    beyond Python's digit limit, nesting deeper than the parser's recursion limit."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
        raise DataError(f"{path}: unusable JSON: {e}") from e
    except RecursionError as e:
        raise DataError(f"{path}: JSON nested too deeply to parse") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


def check_coco_tree(root: Path, validate_json: bool = True) -> None:
    """Raise :class:`DataError` unless ``root`` holds a complete, readable COCO 2017 tree.

    Checks, in order: every image directory and annotation file exists (all missing ones
    are listed); each annotation file parses as JSON (file, line and column on failure)
    and is a JSON object with its required keys; a few of the images it names (first,
    middle, last) exist in its image directory, are JPEG or PNG files and have the size their
    record gives (read from the header; :func:`pipeline.data.images.read_image_size`). ``validate_json=False`` skips parsing (the
    train annotations take ~20 s to parse).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: COCO root directory does not exist")
    missing = missing_coco_items(root)
    if missing:
        raise DataError(f"{root}: incomplete COCO 2017 tree, missing: {', '.join(missing)}")
    if not validate_json:
        return
    for name, (img_dir, keys) in ANNOTATION_FILES.items():
        path = root / "annotations" / name
        data = load_json_file(path)
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
        absent = [k for k in keys if k not in data]
        if absent:
            raise DataError(f"{path}: missing required key(s) {absent}")
        images = data["images"]
        if not isinstance(images, list) or not images:
            raise DataError(f"{path}: 'images' must be a non-empty list")
        for rec in (images[0], images[len(images) // 2], images[-1]):
            if not isinstance(rec, dict) or "file_name" not in rec or "id" not in rec:
                raise DataError(f"{path}: image record without 'id'/'file_name': {short_repr(rec, 200)}")
            ident = f"image id {short_repr(rec['id'], 200)}"
            name = rec["file_name"]
            problem = file_name_problem(name)
            if problem:
                raise DataError(f"{path}: {ident} has file_name {short_repr(name, 200)}: {problem}")
            image = root / img_dir / name
            if not image.is_file():
                raise DataError(f"{path}: {ident} names {name}, which is not in {root / img_dir}")
            width, height = read_image_size(image, record=f"{ident}, listed in {path}")
            if (rec.get("width"), rec.get("height")) != (width, height):
                raise DataError(f"{image}: header says {width}x{height}, but {ident} in {path} records "
                                f"{short_repr(rec.get('width'), 200)}x{short_repr(rec.get('height'), 200)}")


def is_online(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of ``url`` answers an HTTP HEAD request within ``timeout`` seconds
    (any HTTP status counts as online; connection errors and timeouts do not)."""
    req = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _archive_name(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise DataError(f"{url}: cannot derive an archive file name from this URL")
    return name


def _md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Download ``url`` into ``part``, continuing from its current size with a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url)
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return  # the .part already holds the whole file; the md5 check decides
        raise DataError(f"{url}: download failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: download failed: {e}") from e
    with resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored the Range header: start over
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        try:
            with open(part, mode) as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name[: -len(".part")], disable=not progress,
            ) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as e:
            raise DataError(
                f"{url}: download interrupted after {part.stat().st_size} bytes ({e}); run again to resume"
            ) from e


def _extract(archive: Path, root: Path) -> None:
    """Extract a zip into ``root``, skipping members that exist, refusing paths outside ``root``."""
    root_resolved = root.resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a valid zip archive: {e}") from e
    with zf:
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if target != root_resolved and root_resolved not in target.parents:
                raise DataError(f"{archive}: member {info.filename!r} would extract outside {root}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".extracting")
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            os.replace(tmp, target)


def download_coco(root: Path, archives: list[dict[str, Any]], progress: bool = True, timeout: float = 60.0) -> None:
    """Download, verify and extract ``archives`` (each ``{"url", "md5", "extract": bool}``) into ``root``.

    Each archive goes to ``root/downloads/<name>.part`` (continued with an HTTP Range request
    when a partial file exists), is checked against its md5 and renamed to
    ``root/downloads/<name>``; an archive already there with the right md5 is not fetched
    again. On an md5 mismatch the file is renamed ``<name>.bad`` and :class:`DataError` names
    the URL, the expected and the actual md5. Zip archives with ``extract`` true are
    extracted into ``root`` (existing files are kept).
    """
    root = Path(root)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        try:
            url, expected = str(archive["url"]), str(archive["md5"]).lower()
        except KeyError as e:
            raise DataError(f"archive entry {archive!r} lacks key {e}") from e
        name = _archive_name(url)
        final = downloads / name
        if not (final.exists() and _md5_of(final) == expected):
            part = downloads / (name + ".part")
            _fetch(url, part, progress, timeout)
            actual = _md5_of(part)
            if actual != expected:
                bad = downloads / (name + ".bad")
                os.replace(part, bad)
                raise DataError(
                    f"{url}: md5 mismatch: expected {expected}, got {actual}; the file was moved to {bad}"
                )
            os.replace(part, final)
        if archive.get("extract", True):
            _extract(final, root)


def prepare_coco(root: Path, download: bool, archives: list[dict[str, Any]] | None = None, progress: bool = True) -> Path:
    """Make sure a complete COCO 2017 tree is at ``root`` and return ``root``.

    A complete tree is checked (:func:`check_coco_tree`) and used as is. Where parts are
    missing, ``download`` is true and the first archive's host answers, the archives are
    downloaded and extracted; otherwise :class:`DataError` says what is missing and how to
    get it.
    """
    root = Path(root)
    archives = COCO_ARCHIVES if archives is None else archives
    missing = missing_coco_items(root)
    if missing:
        urls = "\n  ".join(a["url"] for a in archives)
        how = (
            f"download and unzip these archives into {root}:\n  {urls}\n"
            f"or set data.coco.download: true in params.yaml on a machine with network access"
        )
        if not download:
            raise DataError(f"{root}: COCO 2017 tree incomplete (missing: {', '.join(missing)}); downloading is off; {how}")
        if not archives:
            raise DataError(
                f"{root}: COCO 2017 tree incomplete (missing: {', '.join(missing)}) and no archives are configured"
            )
        if not is_online(archives[0]["url"]):
            raise DataError(
                f"{root}: COCO 2017 tree incomplete (missing: {', '.join(missing)}) and "
                f"{archives[0]['url']} cannot be reached (offline?); {how}"
            )
        download_coco(root, archives, progress=progress)
    check_coco_tree(root)
    return root
