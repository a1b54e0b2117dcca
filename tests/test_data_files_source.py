"""``data.source: files``: the user's own COCO-format annotation files and image folders
(pipeline/data/files_source.py) through the prepare stage, made from tests/data/coco_mini."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params
from pipeline.data.dataset import CocoDetectionDataset
from pipeline.data.manifest import load_manifest
from pipeline.errors import ConfigError, DataError
from pipeline.paths import REPO_ROOT
from pipeline.prepare import main, prepare
from tests.data_fixtures import COCO_MINI, write_json

TRAIN_JSON = COCO_MINI / "annotations" / "instances_train2017.json"
VAL_JSON = COCO_MINI / "annotations" / "instances_val2017.json"


def files_cfg(test_dev=None, name="my-dataset", base: Path = COCO_MINI) -> dict:
    """``params['data']`` for the files source over coco_mini (absolute paths by default)."""
    return {"source": "files", "files": {
        "name": name,
        "train": {"ann_file": str(base / "annotations" / "instances_train2017.json"), "img_dir": str(base / "train2017")},
        "minival": {"ann_file": str(base / "annotations" / "instances_val2017.json"), "img_dir": str(base / "val2017")},
        "test-dev": test_dev,
    }}


def image_info(path: Path) -> Path:
    """An image-info copy of coco_mini's val file (no ``annotations`` key), as COCO's test-dev."""
    val = json.loads(VAL_JSON.read_text())
    return write_json(path, {k: v for k, v in val.items() if k != "annotations"})


def test_files_source_without_test_dev_points_at_the_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepared"
    manifest = prepare(files_cfg(), out)
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["source"] == "files" and raw["name"] == "my-dataset"
    assert set(raw["splits"]) == {"train", "minival"}
    assert raw["splits"]["train"] == {"ann_file": str(TRAIN_JSON.resolve()), "img_dir": str((COCO_MINI / "train2017").resolve()),
                                      "has_annotations": True}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # nothing copied
    assert manifest.name == "my-dataset" and manifest.split("minival").has_annotations
    assert manifest.summary["train"]["images"] == 3 and manifest.summary["minival"]["images"] == 3
    ds = CocoDetectionDataset(manifest.split("minival").ann_file, manifest.split("minival").img_dir)
    assert len(ds) == 3 and ds[0][0].shape[0] == 3
    with pytest.raises(DataError, match="no split 'test-dev'"):
        manifest.split("test-dev")

    # the same with test-dev given as empty paths (the default params.yaml's form)
    manifest = prepare(files_cfg(test_dev={"ann_file": "", "img_dir": ""}), out)
    assert set(manifest.splits) == {"train", "minival"}


def test_files_source_test_dev_scored_with_annotations_not_without(tmp_path: Path) -> None:
    scored = prepare(files_cfg(test_dev={"ann_file": str(VAL_JSON), "img_dir": str(COCO_MINI / "val2017")}),
                     tmp_path / "a")
    assert scored.split("test-dev").has_annotations
    assert scored.summary["test-dev"]["has_annotations"] and scored.summary["test-dev"]["instances"] > 0

    info = image_info(tmp_path / "info" / "image_info_test.json")
    unscored = prepare(files_cfg(test_dev={"ann_file": str(info), "img_dir": str(COCO_MINI / "val2017")}),
                       tmp_path / "b")
    td = unscored.split("test-dev")
    assert not td.has_annotations and td.ann_file == info.resolve()
    assert unscored.summary["test-dev"] == {"images": 3, "has_annotations": False, "instances": 0, "crowd": 0,
                                            "area_hist": {"small": 0, "medium": 0, "large": 0},
                                            "ann_sha256": hashlib.sha256(info.read_bytes()).hexdigest()[:16]}
    assert CocoDetectionDataset(td.ann_file, td.img_dir)[0][1]["boxes"].shape == (0, 4)


def test_files_source_relative_paths_resolve_against_the_workspace(tmp_path: Path, monkeypatch, capsys) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(COCO_MINI, workspace / "mydata")
    monkeypatch.setattr("pipeline.prepare.workspace_root", lambda: workspace)
    data = {"source": "files", "files": {
        "name": "",  # empty: the train file's stem
        "train": {"ann_file": "mydata/annotations/instances_train2017.json", "img_dir": "mydata/train2017"},
        "minival": {"ann_file": "mydata/annotations/instances_val2017.json", "img_dir": "mydata/val2017"},
        "test-dev": None,
    }}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": data}))
    out = tmp_path / "prepared"
    assert main(["--params", str(params), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prepared instances_train2017 (files) data" in printed
    assert "test-dev" in printed and "(absent: evaluate skips it)" in printed
    manifest = load_manifest(out / "manifest.json")
    assert manifest.name == "instances_train2017"
    assert manifest.split("train").ann_file == (workspace / "mydata" / "annotations" / "instances_train2017.json").resolve()
    assert manifest.split("minival").img_dir == (workspace / "mydata" / "val2017").resolve()


def test_the_default_params_refuse_source_files_naming_the_empty_key(tmp_path: Path, capsys) -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params["data"]["source"] == "synthetic"  # the default stays synthetic
    files = params["data"]["files"]
    assert set(files) == {"name", "train", "minival", "test-dev"}
    data = {**params["data"], "source": "files"}
    with pytest.raises(ConfigError, match=r"data\.files\.train is empty"):
        prepare(data, tmp_path / "prepared")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    assert main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "prepared")]) == 1
    err = capsys.readouterr().err
    assert "prepare: error: params.yaml: data.files.train is empty" in err and "test-dev is optional" in err
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(minival=None), r"data\.files\.minival is empty"),
    (lambda f: f["train"].update(img_dir=""), r"data\.files\.train\.img_dir is empty; data\.files\.train needs both"),
    (lambda f: f["minival"].update(ann_file=3), r"data\.files\.minival\.ann_file must be a path string, got 3"),
    (lambda f: f.update({"test-dev": "test.json"}), r"data\.files\.test-dev must be a mapping"),
    (lambda f: f["train"].update(images="x"), r"data\.files\.train has unknown key\(s\) 'images' \(expected ann_file, img_dir\)"),
    (lambda f: f.update(val={"ann_file": "v.json", "img_dir": "v"}), r"data\.files has unknown key\(s\) 'val' \(expected name, train, minival, test-dev\)"),
    (lambda f: f.update(name=["a"]), r"data\.files\.name must be a string"),
])
def test_bad_settings_are_config_errors_naming_the_key(tmp_path: Path, change, message) -> None:
    data = files_cfg()
    change(data["files"])
    with pytest.raises(ConfigError, match=message):
        prepare(data, tmp_path / "prepared")
    with pytest.raises(ConfigError, match=r"data\.files must be a mapping"):
        prepare({"source": "files", "files": None}, tmp_path / "prepared")


def test_bad_files_are_data_errors_naming_the_file_and_key(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    data = files_cfg()
    data["files"]["minival"]["ann_file"] = str(tmp_path / "absent.json")
    with pytest.raises(DataError, match=r"absent\.json: file not found \(data\.files\.minival\.ann_file\)"):
        prepare(data, out)

    data = files_cfg()
    data["files"]["train"]["img_dir"] = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"nowhere: image folder not found \(data\.files\.train\.img_dir\)"):
        prepare(data, out)

    no_anns = image_info(tmp_path / "val_no_anns.json")
    data = files_cfg()
    data["files"]["minival"]["ann_file"] = str(no_anns)
    with pytest.raises(DataError, match=r"val_no_anns\.json: missing required key\(s\) \['annotations'\] "
                                        r"\(train and minival need annotations\) \(data\.files\.minival\.ann_file\)"):
        prepare(data, out)

    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,,}]}')
    data = files_cfg(test_dev={"ann_file": str(bad), "img_dir": str(COCO_MINI / "val2017")})
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 2"):
        prepare(data, out)

    # an image the file lists is not in the folder (the folder of another split)
    data = files_cfg()
    data["files"]["minival"]["img_dir"] = str(COCO_MINI / "train2017")
    with pytest.raises(DataError) as e:
        prepare(data, out)
    assert str(VAL_JSON) in str(e.value) and "image id" in str(e.value) and "train2017" in str(e.value)

    # a split whose categories are not the train file's
    val = json.loads(VAL_JSON.read_text())
    val["categories"] = val["categories"] + [{"id": 999, "name": "extra", "supercategory": "x"}]
    other = write_json(tmp_path / "other_cats.json", val)
    data = files_cfg(test_dev={"ann_file": str(other), "img_dir": str(COCO_MINI / "val2017")})
    with pytest.raises(DataError, match=r"other_cats\.json: its category ids differ from the train file's .*"
                                        r"not in train: \[999\].*data\.files\.test-dev\.ann_file"):
        prepare(data, out)
    assert not out.exists()


def test_every_listed_image_must_exist(tmp_path: Path) -> None:
    """Not only the sampled first, middle and last image: a missing one in between is named."""
    imgs = tmp_path / "val2017"
    shutil.copytree(COCO_MINI / "val2017", imgs)
    val = json.loads(VAL_JSON.read_text())
    extra = []
    for k, rec in enumerate(val["images"][:2]):  # two more images, copies under new names
        name = f"copy_{k}.jpg"
        shutil.copy(imgs / rec["file_name"], imgs / name)
        extra.append({**rec, "id": 10_000 + k, "file_name": name})
    val["images"] = val["images"][:1] + extra + val["images"][1:]  # 5 images: 0, copy_0, copy_1, 1, 2
    ann = write_json(tmp_path / "val.json", val)
    (imgs / "copy_0.jpg").unlink()  # index 1: not sampled
    data = files_cfg()
    data["files"]["minival"] = {"ann_file": str(ann), "img_dir": str(imgs)}
    with pytest.raises(DataError, match=r"val\.json: 1 of its 5 images are not in .*val2017: 'copy_0\.jpg' \(image id 10000\)"):
        prepare(data, tmp_path / "prepared")
    shutil.copy(imgs / val["images"][0]["file_name"], imgs / "copy_0.jpg")  # back, with the size its record gives (prepare checks every header)
    assert prepare(data, tmp_path / "prepared").summary["minival"]["images"] == 5
