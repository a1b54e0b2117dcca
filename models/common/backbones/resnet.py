"""ResNet / ResNeXt backbone with configurable width, normalisation and freezing.

Parameter names follow torchvision's ``resnet``/``resnext`` exactly (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layerK.0.downsample.0``/``.1``), so a torchvision ImageNet
state dict loads into it unchanged (the classifier ``fc.*`` is dropped).

"pytorch" style as in torchvision and mmdetection's default: in a bottleneck the stride-2
sits on the 3x3 conv (not on the first 1x1 as in the "caffe" style).

Widths: stage ``i`` (0-based) has ``base_channels * 2**i`` planes; a bottleneck's inner
width is ``int(planes * width_per_group / 64) * groups`` (torchvision's and mmdetection's
ResNeXt rule), its output ``4 * planes``. ``base_channels=64`` is the standard network,
``32`` is the half-width network used at the CPU scale. ResNeXt-101 64x4d is
``depth=101, groups=64, width_per_group=4``.

Deformable convolution (mmdetection's ``dcn=dict(type='DCNv2' | 'DCN', ...)``,
``stage_with_dcn``; Pet's ``STAGE_WITH_CONV``): in the enabled stages every bottleneck's 3x3
``conv2`` is a :class:`~models.common.layers.deform_conv.DeformConv2dPack` with the same geometry,
modulated (DCNv2, ``dcn.version: 2``) or not (DCNv1, ``dcn.version: 1``). Its kernel keeps the
name ``layerK.J.conv2.weight``, so torchvision checkpoints still load; the offset predictors
``layerK.J.conv2.conv_offset.{weight,bias}`` are new, start at zero and are the only keys a
plain checkpoint may lack. At init (zero offsets) a DCNv1 conv equals the plain conv with the
same kernel; a DCNv2 conv (masks ``sigmoid(0) = 0.5``) outputs half of it, as in mmdetection.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.common.backbones.freezing import FreezableBackbone
from models.common.layers.deform_conv import DeformConv2dPack, ModulatedDeformConv2dPack
from models.common.layers.norm import build_norm

# depth -> (block kind, blocks per stage)
ARCH_SETTINGS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

STAGE_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class DCNConfig:
    """Deformable-conv settings of a ResNet stage (the ``dcn`` dict of :class:`ResNet`).

    Attributes:
        deform_groups: channel groups with their own offset/mask field (mmdetection's
            ``deformable_groups``).
        fallback_on_stride: keep the strided 3x3 convs (first block of a stage) plain.
        version: 2 = modulated DCNv2 (mmdetection's ``DCNv2``: 27-channel offset/mask conv for
            one deformable group), 1 = DCNv1 (``DeformConvPack``: 18-channel offset conv, no
            mask).
    """

    deform_groups: int = 1
    fallback_on_stride: bool = False
    version: int = 2

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "DCNConfig":
        if not isinstance(cfg, Mapping):
            raise ValueError(f"dcn must be a dict or None, got {type(cfg).__name__}")
        allowed = {"deform_groups", "fallback_on_stride", "version"}
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise ValueError(f"dcn: unknown keys {unknown}; allowed keys are {sorted(allowed)}")
        deform_groups = cfg.get("deform_groups", 1)
        fallback_on_stride = cfg.get("fallback_on_stride", False)
        if isinstance(deform_groups, bool) or not isinstance(deform_groups, int) or deform_groups < 1:
            raise ValueError(f"dcn.deform_groups must be a positive int, got {deform_groups!r}")
        if not isinstance(fallback_on_stride, bool):
            raise ValueError(f"dcn.fallback_on_stride must be a bool, got {fallback_on_stride!r}")
        version = cfg.get("version", 2)
        if isinstance(version, bool) or version not in (1, 2):
            raise ValueError(f"dcn.version must be 1 (DCNv1) or 2 (modulated DCNv2), got {version!r}")
        return cls(deform_groups=deform_groups, fallback_on_stride=fallback_on_stride, version=version)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1-projected) shortcut. Output channels = ``planes``."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        norm: str = "bn",
        dcn: DCNConfig | None = None,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        if dcn is not None:
            raise ValueError(
                "deformable conv (dcn) is supported only in Bottleneck blocks (ResNet-50/101/152), "
                "not in BasicBlock (ResNet-18/34), as in mmdetection"
            )
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = build_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = build_norm(norm, planes)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, grouped), 1x1 expand. Output channels = ``4 * planes``.

    With ``dcn`` the 3x3 ``conv2`` is a deformable conv, DCNv1 or DCNv2 by ``dcn.version``
    (unless ``dcn.fallback_on_stride`` and ``stride > 1``); its kernel is still ``conv2.weight``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        norm: str = "bn",
        dcn: DCNConfig | None = None,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = build_norm(norm, width)
        self.conv2: nn.Module
        if dcn is not None and not (dcn.fallback_on_stride and stride > 1):
            dcn_cls = ModulatedDeformConv2dPack if dcn.version == 2 else DeformConv2dPack
            self.conv2 = dcn_cls(
                width, width, 3, stride=stride, padding=1, groups=groups, deform_groups=dcn.deform_groups, bias=False
            )
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = build_norm(norm, width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = build_norm(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _load_state_dict_source(pretrained: str) -> dict[str, Tensor]:
    """Read a torchvision-format state dict from a file path or ``torchvision://<model name>``.

    ``torchvision://resnet50`` resolves to torchvision's ``IMAGENET1K_V1`` weights (the
    ones mmdetection's ``torchvision://resnet50`` meant), downloaded to the torch hub cache
    on first use. A file may hold the bare state dict or wrap it under ``state_dict`` or
    ``model``; it is read with ``torch.load(weights_only=True)``, and one holding anything but
    tensors and plain containers is refused with a :class:`pipeline.errors.WeightsError`.
    """
    if pretrained.startswith("torchvision://"):
        import torchvision

        name = pretrained[len("torchvision://"):]
        try:
            weights_enum = torchvision.models.get_model_weights(name)
        except (KeyError, ValueError) as e:
            raise ValueError(f"pretrained={pretrained!r}: torchvision has no model named {name!r}") from e
        weights = weights_enum.IMAGENET1K_V1
        try:  # torch.hub's loader is not weights-only by default: ask for it
            return weights.get_state_dict(progress=False, weights_only=True)
        except pickle.UnpicklingError:  # the cached download holds more than tensors: refuse it
            from urllib.parse import urlparse

            from pipeline.errors import WeightsError

            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
            raise WeightsError(
                f"{cached}: holds objects other than tensors and plain containers; it is not loaded, for "
                f"safety: unpickling them could run code the file carries; delete it to download "
                f"{weights.url} again") from None
        except Exception as e:  # network or cache failure: say what to do instead
            raise RuntimeError(
                f"pretrained={pretrained!r}: could not fetch torchvision weights ({e}); download them "
                "on a connected machine and pass the .pth file path instead"
            ) from e
    from pipeline.weights_io import safe_torch_load  # the pipeline's loader: weights_only, WeightsError

    if not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained backbone weights not found: {pretrained}")
    # torch.load(weights_only=True): a file holding anything but tensors and plain containers is
    # refused (WeightsError naming it), never unpickled
    obj = safe_torch_load(pretrained, remedy="pass a torchvision-format state dict (tensors only), e.g. the "
                          "output of the pretrain stage or torchvision's weights", what="pretrained weights")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{pretrained}: expected a state dict, got {type(obj).__name__}")
    return obj


class ResNet(FreezableBackbone):
    """ResNet/ResNeXt feature extractor returning the outputs of selected stages.

    Args:
        depth: 18, 34, 50, 101 or 152.
        base_channels: stem width and planes of the first stage (64 standard, 32 half width).
        groups: grouped-conv groups of the bottleneck 3x3 (ResNeXt), 1 for ResNet.
        width_per_group: bottleneck width per group (64 for ResNet, 4 for ResNeXt 64x4d).
        norm: ``"bn"``, ``"frozen_bn"`` or ``"gn"`` (see :mod:`models.common.layers.norm`).
        frozen_stages: -1 freezes nothing; 0 freezes the stem (conv1, bn1); k >= 1 also
            freezes ``layer1`` .. ``layerk`` (``requires_grad=False`` and norm layers in eval
            mode), as mmdetection.
        norm_eval: keep every BatchNorm in eval mode during training (running statistics
            frozen; the affine parameters still train unless their stage is frozen).
        out_indices: stages to return, 0 = ``layer1`` (C2, stride 4) .. 3 = ``layer4`` (C5,
            stride 32).
        zero_init_residual: zero-initialise the last norm weight of every residual block
            (mmdetection's default; helps training from scratch). Ignored when
            ``pretrained`` weights are loaded.
        pretrained: ``None``, a path to a torchvision-format state dict, or
            ``"torchvision://<name>"`` (e.g. ``resnet50``).
        dcn: ``None`` (no deformable conv) or a dict with keys ``deform_groups`` (int,
            default 1), ``fallback_on_stride`` (bool, default False: the strided 3x3 of a
            stage's first block is deformable too, as D2Det's DCN config; True keeps it plain)
            and ``version`` (2, default: modulated DCNv2, as D2Det and RepPoints; 1: DCNv1, as
            CPM R-CNN's Pet code).
            Used by the stages enabled in ``stage_with_dcn``; bottleneck depths only. (mmdetection
            v1's code reads ``fallback_on_stride=True`` more bluntly, as "no DCN in any block";
            no preset uses True, and this is the stride-only meaning the name states.)
        stage_with_dcn: 4 bools, one per stage (``layer1`` .. ``layer4``): whether its
            bottlenecks' 3x3 convs are deformable convs (of ``dcn.version``). Any True requires
            ``dcn``. D2Det/mmdetection: ``(False, True, True, True)``.

    Attributes:
        out_channels: channels of each returned stage, in ``out_indices`` order.
        strides: stride (input pixels per feature pixel) of each returned stage.

    Forward:
        ``x``: FloatTensor[B, 3, H, W] (normalised image) ->
        list of FloatTensor[B, out_channels[i], ceil(H / strides[i]), ceil(W / strides[i])].
    """

    def __init__(
        self,
        depth: int = 50,
        base_channels: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        norm: str = "bn",
        frozen_stages: int = -1,
        norm_eval: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        zero_init_residual: bool = True,
        pretrained: str | None = None,
        dcn: Mapping[str, Any] | None = None,
        stage_with_dcn: Sequence[bool] = (False, False, False, False),
    ) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"ResNet depth {depth} not in {sorted(ARCH_SETTINGS)}")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i < 0 or i > 3 for i in out_indices) or list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"out_indices must be increasing stage indices in 0..3, got {out_indices}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        stage_with_dcn = tuple(stage_with_dcn)
        if len(stage_with_dcn) != 4 or not all(isinstance(v, bool) for v in stage_with_dcn):
            raise ValueError(f"stage_with_dcn must be 4 bools (one per stage), got {stage_with_dcn}")
        dcn_cfg = None if dcn is None else DCNConfig.from_dict(dcn)
        if any(stage_with_dcn) and dcn_cfg is None:
            raise ValueError(f"stage_with_dcn={stage_with_dcn} enables deformable conv but dcn is None")
        kind, stage_blocks = ARCH_SETTINGS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        if kind == "basic" and any(stage_with_dcn):
            raise ValueError(
                f"deformable conv (stage_with_dcn={stage_with_dcn}) needs bottleneck blocks; ResNet-{depth} "
                "uses BasicBlock (mmdetection does not support DCN there either)"
            )
        self.depth = depth
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_indices = out_indices

        self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = build_norm(norm, base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = base_channels
        stage_channels = []
        for i, num_blocks in enumerate(stage_blocks):
            planes = base_channels * 2**i
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                    build_norm(norm, planes * block.expansion),
                )
            stage_dcn = dcn_cfg if stage_with_dcn[i] else None
            blocks = [block(inplanes, planes, stride, downsample, groups, width_per_group, norm, dcn=stage_dcn)]
            inplanes = planes * block.expansion
            blocks += [
                block(inplanes, planes, 1, None, groups, width_per_group, norm, dcn=stage_dcn)
                for _ in range(1, num_blocks)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stage_channels.append(inplanes)

        self.out_channels: list[int] = [stage_channels[i] for i in out_indices]
        self.strides: list[int] = [STAGE_STRIDES[i] for i in out_indices]

        self._init_weights(zero_init_residual and pretrained is None)
        if pretrained is not None:
            self.load_pretrained(pretrained)
        self._freeze_stages()

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DeformConv2dPack):
                # Main kernel as the plain conv it replaces; the loop above also hit the
                # offset predictor (an nn.Conv2d), which must start at zero.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                m.init_offset()
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    norm = m.last_norm
                    if isinstance(norm, (nn.BatchNorm2d, nn.GroupNorm)):
                        nn.init.zeros_(norm.weight)

    def load_pretrained(self, pretrained: str) -> None:
        """Load torchvision-format weights; the classifier (``fc.*``) is ignored.

        Raises ``RuntimeError`` naming the keys when the checkpoint does not fit (e.g. a
        standard-width checkpoint into ``base_channels=32``, or BN statistics into GN). The
        offset predictors of deformable convs (``*.conv2.conv_offset.*``) may be absent (a
        plain ImageNet checkpoint): they keep their zero init. They load when present.
        """
        state = _load_state_dict_source(pretrained)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.state_dict()
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and own[k].shape != v.shape
        ]
        if mismatched:
            raise RuntimeError(f"{pretrained}: shape mismatch for {len(mismatched)} tensors, e.g. {mismatched[:3]}")
        result = self.load_state_dict(state, strict=False)
        expected_missing = set(self.offset_param_names())
        missing = [
            k for k in result.missing_keys if not k.endswith("num_batches_tracked") and k not in expected_missing
        ]
        unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RuntimeError(
                f"{pretrained}: checkpoint does not match the backbone; missing {missing[:5]} "
                f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
            )

    def offset_param_names(self) -> list[str]:
        """State-dict keys of the deformable convs' offset predictors (empty without DCN)."""
        return [
            f"{name}.conv_offset.{p}"
            for name, m in self.named_modules()
            if isinstance(m, DeformConv2dPack)
            for p in ("weight", "bias")
        ]

    def _frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if self.frozen_stages >= 0:
            mods += [self.conv1, self.bn1]
        for i in range(1, self.frozen_stages + 1):
            mods.append(getattr(self, f"layer{i}"))
        return mods

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        last = self.out_indices[-1]
        for i in range(last + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
