"""2-D Chamfer distance (``cuda_ops.chamfer_2d``) forward + backward: the chunked PyTorch
reference against a naive ``torch.cdist`` peer, and on CUDA the kernel against the reference.

Input: ``--instances`` point-set pairs of ``--points-a`` and ``--points-b`` points (default 40
instances of 729 x 729, Dense RepPoints' point count), uniform random float32 coordinates in
[0, 20). One timed iteration is ``(dist_ab * g_ab).sum() + (dist_ba * g_ba).sum()`` and its
backward to both point sets, for fixed random ``g_ab``, ``g_ba``. Contenders:

- ``reference``: :func:`chamfer_distance_reference` (no-grad nearest-neighbour search on
  chunks of the exact ``dx*dx + dy*dy`` block, then the matched pairs' distances recomputed
  differentiably);
- ``naive`` (not timed on CUDA unless ``--naive-on-cuda``): ``torch.cdist(a, b) ** 2`` and a
  ``min`` over each axis, autograd through the whole ``[P, N, M]`` matrix (``cdist``'s default
  mode uses the ``|a|^2 + |b|^2 - 2ab`` matrix product for these sizes: faster and less
  exact);
- ``kernel`` (CUDA only, when the extension loads; built before any timing):
  :func:`chamfer_distance`, the CUDA kernel.

After ``--warmup`` untimed rounds the contenders are timed in alternation and the medians of
``--iters`` are printed with the ratios reference / naive and, on CUDA, kernel / reference
(< 1 means the first is faster). Timings never fail the run. Usage::

    .venv/bin/python benchmarks/bench_chamfer_2d.py --threads 1
    .venv/bin/python benchmarks/bench_chamfer_2d.py --device cuda --iters 50
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
from cuda_ops._extension import load_chamfer_2d_ext  # noqa: E402
from cuda_ops.chamfer_2d import chamfer_distance, chamfer_distance_reference  # noqa: E402

Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def naive_chamfer(a: torch.Tensor, b: torch.Tensor) -> Result:
    """The same outputs as the reference (up to ``cdist``'s rounding and its choice among
    near-ties) from a full ``torch.cdist`` matrix, differentiable through all of it."""
    d = torch.cdist(a, b).square()  # [P, N, M]
    dist_ab, idx_ab = d.min(dim=2)
    dist_ba, idx_ba = d.min(dim=1)
    return dist_ab, dist_ba, idx_ab, idx_ba


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=40)
    ap.add_argument("--points-a", type=int, default=729)
    ap.add_argument("--points-b", type=int, default=729)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--naive-on-cuda", action="store_true",
                    help="also time the cdist peer on CUDA")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    P, N, M = args.instances, args.points_a, args.points_b
    a0 = (torch.rand(P, N, 2, generator=g) * 20).to(dev)
    b0 = (torch.rand(P, M, 2, generator=g) * 20).to(dev)
    g_ab = torch.randn(P, N, generator=g).to(dev)
    g_ba = torch.randn(P, M, generator=g).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[torch.Tensor, torch.Tensor], Result]) -> float:
        a = a0.detach().requires_grad_(True)
        b = b0.detach().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        d_ab, d_ba, _, _ = fn(a, b)
        ((d_ab * g_ab).sum() + (d_ba * g_ba).sum()).backward()
        sync()
        return time.perf_counter() - t0

    kernel = dev.type == "cuda" and load_chamfer_2d_ext() is not None  # build before timing
    runs: dict[str, Callable[[], float]] = {"reference": lambda: timed(chamfer_distance_reference)}
    if dev.type != "cuda" or args.naive_on_cuda:
        runs["naive"] = lambda: timed(naive_chamfer)
    if kernel:
        runs["kernel"] = lambda: timed(chamfer_distance)
    med = alternating_medians(runs, args.warmup, args.iters)
    print(f"device={dev} threads={torch.get_num_threads()} a=[{P}, {N}, 2] b=[{P}, {M}, 2] "
          f"float32 iters={args.iters} (fwd+bwd per iteration)")
    if dev.type == "cuda" and not kernel:
        print("CUDA kernel unavailable (see the warning above); only the PyTorch contenders "
              "are timed")
    for k, label in (("kernel", "CUDA kernel"), ("reference", "chunked exact search + gather"),
                     ("naive", "torch.cdist + min")):
        if k in med:
            print(f"{k:9s} fwd+bwd: {med[k] * 1e3:8.1f} ms (median, {label})")
    if "naive" in med:
        print(f"ratio reference / naive: {med['reference'] / med['naive']:.3f}")
    if kernel:
        print(f"ratio kernel / reference: {med['kernel'] / med['reference']:.3f}")


if __name__ == "__main__":
    main()
