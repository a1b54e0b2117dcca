"""Every model of params.yaml trains on any number of classes (issue 16, item 2).

Each of params.yaml's ``models`` entries (its preset at its scale, here ``cpu``, with its
overrides, the pretrained backbone left out) builds and trains two iterations on a one-class and
on a three-class dataset of tiny hand-drawn images (:mod:`tests.class_datasets`), whose category
ids are neither contiguous nor 1-based and are listed out of order: every loss is finite, the
class-specific layers take their size from the dataset, and the trained model's detections carry
labels of those classes only. The one-class case is the one the original repositories broke on
(RepPoints V2's NaN losses, D2Det's device-side assert: a sigmoid head of one class, a softmax head
of one class plus background).

A label outside the model's classes that reaches a training step is a DataError naming the
annotation file and the image, not an index error or a NaN.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from pipeline.config import load_params, resolve_model_config
from pipeline.errors import DataError
from pipeline.train import run_training
from tests.class_datasets import ONE_CLASS, THREE_CLASSES, write_class_dataset
from tests.conftest import REPO, tiny_params

MODELS = list(load_params(REPO / "params.yaml")["models"])
DATASETS = {1: ONE_CLASS, 3: THREE_CLASSES}


def small_params() -> dict:
    """tiny_params() with params.yaml's model entries, each cut to 2 iterations of 2 images of
    128 x 96 pixels, without the pretrain stage's backbone (not built in a test), and keeping
    every detection's score at test time (the 20 best per image)."""
    params = tiny_params()
    params["models"] = copy.deepcopy(load_params(REPO / "params.yaml")["models"])
    for name, entry in params["models"].items():
        head = "bbox_head" if "bbox_head" in resolve_model_config(params, name)["model"] else "roi_head"
        overrides = entry.setdefault("overrides", {})
        model = overrides.setdefault("model", {})
        model.setdefault("backbone", {})["pretrained"] = None
        model.setdefault(head, {})["test"] = {"score_thr": 0.0, "max_per_img": 20}
        overrides["schedule"] = {"max_iters": 2, "images_per_gpu": 2, "warmup_iters": 1}
        overrides["data"] = {"train_scales": [[128, 96]], "test_scale": [128, 96]}
    return params


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("class_datasets")
    return {n: write_class_dataset(root / f"classes_{n}", cats) for n, cats in DATASETS.items()}


def test_params_has_the_nine_models():
    assert len(MODELS) == 9


@pytest.mark.parametrize("num_classes", sorted(DATASETS))
@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_on_any_number_of_classes(name, num_classes, manifests, tmp_path):
    torch.set_num_threads(1)
    params = small_params()
    metrics, model = run_training(name, params, manifest_file=manifests[num_classes],
                                  checkpoint_root=tmp_path / "ckpt", weights_root=tmp_path / "weights",
                                  metrics_root=tmp_path / "metrics", track=False)
    assert metrics["iterations"] == 2
    losses = metrics["final_losses"]
    assert losses and all(math.isfinite(v) for v in losses.values()), losses

    weights = torch.load(tmp_path / "weights" / f"{name}.pth", weights_only=True)
    assert weights["num_classes"] == num_classes
    assert weights["cat_ids"] == sorted(c for c, _ in DATASETS[num_classes])  # label k = k-th smallest id
    names = dict(DATASETS[num_classes])
    assert weights["categories"] == [{"id": c, "name": names[c]} for c in weights["cat_ids"]]

    # the trained model's detections (every score kept) are of the dataset's classes
    from pipeline.data import build_dataset, collate_detection, load_manifest

    cfg = resolve_model_config(params, name)
    model.eval()
    dataset = build_dataset(load_manifest(manifests[num_classes]).split("minival"), cfg["data"], train=False,
                            seed=0)
    images, sizes, _ = collate_detection([dataset[0], dataset[1]], size_divisor=32)
    with torch.no_grad():
        detections = model(images, sizes)
    labels = torch.cat([d["labels"] for d in detections])
    assert labels.numel() > 0 and int(labels.min()) >= 0 and int(labels.max()) < num_classes


def test_a_label_outside_the_models_classes_is_a_data_error_naming_the_image(manifests, tmp_path, monkeypatch):
    """A label that escaped the category mapping (here: set by hand in the dataset's targets) stops
    the training step with a DataError naming the annotation file and the image, before the model."""
    import pipeline.train as train_module

    real_build = train_module.build_dataset

    bad_annotation = []

    def build_with_a_bad_label(*args, **kwargs):
        dataset = real_build(*args, **kwargs)
        index = dataset.ids.index(103)
        dataset._targets[index].labels[0] = 3  # three classes: labels 0..2
        bad_annotation.append(dataset._targets[index].ann_ids[0])
        return dataset

    monkeypatch.setattr(train_module, "build_dataset", build_with_a_bad_label)
    called = []
    params = small_params()
    name = "faster_rcnn_r50_fpn"
    original_forward = type(build_model_of(params, name)).forward

    def spy(self, images, image_sizes, targets=None):
        called.append([int(t["image_id"]) for t in targets or []])
        return original_forward(self, images, image_sizes, targets)

    monkeypatch.setattr(type(build_model_of(params, name)), "forward", spy)
    with pytest.raises(DataError) as e:
        run_training(name, params, manifest_file=manifests[3], checkpoint_root=tmp_path / "ckpt",
                     weights_root=tmp_path / "weights", metrics_root=tmp_path / "metrics", track=False)
    message = str(e.value)
    assert "annotations.json" in message and "label 3, outside 0..2" in message
    assert f"annotation id {bad_annotation[0]} (image id 103)" in message  # the dataset's targets carry ann_ids
    assert all(103 not in ids for ids in called)  # the bad batch never reached the model
    assert not (tmp_path / "weights" / f"{name}.pth").exists()


def build_model_of(params: dict, name: str) -> torch.nn.Module:
    from models.build import build_model

    cfg = resolve_model_config(params, name)
    return build_model(cfg["detector"], cfg["model"], 3, load_pretrained=False)


def test_check_target_labels_names_the_annotation_when_the_target_carries_its_ids():
    from pipeline.engine import check_target_labels

    ok = {"labels": torch.tensor([0, 2]), "image_id": 5}
    check_target_labels([ok, {"labels": torch.zeros(0, dtype=torch.long), "image_id": 6}], 3, "a.json")
    with pytest.raises(DataError, match=r"a\.json: annotation id 71 \(image id 9\) has label -1, outside 0\.\.2"):
        check_target_labels([ok, {"labels": torch.tensor([1, -1]), "image_id": 9, "ann_ids": [70, 71]}], 3, "a.json")
    with pytest.raises(DataError, match=r"image id 9 has label 1, outside 0\.\.0"):
        check_target_labels([{"labels": torch.tensor([1]), "image_id": 9}], 1, "b.json")
