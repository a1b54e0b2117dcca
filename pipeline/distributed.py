"""Process-group helpers for the stages that run under torchrun: DDP training and sharded
evaluation.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the process runs
alone (rank 0 of 1). The backend is NCCL on CUDA and gloo on CPU, so two CPU processes
can train (or evaluate) together in tests. :func:`relaunch_with_torchrun` is how a stage
started as ``python -m pipeline.<stage>`` re-runs itself under torchrun, and
:func:`gather_to_main` how ranks hand their results to rank 0 without hanging when one of them
failed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class RankFailed(RuntimeError):
    """Another rank of the process group failed; the message names it and its error."""


def init_distributed(device_type: str, timeout: timedelta | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment, if any.

    Args:
        device_type: "cuda" or "cpu"; picks NCCL or gloo.
        timeout: how long a collective waits for the other ranks before it fails (torch's
            default, 30 minutes for gloo and NCCL, when None): the bound on a hang should a rank
            die without torchrun noticing.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        if timeout is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def current() -> DistInfo:
    """The DistInfo of an already-initialised process group (rank 0 of 1 when none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of Python floats over all ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_gather_objects(obj: object) -> list[object]:
    """Gather one picklable object from every rank (a one-element list without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class MultiNode:
    """How one node joins a multi-node torchrun job: ``nnodes`` nodes in all, this one
    ``node_rank`` (0 .. nnodes-1), meeting through torch's c10d rendezvous at ``rdzv_endpoint``
    (``host:port``, a host every node reaches; the agent on that host serves the rendezvous
    store) under the job id ``rdzv_id`` (the same string on every node). torchrun's c10d
    rendezvous ignores ``node_rank`` (it numbers the nodes by host name); it is passed anyway,
    and checked, for the static rendezvous and the logs."""

    nnodes: int
    node_rank: int
    rdzv_endpoint: str
    rdzv_id: str

    def __post_init__(self) -> None:
        if self.nnodes < 2:
            raise ValueError(f"a multi-node job needs nnodes >= 2, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in 0..{self.nnodes - 1} for nnodes = {self.nnodes}, "
                             f"got {self.node_rank}")
        host, sep, port = self.rdzv_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rdzv_endpoint must be host:port (the rendezvous host, e.g. the first node, "
                             f"and a free TCP port), got {self.rdzv_endpoint!r}")
        if not self.rdzv_id or any(c.isspace() for c in self.rdzv_id):
            raise ValueError(f"rdzv_id must be a non-empty string without spaces, got {self.rdzv_id!r}")

    def torchrun_args(self) -> list[str]:
        """The torchrun options that replace ``--standalone``."""
        return [f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={self.rdzv_endpoint}", f"--rdzv_id={self.rdzv_id}"]


def torchrun_command(module: str, processes: int, argv: list[str], nodes: MultiNode | None = None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=<processes> -m <module> <argv>``
    with this interpreter; with ``nodes`` (a multi-node job) ``--nnodes --node_rank --rdzv_backend=c10d
    --rdzv_endpoint --rdzv_id`` instead of ``--standalone``, ``processes`` being this node's. torchrun
    sets ``OMP_NUM_THREADS=1`` in each process unless the environment sets it."""
    launch = ["--standalone"] if nodes is None else nodes.torchrun_args()
    return [sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc_per_node={int(processes)}",
            "-m", module, *argv]


def run_torchrun(module: str, processes: int, argv: list[str], label: str = "",
                 forward_signals: tuple[int, ...] = (), nodes: MultiNode | None = None) -> tuple[int, int | None]:
    """Run ``python -m <module> <argv>`` under torchrun with ``processes`` processes (on this node
    of ``nodes``, when given) and wait.

    While it runs, each signal of ``forward_signals`` that reaches this process is passed on to
    torchrun as SIGTERM (which torchrun sends on to every rank); the handlers are restored after.
    Returns (torchrun's exit status, the first forwarded signal's number or None).
    """
    cmd = torchrun_command(module, processes, argv, nodes)
    print(f"{label + ' ' if label else ''}launching: " + " ".join(cmd), flush=True)
    child = subprocess.Popen(cmd)
    forwarded: list[int] = []

    def forward(signum, frame):  # noqa: ARG001 (signal handler signature)
        forwarded.append(signum)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in forward_signals}
    try:
        rc = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return rc, (forwarded[0] if forwarded else None)


def relaunch_with_torchrun(module: str, processes: int, argv: list[str] | None = None, label: str = "") -> None:
    """Re-run ``python -m <module> <argv>`` (default: this command's arguments) under torchrun with
    ``processes`` processes and exit with torchrun's status. Does nothing (returns) for one
    process or when already under torchrun (``WORLD_SIZE`` set), so a stage calls it first thing.

    The caller decides ``processes`` (the evaluate stage from ``evaluate.processes``); ``label``
    prefixes the printed command (``[evaluate]``). The train stage uses :func:`run_torchrun`
    itself, to forward preemption signals.
    """
    if processes <= 1 or "WORLD_SIZE" in os.environ:
        return
    rc, _ = run_torchrun(module, processes, sys.argv[1:] if argv is None else list(argv), label)
    raise SystemExit(rc)


def gather_to_main(work: Callable[[], Any], what: str) -> list[Any] | None:
    """Run ``work()`` on every rank and hand every rank's result to rank 0, failing everywhere,
    not hanging, when a rank's ``work`` raised.

    Two collectives: first every rank learns every rank's status (``all_gather_object`` of None or
    ``"<error type>: <message>"``), then, only when all succeeded, the results go to rank 0
    (``gather_object``; the other ranks never hold them). When a rank failed, that rank re-raises
    its own exception and every other rank raises :class:`RankFailed` naming the first failed rank,
    ``what`` it was doing and its error, so the whole job exits non-zero with the message on
    every rank's output.

    Returns:
        on rank 0, the list of the ranks' results, indexed by rank; None on the other ranks.
        Without a process group: ``[work()]`` (its exception propagates as it is).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [work()]
    rank, world = dist.get_rank(), dist.get_world_size()
    result, error, failure = None, None, None
    try:
        result = work()
    except Exception as e:  # reported to the other ranks, then raised here
        failure = e
        error = f"{type(e).__name__}: {e}"  # its traceback: on its own output, when it re-raises
    statuses: list[Any] = [None] * world
    dist.all_gather_object(statuses, error)
    failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
    if failed:
        r, text = failed[0]
        others = f" (and ranks {[f for f, _ in failed[1:]]})" if len(failed) > 1 else ""
        message = f"rank {r} of {world}{others} failed while {what}: {text.strip()}"
        if failure is None:  # printed now: torchrun stops this process as soon as the failed rank exits
            print(f"[rank {rank}] {message}", file=sys.stderr, flush=True)
        dist.barrier()  # the failed rank exits only once every rank has said why it stops
        if failure is not None:
            raise failure
        raise RankFailed(message)
    # rank 0 keeps its own result as it is: sent through gather_object it would come back as a
    # second (unpickled) copy, held next to the first until the function returns
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(None if rank == 0 else result, gathered, dst=0)
    if gathered is not None:
        gathered[0] = result
    return gathered
