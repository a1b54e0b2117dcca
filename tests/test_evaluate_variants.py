"""The evaluate stage's second minival pass for heads with a ``corner_snapping`` switch
(RepPoints V2 joint inference), with a fake model that needs no training: it "detects" the
ground truth exactly with snapping on and boxes shifted by a third of their width with it off.

Heads with a ``contour_snapping`` switch (Dense RepPoints V2) likewise: the fake model then also
predicts masks, filling the whole box with snapping on and only its left half with it off
(boxes and scores the same both ways)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

import pipeline.evaluate as evaluate_mod
from pipeline.config import resolve_model_config
from pipeline.data import build_dataset, load_manifest
from pipeline.evaluate import (
    SNAPPING_SWITCHES,
    corner_snapping_variant,
    evaluate_model,
    evaluate_variant,
    snapping_variants,
    variant_split,
    variant_switch,
)
from pipeline.report import collect, contour_snapping_table, corner_snapping_table
from pipeline.tracking import client, newest_finished_run
from tests.conftest import TINY_MODEL, tiny_params


def image_key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


class FakeHead(torch.nn.Module):
    def __init__(self, corner_snapping: bool) -> None:
        super().__init__()
        self.corner_snapping = corner_snapping


class FakeContourHead(torch.nn.Module):
    def __init__(self, contour_snapping: bool) -> None:
        super().__init__()
        self.contour_snapping = contour_snapping


class FakeBothHead(torch.nn.Module):
    """Both switches (no real head has both; the machinery must still flip each on its own)."""

    def __init__(self, corner_snapping: bool, contour_snapping: bool) -> None:
        super().__init__()
        self.corner_snapping = corner_snapping
        self.contour_snapping = contour_snapping


class FakeDetector(torch.nn.Module):
    """Returns each image's ground-truth boxes (looked up by the image's pixels); with a
    ``contour_snapping`` head also masks (whole box when on, its left half when off)."""

    def __init__(self, truth: dict[str, dict], head: torch.nn.Module | None) -> None:
        super().__init__()
        self.truth = truth
        if head is not None:
            self.bbox_head = head
        self.seen: list[tuple[int, bool | None]] = []  # (batch size, snapping value) per call
        self.seen_contour: list[bool | None] = []  # the contour snapping value per call

    def forward(self, images, image_sizes, targets=None):
        snapping = getattr(getattr(self, "bbox_head", None), "corner_snapping", None)
        contour = getattr(getattr(self, "bbox_head", None), "contour_snapping", None)
        self.seen.append((len(image_sizes), snapping))
        self.seen_contour.append(contour)
        out = []
        for img, (h, w) in zip(images, image_sizes):
            t = self.truth[image_key(img[:, :h, :w])]
            boxes = t["boxes"].clone()
            if snapping is False:
                shift = (boxes[:, 2] - boxes[:, 0]) / 3
                boxes[:, 0] += shift
                boxes[:, 2] += shift
            out.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9), "labels": t["labels"].clone()})
            if contour is not None:
                masks = torch.ones(len(boxes), 1, 28, 28)
                if contour is False:
                    masks[..., 14:] = 0.0
                out[-1]["masks"] = masks
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
    return evaluate_model("rpv2_fake", params, manifest_file=tiny_prepared, weights_root=tmp_path / "ckpt",
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
    assert main.data.metrics["minival/bbox_AP"] == pytest.approx(minival["bbox"]["AP"])
    assert variant.data.metrics["minival/bbox_AP"] == pytest.approx(off["bbox"]["AP"])

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


# ------------------------------------------------------------ contour snapping (Dense RepPoints V2)
def test_each_switch_of_the_head_gives_its_own_variant():
    assert SNAPPING_SWITCHES == ("corner_snapping", "contour_snapping")
    assert snapping_variants(torch.nn.Module()) == []
    assert snapping_variants(FakeDetector({}, head=None)) == []
    assert snapping_variants(FakeDetector({}, FakeHead(True))) == [("corner_snapping_off", False)]
    contour = FakeDetector({}, FakeContourHead(True))
    assert snapping_variants(contour) == [("contour_snapping_off", False)]
    assert corner_snapping_variant(contour) is None  # the corner machinery ignores it
    assert snapping_variants(FakeDetector({}, FakeContourHead(False))) == [("contour_snapping_on", True)]
    assert snapping_variants(FakeDetector({}, FakeBothHead(True, False))) == [
        ("corner_snapping_off", False), ("contour_snapping_on", True)]
    assert variant_switch("contour_snapping_off") == "contour_snapping"
    assert variant_switch("corner_snapping_on") == "corner_snapping"
    assert variant_switch("contour_snapping") is None and variant_switch("other_off") is None
    assert variant_split("minival", "contour_snapping_off") == "minival/contour_snapping_off"


def test_evaluate_variant_refuses_a_name_of_no_switch(tmp_path):
    model = FakeDetector({}, FakeContourHead(True))
    with pytest.raises(ValueError, match="names none of the switches"):
        evaluate_variant(model, ("mask_refinement_off", False), [], [1], torch.device("cpu"), None, None,
                         tmp_path, "m", "minival", {})
    assert model.seen_contour == [] and model.bbox_head.contour_snapping is True


def test_minival_is_scored_again_with_contour_snapping_off_and_tracked_apart(fake_setup, tmp_path, tiny_prepared):
    params, make = fake_setup
    model = make(FakeContourHead(contour_snapping=True))
    out = run(params, tmp_path, tiny_prepared)

    # minival twice (on, then off), test-dev once; the default restored afterwards; the corner
    # switch never set on a head that has none
    batches = -(-8 // params["evaluate"]["batch_size"])
    assert model.seen_contour == [True] * batches + [False] * batches + [True] * batches
    assert model.bbox_head.contour_snapping is True and not hasattr(model.bbox_head, "corner_snapping")

    minival = out["minival"]
    off = minival["variants"]["contour_snapping_off"]
    assert list(minival["variants"]) == ["contour_snapping_off"]
    assert minival["contour_snapping"] is True and off["contour_snapping"] is False
    assert "corner_snapping" not in minival and "corner_snapping" not in off
    assert list(off)[:2] == ["contour_snapping", "num_detections"]
    assert not any("seconds" in k for k in [*off, *minival]), "timings belong in MLflow, not the metrics file"
    # boxes unchanged, masks worse without the snapped points
    assert off["bbox"] == minival["bbox"] and minival["bbox"]["AP"] == pytest.approx(1.0)
    assert set(off["segm"]) == set(minival["segm"])
    assert 0 <= off["segm"]["AP"] < minival["segm"]["AP"]
    assert "variants" not in out["test-dev"] and "contour_snapping" not in out["test-dev"]
    written = json.loads((tmp_path / "metrics" / "rpv2_fake" / "minival.json").read_text())
    assert written["contour_snapping"] is True and written["variants"]["contour_snapping_off"]["segm"] == off["segm"]
    results = tmp_path / "results" / "rpv2_fake"
    assert json.loads((results / "minival_contour_snapping_off_bbox.json").read_text())
    assert json.loads((results / "minival_contour_snapping_off_segm.json").read_text())
    assert not list(results.glob("*corner_snapping*"))

    c = client()
    main = newest_finished_run(c, "rpv2_fake", "evaluate", "minival")
    variant = newest_finished_run(c, "rpv2_fake", "evaluate", "minival/contour_snapping_off")
    assert main.info.run_id != variant.info.run_id
    assert "variant" not in main.data.tags and main.data.tags["contour_snapping"] == "true"
    assert "corner_snapping" not in main.data.tags and "corner_snapping" not in variant.data.tags
    assert variant.data.tags["variant"] == "contour_snapping_off"
    assert variant.data.tags["contour_snapping"] == "false"
    assert variant.data.tags["split"] == "minival/contour_snapping_off"
    assert variant.data.metrics["minival/segm_AP"] == pytest.approx(off["segm"]["AP"])
    assert main.data.metrics["minival/segm_AP"] == pytest.approx(minival["segm"]["AP"])

    # the report reads both runs back, checked against the file: the contour table, not the corner one
    rows = collect(params, tmp_path / "metrics")
    record = next(r for r in rows if r["split"] == "minival")
    assert record["contour_snapping"] is True and "corner_snapping" not in record
    assert record["variants"]["contour_snapping_off"]["contour_snapping"] is False
    assert corner_snapping_table(rows) == ""
    line = next(l for l in contour_snapping_table(rows).splitlines() if l.startswith("| rpv2_fake"))
    cells = [x.strip() for x in line.strip("|").split("|")]
    on_ap, off_ap = minival["segm"]["AP"], off["segm"]["AP"]
    assert cells == ["rpv2_fake (cpu)", f"{100 * on_ap:.1f}", f"{100 * off_ap:.1f}",
                     f"{100 * (on_ap - off_ap):+.1f}", "100.0", minival["dataset"]]


def test_a_head_with_both_switches_gets_one_variant_per_switch(fake_setup, tmp_path, tiny_prepared):
    params, make = fake_setup
    params["evaluate"]["splits"] = ["minival"]
    model = make(FakeBothHead(corner_snapping=True, contour_snapping=False))
    out = run(params, tmp_path, tiny_prepared)
    batches = -(-8 // params["evaluate"]["batch_size"])
    # default; corner flipped (contour at its default); contour flipped (corner at its default)
    assert [(v, c) for (_, v), c in zip(model.seen, model.seen_contour)] == (
        [(True, False)] * batches + [(False, False)] * batches + [(True, True)] * batches)
    assert (model.bbox_head.corner_snapping, model.bbox_head.contour_snapping) == (True, False)
    minival = out["minival"]
    assert list(minival["variants"]) == ["corner_snapping_off", "contour_snapping_on"]
    assert minival["corner_snapping"] is True and minival["contour_snapping"] is False
    assert minival["variants"]["corner_snapping_off"]["corner_snapping"] is False
    assert minival["variants"]["contour_snapping_on"]["contour_snapping"] is True
    assert "contour_snapping" not in minival["variants"]["corner_snapping_off"]
    assert minival["variants"]["contour_snapping_on"]["segm"]["AP"] > minival["segm"]["AP"]

    c = client()
    main = newest_finished_run(c, "rpv2_fake", "evaluate", "minival")
    corner = newest_finished_run(c, "rpv2_fake", "evaluate", "minival/corner_snapping_off")
    contour = newest_finished_run(c, "rpv2_fake", "evaluate", "minival/contour_snapping_on")
    assert (main.data.tags["corner_snapping"], main.data.tags["contour_snapping"]) == ("true", "false")
    assert (corner.data.tags["corner_snapping"], corner.data.tags["contour_snapping"]) == ("false", "false")
    assert (contour.data.tags["corner_snapping"], contour.data.tags["contour_snapping"]) == ("true", "true")
    assert contour.data.tags["variant"] == "contour_snapping_on"

    rows = collect(params, tmp_path / "metrics")
    corner_line = next(l for l in corner_snapping_table(rows).splitlines() if l.startswith("| rpv2_fake"))
    contour_line = next(l for l in contour_snapping_table(rows).splitlines() if l.startswith("| rpv2_fake"))
    assert corner_line.split("|")[2].strip() == "100.0"  # box AP, snapping on: the default
    # mask AP with contour snapping on is the variant's here
    assert contour_line.split("|")[2].strip() == f"{100 * minival['variants']['contour_snapping_on']['segm']['AP']:.1f}"
