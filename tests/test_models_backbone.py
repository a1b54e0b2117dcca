"""ResNet backbone and FPN neck."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from models.common.backbones.resnet import ResNet
from models.common.necks.fpn import FPN


def _torchvision_stages(model: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize(
    "depth, tv_name, kwargs",
    [
        (18, "resnet18", {}),
        (50, "resnet50", {}),
        (50, "resnext50_32x4d", {"groups": 32, "width_per_group": 4}),
    ],
)
def test_resnet_loads_torchvision_checkpoint_and_matches_its_features(tmp_path, depth, tv_name, kwargs):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, tv_name)(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics so that a mismatch would show
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    ours = ResNet(depth=depth, pretrained=str(path), norm_eval=True, **kwargs).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = _torchvision_stages(tv, x)
        got = ours(x)
    assert len(got) == 4
    for e, g, c in zip(expected, got, ours.out_channels):
        assert g.shape == e.shape and g.shape[1] == c
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_resnet_pretrained_errors_are_clear(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        ResNet(depth=18, base_channels=32, pretrained=str(path))
    with pytest.raises(RuntimeError, match="does not match"):
        ResNet(depth=18, norm="gn", pretrained=str(path))  # BN statistics have no place in GN
    with pytest.raises(FileNotFoundError, match="not found"):
        ResNet(depth=18, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="no model named"):
        ResNet(depth=18, pretrained="torchvision://no_such_net")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None).state_dict()}, wrapped)
    ResNet(depth=18, pretrained=str(wrapped), norm="frozen_bn")  # mmcv-style wrapper, FrozenBN target


def test_resnet_half_width_channels_strides_and_out_indices():
    net = ResNet(depth=18, base_channels=32, out_indices=(1, 2, 3), norm_eval=False)
    assert net.out_channels == [64, 128, 256]
    assert net.strides == [8, 16, 32]
    outs = net(torch.randn(2, 3, 160, 256))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 20, 32), (2, 128, 10, 16), (2, 256, 5, 8)]
    assert ResNet(depth=50, base_channels=32).out_channels == [128, 256, 512, 1024]
    assert ResNet(depth=101, groups=64, width_per_group=4).layer1[0].conv2.out_channels == 256  # ResNeXt 64x4d


def test_resnet_frozen_stages_and_norm_eval():
    net = ResNet(depth=18, base_channels=32, frozen_stages=1, norm_eval=True)
    net.train()
    assert not any(p.requires_grad for p in net.conv1.parameters())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())
    assert not net.bn1.training and not net.layer3[0].bn1.training  # norm_eval: every BN in eval mode
    before = net.layer3[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(net.layer3[0].bn1.running_mean, before)

    trainable = ResNet(depth=18, base_channels=32, frozen_stages=-1, norm_eval=False).train()
    assert trainable.layer3[0].bn1.training and all(p.requires_grad for p in trainable.parameters())


@pytest.mark.parametrize("norm", ["frozen_bn", "gn"])
def test_resnet_norm_variants(norm):
    net = ResNet(depth=18, base_channels=32, norm=norm)
    outs = net(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64, 128, 256]


@pytest.mark.parametrize("extra", [None, "on_input", "on_output"])
def test_fpn_shapes_for_every_extra_level_mode(extra):
    inputs = [torch.randn(2, c, s, s) for c, s in [(16, 32), (32, 16), (64, 8), (128, 4)]]
    fpn = FPN([16, 32, 64, 128], 24, num_outs=5, add_extra_convs=extra, relu_before_extra_convs=True)
    outs = fpn(inputs)
    assert [tuple(o.shape) for o in outs] == [(2, 24, s, s) for s in (32, 16, 8, 4, 2)]
    if extra is None:
        torch.testing.assert_close(outs[4], outs[3][:, :, ::2, ::2])  # max_pool(k=1, s=2)
    elif extra == "on_input":
        assert fpn.fpn_convs[4].conv.in_channels == 128


def test_fpn_start_level_odd_sizes_and_group_norm():
    inputs = [torch.randn(1, c, h, w) for c, h, w in [(8, 25, 38), (16, 13, 19), (32, 7, 10)]]
    fpn = FPN([8, 16, 32], 32, num_outs=4, start_level=1, norm="gn")
    outs = fpn(inputs)
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 19), (7, 10), (4, 5), (2, 3)]
    assert isinstance(fpn.lateral_convs[0].norm, nn.GroupNorm) and fpn.lateral_convs[0].conv.bias is None
    with pytest.raises(ValueError):
        FPN([8, 16], 32, num_outs=1)
