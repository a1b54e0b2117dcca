"""Feature Pyramid Network (Lin et al. 2017) with mmdetection's options.

Top-down pathway: a 1x1 lateral conv per used input level, nearest upsampling to the
finer level's exact size (mmdetection v2's ``size=`` form, robust to odd sizes) and a
sum, then a 3x3 output conv per level. Extra coarser levels beyond the inputs:

- ``add_extra_convs=None``: ``max_pool2d(kernel=1, stride=2)`` of the last output
  (mmdetection's default, Faster R-CNN's P6);
- ``"on_input"``: a 3x3 stride-2 conv on the last *backbone* input (RetinaNet's P6),
  further levels on the previous extra output;
- ``"on_output"``: the same on the last FPN output (FCOS / RepPoints P6).

With ``relu_before_extra_convs`` a ReLU precedes every extra conv after the first.
No activation anywhere else. ``norm="gn"`` puts GroupNorm(32) after every conv (which then
has no bias).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from models.common.layers.norm import build_norm

EXTRA_CONV_SOURCES = (None, "on_input", "on_output")


class ConvNorm(nn.Sequential):
    """Conv2d followed by an optional norm layer (no activation); ``conv``/``norm`` children."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 norm: str | None = None) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                          padding=kernel_size // 2, bias=norm is None))
        if norm is not None:
            self.add_module("norm", build_norm(norm, out_channels))


class FPN(nn.Module):
    """Feature pyramid over the backbone levels ``start_level`` .. last.

    Args:
        in_channels: channels of each backbone output passed to ``forward``.
        out_channels: channels of every pyramid level.
        num_outs: number of pyramid levels returned (used inputs + extra levels).
        start_level: index of the first backbone output used (e.g. 1 to start at C3 when
            the backbone returns C2..C5).
        add_extra_convs: ``None``, ``"on_input"`` or ``"on_output"`` (see module doc).
        relu_before_extra_convs: ReLU before the second and later extra convs.
        norm: ``None`` or ``"gn"``.

    Forward:
        ``inputs``: list of FloatTensor[B, in_channels[i], H_i, W_i], strides doubling ->
        list of ``num_outs`` FloatTensor[B, out_channels, H_l, W_l], finest first; each extra
        level has stride 2x the previous one.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        start_level: int = 0,
        add_extra_convs: str | None = None,
        relu_before_extra_convs: bool = False,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if add_extra_convs not in EXTRA_CONV_SOURCES:
            raise ValueError(f"add_extra_convs must be one of {EXTRA_CONV_SOURCES}, got {add_extra_convs!r}")
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f"start_level {start_level} out of range for {len(in_channels)} inputs")
        num_used = len(in_channels) - start_level
        if num_outs < num_used:
            raise ValueError(f"num_outs={num_outs} is smaller than the {num_used} used input levels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs

        self.lateral_convs = nn.ModuleList(
            ConvNorm(in_channels[i], out_channels, 1, norm=norm) for i in range(start_level, len(in_channels))
        )
        self.fpn_convs = nn.ModuleList(ConvNorm(out_channels, out_channels, 3, norm=norm) for _ in range(num_used))
        num_extra = num_outs - num_used
        if add_extra_convs is not None:
            for i in range(num_extra):
                in_ch = in_channels[-1] if (i == 0 and add_extra_convs == "on_input") else out_channels
                self.fpn_convs.append(ConvNorm(in_ch, out_channels, 3, stride=2, norm=norm))
        self._init_weights()

    def _init_weights(self) -> None:
        # mmdetection: xavier_init(distribution='uniform') for every conv, bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} inputs, got {len(inputs)}")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        num_used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(num_used)]
        if self.add_extra_convs is None:
            while len(outs) < self.num_outs:
                outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        else:
            for i in range(num_used, self.num_outs):
                if i == num_used:
                    src = inputs[-1] if self.add_extra_convs == "on_input" else outs[-1]
                else:
                    src = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                outs.append(self.fpn_convs[i](src))
        return outs
