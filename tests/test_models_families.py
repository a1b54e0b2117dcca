"""The family layout of ``models/`` (models/families.py) holds, so the dependencies DVC sees
(models/common + a run's family folder + the family it builds on) are the ones the code has."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from models.build import DETECTORS
from models.families import DETECTOR_FAMILY, FAMILIES, family_of
from models.presets import PRESETS
from pipeline.config import load_params, resolve_model_config, run_entries
from pipeline.errors import ConfigError
from tests.conftest import REPO

MODELS = REPO / "models"


def imported_model_folders(path: Path) -> set[str]:
    """The second component of every ``models.<x>...`` module ``path`` imports (``common``,
    ``d2det``, ... or a top-level module such as ``build``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "models" and len(parts) > 1:
                out.add(parts[1])
    return out


def family_folders() -> list[str]:
    return sorted(p.name for p in MODELS.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name != "common")


def test_every_family_folder_is_declared_and_every_detector_has_one():
    assert family_folders() == sorted(FAMILIES)
    assert set(DETECTOR_FAMILY) == set(DETECTORS)
    assert set(DETECTOR_FAMILY.values()) == set(FAMILIES)
    for family, base in FAMILIES.items():
        assert FAMILIES[base] == base, f"{family} builds on {base}, which builds on another family: one base only"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_imports_only_common_itself_and_its_base(family):
    allowed = {"common", family, FAMILIES[family]}
    for path in sorted((MODELS / family).rglob("*.py")):
        bad = imported_model_folders(path) - allowed
        assert not bad, (f"{path.relative_to(REPO)} imports models.{sorted(bad)}: DVC would not re-run "
                         f"{family}'s stages when that code changes (allowed: {sorted(allowed)})")


def test_common_imports_only_common():
    for path in sorted((MODELS / "common").rglob("*.py")):
        bad = imported_model_folders(path) - {"common"}
        assert not bad, f"{path.relative_to(REPO)} imports models.{sorted(bad)}, but common/ is what every family shares"


def common_imports(path: Path) -> set[str]:
    """The ``models.common...`` modules ``path`` imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("models.common"):
            out.add(node.module)
    return out


def test_every_file_in_common_serves_two_lineages():
    """A file that only one family (with the family it builds on) uses belongs in that family's
    folder, so that touching it re-runs that family alone. Use counts through other common
    modules (a loss the shared RPN imports serves whoever uses the RPN)."""
    module_of = {p: ".".join(p.relative_to(REPO).with_suffix("").parts) for p in (MODELS / "common").rglob("*.py")}
    imports = {module_of[p]: common_imports(p) for p in module_of}
    users = {m: set() for m in imports}  # lineage roots that use a common module, transitively
    for family in FAMILIES:
        todo = [m for p in (MODELS / family).rglob("*.py") for m in common_imports(p)]
        seen = set()
        while todo:
            m = todo.pop()
            if m in seen or m not in users:
                continue
            seen.add(m)
            users[m].add(FAMILIES[family])
            todo.extend(imports[m])
    for m, roots in sorted(users.items()):
        if m.endswith("__init__"):
            continue
        assert len(roots) >= 2, f"{m} serves {sorted(roots) or 'no family'} only: move it into that family's folder"


def test_params_name_the_code_folders_of_each_run():
    params = load_params(REPO / "params.yaml")
    for name, (section, entry) in run_entries(params).items():
        want = family_of(PRESETS[entry["preset"]]["detector"])
        assert (entry.get("family"), entry.get("base")) == (want.family, want.base), f"{section}.{name}"
        assert (MODELS / entry["family"]).is_dir() and (MODELS / entry["base"]).is_dir()


def test_a_run_with_the_wrong_code_folders_is_refused():
    params = {"models": {"m": {"preset": "d2det_r50_fpn", "scale": "cpu", "family": "reppoints", "base": "reppoints"}}}
    with pytest.raises(ConfigError, match=r"models\.m\.family = 'reppoints'.*write `family: d2det` and `base: d2det`"):
        resolve_model_config(params, "m")
    params["models"]["m"].update(family="cpm_rcnn", base="cpm_rcnn")
    params["models"]["m"]["preset"] = "cpm_rcnn_r50_fpn"
    with pytest.raises(ConfigError, match="base = 'cpm_rcnn'.*`base: grid_rcnn`"):
        resolve_model_config(params, "m")
    del params["models"]["m"]["family"], params["models"]["m"]["base"]  # runs built in Python need neither
    assert resolve_model_config(params, "m")["detector"] == "cpm_rcnn"
