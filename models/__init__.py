"""The detector package, one folder per model family on top of what the families share.

    models/common/           what two or more families use: backbones, FPN, layers, the shared
                             losses and task modules (anchors, assigners, samplers, box coder,
                             regression sampling), the two-stage detector with its RPN and
                             standard RoI head, the Faster R-CNN presets every preset starts from
    models/faster_rcnn/      Faster R-CNN (the baseline)
    models/grid_rcnn/        Grid R-CNN (Plus), the baseline CPM R-CNN builds on
    models/cpm_rcnn/         CPM R-CNN (builds on grid_rcnn)
    models/d2det/            D2Det, detection and instance segmentation
    models/reppoints/        RepPoints V1 / V2 (single-stage point-set detectors)
    models/dense_reppoints/  Dense RepPoints V1 / V2 (builds on reppoints)

A family folder holds its detector, heads, family-only losses and task modules, its presets
(``presets.py``) and its builder (``build.py``); it imports only from ``models.common`` and
from the family it builds on (:data:`models.families.FAMILIES`, checked by a test). That is
what lets DVC re-run only a family's stages when one of its files changes: each run in
params.yaml names its ``family`` and the ``base`` family it builds on, and dvc.yaml makes
its stages depend on those two folders and on ``models/common``.

Entry points: :func:`models.build.build_model` (plain config dict -> ``nn.Module``) and
:data:`models.presets.PRESETS` (the paper and CPU configurations). Every detector is called
as ``model(images, image_sizes, targets=None)``; see :mod:`models.common.detectors.two_stage`.
"""
