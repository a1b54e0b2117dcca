"""Errors raised by the pipeline for bad input.

Every error names the file and, where there is one, the record at fault, so a user
can go straight to the broken annotation or image.
"""
from __future__ import annotations


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
