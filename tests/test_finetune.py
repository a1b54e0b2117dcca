"""Fine-tuning from another run's weights: params ``init_from`` (issue 16, item 3).

A checkpoint of a model trained on the five synthetic categories (here: the model built and saved
in the final weights format, with its BatchNorm statistics changed, which is what a training
leaves) starts a run on a three-class dataset: the tensors whose shape depends on the number of
classes, defined here as the keys whose shape differs between the model built for 5 and for 3
classes, keep their fresh initialisation and are listed; every other tensor, buffers included,
is the checkpoint's. A checkpoint of another architecture is refused naming the first mismatching
key; a resume does not apply the file again; the MLflow run records the starting point.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import pipeline.train as train_module
from models.build import build_model
from pipeline.checkpoint import atomic_torch_save
from pipeline.config import resolve_model_config
from pipeline.errors import ConfigError, WeightsError
from pipeline.finetune import resolve_init_from, sha256_of
from pipeline.train import final_weights, run_training
from tests.class_datasets import THREE_CLASSES, write_class_dataset
from tests.test_any_num_classes import small_params

#: the detectors fine-tuned here: Faster R-CNN, a RepPoints, a D2Det (with its per-class mask
#: head), CPM R-CNN (two classifiers) and Grid R-CNN
FINETUNED = ["faster_rcnn_r50_fpn", "reppoints_v2_r50_fpn_giou", "d2det_r101_fpn_mask", "cpm_rcnn_r50_fpn",
             "grid_rcnn_r50_fpn"]
SYNTHETIC = [(2, "ellipse"), (3, "rectangle"), (5, "triangle"), (7, "hexagon"), (11, "star")]


@pytest.fixture(scope="module")
def manifest3(tmp_path_factory):
    return write_class_dataset(tmp_path_factory.mktemp("three_classes"), THREE_CLASSES)


def save_checkpoint(params: dict, name: str, path: Path, num_classes: int = 5, seed: int = 123) -> dict:
    """The final weights file of ``name`` built for ``num_classes`` classes (another seed than the
    run's, and BatchNorm statistics no fresh model has); returns its state dict."""
    cfg = resolve_model_config(params, name)
    torch.manual_seed(seed)
    model = build_model(cfg["detector"], cfg["model"], num_classes, load_pretrained=False)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + 0.5)
    cats = SYNTHETIC[:num_classes]
    atomic_torch_save(final_weights(state, cfg, [c for c, _ in cats], [n for _, n in cats], 100, "f" * 16), path)
    return state


def class_dependent(params: dict, name: str) -> set[str]:
    """The keys whose shape differs between the model built for 5 and for 3 classes."""
    cfg = resolve_model_config(params, name)
    five = build_model(cfg["detector"], cfg["model"], 5, load_pretrained=False).state_dict()
    three = build_model(cfg["detector"], cfg["model"], 3, load_pretrained=False).state_dict()
    assert five.keys() == three.keys()
    return {k for k in five if five[k].shape != three[k].shape}


class InitSpy:
    """Wraps pipeline.train.apply_init_weights: the model's state before and after, the report."""

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        real = train_module.apply_init_weights

        def spy(module, *args, **kwargs):
            before = {k: v.clone() for k, v in module.state_dict().items()}
            report = real(module, *args, **kwargs)
            after = {k: v.clone() for k, v in module.state_dict().items()}
            self.calls.append({"before": before, "after": after, "report": report})
            return report

        monkeypatch.setattr(train_module, "apply_init_weights", spy)


def finetune_params(name: str, init_from: str, **schedule) -> dict:
    params = small_params()
    params["models"] = {name: params["models"][name]}
    params["models"][name]["init_from"] = init_from
    params["models"][name]["overrides"]["schedule"].update(schedule)
    return params


def train(params, name, manifest, root: Path, **kw):
    return run_training(name, params, manifest_file=manifest, checkpoint_root=root / "ckpt",
                        weights_root=root / "weights", metrics_root=root / "metrics", track=kw.pop("track", False),
                        **kw)


@pytest.mark.parametrize("name", FINETUNED)
def test_fine_tuning_reinitialises_exactly_the_class_dependent_tensors(name, manifest3, tmp_path, monkeypatch,
                                                                       capsys):
    torch.set_num_threads(1)
    init_file = tmp_path / "coco_like.pth"
    source = save_checkpoint(small_params(), name, init_file)
    expected = class_dependent(small_params(), name)
    assert expected, f"{name}: no class-dependent tensor"

    spy = InitSpy(monkeypatch)
    params = finetune_params(name, str(init_file))
    metrics, _ = train(params, name, manifest3, tmp_path)
    assert len(spy.calls) == 1
    call = spy.calls[0]
    report = call["report"]
    assert set(report.reinitialised) == expected
    for key in expected:  # the fresh initialisation is kept, the shapes are the 3-class model's
        assert torch.equal(call["after"][key], call["before"][key]), key
        assert report.reinitialised[key] == (tuple(source[key].shape), tuple(call["before"][key].shape))
    others = [k for k in call["after"] if k not in expected]
    assert sorted(report.loaded) == sorted(others)
    for key in others:  # parameters and buffers alike
        assert torch.equal(call["after"][key], source[key]), f"{key} is not the checkpoint's"
    assert any(k.endswith("running_mean") for k in others)

    sha = sha256_of(init_file)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "fine-tuning from" in x)
    assert line.startswith(f"[train] {name}: fine-tuning from {init_file} (sha256 {sha}): loaded {len(others)} "
                           f"tensors, re-initialised {len(expected)}: ")
    for key in expected:
        assert f"{key} [{'x'.join(map(str, source[key].shape))} -> " in line

    assert all(math.isfinite(v) for v in metrics["final_losses"].values())
    weights = torch.load(tmp_path / "weights" / f"{name}.pth", weights_only=True)
    assert weights["init_from"] == {"path": str(init_file), "sha256": sha}
    assert weights["num_classes"] == 3


def test_fine_tuning_from_a_run_trained_on_the_synthetic_data(tiny_prepared, manifest3, tmp_path, monkeypatch):
    """The weights file a 5-class training writes (weights/<run>.pth, digest and all) starts a
    3-class run: what the train stage writes is what init_from reads."""
    torch.set_num_threads(1)
    name = "faster_rcnn_r50_fpn"
    params = small_params()
    params["models"] = {name: params["models"][name]}
    params["models"][name]["overrides"]["data"] = {"train_scales": [[160, 128]], "test_scale": [160, 128]}
    train(params, name, tiny_prepared, tmp_path / "coco")
    trained = torch.load(tmp_path / "coco" / "weights" / f"{name}.pth", weights_only=True)
    assert trained["num_classes"] == 5

    spy = InitSpy(monkeypatch)
    weights = str(tmp_path / "coco" / "weights" / f"{name}.pth")
    train(finetune_params(name, weights), name, manifest3, tmp_path / "fine")
    report = spy.calls[0]["report"]
    expected = class_dependent(small_params(), name)
    assert set(report.reinitialised) == expected
    assert all(torch.equal(spy.calls[0]["after"][k], trained["model"][k]) for k in report.loaded)


def test_a_checkpoint_of_another_detector_is_refused_naming_the_first_mismatching_key(manifest3, tmp_path):
    params = small_params()
    init_file = tmp_path / "reppoints.pth"
    other = save_checkpoint(params, "reppoints_v1_r50_fpn_giou", init_file)
    cfg = resolve_model_config(params, "faster_rcnn_r50_fpn")
    own = build_model(cfg["detector"], cfg["model"], 3, load_pretrained=False).state_dict()
    first = sorted(set(own) ^ set(other))[0]
    with pytest.raises(WeightsError) as e:
        train(finetune_params("faster_rcnn_r50_fpn", str(init_file)), "faster_rcnn_r50_fpn", manifest3, tmp_path)
    message = str(e.value)
    assert f"first mismatching key '{first}'" in message
    assert "the checkpoint is a reppoints model, this run a faster_rcnn model" in message
    assert str(init_file) in message


def test_a_state_dict_with_a_missing_key_is_refused_naming_it(manifest3, tmp_path):
    params = small_params()
    state = save_checkpoint(params, "faster_rcnn_r50_fpn", tmp_path / "w.pth")
    dropped = sorted(state)[5]
    del state[dropped]
    torch.save(state, tmp_path / "bare.pth")  # a bare state dict: no detector named
    with pytest.raises(WeightsError, match=rf"names no detector, this run is a faster_rcnn model; first mismatching "
                                           rf"key '{dropped}' is in the model but not in the checkpoint"):
        train(finetune_params("faster_rcnn_r50_fpn", str(tmp_path / "bare.pth")), "faster_rcnn_r50_fpn",
              manifest3, tmp_path)


def test_a_shape_the_number_of_classes_does_not_explain_is_refused(manifest3, tmp_path):
    """Same keys, same detector, but a wider box head: not a fine-tuning of this configuration."""
    name = "faster_rcnn_r50_fpn"
    wide = small_params()
    wide["models"][name]["overrides"]["model"]["roi_head"] = {"bbox_head": {"fc_out_channels": 128}}
    save_checkpoint(wide, name, tmp_path / "wide.pth")
    with pytest.raises(WeightsError, match=r"another configuration: key 'roi_head\.bbox_head\.shared_fcs\.0\.bias' "
                                           r"has shape \[128\] in the checkpoint, \[256\] in the model, which the "
                                           r"number of classes \(5 there, 3 here\) does not explain"):
        train(finetune_params(name, str(tmp_path / "wide.pth")), name, manifest3, tmp_path)


def test_a_resume_does_not_apply_the_init_weights_again(manifest3, tmp_path, monkeypatch):
    """Killed after its first epoch, the fine-tuning run resumes from its checkpoint without
    loading the init file again and ends where an uninterrupted one ends; a changed init file
    (another sha256: another fingerprint) starts the run afresh from the new file."""
    torch.set_num_threads(1)
    name = "faster_rcnn_r50_fpn"
    init_file = tmp_path / "init.pth"
    save_checkpoint(small_params(), name, init_file)
    params = finetune_params(name, str(init_file), max_iters=4)  # 4 images, 2 per batch: 2 epochs
    spy = InitSpy(monkeypatch)

    _, uninterrupted = train(params, name, manifest3, tmp_path / "a")
    assert len(spy.calls) == 1
    with pytest.raises(KeyboardInterrupt):
        train(params, name, manifest3, tmp_path / "b", stop_at_iteration=2)
    assert len(spy.calls) == 2
    assert json.loads((tmp_path / "b" / "ckpt" / name / "latest.json").read_text())["epoch"] == 1
    _, resumed = train(params, name, manifest3, tmp_path / "b")
    assert len(spy.calls) == 2  # not applied again
    a, b = uninterrupted.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(KeyboardInterrupt):
        train(params, name, manifest3, tmp_path / "c", stop_at_iteration=2)
    save_checkpoint(small_params(), name, init_file, seed=7)  # another init file at the same path
    train(params, name, manifest3, tmp_path / "c")
    assert len(spy.calls) == 4  # the checkpoint of the old file is set aside; the new file is applied
    assert "configuration changed" in (tmp_path / "c" / "ckpt" / name / "previous" / "REASON.txt").read_text()


def test_mlflow_records_the_starting_point(manifest3, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import newest_finished_run

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DETLAB_MLFLOW_ARTIFACTS", (tmp_path / "mlruns" / "artifacts").as_uri())
    name = "reppoints_v2_r50_fpn_giou"
    init_file = tmp_path / "init.pth"
    save_checkpoint(small_params(), name, init_file)
    train(finetune_params(name, str(init_file)), name, manifest3, tmp_path, track=True, log_model=False)

    c = MlflowClient(tracking_uri=uri)
    run = newest_finished_run(c, name, "train")
    assert run is not None
    p = run.data.params
    expected = sorted(class_dependent(small_params(), name))
    assert p["init_from"] == str(init_file) and p["init_from_sha256"] == sha256_of(init_file)
    assert p["init_from_reinitialised"] == ", ".join(expected)
    assert int(p["init_from_loaded"]) > 100
    local = c.download_artifacts(run.info.run_id, "init_from.json", str(tmp_path / "dl"))
    record = json.loads(Path(local).read_text())
    assert record["sha256"] == sha256_of(init_file)
    assert [r["key"] for r in record["reinitialised"]] == expected


def test_the_init_file_is_part_of_the_fingerprint(manifest3, tmp_path):
    """Without init_from the fingerprint (and so resume) is what it was; with it, the file's hash counts."""
    name = "faster_rcnn_r50_fpn"
    save_checkpoint(small_params(), name, tmp_path / "one.pth", seed=1)
    save_checkpoint(small_params(), name, tmp_path / "two.pth", seed=2)
    prints = {}
    for label, init in (("none", None), ("one", "one.pth"), ("two", "two.pth")):
        params = small_params()
        params["models"] = {name: params["models"][name]}
        if init:
            params["models"][name]["init_from"] = str(tmp_path / init)
        train(params, name, manifest3, tmp_path / label)
        prints[label] = torch.load(tmp_path / label / "weights" / f"{name}.pth", weights_only=True)["fingerprint"]
    assert len(set(prints.values())) == 3
    plain = torch.load(tmp_path / "none" / "weights" / f"{name}.pth", weights_only=True)
    assert "init_from" not in plain  # the weights of a run without init_from keep their keys


def test_init_from_in_params(tmp_path):
    from pipeline.config import init_from_setting

    params = small_params()
    entry = params["models"]["faster_rcnn_r50_fpn"]
    assert init_from_setting(params, "faster_rcnn_r50_fpn") is None
    entry["init_from"] = None
    assert init_from_setting(params, "faster_rcnn_r50_fpn") is None
    resolve_model_config(params, "faster_rcnn_r50_fpn")
    entry["init_from"] = "weights/other.pth"
    assert init_from_setting(params, "faster_rcnn_r50_fpn") == "weights/other.pth"
    resolve_model_config(params, "faster_rcnn_r50_fpn")
    entry["init_from"] = 3
    with pytest.raises(ConfigError, match=r"models\.faster_rcnn_r50_fpn\.init_from = 3: expected the path"):
        resolve_model_config(params, "faster_rcnn_r50_fpn")
    del entry["init_from"]
    entry["init_form"] = "weights/other.pth"  # misspelt: refused, not silently ignored
    with pytest.raises(ConfigError, match=r"models\.faster_rcnn_r50_fpn: unknown key 'init_form'"):
        resolve_model_config(params, "faster_rcnn_r50_fpn")

    # a missing file names the key; a relative path is under the repository, or the workspace a
    # DVC experiment's copy was made from
    entry.pop("init_form")
    entry["init_from"] = "weights/nope.pth"
    with pytest.raises(ConfigError, match=r"params\.yaml: models\.faster_rcnn_r50_fpn\.init_from = "
                                          r"'weights/nope\.pth': no such weights file"):
        train_module.init_from_source(params, "faster_rcnn_r50_fpn")
    workspace = tmp_path / "ws"
    (workspace / "weights").mkdir(parents=True)
    (workspace / "weights" / "w.pth").write_bytes(b"x")
    copy_root = workspace / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy_root.mkdir(parents=True)
    found = resolve_init_from("weights/w.pth", repo_root=copy_root)
    assert found.path == workspace / "weights" / "w.pth" and found.sha256 == sha256_of(found.path)
    assert resolve_init_from(str(found.path)).path == found.path  # absolute


def test_the_train_stage_depends_on_init_from_through_its_params():
    """`dvc exp run -S '+models.<name>.init_from=...'` changes the param `models.<name>`, a dependency
    of train@<name>; the finetune module is a dependency of every train stage."""
    from dvc.repo import Repo

    from tests.conftest import REPO

    with Repo(str(REPO)) as repo:
        stages = {s.addressing: s for s in repo.index.stages}
    from dvc.dependency.param import ParamsDependency

    for addressing, stage in stages.items():
        if addressing.startswith("train@"):
            params = {p for d in stage.deps if isinstance(d, ParamsDependency) for p in (d.params or [])}
            assert f"models.{addressing.split('@', 1)[1]}" in params
        if addressing.startswith(("train@", "train_ablation@")):
            assert "pipeline/finetune.py" in [d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)]

