"""Dense RepPoints masks on the 56 x 56 box grid (our default) against the reference's full
box resolution: how much the masks and mask AP differ, and what each costs.

Two measurements, both printed as ours (``box_grid``) against the peer (``full``) of the same run:

1. **A hand-made large object with a detailed outline**: a 48-tooth gear with a hole and a
   narrow slot, about 560 x 520 px in an 800 x 1333 image. Its 729 points are DTS samples
   (:func:`sample_boundary_points`, as the training targets) on the gt box with a 10 % margin;
   a point's score is the gt mask under it (``--noise`` adds N(0, s)). Printed: the mask IoU of
   each method with the gt, the IoU between the two methods, and the milliseconds of each
   (``box_grid`` = :func:`points_to_box_score_maps` + :func:`paste_masks`; ``full`` =
   :func:`points_to_full_masks`), median of ``--iters``.
2. **A trained model** (``--model NAME``, repeatable; needs ``weights/NAME.pth``
   and ``data/prepared``, i.e. ``dvc repro train@NAME``): minival predicted once per method
   (the head's ``mask_resolution`` switched, everything else the same), both result sets scored
   with COCOeval. Printed: segm AP / AP50 / AP75 per method and the difference, the mean and
   the 5th percentile of the mask IoU between the two methods over the same detections, and
   seconds per image of each whole evaluation.

Usage::

    .venv/bin/python benchmarks/bench_dense_mask_resolution.py
    .venv/bin/python benchmarks/bench_dense_mask_resolution.py --model dense_reppoints_v2_r50_fpn_giou

Never fails a build; numbers go to ``benchmarks/README.md``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.dense_reppoints.distance_sampling import sample_boundary_points  # noqa: E402
from models.dense_reppoints.mask_from_points import points_to_box_score_maps, points_to_full_masks  # noqa: E402
from pipeline.evaluation import paste_masks  # noqa: E402

IMAGE = (800, 1333)


def gear_mask(size: tuple[int, int] = IMAGE, centre: tuple[float, float] = (660.0, 400.0),
              radius: float = 270.0, teeth: int = 48) -> np.ndarray:
    """uint8 [H, W]: a gear of ``teeth`` square-ish teeth (depth 9 % of the radius), a round
    hole of a quarter radius and a 14 px slot from the hole to the rim."""
    h, w = size
    ang = np.linspace(0, 2 * np.pi, teeth * 8, endpoint=False)
    tooth = (np.floor(ang / (2 * np.pi) * teeth * 2) % 2 == 0)
    r = np.where(tooth, radius, radius * 0.91)
    poly = np.stack([centre[0] + r * np.cos(ang), centre[1] + 0.93 * r * np.sin(ang)], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    cv2.circle(mask, (int(centre[0]), int(centre[1])), int(radius * 0.25), 0, -1)
    cv2.rectangle(mask, (int(centre[0]) - 7, int(centre[1])), (int(centre[0]) + 7, int(centre[1] + radius)), 0, -1)
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def hand_made_object(iters: int, noise: float, seed: int) -> None:
    gt = gear_mask()
    ys, xs = np.nonzero(gt)
    bw, bh = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
    margin_box = (xs.min() - 0.1 * bw, ys.min() - 0.1 * bh, xs.max() + 1 + 0.1 * bw, ys.max() + 1 + 0.1 * bh)
    rng = np.random.default_rng(seed)
    pts = sample_boundary_points(gt, margin_box, num_points=729, rng=rng)
    ix = np.clip(np.floor(pts[:, 0]).astype(int), 0, IMAGE[1] - 1)
    iy = np.clip(np.floor(pts[:, 1]).astype(int), 0, IMAGE[0] - 1)
    scores = np.clip(gt[iy, ix] + rng.normal(0, noise, len(pts)), 0, 1).astype(np.float32) if noise else \
        gt[iy, ix].astype(np.float32)
    p, s = torch.from_numpy(pts)[None], torch.from_numpy(scores)[None]
    box = torch.tensor([[*pts.min(0), *pts.max(0)]])

    def grid() -> np.ndarray:
        return paste_masks(points_to_box_score_maps(p, s, box, 56)[:, None], box, IMAGE)[0].astype(bool)

    def full() -> np.ndarray:
        return points_to_full_masks(p, s, box, IMAGE)[0]

    times: dict[str, list[float]] = {"box_grid": [], "full": []}
    for _ in range(iters):
        for name, fn in (("box_grid", grid), ("full", full)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    g, f = grid(), full()
    gt_b = gt.astype(bool)
    print(f"hand-made gear: {int(bw)} x {int(bh)} px, {int(gt.sum())} object pixels, 729 DTS points, "
          f"score noise {noise}")
    print(f"  IoU with the gt: box_grid {iou(g, gt_b):.4f}, full {iou(f, gt_b):.4f}")
    print(f"  IoU(box_grid, full) = {iou(g, f):.4f}; pixels that differ: {int((g ^ f).sum())}")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"  time: box_grid {med['box_grid']:.1f} ms, full {med['full']:.1f} ms "
          f"(ratio full / box_grid {med['full'] / med['box_grid']:.2f})")


def trained_model(name: str) -> None:
    from pycocotools import mask as mask_util

    from pipeline.config import load_params
    from pipeline.data import build_dataset, load_manifest
    from pipeline.evaluate import attribute_set, load_trained_model, predict_split, score_records
    from pipeline.evaluation import load_coco_quietly
    from pipeline.paths import MANIFEST_FILE, PARAMS_FILE, weights_file

    params = load_params(PARAMS_FILE)
    model, state = load_trained_model(weights_file(name), torch.device("cpu"))
    if not hasattr(model.bbox_head, "mask_resolution"):
        raise SystemExit(f"{name}: not a Dense RepPoints model (its head has no mask_resolution)")
    split = load_manifest(MANIFEST_FILE).split("minival")
    dataset = build_dataset(split, state["config"]["data"], train=False, seed=int(params.get("seed", 0)))
    gt = load_coco_quietly(split.ann_file)
    records, seconds = {}, {}
    for resolution in ("box_grid", "full"):
        with attribute_set(model.bbox_head, "mask_resolution", resolution):
            bbox, segm, sec = predict_split(model, dataset, state["cat_ids"], torch.device("cpu"),
                                            desc=f"{name} {resolution}")
        records[resolution], seconds[resolution] = (bbox, segm), sec
    stats = {r: score_records(gt, {"bbox": b, "segm": s}, None)["segm"][0] for r, (b, s) in records.items()}
    ious = []
    for a, b in zip(records["box_grid"][1], records["full"][1]):
        assert a["image_id"] == b["image_id"] and a["score"] == b["score"]
        ious.append(float(mask_util.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0]))
    print(f"{name} on minival ({len(dataset)} images, {len(ious)} masks):")
    for r in ("box_grid", "full"):
        st = stats[r]
        print(f"  {r:>8}: segm AP {100 * st['AP']:.2f} / AP50 {100 * st['AP50']:.2f} / AP75 {100 * st['AP75']:.2f}, "
              f"{seconds[r]:.3f} s per image")
    diff = 100 * (stats["full"]["AP"] - stats["box_grid"]["AP"])
    print(f"  full - box_grid: {diff:+.2f} mask AP; IoU(box_grid, full) mean {np.mean(ious):.4f}, "
          f"5th percentile {np.percentile(ious, 5):.4f}; time ratio full / box_grid "
          f"{seconds['full'] / seconds['box_grid']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="a trained Dense RepPoints run of params.yaml")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--noise", type=float, default=0.0, help="std of the noise added to the point scores")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    hand_made_object(args.iters, args.noise, args.seed)
    for name in args.model:
        trained_model(name)


if __name__ == "__main__":
    main()
