"""Decoding image files safely: the one place the pipeline turns image bytes into pixels.

Used by the prepare stage (:func:`pipeline.data.coco_source.check_coco_tree` reads the headers
of sampled images), by training and evaluation (:meth:`CocoDetectionDataset.load_image`) and by
:mod:`pipeline.predict`. Whatever the bytes, the result is a uint8 [H, W, 3] RGB array or a
:class:`~pipeline.errors.DataError` naming the file (and the record that lists it):

* only JPEG (and its multi-picture variant MPO) and PNG files are opened, whatever their suffix;
* the size declared in the header is checked against :data:`MAX_IMAGE_PIXELS` (and, where the
  annotation file records one, against the recorded size) *before* any pixel is decoded, so a
  header that claims 100000 x 100000 pixels never allocates anything;
* truncated, zero-byte and otherwise undecodable files are refused;
* grayscale, palette, RGBA, CMYK and 16-bit images are converted to 8-bit RGB (16-bit samples
  keep their top 8 bits; Pillow alone would clip them at 255, turning most images white).

This module imports numpy and Pillow only (no torch), so the prepare stage stays light.
"""
from __future__ import annotations

import os
import warnings

from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin  # noqa: F401  (registers the formats)

from pipeline.errors import DataError

#: Formats Pillow may use to open an image (Pillow's JPEG opener also returns MPO files: JPEGs
#: with extra frames, as phones write).
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG")

#: The most pixels (width x height) an image may declare: Pillow's own decompression-bomb
#: threshold (about 89.5 million, e.g. 12000 x 7450), above which it only warns.
MAX_IMAGE_PIXELS: int = 89_478_485

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


#: The longest file or folder name, in bytes, that Linux, macOS and Windows file systems accept.
MAX_NAME_BYTES: int = 255


def file_name_problem(name: object) -> str | None:
    """Why ``name`` (an annotation's ``file_name``, relative to an image folder) cannot name a
    file, or None when it can: it must be a non-empty string without NUL, encodable for the file
    system, and no part of it longer than :data:`MAX_NAME_BYTES` bytes (the OS refuses longer
    names with ``ENAMETOOLONG`` before it looks for the file)."""
    if not isinstance(name, str) or not name:
        return "need a non-empty string"
    if "\0" in name:
        return "a file name cannot hold a NUL character"
    try:
        encoded = os.fsencode(name)
    except UnicodeError:
        return "not encodable as a file name on this system"
    if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        return f"a part of it is longer than {MAX_NAME_BYTES} bytes"
    return None


def _where(record: str | None) -> str:
    return f" ({record})" if record else ""


def _open(path: Path, record: str | None) -> Image.Image:
    """Open ``path`` (header only) and check its declared size; DataError otherwise."""
    try:
        with warnings.catch_warnings():  # the size is checked below; Pillow's own warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=IMAGE_FORMATS)
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found{_where(record)}") from e
    except Exception as e:  # Pillow's parsers raise many kinds (OSError, SyntaxError, struct.error, ...)
        raise DataError(f"{path}: cannot decode image{_where(record)}: not a readable JPEG or PNG file "
                        f"({type(e).__name__}: {e})") from e
    width, height = im.size
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        im.close()
        raise DataError(f"{path}: image declares {width}x{height} pixels{_where(record)}; "
                        f"accepted are 1 to {MAX_IMAGE_PIXELS} pixels")
    return im


def read_image_size(path: str | Path, record: str | None = None) -> tuple[int, int]:
    """``(width, height)`` declared in the header of image file ``path``, without decoding pixels.

    ``record`` (e.g. ``"image id 7 in instances_val2017.json"``) is named in the error.
    Raises :class:`DataError` for a missing or unreadable file or an unacceptable size.
    """
    path = Path(path)
    with _open(path, record) as im:
        return im.size


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Pixels of an opened image as uint8 [H, W, 3] RGB."""
    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "I":
        # 16-bit grayscale (mode I;16*, or I for a 16-bit PNG on some Pillow versions): top 8 bits
        gray = np.asarray(im).astype(np.int64)
        gray = (np.clip(gray, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":
        gray = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float32)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow asks for this route for palettes with transparency
    return np.asarray(im.convert("RGB"))


def decode_rgb(
    path: str | Path,
    record: str | None = None,
    expected_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode image file ``path`` as uint8 [H, W, 3] RGB.

    Args:
        path: a JPEG or PNG file.
        record: what lists the file (e.g. ``"image id 7, listed in ann.json"``), named in errors.
        expected_size: ``(width, height)`` the file must have (the annotation file's record);
            checked against the header before decoding.

    Raises:
        DataError: naming ``path`` (and ``record``) for a missing, truncated, zero-byte or
            undecodable file, a declared size above :data:`MAX_IMAGE_PIXELS`, or a size other
            than ``expected_size``.
    """
    path = Path(path)
    with _open(path, record) as im:
        if expected_size is not None and tuple(im.size) != tuple(expected_size):
            raise DataError(
                f"{path}: decoded size {im.size[0]}x{im.size[1]} differs from the "
                f"{expected_size[0]}x{expected_size[1]} recorded{_where(record)}"
            )
        try:
            image = _to_rgb(im)
        except Exception as e:  # truncated or corrupt pixel data: OSError, ValueError, SyntaxError, ...
            raise DataError(f"{path}: cannot decode image{_where(record)}: {type(e).__name__}: {e}") from e
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != (im.size[1], im.size[0]):
        raise DataError(f"{path}: cannot decode image{_where(record)}: got an array of shape {image.shape}")
    return image
