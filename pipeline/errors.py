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
    """A final weights file (``weights/<run>.pth``) that is missing, corrupt or not one of ours.

    The message names the file and says what to run (``dvc pull`` or ``dvc repro``).
    """


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that quote a value read from a
    user's file (which may be enormous, or an integer too long for ``repr``)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int beyond Python's digit limit; very deep nesting
        text = f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
