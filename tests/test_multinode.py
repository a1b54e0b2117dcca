"""Multi-node training (``train.nnodes > 1``): the torchrun command line a node launches, the
settings and their per-node environment overrides, and a real two-"node" job on loopback (two
separate torchrun invocations of one gloo process each, meeting through the c10d rendezvous)
that must end with the parameters of a two-process single-node job."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.distributed import MultiNode, torchrun_command
from pipeline.train import NODE_ENVIRONMENT, launch_plan, multinode_settings
from tests.conftest import REPO, TINY_MODEL

#: the bound on every wait for a torchrun job (a tiny training takes well under a minute alone)
JOB_TIMEOUT_S = 240


# ----------------------------------------------------------------------------- command lines
def test_single_node_command_is_standalone():
    cmd = torchrun_command("pipeline.train", 4, ["--model", "m"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                   "-m", "pipeline.train", "--model", "m"]


def test_multinode_command_uses_the_c10d_rendezvous_instead_of_standalone():
    nodes = MultiNode(nnodes=4, node_rank=2, rdzv_endpoint="gpu-001:29500", rdzv_id="job42")
    cmd = torchrun_command("pipeline.train", 8, ["--model", "m", "--seed", "1"], nodes)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nnodes=4", "--node_rank=2",
                   "--rdzv_backend=c10d", "--rdzv_endpoint=gpu-001:29500", "--rdzv_id=job42",
                   "--nproc_per_node=8", "-m", "pipeline.train", "--model", "m", "--seed", "1"]
    assert "--standalone" not in cmd


@pytest.mark.parametrize("kwargs, message", [
    ({"nnodes": 1}, "nnodes >= 2"),
    ({"node_rank": 2}, "node_rank must be in 0..1"),
    ({"node_rank": -1}, "node_rank must be in 0..1"),
    ({"rdzv_endpoint": "gpu-001"}, "host:port"),
    ({"rdzv_endpoint": "gpu-001:http"}, "host:port"),
    ({"rdzv_endpoint": ":29500"}, "host:port"),
    ({"rdzv_id": "a b"}, "rdzv_id"),
])
def test_malformed_multinode_settings_are_refused(kwargs, message):
    base = {"nnodes": 2, "node_rank": 0, "rdzv_endpoint": "gpu-001:29500", "rdzv_id": "job"}
    with pytest.raises(ValueError, match=message):
        MultiNode(**{**base, **kwargs})


# ----------------------------------------------------------------------------- settings
def test_one_node_is_no_multinode_job():
    assert multinode_settings({}, "run", environ={}) is None
    assert multinode_settings({"nnodes": 1, "rdzv_endpoint": ""}, "run", environ={"DETLAB_NODE_RANK": "3"}) is None


def test_multinode_settings_from_params_with_the_run_as_default_id():
    runtime = {"nnodes": 2, "node_rank": 1, "rdzv_endpoint": "head:29400", "rdzv_id": ""}
    assert multinode_settings(runtime, "cpm_seed1", environ={}) == MultiNode(2, 1, "head:29400", "cpm_seed1")


def test_environment_overrides_the_per_node_and_per_job_settings():
    runtime = {"nnodes": 3, "node_rank": 0, "rdzv_endpoint": "head:29400", "rdzv_id": "fromparams"}
    environ = {NODE_ENVIRONMENT["node_rank"]: "2", NODE_ENVIRONMENT["rdzv_endpoint"]: "node7:12345",
               NODE_ENVIRONMENT["rdzv_id"]: "slurm-991"}
    assert multinode_settings(runtime, "run", environ) == MultiNode(3, 2, "node7:12345", "slurm-991")
    # an empty variable is no override
    assert multinode_settings(runtime, "run", {"DETLAB_NODE_RANK": ""}).node_rank == 0


def test_missing_or_bad_multinode_settings_name_their_source():
    with pytest.raises(ValueError, match="train.rdzv_endpoint or DETLAB_RDZV_ENDPOINT"):
        multinode_settings({"nnodes": 2}, "run", environ={})
    with pytest.raises(ValueError, match="DETLAB_NODE_RANK must be an integer"):
        multinode_settings({"nnodes": 2, "rdzv_endpoint": "h:1"}, "run", environ={"DETLAB_NODE_RANK": "one"})
    with pytest.raises(ValueError, match="node_rank from DETLAB_NODE_RANK"):
        multinode_settings({"nnodes": 2, "rdzv_endpoint": "h:1"}, "run", environ={"DETLAB_NODE_RANK": "5"})
    with pytest.raises(ValueError, match="train.nnodes must be an integer >= 1"):
        multinode_settings({"nnodes": 0}, "run", environ={})


def test_launch_plan():
    multi = {"nnodes": 2, "rdzv_endpoint": "head:29400"}
    nodes = MultiNode(2, 0, "head:29400", "run")
    # single node: torchrun only for several GPUs, CUDA only (as before)
    assert launch_plan({"gpus": 1}, "run", {}, cuda_devices=8) == (1, None, "")
    assert launch_plan({"gpus": 4}, "run", {}, cuda_devices=8) == (4, None, "")
    processes, none, note = launch_plan({"gpus": 4}, "run", {}, cuda_devices=0)
    assert (processes, none) == (1, None) and "CUDA is not available" in note
    # several nodes: gpus processes per node with CUDA, one (gloo) process per node without
    assert launch_plan({**multi, "gpus": 8}, "run", {}, cuda_devices=8) == (8, nodes, "")
    assert launch_plan({**multi, "gpus": 1}, "run", {}, cuda_devices=0) == (1, nodes, "")
    processes, got, note = launch_plan({**multi, "gpus": 8}, "run", {}, cuda_devices=0)
    assert (processes, got) == (1, nodes) and "on this node" in note
    with pytest.raises(ValueError, match="only 2 CUDA devices"):
        launch_plan({**multi, "gpus": 8}, "run", {}, cuda_devices=2)
    # under torchrun already: no second launch
    assert launch_plan({**multi, "gpus": 8}, "run", {"WORLD_SIZE": "16"}, cuda_devices=8) == (1, None, "")


# ----------------------------------------------------------------------------- real processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so that it and the ranks torchrun spawns can be
    killed together), its output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[int]:
    """Wait for every process within ``timeout`` seconds in all; on a timeout or a failure kill
    the process groups still running (our own, by id). Returns the exit statuses."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"torchrun job still running after {timeout} s")
            if any(p.poll() not in (None, 0) for p in procs):  # one node failed: the other would wait
                time.sleep(5)  # for its rendezvous timeout; give it a moment to fail on its own
                break
            time.sleep(0.5)
    except TimeoutError:
        kill_all(procs)
        raise AssertionError(f"timed out after {timeout} s\n" + tails(logs)) from None
    kill_all(procs)
    return [p.wait() for p in procs]


def kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists())


def worker_args(manifest: Path, out: Path) -> list[str]:
    return ["--manifest", str(manifest), "--out", str(out)]


def run_two_nodes(manifest: Path, out: Path) -> tuple[list[int], list[Path]]:
    """Two torchrun invocations, node ranks 0 and 1, one process each, meeting on loopback."""
    out.mkdir(parents=True)
    endpoint = f"127.0.0.1:{free_port()}"
    logs = [out / f"node{r}.log" for r in range(2)]
    procs = [start(torchrun_command("tests.ddp_worker", 1, worker_args(manifest, out),
                                    MultiNode(2, r, endpoint, "detlab-test-multinode")), logs[r])
             for r in range(2)]
    return wait_all(procs, logs, JOB_TIMEOUT_S), logs


def test_two_nodes_train_as_one_node_with_two_processes(tiny_prepared, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    log = single / "standalone.log"
    proc = start(torchrun_command("tests.ddp_worker", 2, worker_args(tiny_prepared, single)), log)
    (rc,) = wait_all([proc], [log], JOB_TIMEOUT_S)
    assert rc == 0, tails([log])

    statuses, logs = run_two_nodes(tiny_prepared, tmp_path / "multi")
    if statuses != [0, 0]:  # a port taken between picking and binding it: retry once on a fresh one
        first = tails(logs)
        statuses, logs = run_two_nodes(tiny_prepared, tmp_path / "multi_retry")
        assert statuses == [0, 0], f"two-node job failed twice: {statuses}\n{first}\n{tails(logs)}"
    multi = logs[0].parent

    reference = torch.load(single / "params_rank0.pt")
    assert len(reference) > 10
    for rank in range(2):
        got = torch.load(multi / f"params_rank{rank}.pt")
        assert got.keys() == reference.keys()
        for k in reference:
            assert torch.equal(got[k], reference[k]), f"node rank {rank}: parameter {k} differs from the standalone run"
    # global rank 0 alone wrote the stage's outputs, as in the standalone run
    for run_dir in (single, multi):
        assert (run_dir / "weights" / f"{TINY_MODEL}.pth").exists()
        assert (run_dir / "metrics" / TINY_MODEL / "train.json").exists()
        # 16 images, 4 per process, 2 processes: 2 iterations per epoch, 2 epochs
        assert json.loads((run_dir / "metrics" / TINY_MODEL / "train.json").read_text())["iterations"] == 4
