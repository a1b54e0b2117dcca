"""Dense RepPoints mask step: scored points -> instance masks, for ``--num-dets`` detections.

Workload: ``--num-dets`` (100) detections in an 800 x 1333 image, box sides log-uniform in
[16, 600] px with aspect ratios in [0.5, 2]; the object is a random ellipse or 5-point star
filling most of the box; its ``--points`` (729) points are DTS samples
(:func:`sample_boundary_points`) of the object on a box with a 15 % margin, so they straddle
the boundary like predicted points; the point score is the object mask at the point plus
N(0, 0.1) noise, clipped to [0, 1]; the detection box is the minmax of the points. Contenders,
timed in alternation after ``--warmup`` rounds, median of ``--iters``:

- ``vectorised``: :func:`points_to_box_score_maps` on ``--device`` (the M x M box maps of all
  detections; Delaunay per detection in a thread pool, everything else batched in torch);
- ``loop``: :func:`box_score_maps_loop`, one ``scipy.interpolate.griddata`` call per detection
  on the same M x M grid (the per-instance peer with identical output);
- ``reference``: the reference's own per-instance method, :func:`points_to_mask` per detection
  (``griddata`` at every pixel of the box, pasted into a full-image mask);
- ``full``: :func:`points_to_full_masks`, the reference's full-resolution masks batched (the
  mask step of ``mask_resolution: full``; its output needs no paste);
- ``paste``: :func:`pipeline.evaluation.paste_masks` of the vectorised maps (what the
  evaluation does with them; the reference's masks need no paste), reported for completeness.

Printed: the medians, the ratios loop / vectorised and reference / vectorised (> 1 means the
vectorised step is faster), full / (vectorised + paste) (the cost of full resolution against the
box grid, both as the evaluation uses them) and reference / full, the max |vectorised - loop|
and the mean IoU of the pasted masks and of the full-resolution masks with the reference
masks. Timings never fail the run.

``OPENBLAS_NUM_THREADS`` is pinned to 1 (unless set): with OpenBLAS threads, ``griddata``'s many
tiny per-triangle LAPACK calls were ~20x slower on the 2-core development machine, which would
flatter the vectorised step. ``--threads`` sets ``torch.set_num_threads`` and with it the size
of the Delaunay thread pool (default: all cores). Usage::

    .venv/bin/python benchmarks/bench_dense_mask_step.py
    .venv/bin/python benchmarks/bench_dense_mask_step.py --mask-size 56 --iters 3
    .venv/bin/python benchmarks/bench_dense_mask_step.py --device cuda --iters 20
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import alternating_medians  # noqa: E402
from models.dense_reppoints.distance_sampling import sample_boundary_points  # noqa: E402
from models.dense_reppoints.mask_from_points import (box_score_maps_loop,  # noqa: E402
                                                  points_to_box_score_maps, points_to_full_masks,
                                                  points_to_mask)
from pipeline.evaluation import paste_masks  # noqa: E402

IMAGE = (800, 1333)


def make_detections(num: int, n_points: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(points float32 [K, N, 2], scores float32 [K, N], boxes float32 [K, 4])``."""
    rng = np.random.default_rng(seed)
    img_h, img_w = IMAGE
    pts_all, sc_all, box_all = [], [], []
    while len(pts_all) < num:
        side = float(np.exp(rng.uniform(np.log(16), np.log(600))))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        bw = min(side * np.sqrt(aspect), img_w * 0.9)
        bh = min(side / np.sqrt(aspect), img_h * 0.9)
        x0 = rng.uniform(0, img_w - bw)
        y0 = rng.uniform(0, img_h - bh)
        # object drawn on a local canvas (box + margin), shifted back to image coordinates
        mx, my = 0.15 * bw + 2, 0.15 * bh + 2
        ox, oy = int(np.floor(x0 - mx)), int(np.floor(y0 - my))
        canvas = np.zeros((int(bh + 2 * my) + 3, int(bw + 2 * mx) + 3), np.uint8)
        cx, cy = x0 + bw / 2 - ox, y0 + bh / 2 - oy
        if rng.random() < 0.5:
            cv2.ellipse(canvas, (int(cx), int(cy)), (max(int(bw / 2), 1), max(int(bh / 2), 1)),
                        0, 0, 360, 1, -1)
        else:
            ang = np.linspace(0, 2 * np.pi, 11)[:-1] + rng.uniform(0, np.pi)
            rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
            poly = np.stack([cx + rad * bw / 2 * np.cos(ang), cy + rad * bh / 2 * np.sin(ang)], 1)
            cv2.fillPoly(canvas, [poly.astype(np.int32)], 1)
        ch, cw = canvas.shape
        local_box = (max(cx - bw / 2 - mx, 0), max(cy - bh / 2 - my, 0),
                     min(cx + bw / 2 + mx, cw), min(cy + bh / 2 + my, ch))
        pts = sample_boundary_points(canvas, local_box, num_points=n_points, rng=rng)
        if pts is None:
            continue
        ix = np.clip(np.floor(pts[:, 0]).astype(int), 0, cw - 1)
        iy = np.clip(np.floor(pts[:, 1]).astype(int), 0, ch - 1)
        scores = np.clip(canvas[iy, ix] + rng.normal(0, 0.1, len(pts)), 0, 1)
        pts = pts + np.array([ox, oy], np.float32)
        pts[:, 0] = np.clip(pts[:, 0], 0, img_w)  # points are clamped to the image (spec §3.5)
        pts[:, 1] = np.clip(pts[:, 1], 0, img_h)
        pts_all.append(pts.astype(np.float32))
        sc_all.append(scores.astype(np.float32))
        box_all.append(np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32))
    return np.stack(pts_all), np.stack(sc_all), np.stack(box_all)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-dets", type=int, default=100)
    ap.add_argument("--points", type=int, default=729)
    ap.add_argument("--mask-size", type=int, default=28)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads and Delaunay pool size; 0 = all cores")
    ap.add_argument("--skip-reference", action="store_true",
                    help="do not time the full-resolution reference (slow for many detections)")
    args = ap.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    dev = torch.device(args.device)
    m = args.mask_size

    pts_np, sc_np, box_np = make_detections(args.num_dets, args.points)
    pts, scores, boxes = (torch.from_numpy(a) for a in (pts_np, sc_np, box_np))
    pts_d, scores_d, boxes_d = pts.to(dev), scores.to(dev), boxes.to(dev)
    areas = (box_np[:, 2] - box_np[:, 0]) * (box_np[:, 3] - box_np[:, 1])
    sides = np.sqrt(areas)
    print(f"{len(pts_np)} detections x {args.points} points, M={m}, device={dev}, "
          f"torch threads={torch.get_num_threads()}; box sqrt-area median "
          f"{np.median(sides):.0f} px (min {sides.min():.0f}, max {sides.max():.0f}), "
          f"{int(areas.sum())} box pixels in all")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def vectorised():
        out = points_to_box_score_maps(pts_d, scores_d, boxes_d, m, num_threads=threads)
        sync()
        return out

    def loop():
        return box_score_maps_loop(pts, scores, boxes, m)

    def reference():
        return [points_to_mask(pts_np[k], sc_np[k], box_np[k], IMAGE) for k in range(len(pts_np))]

    maps = vectorised()

    def paste():
        return paste_masks(maps[:, None], boxes, IMAGE)

    def full():
        return points_to_full_masks(pts, scores, boxes, IMAGE, num_threads=threads)

    contenders = {"vectorised": vectorised, "loop": loop, "paste": paste, "full": full}
    if not args.skip_reference:
        contenders["reference"] = reference
    def timed(fn):
        def run() -> float:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t0
        return run

    seconds = alternating_medians({k: timed(fn) for k, fn in contenders.items()}, args.warmup, args.iters)
    med = {k: v * 1e3 for k, v in seconds.items()}
    for name, ms in med.items():
        print(f"{name:>10}: {ms:9.1f} ms  ({ms / len(pts_np):.2f} ms per detection)")
    print(f"ratio loop / vectorised: {med['loop'] / med['vectorised']:.2f}")
    if "reference" in med:
        print(f"ratio reference / vectorised: {med['reference'] / med['vectorised']:.2f}  "
              f"(reference / (vectorised + paste): "
              f"{med['reference'] / (med['vectorised'] + med['paste']):.2f})")
    print(f"ratio full / (vectorised + paste): {med['full'] / (med['vectorised'] + med['paste']):.2f}")
    if "reference" in med:
        print(f"ratio reference / full: {med['reference'] / med['full']:.2f}")
    diff = (maps.cpu() - loop()).abs().max().item()
    print(f"max |vectorised - loop| = {diff:.2e}")
    if "reference" in med:
        ref = np.stack(reference())
        ours = paste().astype(bool)
        inter = (ref & ours).sum((1, 2))
        union = np.maximum((ref | ours).sum((1, 2)), 1)
        print(f"mean IoU(pasted vectorised, reference) = {np.mean(inter / union):.4f}")
        exact = full()
        inter = (ref & exact).sum((1, 2))
        union = np.maximum((ref | exact).sum((1, 2)), 1)
        print(f"mean IoU(full, reference) = {np.mean(inter / union):.4f}")


if __name__ == "__main__":
    main()
