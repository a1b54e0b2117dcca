"""The pretrain stage: crops cut where the boxes are, a backbone file in torchvision's layout
that the CPU ResNet loads, byte-identical on a rerun, and a recorded accuracy."""
from __future__ import annotations

import numpy as np
import torch

from tests.conftest import tiny_params


def test_a_crop_is_cut_around_its_box_with_the_requested_context():
    from pipeline.pretrain import _cut

    image = np.zeros((100, 120, 3), np.uint8)
    image[40:60, 50:70] = (200, 30, 10)  # a 20 px red square
    crop = _cut(image, np.array([50.0, 40.0, 70.0, 60.0]), context=0.5, size=40)
    assert crop.shape == (3, 40, 40) and crop.dtype == np.uint8
    # context 0.5 of 20 px per side: a 40 px window, so the square covers the central 20 x 20
    assert tuple(crop[:, 20, 20]) == (200, 30, 10)
    assert crop[:, 12:28, 12:28].min(axis=(1, 2)).tolist() == [200, 30, 10]
    assert crop[:, 2, 2].tolist() == [0, 0, 0] and crop[:, 37, 37].tolist() == [0, 0, 0]
    # a box at the image border pads with zeros instead of failing
    edge = _cut(image, np.array([0.0, 0.0, 10.0, 10.0]), context=0.25, size=16)
    assert edge.shape == (3, 16, 16) and edge[:, 0, 0].tolist() == [0, 0, 0]


def test_pretrain_writes_a_loadable_deterministic_torchvision_backbone(tiny_prepared, tmp_path):
    from models.common.backbones.resnet import ResNet
    from pipeline.pretrain import pretrain_backbone

    params = tiny_params()
    outs = []
    for k in range(2):
        out = tmp_path / f"b{k}.pth"
        metrics = pretrain_backbone(params, tiny_prepared, out, tmp_path / f"m{k}.json", track=False)
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()  # same data and params, same file
    assert metrics["train_crops"] > 16 and metrics["classes"] == 6  # 5 shapes + background
    assert 0.0 <= metrics["minival_accuracy"] <= 1.0 and metrics["minival_crops"] > 0
    state = torch.load(outs[0], weights_only=True)
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.weight",
            "fc.weight", "fc.bias"} <= set(state)
    backbone_cfg = {k: v for k, v in params["pretrain"]["backbone"].items()}
    resnet = ResNet(**backbone_cfg, out_indices=(1, 2, 3), frozen_stages=1, norm_eval=True, pretrained=str(outs[0]))
    assert torch.equal(resnet.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert not resnet.layer1[0].conv1.weight.requires_grad and resnet.layer2[0].conv1.weight.requires_grad
