"""The evaluate stage sharded over processes (issue 17): the same result and metrics files from
one process and from two under real torchrun (gloo, CPU), a rank's failure failing the whole
evaluation (not hanging it), the share each rank predicts, and how many processes the stage
launches.

The model is a tiny Faster R-CNN, freshly initialised (seeded) and saved as the train stage
saves weights, with score threshold 0 so it returns detections without training."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import atomic_torch_save
from pipeline.config import resolve_model_config
from pipeline.data import build_dataset, load_manifest
from pipeline.errors import ConfigError
from pipeline.evaluate import evaluate_processes, merge_shards, shard_indices
from pipeline.train import final_weights
from tests.conftest import REPO, TINY_MODEL, tiny_params

#: the wait for one evaluation, alone or under torchrun (seconds): a hang fails the test
TIMEOUT_S = 240


#: a model with masks (D2Det's instance head at CPU scale), for the segm result files
MASK_MODEL = "d2det_mask_tiny"


def sharded_params() -> dict:
    """Tiny params: both splits (8 images each) in batches of 2; the tiny Faster R-CNN and
    :data:`MASK_MODEL`, both with score threshold 0."""
    params = tiny_params()
    params["models"][TINY_MODEL]["overrides"]["model"] = {"roi_head": {"test": {"score_thr": 0.0}}}
    params["models"][MASK_MODEL] = {"preset": "d2det_r101_fpn_mask", "family": "d2det", "base": "d2det",
                                    "scale": "cpu", "overrides": {"model": {"roi_head": {"test": {"score_thr": 0.0}}}}}
    params["evaluate"]["batch_size"] = 2
    return params


@pytest.fixture(scope="module")
def tiny_weights(tiny_prepared, tmp_path_factory) -> Path:
    """``weights/<run>.pth`` of a freshly initialised (seed 0) tiny Faster R-CNN and
    :data:`MASK_MODEL`, with the digest the loader verifies; returns the weights folder."""
    from models.build import build_model

    params = sharded_params()
    root = tmp_path_factory.mktemp("sharded_weights")
    for name in (TINY_MODEL, MASK_MODEL):
        cfg = resolve_model_config(params, name)
        dataset = build_dataset(load_manifest(tiny_prepared).split("minival"), cfg["data"], train=False, seed=0)
        cat_ids = list(dataset.cat_ids)
        names = [c["name"] for c in dataset.coco.loadCats(cat_ids)]
        torch.manual_seed(0)
        model = build_model(cfg["detector"], cfg["model"], len(cat_ids), load_pretrained=False)
        atomic_torch_save(final_weights(model.state_dict(), cfg, cat_ids, names, 0, "0" * 16), root / f"{name}.pth")
    return root


def run_evaluation(processes: int, manifest: Path, weights_root: Path, out: Path, *extra: str,
                   model: str = TINY_MODEL, mlflow_store: Path | None = None) -> subprocess.CompletedProcess:
    """``tests/evaluate_worker.py`` alone (1) or under ``torchrun --nproc_per_node processes``,
    one thread per process, bounded by :data:`TIMEOUT_S`; with ``mlflow_store``, MLflow records
    go to a store of their own in that folder (not the test session's shared one)."""
    params_file = out / "params.json"
    out.mkdir(parents=True, exist_ok=True)
    params_file.write_text(json.dumps(sharded_params()))
    worker = [str(REPO / "tests" / "evaluate_worker.py"), "--model", model, "--params", str(params_file),
              "--manifest", str(manifest), "--weights-root", str(weights_root), "--out", str(out), *extra]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    if mlflow_store is not None:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{mlflow_store / 'mlflow.db'}"
        env["DETLAB_MLFLOW_ARTIFACTS"] = (mlflow_store / "artifacts").as_uri()
    return subprocess.run(launcher + worker, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_processes_write_the_same_files_as_one(tiny_prepared, tiny_weights, tmp_path):
    timings = {}
    for n in (1, 2):
        start = time.perf_counter()
        proc = run_evaluation(n, tiny_prepared, tiny_weights, tmp_path / f"n{n}", "--switch-head",
                              *(["--track"] if n == 2 else []), mlflow_store=tmp_path / "mlruns")
        timings[n] = time.perf_counter() - start
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"evaluation wall time, 1 process: {timings[1]:.1f} s, 2 processes: {timings[2]:.1f} s")
    one, two = files_under(tmp_path / "n1" / "results"), files_under(tmp_path / "n2" / "results")
    json_files = [f for f in one if f.endswith(".json")]
    assert {f"{TINY_MODEL}/minival_bbox.json", f"{TINY_MODEL}/test-dev_bbox.json",
            f"{TINY_MODEL}/minival_corner_snapping_off_bbox.json"} <= set(json_files)
    assert sorted(one) == sorted(two)
    for name in one:
        if name.endswith((".json", ".zip")):  # the result files (the PR figures' bytes are matplotlib's)
            assert one[name] == two[name], f"{name} differs between 1 and 2 processes"
    records = json.loads(one[f"{TINY_MODEL}/minival_bbox.json"])
    assert len(records) > 8 and len({r["image_id"] for r in records}) == 8  # every image has detections
    for split in ("minival", "test-dev"):
        m1 = json.loads((tmp_path / "n1" / "metrics" / TINY_MODEL / f"{split}.json").read_text())
        m2 = json.loads((tmp_path / "n2" / "metrics" / TINY_MODEL / f"{split}.json").read_text())
        assert m1 == m2 and m1["num_images"] == 8 and m1["scored"]
        assert (tmp_path / "n1" / "metrics" / TINY_MODEL / "pr" / f"{split}_bbox.csv").read_bytes() == \
            (tmp_path / "n2" / "metrics" / TINY_MODEL / "pr" / f"{split}_bbox.csv").read_bytes()
    assert "corner_snapping_off" in json.loads((tmp_path / "n2" / "metrics" / TINY_MODEL / "minival.json").read_text())[
        "variants"]

    # rank 0 alone logged to MLflow, once per split and variant, with a time per image (in this
    # test's own store: other tests log evaluate runs of the same model name to the session's)
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import newest_finished_run

    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = newest_finished_run(c, TINY_MODEL, "evaluate", "minival")
    assert run is not None and run.data.metrics["minival/seconds_per_image"] > 0
    assert newest_finished_run(c, TINY_MODEL, "evaluate", "minival/corner_snapping_off") is not None
    runs = c.search_runs([run.info.experiment_id], f"tags.model = '{TINY_MODEL}' and tags.stage = 'evaluate'")
    assert sorted(r.data.tags["split"] for r in runs) == ["minival", "minival/corner_snapping_off", "test-dev"]


def test_two_processes_write_the_same_mask_files_as_one(tiny_prepared, tiny_weights, tmp_path):
    """The same for a model with masks: the segm result files (RLE) too."""
    for n in (1, 2):
        proc = run_evaluation(n, tiny_prepared, tiny_weights, tmp_path / f"n{n}", model=MASK_MODEL)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    one, two = files_under(tmp_path / "n1" / "results"), files_under(tmp_path / "n2" / "results")
    assert sorted(one) == sorted(two)
    assert {f"{MASK_MODEL}/minival_segm.json", f"{MASK_MODEL}/test-dev_segm.json"} <= set(one)
    for name in one:
        if name.endswith((".json", ".zip")):
            assert one[name] == two[name], f"{name} differs between 1 and 2 processes"
    segm = json.loads(one[f"{MASK_MODEL}/minival_segm.json"])
    assert segm and all(isinstance(r["segmentation"]["counts"], str) for r in segm)
    for split in ("minival", "test-dev"):
        m1 = json.loads((tmp_path / "n1" / "metrics" / MASK_MODEL / f"{split}.json").read_text())
        m2 = json.loads((tmp_path / "n2" / "metrics" / MASK_MODEL / f"{split}.json").read_text())
        assert m1 == m2 and "segm" in m1


def test_a_failing_rank_fails_the_whole_evaluation_with_its_error(tiny_prepared, tiny_weights, tmp_path):
    """An undecodable image in rank 1's share only (minival index 2: the second batch of 2)."""
    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared.parent, data)
    manifest = load_manifest(data / "manifest.json")
    split = manifest.split("minival")
    cfg = resolve_model_config(sharded_params(), TINY_MODEL)
    dataset = build_dataset(split, cfg["data"], train=False, seed=0)
    assert 2 in shard_indices(len(dataset), 2, rank=1, world_size=2)
    bad = Path(split.img_dir) / dataset.coco.imgs[int(dataset.ids[2])]["file_name"]
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated image: the header and nothing else

    start = time.perf_counter()
    proc = run_evaluation(2, data / "manifest.json", tiny_weights, tmp_path / "out")
    elapsed = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert "[rank 0] rank 1 of 2 failed while predicting" in output, output[-4000:]  # rank 0 says why it stops
    assert bad.name in output and "DataError" in output, output[-4000:]
    assert elapsed < TIMEOUT_S / 2
    assert not (tmp_path / "out" / "metrics" / TINY_MODEL / "minival.json").exists()
    assert not list((tmp_path / "out" / "results").rglob("*.json"))


# ------------------------------------------------------------------ units: shares, order, launch
@pytest.mark.parametrize("num, batch, world", [(8, 2, 2), (9, 4, 2), (5, 2, 3), (3, 8, 2), (0, 2, 2), (7, 1, 4)])
def test_the_shares_are_whole_batches_that_cover_every_image_once(num, batch, world):
    shares = [shard_indices(num, batch, r, world) for r in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(num))
    for rank, share in enumerate(shares):
        assert share == sorted(share)
        assert all((i // batch) % world == rank for i in share)  # the one-process batches, dealt in turn
    assert shard_indices(num, batch, 0, 1) == list(range(num))


def test_merge_keeps_image_order_and_each_images_detection_order():
    def recs(index, k):
        return [{"image_id": 100 - index, "score": s, "k": j} for j, s in enumerate([0.9, 0.5, 0.5][:k])]

    # rank 0 has batches 0 and 2 (images 0, 1, 4), rank 1 batch 1 (images 2, 3); batch size 2
    rank0 = [(0, recs(0, 3), []), (1, recs(1, 0), []), (4, recs(4, 2), recs(4, 1))]
    rank1 = [(2, recs(2, 1), []), (3, recs(3, 3), recs(3, 2))]
    bbox, segm = merge_shards([rank0, rank1])
    one_process, _ = merge_shards([sorted(rank0 + rank1)])
    assert bbox == one_process == [r for i in range(5) for r in recs(i, {0: 3, 1: 0, 2: 1, 3: 3, 4: 2}[i])]
    assert [(r["image_id"], r["k"]) for r in segm] == [(97, 0), (97, 1), (96, 0)]
    with pytest.raises(RuntimeError, match="more than one rank"):
        merge_shards([rank0, rank0])


def test_the_number_of_processes():
    params = sharded_params()
    cuda = torch.cuda.is_available()
    assert evaluate_processes(params) == 1  # tiny params: train.device cpu
    params["evaluate"]["processes"] = 2
    assert evaluate_processes(params) == 2  # CPU processes are allowed (gloo)
    assert evaluate_processes(params, override=1) == 1
    params["evaluate"]["processes"] = 1
    params["train"].update(device="cpu", gpus=4)
    assert evaluate_processes(params) == 1  # train.gpus counts on CUDA only
    params["train"]["device"] = "auto"
    if not cuda:
        assert evaluate_processes(params) == 1
    elif torch.cuda.device_count() >= 4:
        assert evaluate_processes(params) == 4  # as many as the train stage's GPUs
    else:
        with pytest.raises(ConfigError, match="CUDA devices are visible"):
            evaluate_processes(params)
    for bad in (0, -1, 1.5, "two", True):
        params["evaluate"]["processes"] = bad
        with pytest.raises(ConfigError, match="evaluate.processes"):
            evaluate_processes(params)


def test_the_stage_relaunches_itself_under_torchrun(tmp_path):
    """``python -m pipeline.evaluate --processes 2`` re-runs itself under torchrun; here both ranks
    find no weights for the run (none is trained under this name) and the stage exits 1 with the
    loader's message, not a hang."""
    from tests.conftest import write_params

    params = sharded_params()
    params["models"] = {"sharded_nowhere": params["models"][TINY_MODEL]}
    params_file = write_params(params, tmp_path / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--model", "sharded_nowhere", "--params",
                           str(params_file), "--processes", "2"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert "[evaluate] launching: " in output and "--nproc_per_node=2 -m pipeline.evaluate" in output
    assert "sharded_nowhere.pth: no trained weights" in output, output[-4000:]
