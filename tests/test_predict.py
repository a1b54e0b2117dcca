"""``python -m pipeline.predict`` and the detection pictures of :mod:`pipeline.visualize`,
with a tiny model trained here for one short epoch."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import build_dataset, load_manifest
from pipeline.evaluate import load_trained_model
from pipeline.predict import main as predict_main
from pipeline.predict import output_names, predict_images
from pipeline.train import run_training
from pipeline.visualize import class_color, draw_detections, prediction_grid
from tests.conftest import REPO, TINY_MODEL, tiny_params

# name -> (PIL mode, width, height); the pictures are upscaled 3x (short side 120 or 150 -> >= 320)
INPUTS = {"a_rgb.jpg": ("RGB", 160, 120), "b_gray.jpg": ("L", 120, 160), "c_rgba.png": ("RGBA", 200, 150)}


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_prepared, tmp_path_factory) -> Path:
    """model_final.pth of a tiny Faster R-CNN after one epoch; score_thr 0 so it returns boxes."""
    root = tmp_path_factory.mktemp("predict_ckpt")
    params = tiny_params()
    params["models"][TINY_MODEL]["overrides"]["schedule"]["epochs"] = 1
    params["models"][TINY_MODEL]["overrides"]["model"] = {"roi_head": {"test": {"score_thr": 0.0}}}
    run_training(TINY_MODEL, params, manifest_file=tiny_prepared, checkpoint_root=root / "ckpt", weights_root=root / "ckpt",
                 metrics_root=root / "metrics", track=False)
    return root / "ckpt" / f"{TINY_MODEL}.pth"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Three images (RGB JPEG, grayscale JPEG, RGBA PNG) and a file that is not an image."""
    d = tmp_path_factory.mktemp("predict_in")
    rng = np.random.default_rng(0)
    for name, (mode, w, h) in INPUTS.items():
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rgb[h // 4 : h // 2, w // 4 : w // 2] = (230, 30, 30)  # a flat block for the detector to look at
        Image.fromarray(rgb).convert(mode).save(d / name)
    (d / "notes.txt").write_text("not an image\n")
    return d


def test_predict_folder_writes_records_and_pictures(tiny_checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    predict_main(["--checkpoint", str(tiny_checkpoint), "--input", str(image_folder), "--out", str(out),
                  "--device", "cpu", "--batch-size", "2", "--score-thr", "0.0"])
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    records = json.loads((out / "predictions.json").read_text())
    names = sorted(INPUTS)
    class_name = {c["id"]: c["name"] for c in state["categories"]}
    assert {r["file_name"] for r in records} == set(names)  # every image, grayscale and RGBA included
    for r in records:
        assert r["file_name"] == names[r["image_id"]]  # image_id = index in the sorted list
        assert r["category_id"] in state["cat_ids"]
        assert r["category_name"] == class_name[r["category_id"]]  # the checkpoint's class names
        _, w, h = INPUTS[r["file_name"]]
        x, y, bw, bh = r["bbox"]
        assert 0 <= x and 0 <= y and bw >= 0 and bh >= 0
        assert x + bw <= w + 0.01 and y + bh <= h + 0.01  # original image pixels
        assert 0.0 <= r["score"] <= 1.0
    per_image = [sum(r["image_id"] == i for r in records) for i in range(len(names))]
    assert max(per_image) <= 100
    for name, (_, w, h) in INPUTS.items():
        with Image.open(out / (Path(name).stem + ".png")) as im:
            assert im.size == (3 * w, 3 * h) and im.mode == "RGB"
    assert sorted(p.name for p in out.iterdir()) == ["a_rgb.png", "b_gray.png", "c_rgba.png", "predictions.json"]

    # The library call gives the same records and the picture the command saved.
    model, state = load_trained_model(tiny_checkpoint, torch.device("cpu"))
    (result,) = predict_images(model, state, [image_folder / "c_rgba.png"], torch.device("cpu"),
                               score_thr=0.0, batch_size=1)
    assert result["image_id"] == 0 and result["orig_size"] == (150, 200)
    assert result["records"] == [dict(r, image_id=0) for r in records if r["file_name"] == "c_rgba.png"]
    saved = torch.from_numpy(np.array(Image.open(out / "c_rgba.png"))).permute(2, 0, 1)
    assert torch.equal(result["picture"], saved)


@pytest.mark.parametrize("case", ["missing input", "corrupt input file", "folder of corrupt images"])
def test_bad_input_exits_2_naming_the_file(case, tiny_checkpoint, image_folder, tmp_path):
    if case == "missing input":
        source = bad = tmp_path / "no_such_folder"
    else:
        source = tmp_path / "in"
        source.mkdir()
        bad = source / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
        if case == "corrupt input file":
            source = bad
        else:
            (source / "empty.png").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", "--checkpoint", str(tiny_checkpoint), "--input", str(source),
         "--out", str(tmp_path / "out"), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "predictions.json").exists()
    if case == "folder of corrupt images":
        assert f"{source}: none of its 2 image(s) could be read: 'broken.jpg', 'empty.png'" in proc.stderr
        assert not (tmp_path / "out").exists()  # refused before the model is loaded


def test_folder_with_a_corrupt_image_predicts_the_others_and_exits_1(tiny_checkpoint, image_folder, tmp_path, capsys):
    """A corrupt file among good ones is warned about (name and why), every other image is
    predicted and written, the failures are listed at the end, and the exit status is 1."""
    source = tmp_path / "in"
    source.mkdir()
    for name in INPUTS:
        (source / name).write_bytes((image_folder / name).read_bytes())
    (source / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")  # header unreadable
    cut = (image_folder / "c_rgba.png").read_bytes()
    (source / "c_cut.png").write_bytes(cut[: len(cut) // 2])  # header intact, pixels cut: fails while decoding
    out = tmp_path / "out"
    out.mkdir()
    (out / "c_cut.png").write_bytes(b"a picture from an earlier run")
    with pytest.raises(SystemExit) as exc:
        predict_main(["--checkpoint", str(tiny_checkpoint), "--input", str(source), "--out", str(out),
                      "--device", "cpu", "--batch-size", "2", "--score-thr", "0.0"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    names = sorted([*INPUTS, "b_broken.jpg", "c_cut.png"])  # a_rgb, b_broken, b_gray, c_cut, c_rgba
    for bad in ("b_broken.jpg", "c_cut.png"):
        assert f"predict: warning: skipped an unreadable image: {source / bad}: cannot decode image" in err, err
    summary = err[err.index("predict: 2 unreadable image(s):"):]
    assert summary.index(str(source / "b_broken.jpg")) < summary.index(str(source / "c_cut.png"))
    assert (f"predict: error: {source}: 2 of 5 image(s) could not be read and have no output: 'b_broken.jpg', "
            f"'c_cut.png'; the other 3 were predicted") in summary
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["a_rgb.png", "b_gray.png", "c_rgba.png", "predictions.json"]
    records = json.loads((out / "predictions.json").read_text())
    assert {r["file_name"] for r in records} == set(INPUTS)
    assert all(r["file_name"] == names[r["image_id"]] for r in records)  # ids: index among all listed files


@pytest.mark.parametrize("case", ["empty folder", "missing checkpoint"])
def test_unusable_arguments_exit_2_before_loading_a_model(case, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    (source / "readme.txt").write_text("not an image\n")
    checkpoint = tmp_path / "nowhere" / "model_final.pth"
    if case == "missing checkpoint":
        Image.new("RGB", (40, 30)).save(source / "x.png")
    with pytest.raises(SystemExit) as exc:
        predict_main(["--checkpoint", str(checkpoint), "--input", str(source), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert str(source if case == "empty folder" else checkpoint) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_names_keep_stems_apart():
    paths = [Path("d/a.jpg"), Path("d/a.PNG"), Path("d/b.jpeg")]
    assert output_names(paths) == ["a_jpg.png", "a_png.png", "b.png"]


def test_draw_detections_outlines_boxes_above_threshold():
    grey = (40, 40, 40)
    image = torch.tensor(grey, dtype=torch.uint8).view(3, 1, 1).expand(3, 100, 100).contiguous()
    boxes = torch.tensor([[10.0, 10.0, 90.0, 90.0], [20.0, 60.0, 40.0, 80.0]])
    labels = torch.tensor([1, 0])
    scores = torch.tensor([0.9, 0.1])
    out = draw_detections(image, boxes, labels, scores, ["ellipse", "rectangle"], score_thr=0.3)

    assert out.dtype == torch.uint8 and out.shape == (3, 400, 400)  # 100 px short side -> x4
    colour = torch.tensor(class_color(1), dtype=torch.uint8)
    assert torch.equal(out[:, 200, 40], colour)  # left edge of the box, scaled by 4
    assert torch.equal(out[:, 359, 200], colour)  # bottom edge
    assert torch.equal(out[:, 200, 200], torch.tensor(grey, dtype=torch.uint8))  # the centre is untouched
    assert torch.equal(out[:, 280, 80], torch.tensor(grey, dtype=torch.uint8))  # the 0.1 box is not drawn
    above = out[:, 20:40, 40:160]  # the label tag sits just above the box's top edge (y = 40)
    assert (above == colour.view(3, 1, 1)).all(0).sum() > 100
    inside_top = out[:, 43:70, 43:160]  # and leaves the inside of the box alone
    assert (inside_top == torch.tensor(grey, dtype=torch.uint8).view(3, 1, 1)).all()
    assert torch.equal(out, draw_detections(image, boxes, labels, scores, ["ellipse", "rectangle"]))


def test_draw_detections_fills_masks():
    image = torch.zeros(3, 160, 320, dtype=torch.uint8)
    masks = torch.zeros(1, 160, 320, dtype=torch.bool)
    masks[0, 60:100, 60:100] = True
    out = draw_detections(image, torch.tensor([[50.0, 50.0, 110.0, 110.0]]), torch.tensor([2]),
                          torch.tensor([0.8]), ["a", "b", "c"], masks=masks)
    assert out.shape == (3, 320, 640)  # 160 px short side -> x2
    assert out[:, 160, 160].sum() > 0  # inside the mask: tinted with the class colour
    assert out[:, 205, 130].sum() == 0  # inside the box (below its label), outside the mask: untouched


def test_prediction_grid_shape(tiny_checkpoint, tiny_prepared):
    model, state = load_trained_model(tiny_checkpoint, torch.device("cpu"))
    dataset = build_dataset(load_manifest(tiny_prepared).split("minival"), state["config"]["data"],
                            train=False, seed=0)
    names = [c["name"] for c in state["categories"]]
    kwargs = dict(num_images=3, ncols=2, score_thr=0.0)
    grid = prediction_grid(model, dataset, state["cat_ids"], names, torch.device("cpu"), **kwargs)

    sizes = [(dataset.coco.imgs[i]["height"], dataset.coco.imgs[i]["width"]) for i in dataset.ids[:3]]
    factors = [math.ceil(320 / min(h, w)) for h, w in sizes]
    tile_h = max(h * f for (h, _), f in zip(sizes, factors))
    tile_w = max(w * f for (_, w), f in zip(sizes, factors))
    assert grid.dtype == torch.uint8
    assert grid.shape == (3, 2 * (tile_h + 4) + 4, 2 * (tile_w + 4) + 4)  # 3 tiles in 2 rows of 2
    without_gt = prediction_grid(model, dataset, state["cat_ids"], names, torch.device("cpu"), gt=False, **kwargs)
    assert without_gt.shape == grid.shape and not torch.equal(without_gt, grid)  # ground truth was drawn
    with pytest.raises(ValueError, match="categories"):
        prediction_grid(model, dataset, [c + 100 for c in state["cat_ids"]], names, torch.device("cpu"))


def test_draw_detections_dots_the_point_sets():
    image = torch.zeros(3, 160, 320, dtype=torch.uint8)
    points = torch.tensor([[[70.0, 70.0], [90.0, 95.0], [float("nan"), 1.0]], [[10.0, 10.0], [12.0, 12.0], [5.0, 5.0]]])
    out = draw_detections(image, torch.tensor([[50.0, 50.0, 110.0, 110.0], [0.0, 0.0, 20.0, 20.0]]),
                          torch.tensor([2, 1]), torch.tensor([0.8, 0.1]), ["a", "b", "c"], points=points)
    assert out[:, 140, 140].sum() > 0 and out[:, 190, 180].sum() > 0  # the dots of the drawn detection (x2 canvas)
    assert out[:, 24, 24].sum() == 0  # below the score threshold: its points are not drawn
