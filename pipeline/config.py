"""Reading params.yaml and resolving a model's full configuration.

A model entry in ``params.yaml`` (under ``models``, or under ``ablations`` for an ablation run)
names a preset (the paper's configuration, defined in
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


#: The params.yaml sections that hold trainable runs, each entry a preset, a scale and overrides:
#: ``models`` (the models of the results tables) and ``ablations`` (module ablations, e.g. CPM
#: R-CNN with some of its modules switched off). A run trains, evaluates and is recorded under its
#: name alike in either section (``weights/<name>.pth``, ``metrics/<name>``, ``results/<name>``).
RUN_SECTIONS = ("models", "ablations")


def run_section(params: dict[str, Any], name: str) -> str:
    """The section of ``params`` (``models`` or ``ablations``) that holds run ``name``.

    Raises :class:`ConfigError` when neither or both hold it.
    """
    found = [s for s in RUN_SECTIONS if name in (params.get(s) or {})]
    if len(found) > 1:
        raise ConfigError(f"params.yaml: {name!r} is defined under both 'models' and 'ablations'; "
                          f"run names must be unique across the two")
    if not found:
        have = {s: sorted(params.get(s) or {}) for s in RUN_SECTIONS}
        raise ConfigError(f"params.yaml: no model named {name!r} under 'models' or 'ablations' (have: {have})")
    return found[0]


def run_entries(params: dict[str, Any], sections: tuple[str, ...] = RUN_SECTIONS) -> dict[str, tuple[str, dict]]:
    """``{name: (section, entry)}`` of every run in ``sections``, models first, in params order.

    Raises :class:`ConfigError` for a name defined in both sections.
    """
    out: dict[str, tuple[str, dict]] = {}
    for section in sections:
        for name, entry in (params.get(section) or {}).items():
            if name in out:
                run_section(params, name)  # raises, naming it
            out[name] = (section, entry or {})
    return out


def resolve_model_config(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The full configuration of run ``name`` (a key of ``params['models']`` or ``params['ablations']``).

    Returns a dict with keys ``preset``, ``scale``, ``detector``, ``model``, ``data`` and
    ``schedule``.
    """
    from models.presets import PRESETS

    section = run_section(params, name)
    entry = params[section][name] or {}
    preset_name = entry.get("preset")
    if preset_name not in PRESETS:
        raise ConfigError(
            f"params.yaml: {section}.{name}.preset = {preset_name!r} is not a known preset "
            f"(known: {sorted(PRESETS)})"
        )
    scale = entry.get("scale", "cpu")
    preset = PRESETS[preset_name]
    if scale not in preset["scales"]:
        raise ConfigError(
            f"params.yaml: {section}.{name}.scale = {scale!r}; preset {preset_name} has {sorted(preset['scales'])}"
        )
    check_code_fields(section, name, entry, preset["detector"])
    cfg = deep_merge(preset["scales"][scale], entry.get("overrides"))
    cfg["preset"] = preset_name
    cfg["scale"] = scale
    cfg["detector"] = preset["detector"]
    return cfg


def check_code_fields(section: str, name: str, entry: dict[str, Any], detector: str) -> None:
    """Refuse a run whose ``family`` / ``base`` (the code folders its DVC stages depend on) are
    not its detector's (:func:`models.families.family_of`): DVC would not re-run it when its
    code changes. Entries without the fields (runs built in Python, not by DVC) pass."""
    from models.families import family_of

    want = family_of(detector)
    for key, value in (("family", want.family), ("base", want.base)):
        if key in entry and entry[key] != value:
            raise ConfigError(
                f"params.yaml: {section}.{name}.{key} = {entry[key]!r}, but its preset {entry.get('preset')!r} "
                f"(detector {detector}) has its code in models/{want.family}/ on top of models/{want.base}/: "
                f"write `family: {want.family}` and `base: {want.base}`"
            )
