"""Corner pooling (``cuda_ops.corner_pool``) forward + backward: the ``torch.cummax``
reference against a naive peer, and on CUDA the kernel against the reference.

Input ``[--batch, --channels, --height, --width]`` (default ``[2, 256, 100, 152]``, a P3 map
of an 800x1216 image), random float32. One timed iteration is ``pool(x).backward(g)`` for a
fixed random ``g``, for each of ``--directions``. Contenders:

- ``reference``: :func:`corner_pool_reference` (flip + ``torch.cummax`` + flip);
- ``naive``: a Python loop over the rows (top/bottom) or columns (left/right) keeping the
  running max with ``torch.maximum`` and stacking the results (no ``cummax``; its gradient
  splits ties where the reference's picks one, which does not matter for random input);
- ``kernel`` (CUDA only, when the extension loads; built before any timing, in the warmup):
  :func:`corner_pool`, the CUDA kernel.

After ``--warmup`` untimed rounds the contenders are timed in alternation and the medians of
``--iters`` are printed with the ratios reference / naive and, on CUDA, kernel / reference
(< 1 means the first is faster). Timings never fail the run. Usage::

    .venv/bin/python benchmarks/bench_corner_pool.py --threads 1
    .venv/bin/python benchmarks/bench_corner_pool.py --device cuda --iters 50
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import alternating_medians  # noqa: E402
from cuda_ops._extension import load_corner_pool_ext  # noqa: E402
from cuda_ops.corner_pool import DIRECTIONS, corner_pool, corner_pool_reference  # noqa: E402


def naive_corner_pool(x: torch.Tensor, direction: str) -> torch.Tensor:
    """The same values as the reference, by a loop of ``torch.maximum`` over the rows
    (top/bottom) or columns (left/right) of ``x [B, C, H, W]``."""
    dim = 2 if direction in ("top", "bottom") else 3
    rows = x.unbind(dim)
    order = range(len(rows) - 1, -1, -1) if direction in ("top", "left") else range(len(rows))
    outs: list[torch.Tensor] = [rows[0]] * len(rows)
    running: torch.Tensor | None = None
    for i in order:
        running = rows[i] if running is None else torch.maximum(running, rows[i])
        outs[i] = running
    return torch.stack(outs, dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--height", type=int, default=100)
    ap.add_argument("--width", type=int, default=152)
    ap.add_argument("--directions", default=",".join(DIRECTIONS),
                    help="comma-separated subset of top,bottom,left,right")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    for d in directions:
        if d not in DIRECTIONS:
            ap.error(f"unknown direction {d!r}")
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.channels, args.height, args.width)
    x0 = torch.randn(shape, generator=g).to(dev)
    grad = torch.randn(shape, generator=g).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[torch.Tensor, str], torch.Tensor]) -> float:
        x = x0.detach().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        for d in directions:
            fn(x, d).backward(grad)
        sync()
        return time.perf_counter() - t0

    kernel = dev.type == "cuda" and load_corner_pool_ext() is not None  # build before timing
    runs: dict[str, Callable[[], float]] = {
        "reference": lambda: timed(corner_pool_reference),
        "naive": lambda: timed(naive_corner_pool),
    }
    if kernel:
        runs["kernel"] = lambda: timed(corner_pool)
    med = alternating_medians(runs, args.warmup, args.iters)
    print(f"device={dev} threads={torch.get_num_threads()} x={list(shape)} float32 "
          f"directions={','.join(directions)} iters={args.iters} (fwd+bwd per iteration, all "
          f"listed directions)")
    if dev.type == "cuda" and not kernel:
        print("CUDA kernel unavailable (see the warning above); only the reference and the "
              "naive peer are timed")
    for k, label in (("kernel", "CUDA kernel"), ("reference", "flip + torch.cummax"),
                     ("naive", "torch.maximum loop")):
        if k in med:
            print(f"{k:9s} fwd+bwd: {med[k] * 1e3:8.1f} ms (median, {label})")
    print(f"ratio reference / naive: {med['reference'] / med['naive']:.3f}")
    if kernel:
        print(f"ratio kernel / reference: {med['kernel'] / med['reference']:.3f}")


if __name__ == "__main__":
    main()
