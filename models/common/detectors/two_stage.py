"""Two-stage detectors: backbone -> neck -> RPN -> RoI head.

The call contract shared by every detector of the package (the engine and the evaluator
rely on it)::

    model(images, image_sizes, targets=None)

- ``images``: FloatTensor[B, 3, Hp, Wp], normalised, zero-padded at the bottom/right.
- ``image_sizes``: unpadded (h, w) of every image.
- ``targets`` (training): per image a dict with ``boxes`` FloatTensor[N, 4] (xyxy input
  pixels), ``labels`` LongTensor[N] in 0..num_classes-1 and optionally ``ignore_boxes``
  FloatTensor[M, 4] (crowd regions, used when an assigner's ``ignore_iof_thr >= 0``);
  other keys are ignored. N may be 0.

Training returns a dict of weighted scalar losses (keys starting with ``loss``) plus
logging scalars (``acc``); evaluation returns per image a dict with ``boxes``
FloatTensor[K, 4] (input pixels, clipped to the image), ``scores`` FloatTensor[K] and
``labels`` LongTensor[K].
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.common.dense_heads.rpn_head import RPNHead


def unpack_targets(targets: Sequence[dict[str, Tensor]], device: torch.device, num_classes: int | None = None
                   ) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """Per-image gt boxes FloatTensor[N, 4], labels LongTensor[N] and ignore boxes (or None).

    With ``num_classes``, labels outside ``0 .. num_classes - 1`` raise a ``ValueError``
    naming the image (instead of an index error deep inside a loss).
    """
    boxes, labels, ignore = [], [], []
    for i, t in enumerate(targets):
        lab = t["labels"].reshape(-1)
        if num_classes is not None and lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise ValueError(f"image {i} of the batch: labels {lab.tolist()} outside 0..{num_classes - 1}")
        if t["boxes"].reshape(-1, 4).shape[0] != lab.numel():
            raise ValueError(f"image {i} of the batch: {t['boxes'].shape[0]} boxes but {lab.numel()} labels")
        boxes.append(t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4))
        labels.append(lab.to(device=device, dtype=torch.long))
        ign = t.get("ignore_boxes")
        ignore.append(None if ign is None else ign.to(device=device, dtype=torch.float32).reshape(-1, 4))
    return boxes, labels, ignore


def unpack_masks(targets: Sequence[dict[str, Tensor]], gt_boxes: Sequence[Tensor], device: torch.device,
                 model: str) -> list[Tensor]:
    """Per-image gt instance masks UInt8Tensor[N, H, W] (input resolution, one per gt box).

    A target without ``masks``, or with a different number of masks than boxes, raises a
    ``ValueError`` naming the image and ``model`` (the detector that needs them)."""
    masks = []
    for i, t in enumerate(targets):
        if "masks" not in t:
            raise ValueError(f"image {i} of the batch has no 'masks': {model} needs instance masks "
                             "(set data.with_masks: true)")
        m = t["masks"]
        if m.shape[0] != gt_boxes[i].shape[0]:
            raise ValueError(f"image {i} of the batch: {m.shape[0]} masks for {gt_boxes[i].shape[0]} boxes")
        masks.append(m.to(device=device, dtype=torch.uint8))
    return masks


def check_inputs(images: Tensor, image_sizes: Sequence[tuple[int, int]],
                 targets: Sequence[dict[str, Tensor]] | None, training: bool) -> list[tuple[int, int]]:
    """Validate the call contract's arguments; returns ``image_sizes`` as int (h, w) pairs."""
    sizes = [(int(h), int(w)) for h, w in image_sizes]
    if len(sizes) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(sizes)} image sizes")
    if training and (targets is None or len(targets) != images.shape[0]):
        raise ValueError("training needs one target dict per image")
    return sizes


class TwoStageDetector(nn.Module):
    """Generic two-stage detector.

    Args:
        backbone: image -> list of feature maps (e.g. :class:`~models.common.backbones.resnet.ResNet`).
        neck: feature maps -> pyramid (e.g. :class:`~models.common.necks.fpn.FPN`).
        rpn_head: proposals from the pyramid.
        roi_head: detections from the pyramid and proposals.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, rpn_head: RPNHead, roi_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head

    def extract_feat(self, images: Tensor) -> list[Tensor]:
        """FloatTensor[B, 3, Hp, Wp] -> pyramid levels FloatTensor[B, C, H_l, W_l]."""
        return self.neck(self.backbone(images))

    def roi_head_train(self, features: list[Tensor], proposals: list[Tensor], gt_boxes: list[Tensor],
                       gt_labels: list[Tensor], gt_ignore: list[Tensor | None],
                       image_sizes: list[tuple[int, int]], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The second stage's losses (a hook for detectors whose RoI head needs more inputs)."""
        return self.roi_head.forward_train(features, proposals, gt_boxes, gt_labels, gt_ignore)

    def forward(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        image_sizes = check_inputs(images, image_sizes, targets, self.training)
        features = self.extract_feat(images)
        if self.training:
            num_classes = getattr(self.roi_head, "num_classes", None)
            gt_boxes, gt_labels, gt_ignore = unpack_targets(targets, images.device, num_classes)
            losses = {}
            rpn_losses, proposals = self.rpn_head.forward_train(features, image_sizes, gt_boxes, gt_ignore)
            losses.update(rpn_losses)
            losses.update(self.roi_head_train(features, proposals, gt_boxes, gt_labels, gt_ignore, image_sizes,
                                              targets))
            return losses
        proposals, _ = self.rpn_head.simple_test(features, image_sizes)
        return self.roi_head.simple_test(features, proposals, image_sizes)
