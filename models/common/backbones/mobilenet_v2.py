"""MobileNetV2 backbone (Sandler et al. 2018) for the RepPoints MNV2 presets.

Built on :func:`torchvision.models.mobilenet_v2`: the module keeps torchvision's layer list
``features`` up to the last returned index and its parameter names (``features.0.0.weight``,
``features.3.conv.1.0.weight``, ...), so torchvision's ImageNet state dict loads unchanged
(its ``features.18.*``, the 1x1 conv to 1280 channels, and ``classifier.*`` are dropped).

Layers of ``features`` at width 1.0 (index: output channels, stride)::

    0: 32, 2 (3x3 conv stem)     7-10: 64, 16
    1: 16, 2                     11-13: 96, 16
    2-3: 24, 4                   14-16: 160, 32
    4-6: 32, 8                   17: 320, 32
                                 (18: 1280, 32 -- not built)

specs/reppoints.md §4 ("MobileNetV2", from the RPv2 repo): width 1.0, features returned at
indices ``[3, 6, 13, 17]`` (the last block of each resolution) with channels 24, 32, 96, 320
at strides 4, 8, 16, 32; ``frozen_stages=-1``; SyncBN, trainable (no ``norm_eval``); the FPN
takes in_channels [24, 32, 96, 320] with ``start_level=1`` (strides 8-32, plus P6/P7 from
extra convs). Those are this class's defaults.

Normalisation: the spec's SyncBN is plain :class:`torch.nn.BatchNorm2d` here. In a single
process SyncBN and BN compute the same thing; under DDP only the batch statistics differ
(per-GPU instead of global). Converting to :class:`torch.nn.SyncBatchNorm` is the training
engine's business (``nn.SyncBatchNorm.convert_sync_batchnorm`` before wrapping in DDP), not
the backbone's, so the model stays usable on CPU.
"""
from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor, nn

from models.common.backbones.freezing import FreezableBackbone
from models.common.backbones.resnet import _load_state_dict_source

# Index of torchvision's final 1x1 conv (320 -> 1280) in ``features``; never built.
_LAST_CONV_INDEX = 18


def _layer_channels_and_stride(layer: nn.Module) -> tuple[int, int]:
    """Output channels of a ``features`` layer (its last conv) and its total stride."""
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError(f"feature layer {type(layer).__name__} has no Conv2d")
    stride = 1
    for conv in convs:
        stride *= int(conv.stride[0])
    return int(convs[-1].out_channels), stride


class MobileNetV2(FreezableBackbone):
    """MobileNetV2 feature extractor returning the outputs of selected ``features`` layers.

    Args:
        widen_factor: torchvision's ``width_mult`` (channels scaled and rounded to multiples
            of 8). 1.0 is the standard network (the spec's).
        out_indices: increasing indices into torchvision's ``mobilenet_v2().features`` in
            0..17. Default ``(3, 6, 13, 17)``: 24 ch at stride 4, 32 at 8, 96 at 16, 320 at 32.
        frozen_stages: -1 freezes nothing; k >= 0 freezes ``features[0]`` .. ``features[k]``
            (the stem, then k more layers; ``requires_grad=False`` and eval mode), the same
            "0 = stem" convention as :class:`~models.common.backbones.resnet.ResNet` and mmdetection.
            At most ``max(out_indices)``.
        norm_eval: keep every BatchNorm in eval mode during training (running statistics
            frozen). False in the spec (SyncBN trained).
        pretrained: ``None``, a path to a torchvision-format state dict (bare, or wrapped
            under ``state_dict``/``model``), or ``"torchvision://mobilenet_v2"``
            (torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``, fetched into the torch hub
            cache on first use).

    Attributes:
        out_channels: channels of each returned feature, in ``out_indices`` order.
        out_strides: stride (input pixels per feature pixel) of each returned feature;
            ``strides`` is the same list (the name :class:`ResNet` uses).

    Forward:
        ``x``: FloatTensor[B, 3, H, W] (normalised image) ->
        list of FloatTensor[B, out_channels[i], ceil(H / out_strides[i]), ceil(W / out_strides[i])].
    """

    def __init__(
        self,
        widen_factor: float = 1.0,
        out_indices: Sequence[int] = (3, 6, 13, 17),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, (int, float)) or widen_factor <= 0:
            raise ValueError(f"widen_factor must be a positive number, got {widen_factor!r}")
        out_indices = tuple(int(i) for i in out_indices)
        if (
            not out_indices
            or any(i < 0 or i >= _LAST_CONV_INDEX for i in out_indices)
            or list(out_indices) != sorted(set(out_indices))
        ):
            raise ValueError(
                f"out_indices must be increasing indices into mobilenet_v2().features in "
                f"0..{_LAST_CONV_INDEX - 1}, got {out_indices}"
            )
        last = out_indices[-1]
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= last:
            raise ValueError(f"frozen_stages must be an int in -1..{last} (max out index), got {frozen_stages!r}")
        self.widen_factor = float(widen_factor)
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        # torchvision initialises convs (kaiming fan_out), BN (1, 0); slicing a Sequential
        # keeps the child names "0".."last", hence the checkpoint keys.
        full = torchvision.models.mobilenet_v2(weights=None, width_mult=self.widen_factor)
        self.features: nn.Sequential = full.features[: last + 1]

        channels, strides, stride = [], [], 1
        for layer in self.features:
            c, s = _layer_channels_and_stride(layer)
            stride *= s
            channels.append(c)
            strides.append(stride)
        self.out_channels: list[int] = [channels[i] for i in out_indices]
        self.out_strides: list[int] = [strides[i] for i in out_indices]
        self.strides: list[int] = list(self.out_strides)

        if pretrained is not None:
            self.load_pretrained(pretrained)
        self._freeze_stages()

    def load_pretrained(self, pretrained: str) -> None:
        """Load torchvision-format weights; ``classifier.*`` and unbuilt layers are ignored.

        Raises ``RuntimeError`` naming ``pretrained`` and the keys when the checkpoint does not
        fit (other width, other architecture).
        """
        state = _load_state_dict_source(pretrained)
        num_built = len(self.features)

        def built(key: str) -> bool:
            if key.startswith("classifier."):
                return False
            parts = key.split(".")
            if len(parts) > 2 and parts[0] == "features" and parts[1].isdigit():
                return int(parts[1]) < num_built
            return True  # anything else is kept and reported as unexpected below

        state = {k: v for k, v in state.items() if built(k)}
        own = self.state_dict()
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and own[k].shape != v.shape
        ]
        if mismatched:
            raise RuntimeError(f"{pretrained}: shape mismatch for {len(mismatched)} tensors, e.g. {mismatched[:3]}")
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RuntimeError(
                f"{pretrained}: checkpoint does not match the MobileNetV2 backbone; missing {missing[:5]} "
                f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
            )

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.features[i] for i in range(self.frozen_stages + 1)]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


__all__ = ["MobileNetV2"]
