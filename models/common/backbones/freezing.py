"""Stage freezing and frozen BN statistics shared by the backbones (mmdetection's
``frozen_stages`` / ``norm_eval``)."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class FreezableBackbone(nn.Module):
    """Mixin: the subclass lists its frozen modules in ``_frozen_modules()`` (none by default) and sets
    ``norm_eval``; frozen modules get no gradient and stay in eval mode, and with
    ``norm_eval`` every BatchNorm keeps its running statistics during training."""

    norm_eval: bool = False

    def _frozen_modules(self) -> list[nn.Module]:
        """The modules kept frozen (ResNet: stem and the first ``frozen_stages`` stages)."""
        return []

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "FreezableBackbone":
        """Switch mode, keeping frozen modules (and all BN layers if ``norm_eval``) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
