"""Errors raised by the pipeline for bad input.

Every error names the file and, where there is one, the record at fault, so a user
can go straight to the broken annotation or image.
"""
from __future__ import annotations

from typing import Any


class DataError(Exception):
    """Bad input data: a malformed annotation file, a missing or undecodable image,
    an annotation that references an unknown category, a failed download.

    The message always names the file (and the record, e.g. ``image id 42`` or
    ``annotation id 7``) at fault.
    """


class ConfigError(Exception):
    """An invalid or inconsistent entry in params.yaml or a preset."""


class WeightsError(Exception):
    """A weights file that is missing, corrupt, unsafe or not one of ours: the final weights
    (``weights/<run>.pth``), an epoch checkpoint, a logged model's copy or pretrained weights.

    Raised when the file holds objects other than tensors and plain containers (it is not
    loaded, for safety: :func:`pipeline.weights_io.safe_torch_load`), when its zip or pickle is
    broken, when its tensors do not match the digest written at save time (expected and actual
    digest named), or when its weights do not fit the model it names (first mismatching key
    named). The message names the file and says what to run (``dvc pull weights/<run>.pth`` or
    ``dvc repro train@<run>``; for a checkpoint, how to start afresh).
    """


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that quote a value read from a
    user's file (which may be enormous, or an integer too long for ``repr``)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int beyond Python's digit limit; very deep nesting
        text = f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
