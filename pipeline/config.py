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
        init_from: weights/coco_model.pth   # optional: fine-tune from another run's weights

The resolved configuration has four sections: ``model`` (constructor arguments of the
detector), ``data`` (train/test image scales, flip, normalisation), ``schedule`` (SGD,
warmup, steps, batch) and ``test`` is part of ``model`` (the detector's inference knobs).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError, short_repr
from pipeline.paths import PARAMS_FILE


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Load ``params.yaml``; raise :class:`ConfigError` naming the file when it is missing or
    unreadable, not valid YAML (including bytes that are not UTF-8 or UTF-16, a ``\\U`` escape beyond
    U+10FFFF, an integer of more than 4300 digits), nested too deeply,
    or not a mapping."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # bytes: YAML's reader detects the encoding and names bad bytes
            params = yaml.safe_load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: parameters file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{path}: YAML nested too deeply to read") from e
    except (ValueError, OverflowError) as e:  # PyYAML's: a \U escape beyond U+10FFFF or beyond a C int,
        # an integer beyond Python's digit limit
        raise ConfigError(f"{path}: not valid YAML: {short_repr(str(e), 300)}") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the parameters file: {e}") from e
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
#: run id (:func:`run_id`) alike in either section (``weights/<run>.pth``, ``metrics/<run>``,
#: ``results/<run>``): a ``models`` entry is one run named as the entry, an ``ablations`` entry
#: one run per seed of ``ablation_seeds``, named ``<entry>_seed<k>``.
RUN_SECTIONS = ("models", "ablations")

#: ``ablation_seeds`` when params has no such key (what params.yaml holds by default). DVC itself
#: needs the key in params.yaml: a list cannot be defaulted in dvc.yaml's ``vars``.
DEFAULT_ABLATION_SEEDS: tuple[int, ...] = (0,)

_SEEDED = re.compile(r"(?P<entry>.+)_seed(?P<seed>[0-9]+)")


def section_entries(params: dict[str, Any], section: str) -> dict[str, Any]:
    """``params[section]`` (``models`` or ``ablations``): a mapping of entry name to entry, empty
    when absent or null. Raises :class:`ConfigError` when it is anything but a mapping with
    string names."""
    entries = params.get(section) or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"params.yaml: '{section}' must be a mapping of entry name to entry, "
                          f"got {type(entries).__name__}")
    for name in entries:
        if not isinstance(name, str):
            raise ConfigError(f"params.yaml: {section}: entry name {short_repr(name)} is not a string")
    return entries


def run_id(entry: str, seed: int | None = None) -> str:
    """The id of a run (its weights ``weights/<run>.pth``, ``metrics/<run>/``, ``results/<run>/``,
    the MLflow runs ``train/<run>``, ``evaluate/<run>/<split>`` and their ``model`` tag): the
    entry name for a run trained with params ``seed`` (``seed`` None: every ``models`` run), else
    ``<entry>_seed<seed>`` (the ablation runs, one per seed of ``ablation_seeds``).
    :func:`split_run_id` is its inverse."""
    if seed is None:
        return entry
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ConfigError(f"a run's seed must be a non-negative integer, got {seed!r}")
    return f"{entry}_seed{int(seed)}"


def split_run_id(run: str) -> tuple[str, int | None]:
    """``(entry, seed)`` of a run id (:func:`run_id`): ``("cpm_ablation_none", 0)`` for
    ``cpm_ablation_none_seed0``, ``(run, None)`` for a run id without a seed. Unambiguous because
    no entry name may end in ``_seed<k>`` (:func:`check_entry_name`)."""
    m = _SEEDED.fullmatch(run)
    return (m["entry"], int(m["seed"])) if m else (run, None)


def check_entry_name(section: str, name: str) -> None:
    """Refuse an entry name that reads as a seeded run id (``..._seed<k>``), which
    :func:`split_run_id` would take apart."""
    if split_run_id(name)[1] is not None:
        raise ConfigError(f"params.yaml: {section}.{name}: entry names may not end in '_seed<number>'; "
                          f"that suffix names the run of an entry trained with a seed (e.g. {name}_seed0)")


def training_seed(params: dict[str, Any], seed: int | None = None) -> int:
    """The seed a run trains with: ``seed`` where given (an ablation run's, from
    ``ablation_seeds``), else params ``seed``."""
    return int(params.get("seed", 0)) if seed is None else int(seed)


def ablation_seeds(params: dict[str, Any]) -> list[int]:
    """params ``ablation_seeds``: the seeds every ablation entry is trained with, one run each
    (:data:`DEFAULT_ABLATION_SEEDS` when the key is absent). Raises :class:`ConfigError` unless it
    is a list of distinct non-negative integers."""
    seeds = params.get("ablation_seeds", list(DEFAULT_ABLATION_SEEDS))
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in seeds):
        raise ConfigError(f"params.yaml: ablation_seeds = {seeds!r}; expected a list of non-negative integers, "
                          f"e.g. [0, 1, 2] (a list, because DVC's matrix stages iterate over it)")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"params.yaml: ablation_seeds = {seeds!r} repeats a seed")
    return list(seeds)


def run_section(params: dict[str, Any], name: str) -> str:
    """The section of ``params`` (``models`` or ``ablations``) that holds entry ``name``.

    Raises :class:`ConfigError` when neither or both hold it, or the name ends in ``_seed<k>``.
    """
    found = [s for s in RUN_SECTIONS if name in section_entries(params, s)]
    if len(found) > 1:
        raise ConfigError(f"params.yaml: {name!r} is defined under both 'models' and 'ablations'; "
                          f"run names must be unique across the two")
    if not found:
        have = {s: sorted(section_entries(params, s)) for s in RUN_SECTIONS}
        raise ConfigError(f"params.yaml: no model named {name!r} under 'models' or 'ablations' (have: {have})")
    check_entry_name(found[0], name)
    return found[0]


def run_entries(params: dict[str, Any], sections: tuple[str, ...] = RUN_SECTIONS) -> dict[str, tuple[str, dict]]:
    """``{name: (section, entry)}`` of every entry in ``sections``, models first, in params order.
    An ablation entry stands for several runs (:func:`runs` lists those).

    Raises :class:`ConfigError` for a name defined in both sections or ending in ``_seed<k>``.
    """
    out: dict[str, tuple[str, dict]] = {}
    for section in sections:
        for name, entry in section_entries(params, section).items():
            if name in out:
                run_section(params, name)  # raises, naming it
            check_entry_name(section, name)
            out[name] = (section, entry or {})
    return out


@dataclass(frozen=True)
class Run:
    """One trained run of params: its id (:func:`run_id`), the section and name of its entry,
    and the seed it was given (None: it trains with params ``seed``; :func:`training_seed`)."""

    id: str
    section: str
    entry: str
    seed: int | None

    def config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The entry of params this run is trained from."""
        return (params.get(self.section) or {}).get(self.entry) or {}


def runs(params: dict[str, Any], sections: tuple[str, ...] = RUN_SECTIONS) -> dict[str, Run]:
    """``{run id: Run}`` of every run params defines, as DVC's stages do: one per ``models`` entry
    (no seed: ``train@<entry>``), then, per ``ablations`` entry, one per seed of
    :func:`ablation_seeds` (``train_ablation@<entry>-<seed>``, run id ``<entry>_seed<seed>``).
    Order: models, then ablations entry by entry, seeds in their order."""
    seeds = ablation_seeds(params) if "ablations" in sections else []
    out: dict[str, Run] = {}
    for name, (section, _) in run_entries(params, sections).items():
        for seed in ([None] if section == "models" else seeds):
            run = Run(run_id(name, seed), section, name, seed)
            out[run.id] = run
    return out


def resolve_model_config(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The full configuration of entry ``name`` (a key of ``params['models']`` or
    ``params['ablations']``), or of run id ``name`` (``<entry>_seed<k>``: its entry's; the seed
    is no part of the configuration).

    Returns a dict with keys ``preset``, ``scale``, ``detector``, ``model``, ``data`` and
    ``schedule``. Raises :class:`ConfigError` naming the entry (and the key) for an unknown
    entry or preset, a scale the preset lacks, or overrides :func:`check_overrides` refuses.
    """
    from models.presets import PRESETS

    if not any(name in section_entries(params, s) for s in RUN_SECTIONS):  # a run id: its entry's
        name = split_run_id(name)[0]
    section = run_section(params, name)
    entry = params[section][name] or {}
    where = f"params.yaml: {section}.{name}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with preset, scale and overrides, got {type(entry).__name__}")
    preset_name = entry.get("preset")
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise ConfigError(
            f"{where}.preset = {short_repr(preset_name)} is not a known preset "
            f"(known: {sorted(PRESETS)})"
        )
    scale = entry.get("scale", "cpu")
    preset = PRESETS[preset_name]
    if not isinstance(scale, str) or scale not in preset["scales"]:
        raise ConfigError(
            f"{where}.scale = {short_repr(scale)}; preset {preset_name} has {sorted(preset['scales'])}"
        )
    overrides = entry.get("overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"{where}.overrides must be a mapping, got {type(overrides).__name__}")
    check_entry_keys(entry, where)
    check_overrides(preset["scales"][scale], overrides or {}, f"{where}.overrides")
    check_code_fields(section, name, entry, preset["detector"])
    cfg = deep_merge(preset["scales"][scale], overrides)
    cfg["preset"] = preset_name
    cfg["scale"] = scale
    cfg["detector"] = preset["detector"]
    return cfg


#: The keys of a run entry (under ``models`` or ``ablations``): the preset, its scale, the overrides
#: deep-merged on top, the code folders its stages depend on (``family``, ``base``;
#: :func:`check_code_fields`) and ``init_from``, the weights file a fine-tuning run starts from
#: (:func:`init_from_setting`). Any other key is refused (a misspelt ``init_from`` would silently
#: train from scratch).
ENTRY_KEYS = ("preset", "scale", "overrides", "family", "base", "init_from")


def check_entry_keys(entry: dict[str, Any], where: str) -> None:
    """Refuse a key of a run entry that is not one of :data:`ENTRY_KEYS`, and an ``init_from``
    that is neither null nor a non-empty string; ``where`` (``params.yaml: models.m``) starts the
    :class:`ConfigError` message."""
    for key in entry:
        if key not in ENTRY_KEYS:
            raise ConfigError(f"{where}: unknown key {short_repr(key)} (an entry has: {', '.join(ENTRY_KEYS)})")
    value = entry.get("init_from")
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}.init_from = {short_repr(value)}: expected the path of a weights file "
                          f"(weights/<run>.pth, relative to the workspace root, or absolute), or null for none")


def init_from_setting(params: dict[str, Any], name: str) -> str | None:
    """The ``init_from`` of entry (or run id) ``name``: the weights file, as written in params.yaml,
    that a fresh training of the run starts from (:mod:`pipeline.finetune`), or None (absent or
    null: the model's own initialisation). Raises :class:`ConfigError` as :func:`check_entry_keys`."""
    if not any(name in section_entries(params, s) for s in RUN_SECTIONS):  # a run id: its entry's
        name = split_run_id(name)[0]
    section = run_section(params, name)
    entry = params[section][name] or {}
    if not isinstance(entry, dict):
        raise ConfigError(f"params.yaml: {section}.{name} must be a mapping with preset, scale and overrides, "
                          f"got {type(entry).__name__}")
    check_entry_keys(entry, f"params.yaml: {section}.{name}")
    value = entry.get("init_from")
    return None if value is None else str(value)


def _kind(value: Any) -> str:
    """The kind of a configuration value an override must keep: mapping, list, bool, number, str."""
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


#: Keys an override may add although no preset has them, with the kind of their value: they are
#: read with a default by the code (:class:`pipeline.engine.Trainer`'s schedule).
OPTIONAL_KEYS: dict[tuple[str, ...], str] = {
    ("schedule", "max_iters"): "number",  # train for this many iterations instead of epochs
    ("schedule", "sync_bn"): "bool",  # SyncBN under DDP
    # scale lr linearly with the actual total batch (pipeline.engine.lr_scaling); every preset sets it
    ("schedule", "auto_scale_lr"): "bool",
}


def check_overrides(base: dict[str, Any], overrides: dict[str, Any], where: str,
                    path: tuple[str, ...] = ()) -> None:
    """Refuse overrides that name a key the preset does not have or change a value's kind.

    Every key of ``overrides`` must exist in ``base`` (the preset's configuration at its
    scale) at the same place, or be one of :data:`OPTIONAL_KEYS`, and its value must be of the
    same kind as the preset's (:func:`_kind`: a mapping stays a mapping, a number a number,
    ...); a key whose preset value is null, and an optional key set to null, take any value.
    Mappings are checked recursively (``path``: the keys above ``base``). ``where`` (e.g.
    ``params.yaml: models.m.overrides``) starts the :class:`ConfigError` message, which names
    the full key.
    """
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {short_repr(key)} is not a string")
        here = f"{where}.{key}"
        optional = OPTIONAL_KEYS.get((*path, key))
        if key not in base and optional is None:
            raise ConfigError(f"{here}: unknown key (the preset has: {sorted(map(str, base))})")
        if key not in base:
            if value is not None and _kind(value) != optional:
                raise ConfigError(f"{here} = {short_repr(value)}: expected a {optional}")
            continue
        old = base[key]
        if old is None:
            continue
        if _kind(value) != _kind(old):
            raise ConfigError(f"{here} = {short_repr(value)}: expected a {_kind(old)}, like the preset's "
                              f"{short_repr(old)}")
        if isinstance(value, dict):
            check_overrides(old, value, here, (*path, key))


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
