"""One process on every core vs one DDP process per core, for a params.yaml run's training step.

    .venv/bin/python benchmarks/bench_cpu_processes.py --model reppoints_v2_r50_fpn_giou [--steps 8] [--warmup 2]

Same total batch (the schedule's ``images_per_gpu``, 8 at the CPU scale) either way:

* **peer**: one process with ``torch.set_num_threads(<cores>)`` steps the whole batch;
* **DDP**: ``<cores>`` processes (gloo, one thread each) step ``batch / cores`` images each and
  average their gradients, as a DDP training over ``<cores>`` gloo processes with ``images_per_gpu`` halved would.

Both build the run with ``profile_train_step.training_step_fns`` (resolved configuration, the
prepared ``train`` split, the stage's transforms and collate, the pretrained CPU backbone when the
configuration names it). Prints seconds per iteration of each and the ratio; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_params, resolve_model_config  # noqa: E402
from pipeline.paths import PARAMS_FILE  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from profile_train_step import training_step_fns  # noqa: E402


def _step_time(name: str, params_file: Path, batch: int, steps: int, warmup: int, rank: int,
               world: int) -> float:
    """Seconds per training step of ``batch`` images on this process (the DDP model when world > 1)."""
    wrap = (lambda m: torch.nn.parallel.DistributedDataParallel(m, find_unused_parameters=True)) if world > 1 else None
    _, _, load, train_step = training_step_fns(name, load_params(params_file), batch=batch, rank=rank, wrap=wrap)

    def step() -> None:
        train_step(*load())

    for _ in range(warmup):
        step()
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    return (time.perf_counter() - t0) / steps


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, batch: int, out) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        seconds = _step_time(args.model, args.params, batch, args.steps, args.warmup, rank, world)
        if rank == 0:
            out.put(seconds)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a run of params.yaml")
    parser.add_argument("--params", type=Path, default=REPO / PARAMS_FILE)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--port", type=int, default=29517)
    args = parser.parse_args(argv)
    cfg = resolve_model_config(load_params(args.params), args.model)
    batch = int(cfg["schedule"]["images_per_gpu"])
    world = args.processes
    if batch % world:
        raise SystemExit(f"batch {batch} does not split over {world} processes")

    torch.set_num_threads(world)
    peer = _step_time(args.model, args.params, batch, args.steps, args.warmup, 0, 1)
    print(f"{args.model}: 1 process x {world} threads, batch {batch}: {peer:.3f} s/it", flush=True)

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(world, args.port, args, batch // world, out), nprocs=world,
                       start_method="spawn")
    ddp = out.get()
    print(f"{args.model}: {world} DDP processes x 1 thread, {batch // world} images each: {ddp:.3f} s/it")
    print(f"ratio DDP / peer: {ddp / peer:.2f} (below 1: the processes are faster)")


if __name__ == "__main__":
    main()
