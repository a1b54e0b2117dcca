"""COCO evaluation engines (``evaluate.engine``): faster-coco-eval's ``COCOeval_faster``
against pycocotools' ``COCOeval`` (the reference), bbox and segm, in the same process.

Input, seeded: a synthetic ground truth of ``--images`` images (default 5,000) of 480 x 640
pixels with ``--objects`` (7) objects on average each (Poisson), ``--cats`` (80) categories,
every object a star-shaped 10-vertex polygon of 8-300 px (log-uniform) with COCO's area and
bbox from its mask, 1 in 50 a crowd region (RLE); ``--dets`` (100) detections per image: each
object found with probability 0.9 (polygon perturbed, its mask and box), the rest random boxes
of random categories; scores uniform in [0.3, 1] for the found objects, [0.001, 0.7] for
the random boxes, 3 decimals (ties). segm detections are compressed RLE.

Timed per task and engine: ``evaluate() + accumulate() + summarize()`` on a fresh copy of the
ground truth and ``gt.loadRes`` of the records (loadRes is timed apart: both engines share
it, as :func:`pipeline.evaluation.coco_evaluate` does; so is
:func:`~pipeline.evaluation.check_result_records`). Each engine runs once per task (a run
takes seconds to minutes: medians of repeats would cost too much), pycocotools first. Printed:
a table of seconds, the ratio faster / pycocotools (< 1: faster is faster), the peak resident
memory each engine added during its run (Linux: ``VmHWM`` reset through
``/proc/self/clear_refs`` before each run; elsewhere the process's ``ru_maxrss``), and whether
the 12 numbers are identical (else their largest difference: the engines' precisions may differ
by 2**-52, tests/test_coco_eval_engines.py). Timings never fail the run. Usage::

    .venv/bin/python benchmarks/bench_coco_eval_engines.py --images 5000
    .venv/bin/python benchmarks/bench_coco_eval_engines.py --images 500 --tasks bbox
"""
from __future__ import annotations

import argparse
import contextlib
import io
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.evaluation import ENGINES, STAT_NAMES, check_result_records, coco_from_dict, make_coco_eval  # noqa: E402

HEIGHT, WIDTH = 480, 640


def star(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 10) -> list[float]:
    """A star-shaped polygon of ``n`` vertices around (cx, cy), radius up to ``r`` pixels, as
    COCO's flat ``[x0, y0, x1, y1, ...]`` clipped to the image."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = r * rng.uniform(0.55, 1.0, n)
    xs = np.clip(cx + radius * np.cos(angles), 0, WIDTH)
    ys = np.clip(cy + radius * rng.uniform(0.6, 1.4) * np.sin(angles), 0, HEIGHT)
    return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def rles(polygons: list[list[float]]) -> list[dict]:
    """One compressed RLE (counts as str) per polygon."""
    out = mask_util.frPyObjects(polygons, HEIGHT, WIDTH) if polygons else []
    for r in out:
        r["counts"] = r["counts"].decode("ascii")
    return out


def synthesize(num_images: int, objects: float, num_cats: int, dets: int, seed: int) -> tuple[dict, list, list]:
    """(ground-truth dataset, bbox records, segm records); see the module docstring."""
    rng = np.random.default_rng(seed)
    cats = [int(c) for c in np.sort(rng.choice(np.arange(1, 2 * num_cats), num_cats, replace=False))]
    images, anns, bbox_res, segm_res = [], [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": HEIGHT, "width": WIDTH})
        n = int(rng.poisson(objects))
        polys, labels, crowd = [], [], []
        for _ in range(n):
            r = float(np.exp(rng.uniform(np.log(4), np.log(150))))
            cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
            polys.append(star(rng, cx, cy, r))
            labels.append(int(rng.choice(cats)))
            crowd.append(int(rng.uniform() < 0.02))
        det_polys, det_labels = [], []
        for poly, label, is_crowd, rle in zip(polys, labels, crowd, rles(polys)):
            area = float(mask_util.area(rle))
            if area < 1:
                continue
            box = [float(v) for v in mask_util.toBbox(rle)]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": label, "area": area,
                         "bbox": box, "iscrowd": is_crowd, "segmentation": rle if is_crowd else [poly]})
            if rng.uniform() < 0.9 and len(det_polys) < dets:  # found (in a crowd region: ignored)
                xy = np.asarray(poly).reshape(-1, 2)
                scale = max(box[2], box[3]) * 0.08
                jitter = xy + rng.normal(0, scale, 2) + rng.normal(0, scale / 2, xy.shape)
                jitter[:, 0] = np.clip(jitter[:, 0], 0, WIDTH)
                jitter[:, 1] = np.clip(jitter[:, 1], 0, HEIGHT)
                det_polys.append(np.round(jitter.ravel(), 2).tolist())
                det_labels.append(label)
        n_found = len(det_polys)
        while len(det_polys) < dets:
            w, h = rng.uniform(4, WIDTH / 3), rng.uniform(4, HEIGHT / 3)
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            det_polys.append([round(v, 2) for v in (x, y, x + w, y, x + w, y + h, x, y + h)])
            det_labels.append(int(rng.choice(cats)))
        scores = np.round(np.where(np.arange(len(det_polys)) < n_found, rng.uniform(0.3, 1.0, len(det_polys)),
                                   rng.uniform(0.001, 0.7, len(det_polys))), 3).tolist()
        for rle, label, score in zip(rles(det_polys), det_labels, scores):
            box = [round(float(v), 2) for v in mask_util.toBbox(rle)]
            bbox_res.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})
            segm_res.append({"image_id": image_id, "category_id": label, "segmentation": rle, "score": score})
    categories = [{"id": c, "name": f"c{c}", "supercategory": "thing"} for c in cats]
    return {"images": images, "annotations": anns, "categories": categories}, bbox_res, segm_res


def rss_mib() -> float:
    """Resident memory now, MiB (Linux ``VmRSS``; 0 elsewhere)."""
    return _status_kib("VmRSS") / 1024


def _status_kib(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def reset_peak() -> bool:
    """Reset the peak resident memory (``VmHWM``); False where the OS cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mib(can_reset: bool) -> float:
    if can_reset:
        return _status_kib("VmHWM") / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_engine(dataset: dict, records: list, task: str, engine: str) -> dict:
    """One timed evaluation: seconds of loadRes and of evaluate+accumulate+summarize, peak
    memory added (MiB), the 12 numbers."""
    gt = coco_from_dict(dataset)
    records = [dict(r) for r in records]  # loadRes adds keys (id, area, bbox) to the records it is given
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(records)
    t_load = time.perf_counter() - t0
    can_reset = reset_peak()
    base = rss_mib()
    t0 = time.perf_counter()
    ev = make_coco_eval(gt, dt, task, engine)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    seconds = time.perf_counter() - t0
    peak = peak_mib(can_reset) - base
    return {"load": t_load, "eval": seconds, "peak_mib": peak, "stats": np.asarray(ev.stats[:12], dtype=float)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--objects", type=float, default=7.0, help="mean objects per image")
    ap.add_argument("--cats", type=int, default=80)
    ap.add_argument("--dets", type=int, default=100, help="detections per image")
    ap.add_argument("--tasks", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from importlib.metadata import version

    import faster_coco_eval

    t0 = time.perf_counter()
    dataset, bbox_res, segm_res = synthesize(args.images, args.objects, args.cats, args.dets, args.seed)
    print(f"[bench] {len(dataset['images'])} images, {len(dataset['annotations'])} objects "
          f"({sum(a['iscrowd'] for a in dataset['annotations'])} crowd), {len(dataset['categories'])} categories, "
          f"{len(bbox_res)} detections per task; synthesized in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"[bench] pycocotools {version('pycocotools')}, "
          f"faster-coco-eval {faster_coco_eval.__version__}, numpy {np.__version__}, "
          f"{platform.machine()}, python {platform.python_version()}", flush=True)
    rows = []
    for task in args.tasks:
        records = bbox_res if task == "bbox" else segm_res
        gt = coco_from_dict(dataset)
        t0 = time.perf_counter()
        check_result_records(records, gt, task, f"synthetic {task} records")
        t_check = time.perf_counter() - t0
        res = {}
        for engine in ("pycocotools", "faster"):
            assert engine in ENGINES
            res[engine] = run_engine(dataset, records, task, engine)
            print(f"[bench] {task} {engine}: evaluate+accumulate+summarize {res[engine]['eval']:.2f} s "
                  f"(loadRes {res[engine]['load']:.2f} s), peak +{res[engine]['peak_mib']:.0f} MiB", flush=True)
        diff = np.abs(res["faster"]["stats"] - res["pycocotools"]["stats"])
        same = "identical" if not diff.any() else f"max abs difference {diff.max():.3g} ({', '.join(STAT_NAMES[i] for i in np.flatnonzero(diff))})"
        rows.append((task, res, t_check, same))
    print()
    print("| task | pycocotools (s) | faster-coco-eval (s) | ratio faster / pycocotools | peak memory added, pycocotools / faster (MiB) | loadRes (s, shared) | check_result_records (s) | 12 numbers |")
    print("|---|---|---|---|---|---|---|---|")
    for task, res, t_check, same in rows:
        p, f = res["pycocotools"], res["faster"]
        print(f"| {task} | {p['eval']:.2f} | {f['eval']:.2f} | {f['eval'] / p['eval']:.3f} | "
              f"{p['peak_mib']:.0f} / {f['peak_mib']:.0f} | {p['load']:.2f} | {t_check:.2f} | {same} |")
    for task, res, _, _ in rows:
        print(f"{task} AP (pycocotools, faster): {res['pycocotools']['stats'][0]:.6f}, {res['faster']['stats'][0]:.6f}")


if __name__ == "__main__":
    main()
