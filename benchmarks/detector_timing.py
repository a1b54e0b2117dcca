"""Shared timing harness of the detector benchmarks (bench_d2det.py, bench_reppoints.py):
one training iteration and one inference of several presets against our Faster R-CNN.

All detectors are built from their presets at the chosen scale (``cpu``: the CPU presets;
``paper``: the paper presets with random weights), run in this process on the same
synthetic batch (noise images with random boxes and box-shaped masks), and timed in
alternation after ``--warmup`` untimed runs; the median of ``--iters`` is printed with the
ratio to the first preset (Faster R-CNN; > 1: slower). A training iteration is zero_grad +
forward + backward + SGD step; inference is an eval-mode forward under ``torch.no_grad``.
Timings never fail the run.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import build_model  # noqa: E402
from models.presets import PRESETS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_faster_rcnn import make_batch as make_box_batch  # noqa: E402

NUM_CLASSES = 80


def make_batch(num_images: int, size: tuple[int, int], boxes_per_image: int, seed: int):
    """The Faster R-CNN benchmark's batch, normalised, plus box-shaped masks."""
    images, targets = make_box_batch(num_images, size, boxes_per_image, seed)
    images = (images - 127.5) / 58.0
    h, w = size
    for t in targets:
        masks = torch.zeros((t["boxes"].shape[0], h, w), dtype=torch.uint8)
        for k, b in enumerate(t["boxes"].long().tolist()):
            masks[k, b[1]:b[3], b[0]:b[2]] = 1
        t["masks"] = masks
    return images, targets


def build(preset: str, scale: str, device: torch.device, model_overrides: dict | None = None) -> torch.nn.Module:
    """The preset's detector at ``scale`` with random weights; ``model_overrides`` are deep-merged
    into its ``model`` section (e.g. ``{"roi_head": {"with_ism": False}}``)."""
    from pipeline.config import deep_merge

    entry = PRESETS[preset]
    cfg = deep_merge(copy.deepcopy(entry["scales"][scale]["model"]), model_overrides)
    cfg["backbone"]["pretrained"] = None
    torch.manual_seed(0)
    return build_model(entry["detector"], cfg, NUM_CLASSES).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(names: Sequence[str], description: str, argv: list[str] | None = None,
        variants: dict[str, tuple[str, dict]] | None = None) -> int:
    """Parse the common arguments and time ``names`` (the first is the reference). A name is a
    preset, or a label of ``variants``: ``{label: (preset, model overrides)}``."""
    variants = variants or {}
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--size", default=None, help="HxW of the batch (default: 160x256 cpu, 800x1216 paper)")
    parser.add_argument("--images", type=int, default=None, help="images per batch (default 8 cpu, 2 paper)")
    parser.add_argument("--boxes", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size_text = args.size or ("160x256" if args.scale == "cpu" else "800x1216")
    h, w = (int(v) for v in size_text.lower().split("x"))
    num_images = args.images or (8 if args.scale == "cpu" else 2)
    images, targets = make_batch(num_images, (h, w), args.boxes, seed=0)
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    sizes = [(h, w)] * num_images
    models = {}
    for n in names:
        preset, overrides = variants.get(n, (n, None))
        models[n] = build(preset, args.scale, device, overrides)
    optims = {n: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for n, m in models.items()}

    def train_step(name: str) -> float:
        m = models[name].train()
        sync(device)
        t = time.perf_counter()
        losses = m(images, sizes, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        optims[name].zero_grad()
        loss.backward()
        optims[name].step()
        sync(device)
        return time.perf_counter() - t

    def infer(name: str) -> float:
        m = models[name].eval()
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            m(images, sizes)
        sync(device)
        return time.perf_counter() - t

    print(f"device {device}, scale {args.scale}, batch {num_images} x {h}x{w}, threads {torch.get_num_threads()}, "
          f"median of {args.iters} after {args.warmup} warm-up")
    width = max(len(n) for n in names)
    for kind, fn in (("train step", train_step), ("inference", infer)):
        for _ in range(args.warmup):
            for n in names:
                fn(n)
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.iters):
            for n in names:  # alternate, so load drift hits every model alike
                times[n].append(fn(n))
        base = statistics.median(times[names[0]])
        for n in names:
            med = statistics.median(times[n])
            print(f"{kind:<11} {n:<{width}} {med * 1000:9.1f} ms   ratio vs {names[0][:11]} {med / base:5.2f}")
    return 0

