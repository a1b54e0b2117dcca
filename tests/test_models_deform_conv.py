"""Deformable conv layers (DCNv1 and modulated DCNv2) and their use in the ResNet backbone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from models.common.backbones.resnet import ResNet
from models.common.layers.deform_conv import DeformConv2dPack, ModulatedDeformConv2dPack

MASK_ONE = 30.0  # sigmoid(30) rounds to 1.0 in float32


def _force_unit_mask(m: ModulatedDeformConv2dPack) -> None:
    """Zero offsets, mask == 1: the mask logits (last third of conv_offset's output) get a large bias."""
    with torch.no_grad():
        m.conv_offset.weight.zero_()
        m.conv_offset.bias.zero_()
        m.conv_offset.bias[2 * m.num_taps :] = MASK_ONE


@pytest.mark.parametrize(
    "stride, padding, dilation, groups, deform_groups, bias",
    [(1, 1, 1, 1, 1, False), (2, 1, 1, 1, 1, False), (2, 2, 2, 2, 2, True), (1, 0, 1, 1, 1, True)],
)
def test_zero_offset_unit_mask_equals_conv2d(stride, padding, dilation, groups, deform_groups, bias):
    torch.manual_seed(0)
    m = ModulatedDeformConv2dPack(4, 6, 3, stride, padding, dilation, groups, deform_groups, bias)
    _force_unit_mask(m)
    x = torch.randn(2, 4, 11, 9)
    got = m(x)
    expected = F.conv2d(x, m.weight, m.bias, stride, padding, dilation, groups)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_at_init_output_is_half_the_conv(bias):
    torch.manual_seed(0)
    m = ModulatedDeformConv2dPack(5, 7, 3, stride=2, padding=1, bias=bias)
    assert not m.conv_offset.weight.any() and not m.conv_offset.bias.any()
    assert m.conv_offset.out_channels == 27
    x = torch.randn(1, 5, 12, 10)
    conv = F.conv2d(x, m.weight, None, 2, 1)
    expected = 0.5 * conv + (m.bias.view(1, -1, 1, 1) if bias else 0.0)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
    offset, mask = m.offset_and_mask(x)
    assert offset.shape == (1, 18, 6, 5) and mask.shape == (1, 9, 6, 5)
    assert torch.all(mask == 0.5)


@pytest.mark.parametrize("groups, bias", [(1, False), (2, True)])
def test_dcn_v1_has_18_offset_channels_no_mask_and_equals_the_conv_at_init(groups, bias):
    torch.manual_seed(0)
    m = DeformConv2dPack(4, 6, 3, stride=2, padding=1, groups=groups, bias=bias, modulated=False)
    assert m.conv_offset.out_channels == 18 and m.conv_offset.bias is not None
    x = torch.randn(2, 4, 11, 9)
    offset, mask = m.offset_and_mask(x)
    assert offset.shape == (2, 18, 6, 5) and mask is None
    # zero offsets, no modulation: exactly the plain convolution with the same kernel
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, 2, 1, 1, groups), rtol=1e-5, atol=1e-5)


def test_dcn_v1_samples_where_its_offsets_point():
    """A whole-pixel offset field shifts the plain conv's input, as DCNv2 with unit masks does."""
    torch.manual_seed(0)
    v1 = DeformConv2dPack(3, 4, 3, padding=1, bias=False, modulated=False)
    v2 = ModulatedDeformConv2dPack(3, 4, 3, padding=1, bias=False)
    _force_unit_mask(v2)
    with torch.no_grad():
        v2.weight.copy_(v1.weight)
        v1.conv_offset.weight.normal_(0.0, 0.2)  # a non-trivial, input-dependent field
        v1.conv_offset.bias.normal_(0.0, 0.5)
        v2.conv_offset.weight[:18].copy_(v1.conv_offset.weight)
        v2.conv_offset.bias[:18].copy_(v1.conv_offset.bias)
    x = torch.randn(1, 3, 7, 8)
    torch.testing.assert_close(v1(x), v2(x), rtol=1e-5, atol=1e-5)


def test_offset_channels_are_dy_then_dx_per_tap():
    """1x1 kernel: offset channel 0 (o1) shifts rows, channel 1 (o2) columns; out-of-map samples are 0."""
    torch.manual_seed(0)
    m = ModulatedDeformConv2dPack(3, 4, 1, bias=False)
    _force_unit_mask(m)
    x = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        m.conv_offset.bias[0] = 1.0  # dy = +1: output row i reads input row i + 1
        got = m(x)
    plain = F.conv2d(x, m.weight)
    torch.testing.assert_close(got[:, :, :-1], plain[:, :, 1:], rtol=1e-5, atol=1e-5)
    assert not got[:, :, -1].any()
    with torch.no_grad():
        m.conv_offset.bias[0] = 0.0
        m.conv_offset.bias[1] = -1.0  # dx = -1: output column j reads input column j - 1
        got = m(x)
    torch.testing.assert_close(got[..., 1:], plain[..., :-1], rtol=1e-5, atol=1e-5)
    assert not got[..., 0].any()


def test_gradients_reach_the_offset_predictor():
    torch.manual_seed(0)
    m = ModulatedDeformConv2dPack(3, 4, 3, padding=1, bias=True)
    with torch.no_grad():
        m.conv_offset.weight.normal_(0.0, 0.3)
        m.conv_offset.bias.normal_(0.0, 0.3)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    m(x).square().sum().backward()
    for p in (m.weight, m.bias, m.conv_offset.weight, m.conv_offset.bias, x):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0

    # and the gradients are the right ones (float64 finite differences, non-integer offsets)
    m = m.double()
    names = ["weight", "conv_offset.weight", "conv_offset.bias"]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in m.named_parameters() if n in names}

    def f(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(m, dict(zip(names, ps)), (xx,))

    xx = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (xx, *(params[n] for n in names)), atol=1e-5, rtol=1e-3)


def test_layer_validates_its_arguments():
    with pytest.raises(ValueError, match="groups"):
        ModulatedDeformConv2dPack(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="deform_groups"):
        ModulatedDeformConv2dPack(6, 4, 3, deform_groups=4)


def _dcn_convs(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if isinstance(m, DeformConv2dPack)]


def test_resnet50_with_dcn_builds_forwards_and_loads_a_plain_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = dict(depth=50, base_channels=16, norm_eval=True)
    dcn = dict(deform_groups=1, fallback_on_stride=False)
    net = ResNet(**cfg, dcn=dcn, stage_with_dcn=(False, True, True, True)).eval()
    names = _dcn_convs(net)
    assert len(names) == 4 + 6 + 3  # every C3-C5 bottleneck, strided ones included
    assert all(n.endswith(".conv2") and not n.startswith("layer1") for n in names)
    assert net.layer2[0].conv2.stride == (2, 2)
    for n in names:  # the ResNet init must leave the offset predictors at zero
        conv = net.get_submodule(n)
        assert not conv.conv_offset.weight.any() and not conv.conv_offset.bias.any()
        assert conv.weight.std() > 0

    outs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]

    # a plain ResNet of the same config: only the offset predictors are missing
    plain = ResNet(**cfg).eval()
    with torch.no_grad():  # non-trivial BN so that a misplaced tensor would show
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)
    result = net.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(net.offset_param_names())
    assert len(result.missing_keys) == 2 * 13 and all(".conv2.conv_offset." in k for k in result.missing_keys)

    # the same through the pretrained loader (torchvision-format file, with an fc to drop)
    path = tmp_path / "plain.pth"
    torch.save({**plain.state_dict(), "fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)}, path)
    loaded = ResNet(**cfg, dcn=dcn, stage_with_dcn=(False, True, True, True), pretrained=str(path)).eval()
    torch.testing.assert_close(loaded.layer3[2].conv2.weight, plain.layer3[2].conv2.weight)
    assert not loaded.layer3[2].conv2.conv_offset.weight.any()
    # with zero offsets and unit masks the DCN network computes exactly the plain one
    for n in _dcn_convs(loaded):
        _force_unit_mask(loaded.get_submodule(n))
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        for g, e in zip(loaded(x), plain(x)):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)

    # a DCN checkpoint round-trips strictly, offset predictors included
    ResNet(**cfg, dcn=dcn, stage_with_dcn=(False, True, True, True)).load_state_dict(loaded.state_dict())


def test_resnet_dcn_options():
    fallback = ResNet(
        depth=50, base_channels=8, dcn=dict(fallback_on_stride=True), stage_with_dcn=(False, True, True, True)
    )
    names = _dcn_convs(fallback)
    assert len(names) == 13 - 3 and not any(n.endswith(".0.conv2") for n in names)
    assert type(fallback.layer2[0].conv2) is nn.Conv2d

    resnext = ResNet(
        depth=50, base_channels=16, groups=4, width_per_group=16, dcn=dict(deform_groups=2),
        stage_with_dcn=(True, False, False, True),
    )
    conv = resnext.layer4[1].conv2
    assert isinstance(conv, ModulatedDeformConv2dPack) and conv.groups == 4 and conv.deform_groups == 2
    assert conv.conv_offset.out_channels == 3 * 2 * 9
    assert len(_dcn_convs(resnext)) == 3 + 3
    resnext(torch.randn(1, 3, 64, 64))

    # DCNv1 (CPM R-CNN's Pet backbone): offsets only, 18 channels per deformable group
    v1 = ResNet(depth=50, base_channels=8, groups=2, width_per_group=8, dcn=dict(version=1),
                stage_with_dcn=(False, True, True, True))
    convs = [v1.get_submodule(n) for n in _dcn_convs(v1)]
    assert len(convs) == 13 and all(not c.modulated and c.conv_offset.out_channels == 18 for c in convs)
    assert not any(c.conv_offset.weight.any() for c in convs)  # the ResNet init keeps them at zero
    v1(torch.randn(1, 3, 64, 64))

    # dcn given but no stage enabled: a plain network
    assert not _dcn_convs(ResNet(depth=50, base_channels=8, dcn=dict()))


def test_resnet_dcn_errors_are_clear():
    with pytest.raises(ValueError, match="BasicBlock"):
        ResNet(depth=18, dcn=dict(), stage_with_dcn=(False, True, True, True))
    with pytest.raises(ValueError, match="dcn is None"):
        ResNet(depth=50, stage_with_dcn=(False, True, True, True))
    with pytest.raises(ValueError, match="4 bools"):
        ResNet(depth=50, dcn=dict(), stage_with_dcn=(True, True, True))
    with pytest.raises(ValueError, match="unknown keys"):
        ResNet(depth=50, dcn=dict(deformable_groups=1), stage_with_dcn=(False, True, True, True))
    with pytest.raises(ValueError, match="deform_groups"):
        ResNet(depth=50, dcn=dict(deform_groups=0), stage_with_dcn=(False, True, True, True))
    with pytest.raises(ValueError, match="dcn.version"):
        ResNet(depth=50, dcn=dict(version=3), stage_with_dcn=(False, True, True, True))
