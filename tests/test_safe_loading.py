"""Loading never runs code, and a final weights file's tensors are verified (issue 19).

Every loading path (evaluate's :func:`load_trained_model`, the predict command, resuming a
training from its epoch checkpoint, pretrained backbone weights for fine-tuning, the copy
logged to MLflow) is fed a real ``torch.save`` file whose pickle, if unpickled with torch's full
unpickler, would create a marker file. Each must refuse it with a WeightsError naming the file,
and the marker must never appear. The good weights files are written exactly as the train stage
writes them (:func:`pipeline.train.final_weights` + :func:`atomic_torch_save`), from a freshly
built tiny detector, so no training is needed.
"""
from __future__ import annotations

import copy
import json
import pathlib
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from pipeline.checkpoint import CheckpointManager, atomic_torch_save, config_fingerprint, file_digest
from pipeline.config import resolve_model_config, training_seed
from pipeline.errors import WeightsError
from pipeline.evaluate import load_trained_model, read_weights
from pipeline.predict import main as predict_main
from pipeline.train import final_weights, run_training
from pipeline.weights_io import DIGEST_KEY, tensor_digest
from tests.conftest import TINY_MODEL, tiny_params

CAT_IDS = [1, 2, 3]
NAMES = ["ellipse", "rectangle", "triangle"]
REFUSED = "holds objects other than tensors and plain containers"


class MarkerOnUnpickle:
    """Pickles as a call of ``pathlib.Path.touch(marker)``: unpickling it creates ``marker``
    (what a hostile file would do with something worse). No os.system involved."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return pathlib.Path.touch, (self.marker,)


def tiny_cfg() -> dict[str, Any]:
    return resolve_model_config(tiny_params(), TINY_MODEL)


def tiny_state(cfg: dict[str, Any] | None = None, num_classes: int = len(CAT_IDS)) -> dict[str, Any]:
    """A final weights file's content for a freshly built tiny detector (seeded: the same every call)."""
    from models.build import build_model

    cfg = copy.deepcopy(cfg or tiny_cfg())
    torch.manual_seed(0)
    model = build_model(cfg["detector"], cfg["model"], num_classes, load_pretrained=False)
    return final_weights(model.state_dict(), cfg, CAT_IDS[:num_classes], NAMES[:num_classes], 7, "f" * 16)


@pytest.fixture(scope="module")
def good_state() -> dict[str, Any]:
    return tiny_state()


@pytest.fixture
def good_file(good_state, tmp_path) -> Path:
    path = tmp_path / "weights" / f"{TINY_MODEL}.pth"
    atomic_torch_save(good_state, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER_code_ran"
    yield path
    assert not path.exists(), "unpickling ran code: the marker file was created"


def hostile(state: dict[str, Any], marker: Path) -> dict[str, Any]:
    """``state`` with one more entry that runs code when unpickled unsafely."""
    return {**state, "note": MarkerOnUnpickle(marker)}


def assert_refused(err: BaseException | str, path: Path) -> None:
    text = str(err)
    assert str(path) in text, text
    assert REFUSED in text and "not loaded, for safety" in text, text


def entry_data_offset(path: Path, suffix: str) -> tuple[int, int]:
    """(offset of the stored bytes, their size) of the zip entry of ``path`` ending in ``suffix``."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ 1. loading never runs code
def test_the_marker_class_really_runs_code_when_unpickled_unsafely(tmp_path):
    """The hostile files below are real: the full unpickler would create the marker."""
    import pickle

    m = tmp_path / "m"
    pickle.loads(pickle.dumps(MarkerOnUnpickle(m)))
    assert m.exists()


def test_evaluate_refuses_a_hostile_weights_file(good_state, tmp_path, marker):
    path = tmp_path / "weights" / f"{TINY_MODEL}.pth"
    path.parent.mkdir()
    torch.save(hostile(good_state, marker), path)
    with pytest.raises(WeightsError) as exc:
        load_trained_model(path, torch.device("cpu"))
    assert_refused(exc.value, path)
    assert f"dvc pull weights/{TINY_MODEL}.pth" in str(exc.value) and f"dvc repro train@{TINY_MODEL}" in str(exc.value)


def test_predict_refuses_a_hostile_weights_file(good_state, tmp_path, marker, capsys):
    path = tmp_path / f"{TINY_MODEL}.pth"
    torch.save(hostile(good_state, marker), path)
    images = tmp_path / "in"
    images.mkdir()
    Image.new("RGB", (48, 40)).save(images / "x.png")
    with pytest.raises(SystemExit) as exc:
        predict_main(["--checkpoint", str(path), "--input", str(images), "--out", str(tmp_path / "out"),
                      "--device", "cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert_refused(err, path)
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_resume_refuses_a_hostile_checkpoint(tiny_prepared, tmp_path, marker):
    """A checkpoint in checkpoints/<run>/ with the run's fingerprint, so the training tries to resume
    from it: it stops with a WeightsError instead of unpickling it (and does not train afresh)."""
    params = tiny_params()
    cfg = resolve_model_config(params, TINY_MODEL)
    fingerprint = config_fingerprint({"cfg": cfg, "seed": training_seed(params), "data": file_digest(tiny_prepared),
                                      "world_size": 1})
    manager = CheckpointManager(tmp_path / "ckpt" / TINY_MODEL)
    manager.directory.mkdir(parents=True)
    path = manager.directory / "epoch_0001.pth"
    torch.save({"model": {}, "epoch": 1, "iteration": 4, "rng": MarkerOnUnpickle(marker)}, path)
    (manager.directory / "latest.json").write_text(json.dumps(
        {"file": path.name, "epoch": 1, "iteration": 4, "fingerprint": fingerprint}))
    with pytest.raises(WeightsError) as exc:
        manager.load(manager.latest())
    assert_refused(exc.value, path)
    assert "--no-resume" in str(exc.value)
    with pytest.raises(WeightsError) as exc:
        run_training(TINY_MODEL, params, manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt",
                     weights_root=tmp_path / "w", metrics_root=tmp_path / "metrics", track=False)
    assert_refused(exc.value, path)
    assert not (tmp_path / "w" / f"{TINY_MODEL}.pth").exists()


def test_fine_tuning_refuses_hostile_pretrained_weights(tmp_path, marker):
    """The backbone's ``pretrained`` file (the pretrain stage's output, or ImageNet weights)."""
    from models.build import build_model

    path = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": MarkerOnUnpickle(marker)}, path)
    cfg = tiny_cfg()
    cfg["model"]["backbone"]["pretrained"] = str(path)
    with pytest.raises(WeightsError) as exc:
        build_model(cfg["detector"], cfg["model"], 3, load_pretrained=True)
    assert_refused(exc.value, path)


def test_a_hostile_cached_torchvision_download_is_refused(tmp_path, marker):
    """``pretrained: torchvision://resnet18`` reads torch.hub's cached download: weights-only too
    (torch.hub alone would unpickle it fully). The cache is pre-filled, so nothing is downloaded."""
    from urllib.parse import urlparse

    import torchvision

    from models.common.backbones.resnet import _load_state_dict_source

    url = torchvision.models.get_model_weights("resnet18").IMAGENET1K_V1.url
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        cached = tmp_path / "hub" / "checkpoints" / Path(urlparse(url).path).name
        cached.parent.mkdir(parents=True)
        torch.save({"conv1.weight": torch.zeros(1), "extra": MarkerOnUnpickle(marker)}, cached)
        with pytest.raises(WeightsError) as exc:
            _load_state_dict_source("torchvision://resnet18")
    finally:
        torch.hub.set_dir(previous)
    assert_refused(exc.value, cached)


def test_checkpoints_and_weights_written_by_training_load_weights_only(tiny_prepared, tmp_path):
    """What run_training writes (epoch checkpoints with the RNG states, the final weights) loads
    with weights_only=True, and the RNG states restore exactly."""
    import random

    import numpy as np

    from pipeline.checkpoint import rng_state, set_rng_state

    params = tiny_params()
    params["models"][TINY_MODEL]["overrides"]["schedule"].update({"max_iters": 1})
    run_training(TINY_MODEL, params, manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt",
                 weights_root=tmp_path / "w", metrics_root=tmp_path / "metrics", track=False)
    ckpt = torch.load(tmp_path / "ckpt" / TINY_MODEL / "epoch_0001.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch"} <= set(ckpt)
    final = torch.load(tmp_path / "w" / f"{TINY_MODEL}.pth", weights_only=True)
    assert final[DIGEST_KEY] == tensor_digest(final["model"])

    random.seed(1), np.random.seed(2), torch.manual_seed(3), random.gauss(0, 1), np.random.randn()
    path = tmp_path / "rng.pth"
    atomic_torch_save(rng_state(), path)
    draws = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2).tolist())
    set_rng_state(torch.load(path, weights_only=True))
    assert draws == (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2).tolist())


def test_a_logged_model_is_weights_only_and_a_hostile_one_is_refused(good_state, tmp_path, marker):
    """The copy logged to MLflow is the weights file itself (no pickled module): it loads through the
    registry, and a hostile file logged the same way is refused."""
    import mlflow

    from pipeline.logged_model import load_logged_model, log_and_register

    good = tmp_path / "good" / f"{TINY_MODEL}.pth"
    atomic_torch_save(good_state, good)
    bad = tmp_path / "bad" / f"{TINY_MODEL}.pth"
    bad.parent.mkdir()
    torch.save(hostile(good_state, marker), bad)
    name = "safe_loading_tiny"
    # an experiment of its own, its artifacts under tmp_path (the Default one would write ./mlruns)
    experiment = mlflow.create_experiment("safe_loading", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        uri, model_id = log_and_register(run.info.run_id, good, good_state, name)
        bad_uri, _ = log_and_register(run.info.run_id, bad, good_state, name)
    assert model_id and uri.startswith(f"models:/{name}/")
    model, state = load_logged_model(uri, torch.device("cpu"))
    assert state["cat_ids"] == CAT_IDS and not model.training
    with pytest.raises(WeightsError) as exc:
        load_logged_model(bad_uri, torch.device("cpu"))
    assert bad_uri in str(exc.value) and bad.name in str(exc.value) and REFUSED in str(exc.value)


# ------------------------------------------------------------------ 2. integrity
def test_a_good_file_loads_and_is_deterministic(good_state, good_file, tmp_path):
    model, state = load_trained_model(good_file, torch.device("cpu"))
    assert state[DIGEST_KEY] == good_state[DIGEST_KEY] and len(state[DIGEST_KEY]) == 64
    for k, v in model.state_dict().items():
        assert torch.equal(v, good_state["model"][k]), k
    again = tmp_path / "again.pth"
    atomic_torch_save(tiny_state(), again)  # a rebuild of the same model: the same bytes
    assert again.read_bytes() == good_file.read_bytes()


def test_tensor_digest_is_order_free_and_sensitive_to_every_part():
    a = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "y": torch.tensor(5)}
    d = tensor_digest(a)
    assert d == tensor_digest({"y": torch.tensor(5), "x": a["x"].clone()})  # order and storage free
    assert d != tensor_digest({"x": a["x"].reshape(3, 2), "y": a["y"]})  # shape
    assert d != tensor_digest({"x": a["x"].double(), "y": a["y"]})  # dtype
    assert d != tensor_digest({"z": a["x"], "y": a["y"]})  # name
    assert d != tensor_digest({"x": a["x"] + torch.tensor([[0, 0, 1e-6], [0, 0, 0]]), "y": a["y"]})  # a value
    assert d == tensor_digest({"x": a["x"].t().contiguous().t(), "y": a["y"]})  # layout does not matter
    with pytest.raises(TypeError, match="'z'"):
        tensor_digest({"z": 3})


def test_a_flipped_tensor_byte_is_refused_naming_both_digests_and_the_fix(good_state, good_file):
    offset, size = entry_data_offset(good_file, "data/0")
    assert size > 0
    flip_byte(good_file, offset + size // 2)
    assert torch.load(good_file, weights_only=True)  # torch itself does not notice (no CRC check on load)
    with pytest.raises(WeightsError) as exc:
        load_trained_model(good_file, torch.device("cpu"))
    text = str(exc.value)
    assert str(good_file) in text
    assert f"expected tensor_sha256 {good_state[DIGEST_KEY]}" in text
    actual = tensor_digest(torch.load(good_file, weights_only=True)["model"])
    assert f"got {actual}" in text and actual != good_state[DIGEST_KEY]
    assert f"dvc pull weights/{TINY_MODEL}.pth" in text and f"dvc repro train@{TINY_MODEL}" in text


def test_swapped_tensors_are_refused(good_state, tmp_path):
    model = dict(good_state["model"])
    same_shape: dict[tuple[Any, ...], list[str]] = {}
    for k, v in model.items():
        same_shape.setdefault((v.dtype, tuple(v.shape)), []).append(k)
    a, b = next(keys for keys in same_shape.values()
                if len(keys) >= 2 and not torch.equal(model[keys[0]], model[keys[1]]))[:2]
    model[a], model[b] = model[b], model[a]
    path = tmp_path / f"{TINY_MODEL}.pth"
    atomic_torch_save({**good_state, "model": model}, path)  # the old digest kept
    with pytest.raises(WeightsError, match="do not match the digest") as exc:
        read_weights(path)
    assert str(path) in str(exc.value) and good_state[DIGEST_KEY] in str(exc.value)


@pytest.mark.parametrize("damage", ["truncated", "pickle byte", "central directory"])
def test_a_broken_zip_or_pickle_is_a_weights_error_naming_the_file(damage, good_file):
    data = good_file.read_bytes()
    if damage == "truncated":
        good_file.write_bytes(data[: len(data) // 2])
    elif damage == "pickle byte":
        offset, _ = entry_data_offset(good_file, "data.pkl")
        flip_byte(good_file, offset)  # the PROTO opcode
    else:
        flip_byte(good_file, data.rfind(b"PK\x05\x06"))
    with pytest.raises(WeightsError) as exc:
        load_trained_model(good_file, torch.device("cpu"))
    text = str(exc.value)
    assert str(good_file) in text and "cannot read the weights" in text, text
    assert "dvc pull" in text and "dvc repro" in text and "weights_only" not in text, text


def test_a_file_without_a_digest_is_refused(good_state, tmp_path):
    path = tmp_path / f"{TINY_MODEL}.pth"
    atomic_torch_save({k: v for k, v in good_state.items() if k != DIGEST_KEY}, path)
    with pytest.raises(WeightsError, match="carries no tensor digest"):
        read_weights(path)


def test_weights_of_another_architecture_are_refused_naming_the_key(good_state, tmp_path):
    """The state dict of a model with 2 classes under the 3-class configuration (digest valid for
    those tensors): a shape mismatch named by key; then a key of the model missing from the file."""
    other = tiny_state(num_classes=2)["model"]
    path = tmp_path / f"{TINY_MODEL}.pth"
    atomic_torch_save({**good_state, "model": other, DIGEST_KEY: tensor_digest(other)}, path)
    model_keys = list(good_state["model"])
    first = next(k for k in model_keys if other[k].shape != good_state["model"][k].shape)
    with pytest.raises(WeightsError) as exc:
        load_trained_model(path, torch.device("cpu"))
    assert str(path) in str(exc.value) and f"key '{first}' has shape" in str(exc.value), str(exc.value)

    fewer = {k: v for k, v in good_state["model"].items() if k != model_keys[0]}
    fewer["head.unknown"] = torch.zeros(1)
    atomic_torch_save({**good_state, "model": fewer, DIGEST_KEY: tensor_digest(fewer)}, path)
    with pytest.raises(WeightsError) as exc:
        load_trained_model(path, torch.device("cpu"))
    text = str(exc.value)
    assert f"key '{model_keys[0]}' of the model is missing from the file" in text and "1 unexpected" in text, text
