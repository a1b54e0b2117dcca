"""Normalisation layers selected by a short name, shared by backbones, necks and heads.

``norm`` is one of:

- ``"bn"``: :class:`torch.nn.BatchNorm2d` (trainable affine; statistics updated in
  train mode unless the owner puts it in eval mode, e.g. ``norm_eval``);
- ``"frozen_bn"``: :class:`torchvision.ops.FrozenBatchNorm2d` (affine and statistics are
  buffers, never trained), detectron2's default for fine-tuning;
- ``"gn"``: :class:`torch.nn.GroupNorm` with ``num_groups`` groups (32 by default, as in
  mmdetection's ``dict(type='GN', num_groups=32)``).

All three keep the parameter/buffer names ``weight`` and ``bias`` (and the BN kinds
``running_mean``/``running_var``), so torchvision checkpoints load into ``bn`` and
``frozen_bn`` modules alike.
"""
from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NORM_KINDS = ("bn", "frozen_bn", "gn")


def build_norm(norm: str, num_channels: int, num_groups: int = 32) -> nn.Module:
    """A normalisation layer over ``num_channels`` channels of an NCHW tensor."""
    if norm == "bn":
        return nn.BatchNorm2d(num_channels)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(num_channels)
    if norm == "gn":
        if num_channels % num_groups != 0:
            raise ValueError(f"GroupNorm: {num_channels} channels are not divisible into {num_groups} groups")
        return nn.GroupNorm(num_groups, num_channels)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORM_KINDS}")
