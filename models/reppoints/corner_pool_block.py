"""CornerNet-style corner pooling block (RepPoints V2's ``TLPool`` / ``BRPool``, spec
reppoints.md §2.1), over :func:`cuda_ops.corner_pool.corner_pool`.

For ``x`` FloatTensor[B, C, H, W] (C = ``in_channels``) the output has the same shape::

    a = pool_a(ConvGNReLU_k1(x))  +  pool_b(ConvGNReLU_k1(x))      # two C -> corner_dim convs
    p = GN(Conv3x3(a))                                                 # corner_dim -> C, no bias
    s = GN(Conv1x1(x))                                                 # skip path, no bias
    out = ConvGNReLU_k2(ReLU(p + s))                                   # C -> C

``k1`` = ``first_kernel_size`` (3), ``k2`` = ``kernel_size`` (1); GN has ``norm_groups``
(32, hard-coded in the reference; it divides 64, 128 and 256). Top-left: directions
``("top", "left")`` (each cell sees the maxima below it and to its right); bottom-right:
``("bottom", "right")``.

Initialisation as in the reference, where the block's layers are not re-initialised by the
head: the conv + GN + ReLU units use Kaiming normal (fan_out, ReLU gain; mmcv ConvModule),
the two plain convs PyTorch's default.
"""
from __future__ import annotations

from torch import Tensor, nn

from cuda_ops.corner_pool import DIRECTIONS, CornerPool
from models.common.layers.norm import build_norm


def conv_gn_relu(in_channels: int, out_channels: int, kernel_size: int, norm_groups: int) -> nn.Sequential:
    """``kernel_size`` conv (same padding, no bias) -> GN -> ReLU, Kaiming-initialised."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, build_norm("gn", out_channels, norm_groups), nn.ReLU(inplace=True))


class CornerPoolBlock(nn.Module):
    """Args:
        in_channels: C, input and output channels.
        directions: the two pools summed, e.g. ``("top", "left")`` or ``("bottom", "right")``.
        corner_dim: channels of the pooled maps (64 in RepPoints V2).
        first_kernel_size: kernel of the two convs before the pools; ``kernel_size``: of the
            last conv.
        norm_groups: GroupNorm groups.
    """

    def __init__(self, in_channels: int, directions: tuple[str, str], corner_dim: int = 64,
                 first_kernel_size: int = 3, kernel_size: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        if len(directions) != 2 or any(d not in DIRECTIONS for d in directions):
            raise ValueError(f"directions must be two of {DIRECTIONS}, got {directions!r}")
        self.directions = tuple(directions)
        self.pre_a = conv_gn_relu(in_channels, corner_dim, first_kernel_size, norm_groups)
        self.pre_b = conv_gn_relu(in_channels, corner_dim, first_kernel_size, norm_groups)
        self.pool_a = CornerPool(directions[0])
        self.pool_b = CornerPool(directions[1])
        self.pooled_conv = nn.Conv2d(corner_dim, in_channels, 3, padding=1, bias=False)
        self.pooled_norm = build_norm("gn", in_channels, norm_groups)
        self.skip_conv = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        self.skip_norm = build_norm("gn", in_channels, norm_groups)
        self.out = conv_gn_relu(in_channels, in_channels, kernel_size, norm_groups)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool_a(self.pre_a(x)) + self.pool_b(self.pre_b(x))
        pooled = self.pooled_norm(self.pooled_conv(pooled))
        skip = self.skip_norm(self.skip_conv(x))
        return self.out(nn.functional.relu(pooled + skip))
