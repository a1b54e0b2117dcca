"""Deformable RoI pooling (``cuda_ops.deform_roi_pool`` and its reference) against
``torchvision.ops.roi_align`` with the same output size and samples per bin.

D2Det's fine pooling step (spec d2det.md §2.1 step 4): ``--rois`` RoIs over ``--images``
feature maps of ``--channels x --height x --width`` (stride 4), output 14x14, part size 7
(offsets nearest-upsampled as in D2Det are equivalent to part_size 7 with P = 14),
``sample_per_part`` 2, trans_std 0.1, random offsets. Peer: ``roi_align(..., output_size=14,
sampling_ratio=2, aligned=False)`` on the same RoIs. One timed iteration is forward +
``sum().backward()`` (gradients to the features, and to the offsets for ours). After
``--warmup`` untimed runs the two are timed in alternation and the medians of ``--iters`` are
printed with the ratio ours / roi_align (< 1 means ours is faster). Timings never fail the
run.

On a CUDA device ``deform_roi_pool`` is the CUDA kernel when the extension loads (compiled on
first use; the build is outside the timing, in the warmup); the PyTorch reference
(``deform_roi_pool_reference``) is always timed as a third contender and the ratio kernel /
reference printed too. Elsewhere ``deform_roi_pool`` is the ``grid_sample`` path, and the
reference is timed beside it the same way. Usage::

    .venv/bin/python benchmarks/bench_deform_roi_pool.py
    .venv/bin/python benchmarks/bench_deform_roi_pool.py --device cuda --iters 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cuda_ops._extension import load_deform_roi_pool_ext  # noqa: E402
from cuda_ops.deform_roi_pool import deform_roi_pool, deform_roi_pool_reference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois", type=int, default=512)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--output-size", type=int, default=14)
    ap.add_argument("--part-size", type=int, default=7)
    ap.add_argument("--sample-per-part", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    stride = 4
    g = torch.Generator().manual_seed(0)
    B, C, H, W = args.images, args.channels, args.height, args.width
    feats = torch.randn(B, C, H, W, generator=g).to(dev)
    img_w, img_h = W * stride, H * stride
    xy = torch.rand(args.rois, 2, generator=g) * torch.tensor([img_w * 0.8, img_h * 0.8])
    wh = torch.rand(args.rois, 2, generator=g) * torch.tensor([img_w * 0.5, img_h * 0.5]) + 8
    b = torch.randint(0, B, (args.rois, 1), generator=g).float()
    rois = torch.cat([b, xy, xy + wh], dim=1).to(dev)
    Q = args.part_size
    offsets = (torch.randn(args.rois, 2, Q, Q, generator=g) * 0.5).to(dev)
    P, S = args.output_size, args.sample_per_part

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed_pool(fn: Callable[..., torch.Tensor]) -> float:
        f = feats.detach().requires_grad_(True)
        o = offsets.detach().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        out = fn(f, rois, o, 1.0 / stride, P, Q, S, 0.1)
        out.sum().backward()
        sync()
        return time.perf_counter() - t0

    def ours() -> float:
        return timed_pool(deform_roi_pool)

    def reference() -> float:
        return timed_pool(deform_roi_pool_reference)

    def peer() -> float:
        f = feats.detach().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        out = roi_align(f, rois, P, 1.0 / stride, sampling_ratio=S, aligned=False)
        out.sum().backward()
        sync()
        return time.perf_counter() - t0

    # on CUDA: the kernel if the extension loads (built here, before any timing)
    kernel = dev.type == "cuda" and load_deform_roi_pool_ext() is not None
    runs = [ours, peer, reference]
    for _ in range(args.warmup):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(args.iters):
        for run, t in zip(runs, times):
            t.append(run())
    med = [statistics.median(t) for t in times]
    mo, mp = med[0], med[1]
    impl = ", CUDA kernel" if kernel else ", grid_sample path"
    print(f"device={dev} threads={torch.get_num_threads()} rois={args.rois} C={C} "
          f"maps={B}x{H}x{W} P={P} Q={Q} S={S} iters={args.iters}")
    if dev.type == "cuda" and not kernel:
        print("CUDA kernel unavailable (see the warning above); deform_roi_pool is the grid_sample path")
    print(f"deform_roi_pool fwd+bwd: {mo * 1e3:.1f} ms (median{impl})")
    print(f"roi_align       fwd+bwd: {mp * 1e3:.1f} ms (median)")
    print(f"ratio ours / roi_align: {mo / mp:.2f}")
    mr = med[2]
    print(f"reference       fwd+bwd: {mr * 1e3:.1f} ms (median, PyTorch reference on {dev})")
    print(f"ratio {'kernel' if kernel else 'grid_sample path'} / reference: {mo / mr:.3f}")


if __name__ == "__main__":
    main()
