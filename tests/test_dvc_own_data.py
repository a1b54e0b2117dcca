"""Real COCO files through the real DVC pipeline (issue "Your own data"): in a temporary copy of
the repository, `dvc repro` on tests/data/coco_mini as a COCO 2017 tree without test2017 (the
one-line `data.source: coco` configuration; prepare → pretrain → train a few iterations →
evaluate → report), then `dvc exp run -S data.source=files ...` on a 3-class cut of it made by
`python -m pipeline.data.subset`. The result files keep COCO's non-contiguous category ids, the
test-dev split is skipped with a note, and the tables name the dataset each number was measured
on. The images and annotations are COCO's (tests/data/coco_mini/README.md: CC BY 4.0 / Flickr)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import COCO_MINI, TINY_MODEL, tiny_params
from tests.test_dvc_pipeline import DVC, out, ran, repro_in_copy, run

pytestmark = pytest.mark.slow

STAGES = ["prepare", "pretrain", f"train@{TINY_MODEL}", f"evaluate@{TINY_MODEL}", "report"]


def coco_ids() -> set[int]:
    return {c["id"] for c in json.loads((COCO_MINI / "annotations" / "instances_val2017.json").read_text())["categories"]}


def result_category_ids(repo: Path) -> set[int]:
    return {r["category_id"] for r in json.loads((repo / f"results/{TINY_MODEL}/minival_bbox.json").read_text())}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, str]:
    """A git repository with the project's files, tiny params on coco_mini and one `dvc repro`."""
    dst = tmp_path_factory.mktemp("own") / "detlab"
    params = tiny_params()
    params["data"]["source"] = "coco"
    params["data"]["coco"]["root"] = "tests/data/coco_mini"  # relative to the workspace, as a user writes it
    overrides = params["models"][TINY_MODEL]["overrides"]
    overrides["schedule"].update({"epochs": 1, "images_per_gpu": 3})
    overrides["model"] = {"roi_head": {"test": {"score_thr": 0.0}}}  # an untrained model still answers
    return dst, repro_in_copy(dst, params)


def test_real_coco_files_run_through_every_stage_and_keep_coco_ids(workspace):
    repo, log = workspace
    assert ran(log) == STAGES
    assert "no test-dev split" in log and "test-dev is skipped" in log  # prepare's note, no 6 GB download
    manifest = json.loads((repo / "data/prepared/manifest.json").read_text())
    assert manifest["name"] == "coco" and sorted(manifest["splits"]) == ["minival", "train"]
    ids = result_category_ids(repo)
    assert ids <= coco_ids() and max(ids) > 80  # COCO's own ids (1..90 with gaps), not labels 0..79
    minival = json.loads((repo / f"metrics/{TINY_MODEL}/minival.json").read_text())
    assert minival["scored"] and minival["dataset"] == "coco minival (3 images)"
    testdev = json.loads((repo / f"metrics/{TINY_MODEL}/test-dev.json").read_text())
    assert testdev["skipped"] is True and testdev["scored"] is False
    assert not [p for p in (repo / f"results/{TINY_MODEL}").iterdir() if "test-dev" in p.name]
    results = (repo / "reports/results.md").read_text()
    assert "coco minival (3 images)" in results and "skipped (no test-dev split)" in results
    assert ran(out([*DVC, "repro"], repo)) == []


def test_a_three_class_cut_trains_through_dvc_exp_run_with_its_own_ids(workspace):
    repo, _ = workspace
    own = repo / "data" / "own"
    ann = COCO_MINI / "annotations"
    for src, dst in (("instances_train2017.json", "train.json"), ("instances_val2017.json", "val.json")):
        run([sys.executable, "-m", "pipeline.data.subset", str(ann / src), str(own / dst),
             "--categories", "boat", "chair", "person"], repo)
    sets = {"data.source": "files", "data.files.name": "coco-mini-3",
            "data.files.train.ann_file": "data/own/train.json", "data.files.train.img_dir": str(COCO_MINI / "train2017"),
            "data.files.minival.ann_file": "data/own/val.json", "data.files.minival.img_dir": str(COCO_MINI / "val2017")}
    log = out([*DVC, "exp", "run", *[a for k, v in sets.items() for a in ("-S", f"{k}={v}")]], repo)
    assert ran(log) == STAGES
    assert result_category_ids(repo) == {1, 9, 62}  # the dataset's ids: person, boat, chair
    weights_meta = json.loads(out([sys.executable, "-c",
                                   "import json, torch; s = torch.load('weights/frcnn_tiny.pth', weights_only=True); "
                                   "print(json.dumps(s['categories']))"], repo).strip().splitlines()[-1])
    assert weights_meta == [{"id": 1, "name": "person"}, {"id": 9, "name": "boat"}, {"id": 62, "name": "chair"}]
    minival = json.loads((repo / f"metrics/{TINY_MODEL}/minival.json").read_text())
    assert minival["dataset"].startswith("coco-mini-3 minival (")
    assert "coco-mini-3 minival" in (repo / "reports/results.md").read_text()
