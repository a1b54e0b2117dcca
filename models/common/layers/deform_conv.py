"""Deformable convolution, DCNv1 and modulated DCNv2, with its own offset (and mask) predictor.

:class:`DeformConv2dPack` is a drop-in replacement for an ``nn.Conv2d``: it owns the main
kernel (``weight``, optional ``bias``) and a plain convolution ``conv_offset`` that predicts,
from the same input, a 2-D sampling offset for every kernel tap at every output position,
and with ``modulated=True`` (DCNv2) also a modulation scalar per tap. The deformable sampling
itself is ``torchvision.ops.deform_conv2d`` (CPU and CUDA kernels, forward and backward);
without a mask it is DCNv1. :class:`ModulatedDeformConv2dPack` is the DCNv2 form (a
:class:`DeformConv2dPack` with ``modulated=True``).

Parameter layout (the one of mmdetection's ``DeformConvPack`` / ``ModulatedDeformConvPack``,
so their DCN checkpoints and torchvision ``nn.Conv2d`` weights both load by name):

- ``weight``: [C_out, C_in / groups, kh, kw], ``bias``: [C_out] or absent;
- ``conv_offset.weight``: [F * G * kh * kw, C_in, kh, kw], ``conv_offset.bias``: [F * G * kh * kw]
  with ``G = deform_groups`` and ``F = 3`` (DCNv2) or ``2`` (DCNv1; e.g. 18 channels for a 3x3
  kernel and one deformable group). DCNv2 splits the output along channels into three equal
  parts ``(o1, o2, m)``: ``offset = cat(o1, o2)`` and ``mask = sigmoid(m)``
  ([B, G * kh * kw, H_out, W_out]); DCNv1's whole output is the offset. The offset
  ([B, 2 * G * kh * kw, H_out, W_out]) is read as interleaved ``(dy, dx)`` pairs, tap-major in
  row-major kernel order, per deformable group (channel ``2 * (g * kh * kw + k)`` is the row
  offset of tap ``k`` in group ``g``, the next one its column offset, in input pixels). This is
  torchvision's ``deform_conv2d`` layout, which is also the CUDA kernel layout of mmdetection
  v1 and Pet, so trained offset predictors transfer unchanged.

Initialisation: ``conv_offset`` is all zeros, so at init every offset is 0. DCNv1 then
computes exactly ``conv2d(x, weight) + bias``; DCNv2's masks are ``sigmoid(0) = 0.5``, so it
computes ``0.5 * conv2d(x, weight) + bias`` (half the plain convolution with the same kernel,
mmdetection's behaviour as well). The main ``weight``/``bias`` follow ``nn.Conv2d``'s default
initialisation; a model that re-initialises its convolutions by looping over ``nn.Conv2d``
modules will also hit ``conv_offset`` and must call :meth:`DeformConv2dPack.init_offset`
afterwards.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d


class DeformConv2dPack(nn.Module):
    """Deformable 2-D convolution whose offsets (and masks) come from a conv on its input.

    Args:
        in_channels: input channels ``C_in`` (divisible by ``groups`` and ``deform_groups``).
        out_channels: output channels ``C_out`` (divisible by ``groups``).
        kernel_size: kernel size ``(kh, kw)`` or one int.
        stride: stride in input pixels, ``(sh, sw)`` or one int.
        padding: zero padding in input pixels, ``(ph, pw)`` or one int.
        dilation: kernel dilation, ``(dh, dw)`` or one int.
        groups: grouped-convolution groups of the main kernel (ResNeXt); the offset
            predictor is never grouped.
        deform_groups: ``G``, number of channel groups of the input that get their own
            offset and mask field (mmdetection's ``deformable_groups``).
        bias: whether the main convolution has a bias (``conv_offset`` always has one).
        modulated: DCNv1 (False, mmdetection's ``DeformConvPack``: offsets only,
            ``conv_offset`` has ``2 * G * kh * kw`` outputs) or DCNv2 (True, see
            :class:`ModulatedDeformConv2dPack`: offsets and a sigmoid mask per tap,
            ``3 * G * kh * kw`` outputs).

    Forward:
        ``x``: FloatTensor[B, C_in, H, W] -> FloatTensor[B, C_out, H_out, W_out] with
        ``H_out = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1`` (likewise ``W_out``), the
        same size as ``nn.Conv2d`` with these arguments.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = True,
        modulated: bool = False,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if deform_groups < 1 or in_channels % deform_groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by deform_groups ({deform_groups})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size: tuple[int, int] = _pair(kernel_size)
        self.stride: tuple[int, int] = _pair(stride)
        self.padding: tuple[int, int] = _pair(padding)
        self.dilation: tuple[int, int] = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.modulated = modulated

        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.conv_offset = nn.Conv2d(
            in_channels,
            (3 if modulated else 2) * deform_groups * kh * kw,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    @property
    def num_taps(self) -> int:
        """``G * kh * kw``: offset fields (one per deformable group and kernel tap)."""
        return self.deform_groups * self.kernel_size[0] * self.kernel_size[1]

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s default init for ``weight``/``bias``; zeros for ``conv_offset``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        self.init_offset()

    def init_offset(self) -> None:
        """Zero the offset (and mask) predictor: offsets 0 (and masks 0.5) everywhere."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offset_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Predict the sampling field for ``x`` (FloatTensor[B, C_in, H, W]).

        Returns:
            offset: FloatTensor[B, 2 * G * kh * kw, H_out, W_out], interleaved ``(dy, dx)``
                per tap, in input pixels.
            mask: FloatTensor[B, G * kh * kw, H_out, W_out], in (0, 1); ``None`` for DCNv1.
        """
        out = self.conv_offset(x)
        if not self.modulated:
            return out, None
        n = self.num_taps
        # (o1, o2, m) = out split in three equal parts; cat(o1, o2) is the first two thirds.
        return out[:, : 2 * n], out[:, 2 * n :].sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """FloatTensor[B, C_in, H, W] -> [B, C_out, H_out, W_out], dtype of ``x``.

        Under mixed precision (``x``, the predicted offsets or the weights in float16/bfloat16,
        as ``torch.autocast`` leaves them) the deformable sampling runs in float32 (torchvision's
        CPU kernel has no bfloat16/float16 form; its CUDA autocast rule does the same) and the
        result is cast back to the dtype of ``x``.
        """
        offset, mask = self.offset_and_mask(x)
        weight, bias = self.weight, self.bias
        full = (torch.float32, torch.float64)
        if any(t is not None and t.dtype not in full for t in (x, offset, mask, weight, bias)):
            out_dtype = x.dtype
            x, offset, weight = x.float(), offset.float(), weight.float()
            mask = None if mask is None else mask.float()
            bias = None if bias is None else bias.float()
            with torch.autocast(x.device.type, enabled=False):
                out = deform_conv2d(x, offset, weight, bias, stride=self.stride, padding=self.padding,
                                    dilation=self.dilation, mask=mask)
            return out.to(out_dtype)
        return deform_conv2d(
            x,
            offset,
            weight,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deform_groups={self.deform_groups}, bias={self.bias is not None}, modulated={self.modulated}"
        )


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """DCNv2: :class:`DeformConv2dPack` with ``modulated=True`` (mmdetection's
    ``ModulatedDeformConvPack``); same arguments but ``modulated``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deform_groups, bias, modulated=True)
