"""Reading params.yaml and resolving a model's full configuration.

A model entry in ``params.yaml`` names a preset (the paper's configuration, defined in
:mod:`models.presets`), a scale (``cpu`` or ``paper``) and optional overrides that are
deep-merged on top::

    models:
      faster_rcnn_r50_fpn:
        preset: faster_rcnn_r50_fpn_1x
        scale: cpu
        overrides: {schedule: {epochs: 4}}

The resolved configuration has four sections: ``model`` (constructor arguments of the
detector), ``data`` (train/test image scales, flip, normalisation), ``schedule`` (SGD,
warmup, steps, batch) and ``test`` is part of ``model`` (the detector's inference knobs).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.paths import PARAMS_FILE


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Load ``params.yaml``; raise :class:`ConfigError` naming the file on a YAML error."""
    path = Path(path)
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: parameters file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    return params


def deep_merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``base`` with ``override`` merged in recursively (dicts merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_model_config(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The full configuration of model ``name`` (a key of ``params['models']``).

    Returns a dict with keys ``preset``, ``scale``, ``detector``, ``model``, ``data`` and
    ``schedule``.
    """
    from models.presets import PRESETS

    models = params.get("models") or {}
    if name not in models:
        raise ConfigError(f"params.yaml: no model named {name!r} under 'models' (have: {sorted(models)})")
    entry = models[name] or {}
    preset_name = entry.get("preset")
    if preset_name not in PRESETS:
        raise ConfigError(
            f"params.yaml: models.{name}.preset = {preset_name!r} is not a known preset "
            f"(known: {sorted(PRESETS)})"
        )
    scale = entry.get("scale", "cpu")
    preset = PRESETS[preset_name]
    if scale not in preset["scales"]:
        raise ConfigError(
            f"params.yaml: models.{name}.scale = {scale!r}; preset {preset_name} has {sorted(preset['scales'])}"
        )
    cfg = deep_merge(preset["scales"][scale], entry.get("overrides"))
    cfg["preset"] = preset_name
    cfg["scale"] = scale
    cfg["detector"] = preset["detector"]
    return cfg
