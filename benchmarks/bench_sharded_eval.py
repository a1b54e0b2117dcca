"""The evaluate stage sharded over processes (issue 17): memory of the result path, speed of
the inference. Run alone (one process) or under torchrun (gloo on CPU)::

    # rank 0's result path: gather + merge + write + COCOeval, 5,000 images x 100 detections
    .venv/bin/python benchmarks/bench_sharded_eval.py gather --images 5000
    OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        benchmarks/bench_sharded_eval.py gather --images 5000

    # inference images/s of a CPU-scale model (random init) on synthetic images
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sharded_eval.py infer --images 64
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_sharded_eval.py infer --images 64
    OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        benchmarks/bench_sharded_eval.py infer --images 64

``gather``: every rank builds the synthetic split of ``benchmarks/bench_coco_eval_engines.py``
(seeded: ``--images`` images of 480 x 640, ~7 objects each, 80 categories, ``--dets`` detections
per image, bbox and segm as compressed RLE), keeps the images of its share
(:func:`pipeline.evaluate.shard_indices`, batches of 8) as :func:`pipeline.evaluate.predict_images`
returns them, drops the rest, and then the peak resident memory is reset (``VmHWM``). Timed and
measured from there, as the evaluate stage does it: the gathering
(:func:`pipeline.distributed.gather_to_main`), the merge into the canonical order
(:func:`pipeline.evaluate.merge_shards`), writing both result files
(:func:`pipeline.evaluation.write_results`, to a temporary folder), building the ground truth
and COCOeval of both tasks (:func:`pipeline.evaluation.coco_evaluate`, ``--engine``). Printed
per rank, one JSON line: resident memory at the reset, the peak after each step (MiB) and the
seconds of each step.

``infer``: the ``--model`` entry of params.yaml at its scale (CPU), freshly initialised (seed 0,
no pretrained backbone), ``score_thr`` as configured, over the first ``--images`` images of a
synthetic minival prepared in a temporary folder (``pipeline.prepare``), in batches of
``evaluate.batch_size``, through :func:`pipeline.evaluate.predict_split` (sharded under
torchrun); one warm-up batch per rank first. Printed by rank 0: images/s (the split's images over
the wall time from the common start to the end of the gathering), threads per process.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_coco_eval_engines import _status_kib, coco_from, reset_peak, rss_mib, synthesize  # noqa: E402

from pipeline import distributed  # noqa: E402
from pipeline.evaluate import merge_shards, predict_images, predict_split, shard_indices  # noqa: E402
from pipeline.evaluation import coco_evaluate, write_results  # noqa: E402


def peak() -> float:
    """Peak resident memory since the last :func:`reset_peak`, MiB (Linux ``VmHWM``)."""
    return _status_kib("VmHWM") / 1024


def image_chunks(bbox: list[dict], segm: list[dict], indices: list[int]) -> list[tuple[int, list, list]]:
    """``(index, bbox records, segm records)`` of the images ``indices`` (index i is image id i + 1),
    as :func:`pipeline.evaluate.predict_images` returns them."""
    keep = set(indices)
    by_image: dict[int, tuple[int, list, list]] = {i: (i, [], []) for i in indices}
    for r in bbox:
        if r["image_id"] - 1 in keep:
            by_image[r["image_id"] - 1][1].append(r)
    for r in segm:
        if r["image_id"] - 1 in keep:
            rle = r["segmentation"]
            counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
            by_image[r["image_id"] - 1][2].append({**r, "segmentation": {"size": rle["size"], "counts": counts}})
    return [by_image[i] for i in indices]


def bench_gather(args: argparse.Namespace) -> None:
    info = distributed.init_distributed("cpu")
    dataset, bbox, segm = synthesize(args.images, 7.0, 80, args.dets, seed=0)
    chunks = image_chunks(bbox, segm, shard_indices(args.images, 8, info.rank, info.world_size))
    del bbox, segm
    gt_dataset = dataset if info.is_main else None
    del dataset
    gc.collect()
    distributed.barrier()
    can_reset = reset_peak()
    out = {"rank": info.rank, "world_size": info.world_size, "images": args.images, "dets": args.dets,
           "peak_reset": can_reset, "rss_at_reset_mib": round(rss_mib(), 1)}
    t = time.perf_counter()
    shards = distributed.gather_to_main(lambda: chunks, "benchmark")
    out["gather_s"], out["peak_after_gather_mib"] = round(time.perf_counter() - t, 2), round(peak(), 1)
    if info.is_main:
        del chunks
        t = time.perf_counter()
        all_bbox, all_segm = merge_shards(shards)
        del shards
        out["merge_s"], out["peak_after_merge_mib"] = round(time.perf_counter() - t, 2), round(peak(), 1)
        out["records"] = len(all_bbox)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            write_results(all_bbox, Path(d) / "bbox.json")
            write_results(all_segm, Path(d) / "segm.json")
            out["write_s"], out["peak_after_write_mib"] = round(time.perf_counter() - t, 2), round(peak(), 1)
            out["file_mib"] = round(sum(f.stat().st_size for f in Path(d).iterdir()) / 2**20, 1)
        t = time.perf_counter()
        gt = coco_from(gt_dataset)
        del gt_dataset
        for task, records in (("bbox", all_bbox), ("segm", all_segm)):
            stats, _, _ = coco_evaluate(gt, records, task, engine=args.engine)
            out[f"{task}_AP"] = round(stats["AP"], 6)
        out["cocoeval_s"], out["peak_after_cocoeval_mib"] = round(time.perf_counter() - t, 2), round(peak(), 1)
    print(json.dumps(out), flush=True)
    distributed.cleanup()


def prepare_minival(num: int, folder: Path) -> Path:
    """A synthetic dataset with ``num`` minival images (pipeline.prepare); its manifest file."""
    import yaml

    from pipeline.config import load_params

    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["data"]["source"] = "synthetic"
    params["data"]["synthetic"] = {"num_train": 4, "num_minival": num, "num_testdev": 4, "seed": 0}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "pipeline.prepare", "--params", str(folder / "params.yaml"),
                    "--out", str(folder / "prepared")], cwd=REPO, check=True, capture_output=True)
    return folder / "prepared" / "manifest.json"


def bench_infer(args: argparse.Namespace) -> None:
    from torch.utils.data import Subset

    from models.build import build_model
    from pipeline.config import load_params, resolve_model_config
    from pipeline.data import build_dataset, load_manifest

    info = distributed.init_distributed("cpu")
    data = Path(args.data)
    manifest = data / "prepared" / "manifest.json"
    if info.is_main and not manifest.exists():
        prepare_minival(args.images, data)
    distributed.barrier()
    params = load_params(REPO / "params.yaml")
    cfg = resolve_model_config(params, args.model)
    dataset = build_dataset(load_manifest(manifest).split("minival"), cfg["data"], train=False, seed=0)
    dataset = Subset(dataset, range(min(args.images, len(dataset))))
    cat_ids = list(dataset.dataset.cat_ids)
    torch.manual_seed(0)
    model = build_model(cfg["detector"], cfg["model"], len(cat_ids), load_pretrained=False).eval()
    batch = int(params["evaluate"]["batch_size"])
    kwargs = dict(batch_size=batch, size_divisor=int(cfg["data"].get("size_divisor", 32)), max_dets=100)
    predict_images(model, dataset, list(range(batch)), cat_ids, torch.device("cpu"), progress=False, **kwargs)
    bbox, _, sec = predict_split(model, dataset, cat_ids, torch.device("cpu"), desc="bench", **kwargs)
    if info.is_main:
        print(json.dumps({"model": args.model, "scale": cfg["scale"], "images": len(dataset), "batch_size": batch,
                          "processes": info.world_size, "threads_per_process": torch.get_num_threads(),
                          "images_per_s": round(1.0 / sec, 3), "seconds_per_image": round(sec, 4),
                          "detections": len(bbox)}), flush=True)
    distributed.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gather", help="rank 0's result path on a synthetic split")
    g.add_argument("--images", type=int, default=5000)
    g.add_argument("--dets", type=int, default=100)
    g.add_argument("--engine", default="faster")
    i = sub.add_parser("infer", help="inference images/s of a CPU-scale model")
    i.add_argument("--images", type=int, default=64)
    i.add_argument("--model", default="faster_rcnn_r50_fpn")
    i.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bench_sharded_eval_data"),
                   help="folder of the prepared synthetic data (made on first use)")
    args = parser.parse_args()
    bench_gather(args) if args.what == "gather" else bench_infer(args)


if __name__ == "__main__":
    main()
