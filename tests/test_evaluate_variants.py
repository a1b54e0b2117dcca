"""The evaluate stage's second minival pass for heads with a ``corner_snapping`` switch
(RepPoints V2 joint inference), with a fake model that needs no training: it "detects" the
ground truth exactly with snapping on and boxes shifted by a third of their width with it off."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

import pipeline.evaluate as evaluate_mod
from pipeline.config import resolve_model_config
from pipeline.data import build_dataset, load_manifest
from pipeline.evaluate import corner_snapping_variant, evaluate_model, variant_split
from pipeline.report import collect, corner_snapping_table
from pipeline.tracking import client, newest_finished_run
from tests.conftest import TINY_MODEL, tiny_params


def image_key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


class FakeHead(torch.nn.Module):
    def __init__(self, corner_snapping: bool) -> None:
        super().__init__()
        self.corner_snapping = corner_snapping


class FakeDetector(torch.nn.Module):
    """Returns each image's ground-truth boxes (looked up by the image's pixels)."""

    def __init__(self, truth: dict[str, dict], head: torch.nn.Module | None) -> None:
        super().__init__()
        self.truth = truth
        if head is not None:
            self.bbox_head = head
        self.seen: list[tuple[int, bool | None]] = []  # (batch size, snapping value) per call

    def forward(self, images, image_sizes, targets=None):
        snapping = getattr(getattr(self, "bbox_head", None), "corner_snapping", None)
        self.seen.append((len(image_sizes), snapping))
        out = []
        for img, (h, w) in zip(images, image_sizes):
            t = self.truth[image_key(img[:, :h, :w])]
            boxes = t["boxes"].clone()
            if snapping is False:
                shift = (boxes[:, 2] - boxes[:, 0]) / 3
                boxes[:, 0] += shift
                boxes[:, 2] += shift
            out.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9), "labels": t["labels"].clone()})
        return out


@pytest.fixture
def fake_setup(tiny_prepared, monkeypatch):
    """(params, factory(head) -> the fake model that evaluate_model will 'load')."""
    params = tiny_params()
    params["models"] = {"rpv2_fake": {**params["models"][TINY_MODEL]}}
    cfg = resolve_model_config(params, "rpv2_fake")
    manifest = load_manifest(tiny_prepared)
    truth, cat_ids = {}, None
    for split in ("minival", "test-dev"):
        ds = build_dataset(manifest.split(split), cfg["data"], train=False, seed=0)
        cat_ids = list(ds.cat_ids)
        for i in range(len(ds)):
            img, tgt = ds[i]
            truth[image_key(img)] = tgt
    holder = {}

    def make(head):
        holder["model"] = FakeDetector(truth, head).eval()
        state = {"config": cfg, "cat_ids": cat_ids, "iteration": 3}
        monkeypatch.setattr(evaluate_mod, "load_trained_model", lambda ckpt, device: (holder["model"], state))
        return holder["model"]

    return params, make


def run(params, tmp_path, tiny_prepared):
    return evaluate_model("rpv2_fake", params, manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt",
                          metrics_root=tmp_path / "metrics", results_root=tmp_path / "results", track=True)


def test_corner_snapping_variant_is_named_by_the_value_it_uses():
    assert corner_snapping_variant(torch.nn.Module()) is None
    assert corner_snapping_variant(FakeDetector({}, head=None)) is None
    assert corner_snapping_variant(FakeDetector({}, FakeHead(True))) == ("corner_snapping_off", False)
    assert corner_snapping_variant(FakeDetector({}, FakeHead(False))) == ("corner_snapping_on", True)
    assert variant_split("minival", "corner_snapping_off") == "minival/corner_snapping_off"


def test_minival_is_scored_again_with_snapping_off_and_tracked_apart(fake_setup, tmp_path, tiny_prepared):
    params, make = fake_setup
    model = make(FakeHead(corner_snapping=True))
    out = run(params, tmp_path, tiny_prepared)

    # minival twice (on, then off), test-dev once, with the default restored afterwards
    batches = -(-8 // params["evaluate"]["batch_size"])
    assert [v for _, v in model.seen] == [True] * batches + [False] * batches + [True] * batches
    assert model.bbox_head.corner_snapping is True

    minival = out["minival"]
    assert minival["bbox"]["AP"] == pytest.approx(1.0)  # the exact ground truth
    off = minival["variants"]["corner_snapping_off"]
    assert off["corner_snapping"] is False and minival["corner_snapping"] is True
    assert set(off["bbox"]) == set(minival["bbox"])  # the same 12 COCO numbers
    assert 0 <= off["bbox"]["AP"] < 0.9 and off["num_detections"] == minival["num_detections"]
    assert "variants" not in out["test-dev"]
    written = json.loads((tmp_path / "metrics" / "rpv2_fake" / "minival.json").read_text())
    assert written["variants"]["corner_snapping_off"]["bbox"] == off["bbox"]
    assert not (tmp_path / "metrics" / "rpv2_fake" / "minival_corner_snapping_off.json").exists()
    assert json.loads((tmp_path / "results" / "rpv2_fake" / "minival_corner_snapping_off_bbox.json").read_text())

    c = client()
    main = newest_finished_run(c, "rpv2_fake", "evaluate", "minival")
    variant = newest_finished_run(c, "rpv2_fake", "evaluate", "minival/corner_snapping_off")
    assert main.info.run_id != variant.info.run_id
    assert "variant" not in main.data.tags and main.data.tags["corner_snapping"] == "true"
    assert variant.data.tags["variant"] == "corner_snapping_off" and variant.data.tags["corner_snapping"] == "false"
    assert main.data.metrics["bbox_AP"] == pytest.approx(minival["bbox"]["AP"])
    assert variant.data.metrics["bbox_AP"] == pytest.approx(off["bbox"]["AP"])

    # the report reads both runs back, checked against the file
    rows = collect(params, tmp_path / "metrics")
    table = corner_snapping_table(rows)
    line = next(l for l in table.splitlines() if l.startswith("| rpv2_fake"))
    cells = [x.strip() for x in line.strip("|").split("|")]
    assert cells[:4] == ["rpv2_fake (cpu)", "100.0", f"{100 * off['bbox']['AP']:.1f}",
                         f"{100 * (1.0 - off['bbox']['AP']):+.1f}"]
    assert cells[4] == minival["dataset"]


def test_a_model_off_by_default_is_scored_with_snapping_on(fake_setup, tmp_path, tiny_prepared):
    params, make = fake_setup
    params["evaluate"]["splits"] = ["minival"]
    model = make(FakeHead(corner_snapping=False))
    out = run(params, tmp_path, tiny_prepared)
    assert model.bbox_head.corner_snapping is False
    on = out["minival"]["variants"]["corner_snapping_on"]
    assert on["corner_snapping"] is True and on["bbox"]["AP"] == pytest.approx(1.0)
    assert out["minival"]["corner_snapping"] is False and out["minival"]["bbox"]["AP"] < 0.9
    assert newest_finished_run(client(), "rpv2_fake", "evaluate", "minival/corner_snapping_on") is not None
    line = next(l for l in corner_snapping_table(collect(params, tmp_path / "metrics")).splitlines()
                if l.startswith("| rpv2_fake"))
    assert line.split("|")[2].strip() == "100.0"  # "on" is the variant's number here


def test_a_model_without_the_switch_is_evaluated_once(fake_setup, tmp_path, tiny_prepared):
    params, make = fake_setup
    params["evaluate"]["splits"] = ["minival"]
    model = make(head=None)
    out = run(params, tmp_path, tiny_prepared)
    assert len(model.seen) == -(-8 // params["evaluate"]["batch_size"])
    assert "variants" not in out["minival"] and "corner_snapping" not in out["minival"]
    assert not list((tmp_path / "results" / "rpv2_fake").glob("*corner_snapping*"))
