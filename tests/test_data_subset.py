"""`python -m pipeline.data.subset`: a COCO file cut to some categories keeps their ids, names
and order, their annotations, the images that show them, and COCO's other blocks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.data.subset import subset_coco
from pipeline.errors import DataError
from tests.conftest import COCO_MINI, REPO

TRAIN = COCO_MINI / "annotations" / "instances_train2017.json"


def test_the_cut_keeps_ids_names_order_and_only_images_with_kept_objects():
    data = json.loads(TRAIN.read_text())
    out = subset_coco(data, ["dining table", "9", "chair"], TRAIN)  # names and an id, in any order
    assert [(c["id"], c["name"]) for c in out["categories"]] == [(9, "boat"), (62, "chair"), (67, "dining table")]
    assert {a["category_id"] for a in out["annotations"]} == {9, 62, 67}
    assert len(out["annotations"]) == sum(a["category_id"] in (9, 62, 67) for a in data["annotations"])
    kept = {a["image_id"] for a in out["annotations"]}
    assert {i["id"] for i in out["images"]} == kept and len(kept) < len(data["images"])
    assert out["info"] == data["info"] and out["licenses"] == data["licenses"]
    every = subset_coco(data, ["chair"], TRAIN, keep_all_images=True)
    assert len(every["images"]) == len(data["images"])


def test_unknown_or_ambiguous_categories_are_refused_naming_the_file():
    data = json.loads(TRAIN.read_text())
    with pytest.raises(DataError, match=r"instances_train2017.json: no category named or numbered 'unicorn'"):
        subset_coco(data, ["unicorn"], TRAIN)
    data["categories"].append({"id": 1000, "name": "chair"})
    with pytest.raises(DataError, match=r"category name 'chair' is shared by ids \[62, 1000\]"):
        subset_coco(data, ["chair"], TRAIN)


def test_the_command_writes_the_file_and_fails_cleanly(tmp_path):
    out = tmp_path / "cut" / "train.json"
    proc = subprocess.run([sys.executable, "-m", "pipeline.data.subset", str(TRAIN), str(out),
                           "--categories", "boat", "chair"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "boat (id 9), chair (id 62)" in proc.stdout
    assert [c["id"] for c in json.loads(out.read_text())["categories"]] == [9, 62]
    bad = subprocess.run([sys.executable, "-m", "pipeline.data.subset", str(TRAIN), str(tmp_path / "x.json"),
                          "--categories", "unicorn"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "unicorn" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.json").exists()
