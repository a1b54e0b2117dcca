"""Dense RepPoints V1 and V2 inference per image, with the mask step timed apart, against our
Faster R-CNN at the same scale, and the mask step against a per-instance loop over the same
detections (the issue's target: the batched step at least 5x faster than the loop). The heads
run with ``mask_resolution: box_grid`` so that the mask step happens inside the inference; the
presets' full-resolution masks are built by the evaluation and timed in
``bench_dense_mask_step.py`` (``full``).

Each detector is built from its preset with random weights (``detector_timing.build``) and run
on the same synthetic batch. The Dense heads' score threshold is set to -1 so that every image
reports ``max_per_img`` (100) detections, as a trained model on a crowded image would; the
points are the untrained head's (near its 27 x 27 base grid). The mask step
(``points_to_box_score_maps``: triangulation of each detection's points + interpolation on a 56
x 56 box grid, all detections at once) is timed inside the inference by wrapping the head's
reference to it; the peer is ``box_score_maps_loop`` (``scipy.interpolate.griddata`` per
detection on the same grid, the RPv2 code's per-instance step) on the very same points,
scores and boxes, timed in the same run. Medians of ``--iters`` after ``--warmup``; timings
never fail the run. Usage::

    .venv/bin/python benchmarks/bench_dense_reppoints.py --scale cpu --images 2
    .venv/bin/python benchmarks/bench_dense_reppoints.py --scale paper --size 800x1216 --images 2 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models.dense_reppoints.dense_reppoints_head as dense_module  # noqa: E402
from detector_timing import build, make_batch, sync  # noqa: E402
from models.dense_reppoints.mask_from_points import box_score_maps_loop  # noqa: E402

PEER = "faster_rcnn_r50_fpn_1x"
NAMES = ["dense_reppoints_v1_r50_fpn_giou_1x", "dense_reppoints_v2_r50_fpn_giou_1x"]


class MaskStepTimer:
    """Wraps the head module's ``points_to_box_score_maps``: records the seconds of each call
    and its inputs (to replay them through the per-instance loop)."""

    def __init__(self, device: torch.device) -> None:
        self.inner = dense_module.points_to_box_score_maps
        self.device = device
        self.seconds: list[float] = []
        self.last_inputs: tuple | None = None

    def __call__(self, points, scores, boxes, mask_size):
        sync(self.device)
        t0 = time.perf_counter()
        out = self.inner(points, scores, boxes, mask_size)
        sync(self.device)
        self.seconds.append(time.perf_counter() - t0)
        self.last_inputs = (points, scores, boxes, mask_size)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("cpu", "paper"), default="cpu")
    ap.add_argument("--size", default="160x224", help="HxW of the batch (default 160x224)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.lower().split("x"))
    images, _ = make_batch(args.images, (h, w), 6, seed=0)
    images = images.to(device)
    sizes = [(h, w)] * args.images
    timer = MaskStepTimer(device)
    dense_module.points_to_box_score_maps = timer
    print(f"device {device}, scale {args.scale}, batch {args.images} x {h}x{w}, torch threads "
          f"{torch.get_num_threads()}, {args.iters} timed runs after {args.warmup}")
    peer_ms = None
    for name in [PEER, *NAMES]:
        model = build(name, args.scale, device).eval()
        if name != PEER:
            model.bbox_head.score_thr = -1.0
            # the box-grid mask step runs inside the head; the presets' default (full resolution)
            # builds the masks in the evaluation instead (timed in bench_dense_mask_step.py)
            model.bbox_head.mask_resolution = "box_grid"
        runs, mask_runs, loop_runs = [], [], []
        for it in range(args.warmup + args.iters):
            timer.seconds.clear()
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                dets = model(images, sizes)
            sync(device)
            total = time.perf_counter() - t0
            if it < args.warmup:
                continue
            runs.append(total / args.images)
            if name != PEER:
                mask_runs.append(sum(timer.seconds) / args.images)
                pts, sc, bx, size = timer.last_inputs
                t0 = time.perf_counter()
                box_score_maps_loop(pts.cpu(), sc.cpu(), bx.cpu(), size)
                loop_runs.append((time.perf_counter() - t0) / args.images)
        ms = 1e3 * statistics.median(runs)
        if name == PEER:
            peer_ms = ms
            print(f"{name:40s} inference {ms:8.1f} ms/image")
            continue
        num = sum(len(d["boxes"]) for d in dets) / args.images
        mask_ms = 1e3 * statistics.median(mask_runs)
        loop_ms = 1e3 * statistics.median(loop_runs)
        print(f"{name:40s} inference {ms:8.1f} ms/image (x{ms / peer_ms:.2f} the peer), {num:.0f} detections/image;"
              f" mask step {mask_ms:.1f} ms/image ({100 * mask_ms / ms:.0f}% of it), rest {ms - mask_ms:.1f} ms;"
              f" per-instance loop on the same detections {loop_ms:.1f} ms/image ->"
              f" batched step x{loop_ms / mask_ms:.1f} faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
