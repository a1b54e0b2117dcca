"""The detector package: backbones, necks, heads, task modules, losses and detectors.

Entry points: :func:`models.build.build_model` (plain config dict -> ``nn.Module``) and
:data:`models.presets.PRESETS` (the paper and CPU configurations). Every detector is called
as ``model(images, image_sizes, targets=None)``; see :mod:`models.detectors.two_stage`.
"""
