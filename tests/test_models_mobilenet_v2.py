"""MobileNetV2 backbone (specs/reppoints.md §4) and its use through build_backbone / FPN."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from models.common.backbones.mobilenet_v2 import MobileNetV2
from models.common.backbones.resnet import ResNet
from models.build import build_backbone, build_neck


def test_default_channels_strides_and_shapes():
    net = MobileNetV2().eval()
    assert net.out_channels == [24, 32, 96, 320]
    assert net.out_strides == [4, 8, 16, 32] and net.strides == net.out_strides
    assert len(net.features) == 18  # the 1280-ch conv (features.18) and the classifier are not built
    with torch.no_grad():
        outs = net(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 16, 24), (2, 32, 8, 12), (2, 96, 4, 6), (2, 320, 2, 3)]


def test_spec_defaults_train_every_layer_and_bn():
    net = MobileNetV2().train()
    assert all(p.requires_grad for p in net.parameters())
    assert all(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_loads_torchvision_state_dict_from_a_file_and_matches_its_features(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(weights=None).eval()
    path = tmp_path / "mnv2.pth"
    torch.save(tv.state_dict(), path)  # includes features.18.* and classifier.*: ignored
    net = MobileNetV2(pretrained=str(path)).eval()
    torch.testing.assert_close(net.features[3].conv[1][0].weight, tv.features[3].conv[1][0].weight)
    torch.testing.assert_close(net.features[17].conv[2].weight, tv.features[17].conv[2].weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tv.features[:18](x)
        got = net(x)[-1]
    torch.testing.assert_close(got, expected)


def test_pretrained_errors_name_the_file(tmp_path):
    wrong_width = tmp_path / "mnv2_half.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None, width_mult=0.5).state_dict(), wrong_width)
    with pytest.raises(RuntimeError, match="mnv2_half.pth: shape mismatch"):
        MobileNetV2(pretrained=str(wrong_width))
    partial = tmp_path / "partial.pth"
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    state.pop("features.5.conv.0.0.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, partial)
    with pytest.raises(RuntimeError, match=r"partial.pth: .*missing \['features.5.conv.0.0.weight'\].*extra.weight"):
        MobileNetV2(pretrained=str(partial))
    with pytest.raises(FileNotFoundError, match="not found"):
        MobileNetV2(pretrained=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("kwargs", [{"out_indices": (6, 3)}, {"out_indices": (18,)}, {"out_indices": ()},
                                    {"frozen_stages": 18}, {"frozen_stages": -2}, {"widen_factor": 0}])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        MobileNetV2(**kwargs)


def test_frozen_stages_and_norm_eval():
    net = MobileNetV2(frozen_stages=3, norm_eval=False).train()
    for i, layer in enumerate(net.features):
        frozen = i <= 3
        assert all(p.requires_grad != frozen for p in layer.parameters()), i
        assert all(m.training != frozen for m in layer.modules()), i
    net = MobileNetV2(norm_eval=True).train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(p.requires_grad for p in net.parameters())  # norm_eval freezes statistics only
    assert net.training
    net.eval()
    assert not any(m.training for m in net.modules())


def test_build_backbone_dispatches_on_type():
    net = build_backbone({"type": "mobilenet_v2", "frozen_stages": -1, "norm_eval": False})
    assert isinstance(net, MobileNetV2) and net.out_channels == [24, 32, 96, 320]
    resnet = build_backbone({"depth": 18, "base_channels": 32})  # no type: ResNet, as existing presets
    assert isinstance(resnet, ResNet)
    assert isinstance(build_backbone({"type": "resnet", "depth": 18, "base_channels": 32}), ResNet)
    with pytest.raises(ValueError, match=r"bogus.*mobilenet_v2.*resnet"):
        build_backbone({"type": "bogus"})
    with pytest.raises(TypeError, match="backbone"):
        build_backbone({"type": "mobilenet_v2", "depth": 50})


def test_fpn_on_mobilenet_v2_gives_p3_to_p7():
    backbone = MobileNetV2().eval()
    neck = build_neck(
        {"out_channels": 32, "num_outs": 5, "start_level": 1, "add_extra_convs": "on_input"},
        backbone.out_channels,
    ).eval()
    h, w = 256, 384
    with torch.no_grad():
        outs = neck(backbone(torch.randn(1, 3, h, w)))
    assert len(outs) == 5
    strides = [h // o.shape[-2] for o in outs]
    assert strides == [8, 16, 32, 64, 128]
    assert [w // o.shape[-1] for o in outs] == strides
    assert all(o.shape[1] == 32 for o in outs)


def test_torchvision_name_maps_to_imagenet1k_v1(monkeypatch):
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    seen = []

    def fake_get_state_dict(self, *args, **kwargs):  # no download in tests
        seen.append(self)
        return state

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    net = MobileNetV2(pretrained="torchvision://mobilenet_v2")
    assert seen == [torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1]
    torch.testing.assert_close(net.features[0][0].weight, state["features.0.0.weight"])
