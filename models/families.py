"""Which family folder each detector's code lives in, and which family it builds on.

A run of params.yaml names both (``family``, ``base``); dvc.yaml makes the run's stages
depend on ``models/<base>/``, ``models/<family>/`` and ``models/common/`` (plus the few shared
files at the top of ``models/``), so a change to one family's file re-runs that family's
stages alone. :func:`pipeline.config.resolve_model_config` refuses a run whose fields do not
match its preset's detector, and ``tests/test_models_families.py`` checks that no family
imports code outside ``models.common`` and its base, so the dependencies DVC sees are the
ones the code has.
"""
from __future__ import annotations

from typing import NamedTuple


class Family(NamedTuple):
    """``family``: the folder under ``models/`` that holds the detector's own code; ``base``:
    the family whose code it builds on (``family`` itself when it builds only on common)."""

    family: str
    base: str


#: The code folders of the families, each with the family it builds on.
FAMILIES: dict[str, str] = {
    "faster_rcnn": "faster_rcnn",
    "grid_rcnn": "grid_rcnn",
    "cpm_rcnn": "grid_rcnn",
    "d2det": "d2det",
    "reppoints": "reppoints",
    "dense_reppoints": "reppoints",
}

#: detector name (a preset's ``detector``) -> its family folder
DETECTOR_FAMILY: dict[str, str] = {
    "faster_rcnn": "faster_rcnn",
    "grid_rcnn": "grid_rcnn",
    "cpm_rcnn": "cpm_rcnn",
    "d2det": "d2det",
    "reppoints": "reppoints",
    "reppoints_v2": "reppoints",
    "dense_reppoints": "dense_reppoints",
    "dense_reppoints_v2": "dense_reppoints",
}


def family_of(detector: str) -> Family:
    """The code folders of ``detector`` (e.g. ``cpm_rcnn`` -> ``Family("cpm_rcnn", "grid_rcnn")``)."""
    family = DETECTOR_FAMILY[detector]
    return Family(family, FAMILIES[family])
