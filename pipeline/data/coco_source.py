"""The real COCO 2017 tree: check it, and download the official archives where it is absent.

A complete tree (``data.coco.root`` in params.yaml) is::

    root/train2017/*.jpg  root/val2017/*.jpg  root/test2017/*.jpg
    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json
    root/annotations/image_info_test-dev2017.json

The train and val parts are required. The test-dev parts (``test2017/`` and
``annotations/image_info_test-dev2017.json``, :data:`TEST_DEV_ITEMS`) are optional: a tree without
them is used without a test-dev split, and :func:`prepare_coco` says so and which archives add it
(:func:`test_dev_note`) instead of downloading them.

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
#: The optional parts of the tree: the ones only the test-dev split needs.
TEST_DEV_ITEMS: tuple[str, ...] = ("test2017/", "annotations/image_info_test-dev2017.json")
_CHUNK = 1 << 20


def missing_coco_items(root: Path, test_dev: bool = True) -> list[str]:
    """The parts of the COCO 2017 tree under ``root`` that do not exist (``"train2017/"``,
    ``"annotations/instances_val2017.json"``, ...), in a fixed order; empty when complete.
    ``test_dev=False``: only the required parts (the test-dev ones, :data:`TEST_DEV_ITEMS`, are
    left out)."""
    root = Path(root)
    missing = [f"{d}/" for d in IMAGE_DIRS if not (root / d).is_dir()]
    missing += [f"annotations/{f}" for f in ANNOTATION_FILES if not (root / "annotations" / f).is_file()]
    return missing if test_dev else [m for m in missing if m not in TEST_DEV_ITEMS]


def missing_test_dev_items(root: Path) -> list[str]:
    """The test-dev parts (:data:`TEST_DEV_ITEMS`) absent from the tree at ``root``; empty when the
    tree has a test-dev split."""
    return [m for m in missing_coco_items(root) if m in TEST_DEV_ITEMS]


def is_test_dev_archive(archive: dict[str, Any]) -> bool:
    """Whether ``archive`` (an entry of ``data.coco.archives``) holds test-dev parts: its file
    name says ``test2017`` (``test2017.zip``, ``image_info_test2017.zip``)."""
    name = Path(urllib.parse.urlparse(str(archive.get("url", ""))).path).name
    return "test2017" in name


def _urls(archives: list[dict[str, Any]]) -> str:
    return "".join(f"\n  {a.get('url')}" for a in archives)


def test_dev_note(root: Path, archives: list[dict[str, Any]] | None = None) -> str | None:
    """The note the prepare stage prints when the tree at ``root`` lacks test-dev parts (what is
    missing, that test-dev is skipped, which archives to unzip into ``root`` to add it), or None
    when the tree has them. ``archives``: ``data.coco.archives`` (its test-dev entries, else the
    official ones, are named)."""
    missing = missing_test_dev_items(root)
    if not missing:
        return None
    test_archives = [a for a in (archives or []) if is_test_dev_archive(a)] or \
        [a for a in COCO_ARCHIVES if is_test_dev_archive(a)]
    return (f"{root}: no test-dev split (missing: {', '.join(missing)}); test-dev is skipped: nothing is "
            f"predicted or scored on it and no submission file is written (the evaluate stage writes "
            f"metrics/<run>/test-dev.json saying so). To add it, download these archives (about 6 GB) and "
            f"unzip them into {root}, then run the prepare stage again:{_urls(test_archives)}")


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


def check_listed_images(path: Path, images: Any, img_dir: Path, every_file: bool = False) -> None:
    """Check the image records ``images`` (the ``images`` list of the annotation file ``path``)
    against the folder ``img_dir``: it must be a non-empty list; its first, middle and last
    records name (``file_name``) a JPEG or PNG file in ``img_dir`` whose header gives the
    record's width and height (:func:`pipeline.data.images.read_image_size`). With
    ``every_file``, every record's file must also exist (the first missing ones are named).
    Raises :class:`DataError` naming ``path`` and the image record at fault."""
    path, img_dir = Path(path), Path(img_dir)
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
        image = img_dir / name
        if not image.is_file():
            raise DataError(f"{path}: {ident} names {name}, which is not in {img_dir}")
        width, height = read_image_size(image, record=f"{ident}, listed in {path}")
        if (rec.get("width"), rec.get("height")) != (width, height):
            raise DataError(f"{image}: header says {width}x{height}, but {ident} in {path} records "
                            f"{short_repr(rec.get('width'), 200)}x{short_repr(rec.get('height'), 200)}")
    if not every_file:
        return
    absent: list[str] = []
    for i, rec in enumerate(images):
        if not isinstance(rec, dict) or "file_name" not in rec:
            raise DataError(f"{path}: image #{i} has no 'file_name': {short_repr(rec, 200)}")
        name = rec["file_name"]
        problem = file_name_problem(name)
        if problem:
            raise DataError(f"{path}: image id {short_repr(rec.get('id', f'#{i}'), 200)} has file_name "
                            f"{short_repr(name, 200)}: {problem}")
        if not (img_dir / name).is_file():
            absent.append(f"{short_repr(name, 100)} (image id {short_repr(rec.get('id'), 40)})")
    if absent:
        raise DataError(f"{path}: {len(absent)} of its {len(images)} images are not in {img_dir}: "
                        f"{', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}")


def check_coco_tree(root: Path, validate_json: bool = True) -> bool:
    """Raise :class:`DataError` unless ``root`` holds a readable COCO 2017 tree; return whether it
    has the (optional) test-dev split, i.e. both :data:`TEST_DEV_ITEMS`.

    Checks, in order: every required image directory and annotation file exists (all missing
    ones are listed; the test-dev parts may be absent); each annotation file present (the
    test-dev one only with ``test2017/``) parses as JSON (file, line and column on failure)
    and is a JSON object with its required keys; a few of the images it names (first,
    middle, last) exist in its image directory, are JPEG or PNG files and have the size their
    record gives (:func:`check_listed_images`). ``validate_json=False`` skips parsing (the
    train annotations take ~20 s to parse).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: COCO root directory does not exist")
    missing = missing_coco_items(root, test_dev=False)
    if missing:
        raise DataError(f"{root}: incomplete COCO 2017 tree, missing: {', '.join(missing)} "
                        f"(only {' and '.join(TEST_DEV_ITEMS)} are optional)")
    has_test_dev = not missing_test_dev_items(root)
    if not validate_json:
        return has_test_dev
    for name, (img_dir, keys) in ANNOTATION_FILES.items():
        if f"{img_dir}/" in TEST_DEV_ITEMS and not has_test_dev:
            continue
        path = root / "annotations" / name
        data = load_json_file(path)
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
        absent = [k for k in keys if k not in data]
        if absent:
            raise DataError(f"{path}: missing required key(s) {absent}")
        check_listed_images(path, data["images"], root / img_dir)
    return has_test_dev


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


def missing_parts_message(root: Path, missing: list[str], download: bool, archives: list[dict[str, Any]]) -> str:
    """The :class:`DataError` message for a tree at ``root`` that lacks the required parts
    ``missing``, fitted to the situation; it never suggests what is already set:

    * ``download`` false: downloading is off; set ``data.coco.download: true`` or get the
      archives by hand;
    * ``download`` true, no archives: ``data.coco.archives`` is empty; list them or get them by hand;
    * ``download`` true (and archives listed): the first archive's host cannot be reached from
      this machine; get the archives by hand on a machine with network access.

    "By hand" names the archives to unzip into ``root`` (the test-dev ones apart, as optional).
    """
    root = Path(root)
    head = f"{root}: COCO 2017 tree incomplete (missing: {', '.join(missing)})"
    needed = [a for a in archives if not is_test_dev_archive(a)]
    optional = [a for a in archives if is_test_dev_archive(a)]
    listing = f"{_urls(needed or archives)}"
    if optional and needed:
        listing += f"\noptional, for the test-dev split (about 6 GB more):{_urls(optional)}"
    if not download:
        host = urllib.parse.urlparse(str(archives[0].get("url", ""))).netloc if archives else ""
        reach = f" (on a machine that can reach {host})" if host else ""
        return (f"{head}; downloading is off (data.coco.download: false). Either set data.coco.download: true "
                f"in params.yaml to have the prepare stage download and unzip the archives{reach}, or "
                f"download these archives by hand and unzip them into {root}:{listing}")
    if not archives:
        return (f"{head}; data.coco.download is on, but data.coco.archives lists no archives to download. "
                f"List the official archives there (url and md5 of each), or unzip them into {root} by hand")
    url = str(archives[0].get("url"))
    host = urllib.parse.urlparse(url).netloc or url
    return (f"{head}; data.coco.download is on, but {url} cannot be reached from this machine (no network, "
            f"or a proxy or firewall blocks {host}). Get the files by hand: on a machine with network "
            f"access download these archives (md5 sums in data.coco.archives), copy them here, unzip them "
            f"into {root} and run the prepare stage again:{listing}")


def prepare_coco(root: Path, download: bool, archives: list[dict[str, Any]] | None = None, progress: bool = True) -> Path:
    """Make sure a usable COCO 2017 tree is at ``root`` and return ``root``.

    A tree with its required (train and val) parts is checked (:func:`check_coco_tree`) and used
    as is; where only the test-dev parts are absent, nothing is downloaded for them: the
    :func:`test_dev_note` is printed and the data has no test-dev split. Where required parts are
    missing, ``download`` is true and the first archive's host answers, the archives are
    downloaded and extracted; otherwise :class:`DataError` says what is missing and how to get
    it (:func:`missing_parts_message`).
    """
    root = Path(root)
    archives = COCO_ARCHIVES if archives is None else archives
    missing = missing_coco_items(root, test_dev=False)
    if missing:
        if not download or not archives:
            raise DataError(missing_parts_message(root, missing, download, archives))
        if not is_online(archives[0]["url"]):
            raise DataError(missing_parts_message(root, missing, download, archives))
        download_coco(root, archives, progress=progress)
    check_coco_tree(root)
    note = test_dev_note(root, archives)
    if note:
        print(f"prepare: note: {note}", flush=True)
    return root
