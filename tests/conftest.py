"""Shared fixtures: an MLflow store per test session (never the repository's), tiny data;
the hypothesis settings profiles of the fuzz tests (tests/test_fuzz_inputs.py)."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Fuzz tests (tests/README.md): "ci" (the default) runs a fixed, small set of examples per target
# (derandomized: every run draws the same inputs); HYPOTHESIS_PROFILE=long draws thousands of
# fresh random ones. The deadline bounds each example (a hang is a failure); it is generous
# because CI machines are slow and shared.
_FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=60, deadline=timedelta(seconds=5), derandomize=True, database=None,
                          suppress_health_check=_FUZZ_HEALTH, print_blob=True)
settings.register_profile("long", max_examples=20000, deadline=timedelta(seconds=10), derandomize=False,
                          database=None, suppress_health_check=_FUZZ_HEALTH, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO / "tests" / "data" / "coco_mini"


@pytest.fixture(autouse=True, scope="session")
def isolated_mlflow_store(tmp_path_factory):
    """Point MLflow at a throw-away SQLite store so tests never touch ``mlflow.db``."""
    d = tmp_path_factory.mktemp("mlflow")
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "DETLAB_MLFLOW_ARTIFACTS")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d / 'mlflow.db'}"
    os.environ["DETLAB_MLFLOW_ARTIFACTS"] = (d / "artifacts").as_uri()
    yield d
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


TINY_MODEL = "frcnn_tiny"


def tiny_params() -> dict:
    """params.yaml for runs that take seconds: 16/8/8 synthetic images, 2 short epochs on CPU."""
    import copy

    from pipeline.config import load_params

    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["data"]["source"] = "synthetic"
    params["data"]["synthetic"] = {"num_train": 16, "num_minival": 8, "num_testdev": 8, "seed": 0}
    # update, not replace: every key params.yaml has (and dvc.yaml may depend on) stays present
    params["train"].update({"device": "cpu", "gpus": 1, "num_workers": 0, "amp": False, "log_interval": 2,
                            "keep_checkpoints": 2})
    params["evaluate"].update({"splits": ["minival", "test-dev"], "max_dets": 100, "batch_size": 4})
    params["ablations"] = {}  # the ablation stages run nothing (the report stage needs the key)
    params["pretrain"].update({"epochs": 1, "batch_size": 16, "warmup_iters": 1})
    params["models"] = {
        TINY_MODEL: {
            "preset": "faster_rcnn_r50_fpn_1x",
            "family": "faster_rcnn",
            "base": "faster_rcnn",
            "scale": "cpu",
            "overrides": {"schedule": {"epochs": 2, "images_per_gpu": 4, "lr": 0.01, "warmup_iters": 2,
                                       "lr_steps": [1.5]}},
        }
    }
    return params


def write_params(params: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared tiny synthetic dataset; returns its manifest file."""
    import subprocess
    import sys

    d = tmp_path_factory.mktemp("tiny_data")
    params_file = write_params(tiny_params(), d / "params.yaml")
    out = d / "prepared"
    subprocess.run([sys.executable, "-m", "pipeline.prepare", "--params", str(params_file), "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, text=True)
    return out / "manifest.json"


@pytest.fixture
def fresh_loader():
    """Forget the remembered outcomes of the ``cuda_ops`` extension loaders before and after the test."""
    import cuda_ops._extension as extension

    extension._reset_cache_for_tests()
    yield
    extension._reset_cache_for_tests()
