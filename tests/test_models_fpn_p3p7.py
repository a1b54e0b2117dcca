"""FPN in the RepPoints configuration (spec reppoints.md §4 "FPN"): C3-C5 inputs
(``start_level=1``), P3-P7 outputs (``num_outs=5``), P6 from C5 (``on_input``) or from P5
(``on_output``), P7 from P6, GroupNorm(32) after every conv as mmdetection's ConvModule."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.common.necks.fpn import FPN

IN_CHANNELS = [8, 16, 32, 64]  # C2..C5 (strides 4..32)
OUT = 32  # divisible by the 32 GN groups


def _inputs(h: int, w: int, batch: int = 1) -> list[torch.Tensor]:
    """Backbone features of an h x w input: C2..C5 at strides 4, 8, 16, 32 (ceil sizes)."""
    torch.manual_seed(0)
    sizes = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32)]
    return [torch.randn(batch, c, sh, sw) for c, (sh, sw) in zip(IN_CHANNELS, sizes)]


def _p3p7(extra: str = "on_input", norm: str | None = "gn", relu: bool = False) -> FPN:
    return FPN(IN_CHANNELS, OUT, num_outs=5, start_level=1, add_extra_convs=extra,
               relu_before_extra_convs=relu, norm=norm)


def test_reppoints_fpn_structure_with_group_norm():
    fpn = _p3p7()
    assert len(fpn.lateral_convs) == 3 and len(fpn.fpn_convs) == 5  # C3-C5 laterals; P3-P5 + P6, P7
    assert [m.conv.in_channels for m in fpn.lateral_convs] == [16, 32, 64]
    assert [m.conv.kernel_size for m in fpn.lateral_convs] == [(1, 1)] * 3
    assert [m.conv.stride for m in fpn.fpn_convs] == [(1, 1)] * 3 + [(2, 2)] * 2
    assert fpn.fpn_convs[3].conv.in_channels == 64  # P6 from C5
    assert fpn.fpn_convs[4].conv.in_channels == OUT  # P7 from P6
    for m in list(fpn.lateral_convs) + list(fpn.fpn_convs):
        assert isinstance(m.norm, nn.GroupNorm) and m.norm.num_groups == 32 and m.norm.num_channels == OUT
        assert m.conv.bias is None  # ConvModule bias='auto': no bias before a norm
        assert len(m) == 2  # conv + norm, no activation
    assert _p3p7(extra="on_output").fpn_convs[3].conv.in_channels == OUT  # P6 from P5


def test_reppoints_fpn_strides_8_to_128_on_odd_sizes():
    fpn = _p3p7()
    outs = fpn(_inputs(100, 152, batch=2))
    # C3..C5 of 100 x 152: 13 x 19, 7 x 10, 4 x 5; P6, P7 by stride-2 3x3 convs (pad 1): ceil halves.
    assert [tuple(o.shape) for o in outs] == [(2, OUT, 13, 19), (2, OUT, 7, 10), (2, OUT, 4, 5),
                                              (2, OUT, 2, 3), (2, OUT, 1, 2)]


@pytest.mark.parametrize("relu", [False, True])
def test_reppoints_fpn_forward_recomputed_by_hand_on_input(relu):
    fpn = _p3p7(relu=relu)
    inputs = _inputs(160, 192)  # P7 2 x 2: GroupNorm(32) over 32 channels needs > 1 value per group
    outs = fpn(inputs)
    c3, c4, c5 = inputs[1:]
    lat5 = fpn.lateral_convs[2](c5)
    lat4 = fpn.lateral_convs[1](c4) + F.interpolate(lat5, size=c4.shape[-2:], mode="nearest")
    lat3 = fpn.lateral_convs[0](c3) + F.interpolate(lat4, size=c3.shape[-2:], mode="nearest")
    p3, p4, p5 = fpn.fpn_convs[0](lat3), fpn.fpn_convs[1](lat4), fpn.fpn_convs[2](lat5)
    p6 = fpn.fpn_convs[3](c5)  # on_input: the first extra conv reads C5, never a ReLU before it
    p7 = fpn.fpn_convs[4](F.relu(p6) if relu else p6)
    for got, want in zip(outs, [p3, p4, p5, p6, p7]):
        torch.testing.assert_close(got, want)


def test_reppoints_fpn_on_output_reads_p5():
    fpn = _p3p7(extra="on_output", norm=None)
    outs = fpn(_inputs(64, 64))
    torch.testing.assert_close(outs[3], fpn.fpn_convs[3](outs[2]))
    torch.testing.assert_close(outs[4], fpn.fpn_convs[4](outs[3]))


def test_fpn_defaults_unchanged_without_norm():
    fpn = _p3p7(norm=None)
    for m in list(fpn.lateral_convs) + list(fpn.fpn_convs):
        assert len(m) == 1 and m.conv.bias is not None and torch.count_nonzero(m.conv.bias) == 0
    with pytest.raises(ValueError):
        FPN(IN_CHANNELS, 24, num_outs=5, start_level=1, norm="gn")  # 24 channels do not split into 32 groups
