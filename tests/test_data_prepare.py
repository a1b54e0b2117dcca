"""The prepare stage and the manifest it writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.data.dataset import CocoDetectionDataset
from pipeline.data.manifest import SplitInfo, load_manifest, write_manifest
from pipeline.errors import ConfigError, DataError
from pipeline.paths import REPO_ROOT
from pipeline.prepare import main, prepare
from tests.data_fixtures import COCO_MINI, build_coco_tree

TINY = {"source": "synthetic", "synthetic": {"num_train": 6, "num_minival": 3, "num_testdev": 3, "seed": 1}}


def _params(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"data": data}))
    return p


def test_synthetic_prepare_writes_a_loadable_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data" / "prepared"
    assert main(["--params", str(_params(tmp_path, TINY)), "--out", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "minival" in printed and "test-dev" in printed and "small" in printed

    raw = json.loads((out / "manifest.json").read_text())
    assert raw["source"] == raw["name"] == "synthetic"
    assert raw["splits"]["train"]["ann_file"] == "synthetic/annotations/instances_train2017.json"
    assert raw["splits"]["test-dev"]["ann_file"] == "synthetic/annotations/instances_test-dev2017.json"
    assert raw["splits"]["minival"]["img_dir"] == "synthetic/val2017"

    manifest = load_manifest(out / "manifest.json")
    assert set(manifest.splits) == {"train", "minival", "test-dev"}
    for name, n in (("train", 6), ("minival", 3), ("test-dev", 3)):
        split = manifest.split(name)
        assert split.has_annotations
        ds = CocoDetectionDataset(split.ann_file, split.img_dir)
        assert len(ds) == n == manifest.summary[name]["images"]
        image, _ = ds[0]
        assert image.shape[0] == 3
    assert manifest.summary["train"]["instances"] == sum(manifest.summary["train"]["area_hist"].values())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".prepared.")]
    with pytest.raises(DataError, match="no split 'val'"):
        manifest.split("val")


def test_rerun_replaces_the_dataset_atomically(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(TINY, out, workers=0)
    first = (out / "synthetic" / "annotations" / "instances_train2017.json").read_bytes()
    (out / "synthetic" / "train2017" / "stray.jpg").write_bytes(b"left from an older run")
    # a temporary directory left by a killed run (its process no longer exists)
    stale = tmp_path / ".prepared.tmp-999999999"
    (stale / "synthetic").mkdir(parents=True)
    prepare({**TINY, "synthetic": {**TINY["synthetic"], "num_train": 4}}, out, workers=0)
    assert not stale.exists()
    assert not (out / "synthetic" / "train2017" / "stray.jpg").exists()
    assert len(list((out / "synthetic" / "train2017").iterdir())) == 4
    assert (out / "synthetic" / "annotations" / "instances_train2017.json").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_failed_prepare_leaves_the_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "prepared"
    prepare(TINY, out, workers=0)
    before = (out / "manifest.json").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed half-way through generation

    monkeypatch.setattr("pipeline.prepare.generate_synthetic_coco", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(TINY, out, workers=0)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_coco_source_manifest_points_at_the_tree(tmp_path: Path) -> None:
    root = build_coco_tree(tmp_path / "coco2017")
    out = tmp_path / "prepared"
    manifest = prepare({"source": "coco", "coco": {"root": str(root), "download": False}}, out)
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["source"] == raw["name"] == "coco" and manifest.name == "coco"
    assert raw["splits"]["minival"]["ann_file"] == str(root.resolve() / "annotations" / "instances_val2017.json")
    test_dev = manifest.split("test-dev")
    assert not test_dev.has_annotations
    assert test_dev.ann_file.name == "image_info_test-dev2017.json" and test_dev.img_dir.name == "test2017"
    assert manifest.split("minival").img_dir.name == "val2017"
    assert manifest.summary["train"]["crowd"] == 1 and manifest.summary["test-dev"]["images"] == 3
    ds = CocoDetectionDataset(test_dev.ann_file, test_dev.img_dir)
    assert ds[0][1]["boxes"].shape == (0, 4)


def test_config_and_data_errors_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "prepared"
    assert main(["--params", str(_params(tmp_path, {"source": "imagenet"})), "--out", str(out)]) == 1
    assert "data.source must be 'synthetic', 'coco' or 'files'" in capsys.readouterr().err
    assert main(["--params", str(_params(tmp_path, {"source": "synthetic", "synthetic": {"num_train": 2}})),
                 "--out", str(out)]) == 1
    assert "missing data.synthetic.num_minival" in capsys.readouterr().err
    coco = {"source": "coco", "coco": {"root": str(tmp_path / "absent"), "download": False}}
    assert main(["--params", str(_params(tmp_path, coco)), "--out", str(out)]) == 1
    assert "missing: train2017/" in capsys.readouterr().err
    assert not out.exists()


def test_manifest_paths_relative_inside_absolute_outside(tmp_path: Path) -> None:
    inside = SplitInfo("train", tmp_path / "m" / "d" / "a.json", tmp_path / "m" / "d" / "imgs", True)
    outside = SplitInfo("test-dev", tmp_path / "elsewhere" / "b.json", tmp_path / "elsewhere" / "imgs", False)
    write_manifest(tmp_path / "m" / "manifest.json", "coco", [inside, outside])
    raw = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert raw["splits"]["train"] == {"ann_file": "d/a.json", "img_dir": "d/imgs", "has_annotations": True}
    assert raw["splits"]["test-dev"]["ann_file"] == str((tmp_path / "elsewhere" / "b.json").resolve())
    # the prepared folder can move: relative entries follow it, absolute ones stay
    os.rename(tmp_path / "m", tmp_path / "moved")
    m = load_manifest(tmp_path / "moved" / "manifest.json")
    assert m.split("train").ann_file == tmp_path / "moved" / "d" / "a.json"
    assert m.split("test-dev").img_dir == (tmp_path / "elsewhere" / "imgs").resolve()
    assert m.source == "coco" and not m.split("test-dev").has_annotations

    with pytest.raises(DataError, match="unknown split name"):
        write_manifest(tmp_path / "x.json", "coco", [SplitInfo("val", inside.ann_file, inside.img_dir, True)])
    (tmp_path / "bad.json").write_text('{"source": "coco", "splits": {"train": {"ann_file": "a"}}}')
    with pytest.raises(DataError, match="lacks key 'img_dir'"):
        load_manifest(tmp_path / "bad.json")
    with pytest.raises(DataError, match="run the prepare stage"):
        load_manifest(tmp_path / "none.json")


def test_command_line_entry_with_rendering_processes(tmp_path: Path) -> None:
    """``python -m pipeline.prepare`` as DVC runs it, rendering in two spawned processes."""
    params = _params(tmp_path, {"source": "synthetic",
                                "synthetic": {"num_train": 64, "num_minival": 4, "num_testdev": 4, "seed": 0}})
    out = tmp_path / "prepared"
    proc = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--params", str(params), "--out", str(out),
                           "--workers", "2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "64" in proc.stdout
    assert load_manifest(out / "manifest.json").summary["train"]["images"] == 64


def test_a_coco_tree_without_test_parts_prepares_without_test_dev(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """tests/data/coco_mini (train2017 + val2017, no test2017/): prepared with a note, no download
    (downloading is on, and the archives' host would not answer), no test-dev split."""
    dead = [{"url": "http://127.0.0.1:9/zips/test2017.zip", "md5": "0" * 32},
            {"url": "http://127.0.0.1:9/zips/train2017.zip", "md5": "1" * 32}]
    params = _params(tmp_path, {"source": "coco", "coco": {"root": str(COCO_MINI), "download": True, "archives": dead}})
    out = tmp_path / "prepared"
    assert main(["--params", str(params), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (f"prepare: note: {COCO_MINI}: no test-dev split (missing: test2017/, "
            f"annotations/image_info_test-dev2017.json); test-dev is skipped") in printed
    assert f"unzip them into {COCO_MINI}, then run the prepare stage again:\n  http://127.0.0.1:9/zips/test2017.zip\n" in printed
    assert "train2017.zip" not in printed  # only the archive that adds test-dev is named
    assert "(absent: evaluate skips it)" in printed
    assert not (COCO_MINI / "downloads").exists()
    manifest = load_manifest(out / "manifest.json")
    assert set(manifest.splits) == {"train", "minival"} and manifest.name == "coco"
    assert manifest.summary["minival"]["images"] == 3 and "test-dev" not in manifest.summary

    # the official archives are named when the configured list has no test-dev archive
    prepare({"source": "coco", "coco": {"root": str(COCO_MINI), "download": False}}, out)
    printed = capsys.readouterr().out
    assert "http://images.cocodataset.org/zips/test2017.zip" in printed
    assert "http://images.cocodataset.org/annotations/image_info_test2017.zip" in printed


def test_coco_archives_setting_is_checked(tmp_path: Path) -> None:
    coco = {"root": str(COCO_MINI), "download": True, "archives": [{"url": "http://x/a.zip"}]}
    with pytest.raises(ConfigError, match=r"data\.coco\.archives\[0\] must be a mapping with url and md5"):
        prepare({"source": "coco", "coco": coco}, tmp_path / "prepared")
    with pytest.raises(ConfigError, match=r"data\.coco\.root must be a path"):
        prepare({"source": "coco", "coco": {"root": ""}}, tmp_path / "prepared")


def test_manifest_name_is_written_and_defaults_to_the_source(tmp_path: Path) -> None:
    split = SplitInfo("train", tmp_path / "a.json", tmp_path / "imgs", True)
    write_manifest(tmp_path / "named.json", "files", [split], name="my-dataset")
    assert json.loads((tmp_path / "named.json").read_text())["name"] == "my-dataset"
    assert load_manifest(tmp_path / "named.json").name == "my-dataset"
    # a manifest written before the name existed
    (tmp_path / "old.json").write_text(json.dumps({"version": 1, "source": "coco", "splits": {
        "train": {"ann_file": "a.json", "img_dir": "imgs", "has_annotations": True}}}))
    old = load_manifest(tmp_path / "old.json")
    assert old.name == "coco" and set(old.splits) == {"train"}
    for bad in ("", 3, None):
        (tmp_path / "bad.json").write_text(json.dumps({"source": "files", "name": bad, "splits": {}}))
        with pytest.raises(DataError, match=r"bad\.json: 'name' must be a non-empty string"):
            load_manifest(tmp_path / "bad.json")
