"""CPM R-CNN's second stage (Zhu et al., arXiv 2003.03570; spec cpm_rcnn.md §2-§3, §6, §8):
Grid R-CNN's classification-only box branch and grid branch, plus three modules, each with
its own constructor flag.

- **CMM** (``with_cmm``, Cascade-Mapping Module): S = 3 grid stages with their own weights,
  trained at IoU ``t = (0.5, 0.6, 0.7)`` with loss weights ``λ = (1, 0.5, 0.25)`` and heatmap
  mapping ratios ``r = (1.0, 0.5, 0.25)``, i.e. extended regions of ``(1 + r)`` = 2x, 1.5x
  and 1.25x the RoI. Each stage pools its RoIs from the boxes the previous stage decoded.
  Off: one grid stage (``t = 0.5``, ``λ = 1``, ``r = 1.0``): the Grid R-CNN baseline as CPM
  configures it (no neighbour fusion, 96 unjittered positives per image: the ``sep`` ablation
  config; those are preset values of the ``grid_head`` / ``train`` sections).
- **ISM** (``with_ism``, IoU Scoring Module): FCs on the last stage's grid trunk features
  predicting ``[1 - IoU, IoU]``; at test the clamped IoU multiplies the score.
- **RSM** (``with_rsm``, Resampling Scoring Module): a second classifier (same architecture as
  the box branch, own weights) trained on the classifier's negatives plus the last stage's
  refined positives; at test it re-scores the final boxes.

Shapes (K sampled RoIs, R_s grid RoIs of stage s, D detections, C = 256 FPN channels,
G = 9 points, C' = G * C_p = 576, S = 14 grid RoI size, N = num_classes):

Training, per batch:

1. assign / sample the proposals (gts added; MaxIoU 0.5, 512 per image at 25% positives);
   box branch: RoIAlign 7x7 FloatTensor[K, C, 7, 7] -> ``cls_score`` FloatTensor[K, N + 1]:
   ``loss_cls`` (CE) and ``acc``;
2. stage 1 RoIs: the sampled positives, unjittered, at most 96 per image (random subset)
   -> ``rois`` FloatTensor[R_1, 5];
3. for s = 1..S: RoIAlign 14x14 FloatTensor[R_s, C, 14, 14] -> stage-s grid trunk
   FloatTensor[R_s, C', 7, 7] -> heatmap logits FloatTensor[R_s, G, 28, 28] (``unfused``;
   plus ``fused`` with neighbour fusion on); targets with the stage's extended region
   (mapping ratio r_s) FloatTensor[R_s, G, 28, 28];
   ``loss_grid_s{s}`` = λ_s x 15 x mean BCE per heatmap. If s < S, without gradient
   (the *IoU selector*): decode the non-gt RoIs' boxes with mapping ratio r_s (clamped to the
   image), append every gt box of the image, match them to the gts at IoU t_{s+1} and keep the
   boxes with IoU >= t_{s+1} (gts always pass) -> ``rois`` FloatTensor[R_{s+1}, 5];
4. ISM on stage S's trunk: FloatTensor[R_S, C' * 7 * 7] -> FC 1024 -> ReLU -> FC 1024 -> ReLU
   -> FC 2 = FloatTensor[R_S, 2]; target ``[1 - IoU, IoU]`` with IoU the best IoU of the
   stage-S *input* box with the image's gts; ``loss_iou`` = 1.0 x 0.5 x mean over the target
   elements > 0 of the squared error;
5. RSM: per image the box branch's sampled negatives plus stage S's input boxes, matched at
   IoU 0.5 and resampled (512 at 25% positives, no gt added) -> RoIAlign 7x7 FloatTensor[K', C,
   7, 7] -> ``rsm_head`` logits FloatTensor[K', N + 1]: ``loss_rsm`` (CE x 1.0) and ``acc_rsm``.

Inference, per image:

1. box branch on all P proposals: softmax FloatTensor[P, N + 1]; (proposal, class) pairs
   above ``score_thr`` (0.03), class-wise NMS at ``nms_iou`` (0.3), no cap
   (``max_before_refine`` None) -> D boxes (the unrefined, clipped proposals), ``labels``,
   classification scores ``p_cls`` FloatTensor[D];
2. stages 1..S on the D boxes, each re-pooling RoIAlign 14x14 from the previous stage's
   decoded, image-clamped boxes (FPN level re-chosen by size) -> final boxes FloatTensor[D, 4];
3. ISM on stage S's trunk (computed from stage S's *input* boxes): ``iou = clamp(logit[:, 1],
   0, 1)`` FloatTensor[D];
4. RSM on the final boxes (RoIAlign 7x7 -> rsm_head): ``q = softmax(...)[label]`` FloatTensor[D]
   (the label of step 1, not re-chosen);
5. score (with ``w = rsm_score_weight`` = 0.2; see :func:`cpm_scores`):

   ==========  ==========  ======================================
   ISM         RSM         score
   ==========  ==========  ======================================
   off         off         ``p_cls``
   on          off         ``p_cls * iou``
   off         on          ``p_cls ** (1 - w) * q ** w``
   on          on          ``(p_cls * iou) ** (1 - w) * q ** w``
   ==========  ==========  ======================================

6. optionally (``nms_after_refine``, default None = off, as CPM) class-wise NMS of the final
   boxes; then the ``max_per_img`` (100) best by that score, in decreasing order.

Output per image: ``boxes`` FloatTensor[D', 4] (clamped to ``[0, w] x [0, h]``), ``scores``
FloatTensor[D'], ``labels`` LongTensor[D'].

Decisions (the spec's code quirks, §2.8, that concern the model, then the other open points):

1. §2.8.1 ISM loss indexing bug: the *intended* loss is implemented, ``0.5 * mean over the
   elements with target > 0 of (pred - target)^2`` (times ``iou_head.loss_weight`` = 1.0); the
   reference's row-indexing error is not reproduced.
2. §2.8.2 ISM output unbounded: at test the IoU prediction (``logit[:, 1]``, no sigmoid, as
   the reference) is clamped to ``[0, 1]`` before it multiplies the score, so the score stays
   in ``[0, 1]`` and ``x ** 0.8`` can never be NaN. Training regresses the raw output.
3. §2.8.3 ISM label/box mismatch: kept (faithful). The target is the IoU of the box that
   *enters* the last stage; the score is attached to the box that leaves it.
4. §2.8.4 no NMS after refinement: kept by default (faithful). ``nms_after_refine`` (an IoU,
   e.g. 0.5) adds a class-wise NMS of the refined boxes for experiments. Per §6.6 the
   ``max_per_img`` (100) cap is applied after the final scoring, which COCO evaluation's
   top-100 makes equivalent to the reference's uncapped output.
5. §2.8.5 ``_filter_boxes``: the gt boxes of a stage's input are recognised by their is-gt
   flag (set where gts are added as proposals, and for the gts appended between stages), not
   by coordinate equality; only the non-gt boxes are decoded and every gt box of the image is
   appended once. (So a proposal that happens to equal a gt, or one at the image origin, is
   not dropped.)
6. §2.8.6 default init: the grid heads take the preset's ``grid_head.init``: ``"pytorch"``
   (the reference's effective init, no -4.6 prior on deconv2) at paper scale; ``"mmdet"`` at
   CPU scale, where training from scratch for a few epochs with the default init barely
   localises (see :func:`models.presets._cpm_rcnn`). ISM: both hidden
   FCs Kaiming-uniform (a = 1) with zero bias (Pet's ``make_fc``), the output FC N(0, 0.01),
   zero bias (reference). RSM: the box branch's class (:class:`Shared2FCBBoxHead`, ``with_reg``
   off) and its init, as the reference reuses its classifier head class.
7. §2.8.7 dead paths (``OFFSET_ON``, ``TEST_ENSEMBLE``, the non-cascade ``GridRCNN``) are not
   ported; the last stage's boxes are the output (``TEST_STAGE`` = S).
8. §2.8.8 CPU round trips: target building and decoding are the vectorised torch functions of
   :mod:`models.grid_rcnn.grid_head`, on the features' device.
9. §2.8.9 legacy RoIAlign (``aligned=False``, ``sampling_ratio=2``): an extractor setting; the
   CPM presets use it for the box, grid and RSM branches. The FPN level rule is mmdet's
   (``finest_scale`` 56 = maskrcnn-benchmark's canonical 224 at P4).
10. §2.8.10 GroupNorm groups 4G = 36 (trunk) and G = 9 (after deconv1): the grid head's.
11. §2.8.11 unused experimental switches (``ENHANCE_FEATURES``, ``FINEST_LEVEL_ROI``,
    ``BETTER_ROI``, ``TARGET_REFINE``, ``RESIZE_ROI``, ``SE_ON``, ``ACROSS_SAMPLE``,
    ``EXTEND_ROI``) are not ported. ``RANDOM_JITTER`` is GridRoIHead's ``jitter_amplitude``
    (None in the CPM presets, §6.9).
12. Between stages the decoded boxes are clamped to the unpadded image ``[0, w] x [0, h]``,
    in training and at test alike (the reference's clamp is a no-op, grid head Decision 8).
    A box clamped to zero width or height has IoU 0 with every gt, so training drops it.
13. Stage 1 is not re-matched: its RoIs keep the box branch's assignment (the stage's
    threshold, 0.5, is the box branch's). Later stages are matched at ``t_s`` without
    low-quality matches (the reference's ``Matcher(t, t)``), and an RoI's target is its
    highest-IoU gt.
14. Stage count: ``len(stage_iou_thrs)`` (default 3; §6.1). With CMM off only the first entry
    of each stage list is used, so the single stage is CMM's first stage.
15. Loss keys: ``loss_grid_s1`` .. ``loss_grid_sS`` (each already multiplied by λ_s),
    ``loss_iou`` (ISM on), ``loss_rsm`` and the logging scalar ``acc_rsm`` (RSM on), next to
    ``loss_cls`` and ``acc``. A stage (or the ISM) without RoIs gives a zero loss connected to
    its parameters and the features, so the keys never change and DDP sees every parameter.
16. RSM training set: the reference's ``KEEP_RATIO`` off (no 1:3 subsampling of the
    negatives); matched with the box branch's assigner (0.5 / 0.5) and sampled with
    ``rsm_sampler`` (512, 25% positives, no gt added: the gts are already among the stage-S
    boxes).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou
from models.common.layers.nms import batched_nms

from models.common.roi_heads.bbox_head import Shared2FCBBoxHead
from models.grid_rcnn.grid_head import GridHead, grid_loss
from models.grid_rcnn.grid_roi_head import GridRoIHead
from models.common.task_modules.regression_sampling import CapScope
from models.common.roi_heads.roi_extractor import SingleRoIExtractor, boxes_to_rois
from models.common.task_modules.assigners import MaxIoUAssigner
from models.common.task_modules.samplers import RandomSampler, SamplingResult

__all__ = ["CPMRoIHead", "IoUScoringHead", "cpm_scores", "iou_selector", "max_gt_iou"]


# ---------------------------------------------------------------------------- score
def cpm_scores(cls_scores: Tensor, iou: Tensor | None = None, rsm: Tensor | None = None,
               rsm_score_weight: float = 0.2) -> Tensor:
    """The final detection score (module docstring, inference step 5).

    Args:
        cls_scores: FloatTensor[D] classification probabilities of the detections.
        iou: FloatTensor[D] ISM IoU prediction, or None (ISM off). Clamped to ``[0, 1]`` here.
        rsm: FloatTensor[D] RSM probability of the detection's label, or None (RSM off).
        rsm_score_weight: ``w``, the exponent of the RSM factor (0.2; the rest gets ``1 - w``).

    Returns:
        FloatTensor[D]: ``s = p_cls * clamp(iou, 0, 1)`` (or ``p_cls`` without ISM), then
        ``s ** (1 - w) * rsm ** w`` with RSM.
    """
    score = cls_scores.float()
    if iou is not None:
        score = score * iou.float().clamp(0.0, 1.0)
    if rsm is not None:
        w = float(rsm_score_weight)
        score = score.clamp(min=0.0) ** (1.0 - w) * rsm.float().clamp(min=0.0) ** w
    return score


# ---------------------------------------------------------------------------- ISM
class IoUScoringHead(nn.Module):
    """CPM's IoU Scoring Module (spec §2.5): FC -> ReLU -> FC -> ReLU -> FC(2) on the last grid
    stage's trunk features.

    Args:
        in_channels: C' of the trunk (576).
        feat_size: side of the trunk output (7 for 14x14 RoIs).
        fc_channels: width of the hidden FCs (1024).
        loss_weight: weight of ``loss_iou`` (1.0).

    Forward:
        FloatTensor[R, C', s, s] -> logits FloatTensor[R, 2] (``[:, 0]`` background = 1 - IoU,
        ``[:, 1]`` foreground = IoU), unbounded.
    """

    def __init__(self, in_channels: int = 576, feat_size: int = 7, fc_channels: int = 1024,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.feat_size = int(feat_size)
        self.loss_weight = float(loss_weight)
        self.fc1 = nn.Linear(self.in_channels * self.feat_size * self.feat_size, fc_channels)
        self.fc2 = nn.Linear(fc_channels, fc_channels)
        self.fc_iou = nn.Linear(fc_channels, 2)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_iou.weight, std=0.01)
        nn.init.zeros_(self.fc_iou.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc_iou(x)

    @staticmethod
    def targets(ious: Tensor) -> Tensor:
        """FloatTensor[R] IoUs -> FloatTensor[R, 2] targets ``[1 - IoU, IoU]``."""
        ious = ious.float()
        return torch.stack([1.0 - ious, ious], dim=1)

    def loss(self, pred: Tensor, ious: Tensor) -> Tensor:
        """``loss_weight * 0.5 * mean_{t > 0} (pred - t)^2`` over the elements of the
        ``[1 - IoU, IoU]`` targets that are > 0 (Decision 1); a connected 0 without any."""
        t = self.targets(ious).to(pred.device)
        mask = t > 0
        if not bool(mask.any()):
            return pred.float().sum() * 0.0
        return self.loss_weight * 0.5 * (pred.float() - t)[mask].pow(2).mean()

    @staticmethod
    def predict_iou(pred: Tensor) -> Tensor:
        """FloatTensor[R, 2] logits -> FloatTensor[R]: ``clamp(pred[:, 1], 0, 1)`` (Decision 2)."""
        return pred[:, 1].float().clamp(0.0, 1.0)


# ---------------------------------------------------------------------------- IoU selector
def max_gt_iou(rois: Tensor, gt_boxes: Sequence[Tensor]) -> Tensor:
    """FloatTensor[R]: best IoU of every RoI (``rois`` [R, 5], image index first) with the gts
    of its image (0 for an image without gts)."""
    out = rois.new_zeros((rois.shape[0],), dtype=torch.float32)
    if rois.shape[0] == 0:
        return out
    img = rois[:, 0].long()
    for i, gts in enumerate(gt_boxes):
        inds = torch.nonzero(img == i).squeeze(1)
        if inds.numel() and gts.shape[0]:
            out[inds] = box_iou(rois[inds, 1:5].float(), gts.float().to(rois.device)).max(dim=1).values
    return out


def iou_selector(boxes: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                 iou_thr: float) -> dict[str, Tensor]:
    """The RoIs of a later cascade stage in training (module docstring, step 3).

    Args:
        boxes: per image the boxes the previous stage decoded from its non-gt RoIs, FloatTensor[M_i, 4].
        gt_boxes: per image FloatTensor[N_i, 4]; appended to the candidates (as gts).
        gt_labels: per image LongTensor[N_i].
        iou_thr: the stage's threshold t; a candidate is kept when its best IoU is >= t
            (no low-quality matching), the gts always.

    Returns:
        the layout of :func:`~models.common.task_modules.regression_sampling.select_positive_rois`, images
        in order, each image's kept decoded boxes (in order) then its gts: ``rois``
        FloatTensor[R, 5], ``gt_boxes`` FloatTensor[R, 4] (the matched, highest-IoU gt),
        ``labels``, ``gt_index`` LongTensor[R], ``is_gt`` BoolTensor[R], plus ``ious``
        FloatTensor[R] (the best IoU).
    """
    assigner = MaxIoUAssigner(iou_thr, iou_thr, min_pos_iou=iou_thr, match_low_quality=False)
    rois, gts, labels, gt_index, is_gt, ious = [], [], [], [], [], []
    for i, (cand, gt, lab) in enumerate(zip(boxes, gt_boxes, gt_labels)):
        cand = cand.reshape(-1, 4).float()
        gt = gt.reshape(-1, 4).float().to(cand.device)
        lab = lab.reshape(-1).to(cand.device)
        all_boxes = torch.cat([cand, gt])
        flags = torch.cat([torch.zeros(cand.shape[0], dtype=torch.bool, device=cand.device),
                           torch.ones(gt.shape[0], dtype=torch.bool, device=cand.device)])
        assign = assigner.assign(all_boxes, gt, lab)
        keep = torch.nonzero(assign.gt_inds > 0).squeeze(1)
        inds = assign.gt_inds[keep] - 1
        rois.append(torch.cat([torch.full((keep.numel(), 1), float(i), device=cand.device), all_boxes[keep]], dim=1))
        gts.append(gt[inds])
        labels.append(lab[inds])
        gt_index.append(inds)
        is_gt.append(flags[keep])
        ious.append(assign.max_overlaps[keep].float())
    return {"rois": torch.cat(rois), "gt_boxes": torch.cat(gts), "labels": torch.cat(labels),
            "gt_index": torch.cat(gt_index), "is_gt": torch.cat(is_gt), "ious": torch.cat(ious)}


def _connected_zero(features: Sequence[Tensor], *modules: nn.Module) -> Tensor:
    """A scalar 0 connected to every parameter of ``modules`` and to the features."""
    zero = features[0].sum() * 0.0
    for m in modules:
        for p in m.parameters():
            zero = zero + p.sum() * 0.0
    return zero


# ---------------------------------------------------------------------------- RoI head
class CPMRoIHead(GridRoIHead):
    """CPM R-CNN's RoI head (see the module docstring and its Decisions).

    Args:
        bbox_roi_extractor: RoIAlign 7x7 of the box branch (also pools the RSM's RoIs).
        bbox_head: :class:`Shared2FCBBoxHead` with ``with_reg=False``.
        grid_roi_extractor: RoIAlign of every grid stage (14x14).
        grid_head: :class:`GridHead` kwargs shared by the stages, without ``in_channels``,
            ``roi_feat_size`` (the extractor's) and ``mapping_ratio`` (per stage).
        in_channels: C of the features (256).
        with_cmm, with_ism, with_rsm: the three modules' switches.
        stage_iou_thrs: training IoU threshold of each CMM stage (0.5, 0.6, 0.7).
        stage_mapping_ratios: mapping ratio r of each stage (1.0, 0.5, 0.25: regions 2, 1.5, 1.25).
        stage_loss_weights: λ of each stage (1, 0.5, 0.25).
        iou_head: :class:`IoUScoringHead` kwargs (``fc_channels``, ``loss_weight``) for the ISM.
        rsm_head: :class:`Shared2FCBBoxHead` kwargs (``fc_out_channels``, ``loss_cls_weight``)
            for the RSM; ``with_reg`` is forced off, the other sizes come from the box branch.
        rsm_sampler: the RSM's resampling (default 512, 25% positives, no gt added).
        rsm_score_weight: ``w`` of :func:`cpm_scores` (0.2).
        assigner, sampler: the box branch's (MaxIoU 0.5; 512 RoIs, 25% positives, gts added).
        max_num_grid, grid_cap_scope, jitter_amplitude: stage-1 RoIs (96 per image, unjittered).
        score_thr, nms_iou: class NMS before the refinement (0.03, 0.3).
        max_per_img: detections kept per image after the final scoring (100).
        max_before_refine: cap on the detections refined per image (None: no cap, CPM).
        nms_after_refine: IoU of an optional class-wise NMS after the refinement (None: off).
    """

    def __init__(
        self,
        bbox_roi_extractor: SingleRoIExtractor,
        bbox_head: Shared2FCBBoxHead,
        grid_roi_extractor: SingleRoIExtractor,
        grid_head: Mapping[str, Any],
        in_channels: int = 256,
        with_cmm: bool = True,
        with_ism: bool = True,
        with_rsm: bool = True,
        stage_iou_thrs: Sequence[float] = (0.5, 0.6, 0.7),
        stage_mapping_ratios: Sequence[float] = (1.0, 0.5, 0.25),
        stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25),
        iou_head: Mapping[str, Any] | None = None,
        rsm_head: Mapping[str, Any] | None = None,
        rsm_sampler: RandomSampler | None = None,
        rsm_score_weight: float = 0.2,
        assigner: MaxIoUAssigner | None = None,
        sampler: RandomSampler | None = None,
        max_num_grid: int | None = 96,
        grid_cap_scope: CapScope = "image",
        jitter_amplitude: float | None = None,
        score_thr: float = 0.03,
        nms_iou: float = 0.3,
        max_per_img: int = 100,
        max_before_refine: int | None = None,
        nms_after_refine: float | None = None,
    ) -> None:
        for flag, name in ((with_cmm, "with_cmm"), (with_ism, "with_ism"), (with_rsm, "with_rsm")):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        thrs, ratios, weights = (tuple(float(v) for v in x)
                                 for x in (stage_iou_thrs, stage_mapping_ratios, stage_loss_weights))
        if not len(thrs) == len(ratios) == len(weights) or not thrs:
            raise ValueError(f"the stage lists need one entry per stage (at least one); got thresholds {thrs}, "
                             f"mapping ratios {ratios}, loss weights {weights}")
        grid_cfg = dict(grid_head)
        for key in ("in_channels", "roi_feat_size", "mapping_ratio"):
            if key in grid_cfg:
                raise ValueError(f"grid_head.{key} is set by the CPM RoI head, not configured")
        num_stages = len(thrs) if with_cmm else 1

        def make_grid_head(ratio: float) -> GridHead:
            return GridHead(**grid_cfg, in_channels=in_channels, roi_feat_size=grid_roi_extractor.output_size,
                            mapping_ratio=ratio)

        super().__init__(bbox_roi_extractor, bbox_head, grid_roi_extractor, make_grid_head(ratios[0]), assigner,
                         sampler, max_num_grid, grid_cap_scope, jitter_amplitude, score_thr, nms_iou, max_per_img)
        self.with_cmm = with_cmm
        self.with_ism = with_ism
        self.with_rsm = with_rsm
        self.stage_iou_thrs = thrs[:num_stages]
        self.stage_mapping_ratios = ratios[:num_stages]
        self.stage_loss_weights = weights[:num_stages]
        # stage 1 is ``self.grid_head`` (GridRoIHead's), stages 2..S live here
        self.cascade_grid_heads = nn.ModuleList([make_grid_head(r) for r in self.stage_mapping_ratios[1:]])
        last = self.grid_stages[-1]
        self.iou_head = (IoUScoringHead(last.conv_channels, last.roi_feat_size // 2, **dict(iou_head or {}))
                         if with_ism else None)
        if with_rsm:
            rsm_cfg = {"fc_out_channels": bbox_head.fc_cls.in_features, **dict(rsm_head or {})}
            if rsm_cfg.pop("with_reg", False):
                raise ValueError("the RSM head is a classifier: rsm_head.with_reg must be false")
            self.rsm_head: Shared2FCBBoxHead | None = Shared2FCBBoxHead(
                in_channels=in_channels, roi_feat_size=bbox_roi_extractor.output_size,
                num_classes=bbox_head.num_classes, with_reg=False, **rsm_cfg)
        else:
            self.rsm_head = None
        self.rsm_sampler = rsm_sampler or RandomSampler(512, 0.25, add_gt_as_proposals=False)
        self.rsm_score_weight = float(rsm_score_weight)
        self.max_before_refine = None if max_before_refine is None else int(max_before_refine)
        self.nms_after_refine = None if nms_after_refine is None else float(nms_after_refine)

    # ------------------------------------------------------------------ structure
    @property
    def grid_stages(self) -> list[GridHead]:
        """The grid heads, stage 1 first (one with CMM off)."""
        return [self.grid_head, *self.cascade_grid_heads]

    @property
    def num_stages(self) -> int:
        return 1 + len(self.cascade_grid_heads)

    def stage_forward(self, stage: int, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Grid stage ``stage`` (0-based) on ``rois`` FloatTensor[R, 5] (R > 0): trunk features
        FloatTensor[R, C', S/2, S/2] and the heatmap logits dict (each FloatTensor[R, G, 2S, 2S])."""
        head = self.grid_stages[stage]
        feat = head.forward_trunk(self.grid_roi_extractor(features, rois))
        return feat, head.forward_heatmaps(feat)

    def _decode(self, stage: int, out: dict[str, Tensor], rois: Tensor,
                image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Stage ``stage``'s boxes FloatTensor[R, 4] for ``rois`` [R, 5], clamped to the image."""
        hw = torch.tensor(image_sizes, dtype=torch.float32, device=rois.device).reshape(-1, 2)[rois[:, 0].long()]
        return self.grid_stages[stage].predict_boxes(out, rois[:, 1:5].float(), hw)

    # ------------------------------------------------------------------ training
    def forward_train(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        gt_boxes_ignore: Sequence[Tensor | None] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """Losses ``loss_cls``, ``loss_grid_s1`` .. ``loss_grid_sS``, ``loss_iou`` (ISM),
        ``loss_rsm`` (RSM) and the logging scalars ``acc``, ``acc_rsm`` (RSM).

        Inputs as :meth:`GridRoIHead.forward_train`; ``image_sizes`` (unpadded (h, w) per
        image) bound the decoded boxes between stages.
        """
        if image_sizes is None:
            stride = self.grid_roi_extractor.featmap_strides[0]
            hw = (features[0].shape[-2] * stride, features[0].shape[-1] * stride)
            image_sizes = [hw] * len(proposals)
        sampling_results = self.assign_and_sample(proposals, gt_boxes, gt_labels, gt_boxes_ignore)
        losses = self.bbox_loss(features, sampling_results)
        selected = self.select_grid_rois(sampling_results, image_sizes)
        feat: Tensor | None = None
        out: dict[str, Tensor] = {}
        for s in range(self.num_stages):
            if s > 0:
                keep = ~selected["is_gt"]
                rois = selected["rois"][keep]
                decoded = self._decode(s - 1, {k: v.detach()[keep] for k, v in out.items()}, rois, image_sizes) \
                    if rois.shape[0] else rois.new_zeros((0, 4))
                img = rois[:, 0].long()
                selected = iou_selector([decoded[img == i] for i in range(len(gt_boxes))], gt_boxes, gt_labels,
                                        self.stage_iou_thrs[s])
            rois = selected["rois"]
            head = self.grid_stages[s]
            if rois.shape[0] == 0:
                feat, out = None, {}
                losses[f"loss_grid_s{s + 1}"] = _connected_zero(features, head)
                continue
            feat, out = self.stage_forward(s, features, rois)
            targets = head.get_targets(rois[:, 1:5], selected["gt_boxes"])
            losses[f"loss_grid_s{s + 1}"] = self.stage_loss_weights[s] * grid_loss(out, targets, head.loss_weight)
        if self.iou_head is not None:
            if feat is None:
                losses["loss_iou"] = _connected_zero(features, self.iou_head)
            else:
                ious = selected.get("ious")
                if ious is None:  # stage 1: the box branch's positives
                    ious = max_gt_iou(selected["rois"], gt_boxes)
                losses["loss_iou"] = self.iou_head.loss(self.iou_head(feat), ious)
        if self.rsm_head is not None:
            losses.update(self.rsm_loss(features, sampling_results, selected["rois"], gt_boxes, gt_labels,
                                        gt_boxes_ignore))
        return losses

    def rsm_loss(self, features: Sequence[Tensor], sampling_results: Sequence[SamplingResult], last_rois: Tensor,
                 gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                 gt_boxes_ignore: Sequence[Tensor | None] | None = None) -> dict[str, Tensor]:
        """``loss_rsm`` and ``acc_rsm``: per image the box branch's sampled negatives plus the last
        stage's input boxes ``last_rois`` FloatTensor[R_S, 5], matched with the box branch's
        assigner and resampled with ``rsm_sampler`` (Decision 16)."""
        assert self.rsm_head is not None
        if gt_boxes_ignore is None:
            gt_boxes_ignore = [None] * len(sampling_results)
        img = last_rois[:, 0].long()
        results = []
        for i, (res, gts, labels, ignore) in enumerate(zip(sampling_results, gt_boxes, gt_labels, gt_boxes_ignore)):
            cand = torch.cat([res.neg_boxes.reshape(-1, 4), last_rois[img == i, 1:5].to(res.neg_boxes)]).detach()
            assign = self.assigner.assign(cand, gts, labels, ignore)
            results.append(self.rsm_sampler.sample(assign, cand, gts, labels))
        rois = boxes_to_rois([r.boxes for r in results]).to(features[0].device)
        if rois.shape[0] == 0:
            zero = _connected_zero(features, self.rsm_head)
            return {"loss_rsm": zero, "acc_rsm": zero.detach()}
        cls_score, _ = self.rsm_head(self.bbox_roi_extractor(features, rois))
        out = self.rsm_head.loss(cls_score, None, *self.rsm_head.get_targets(results))
        return {"loss_rsm": out["loss_cls"], "acc_rsm": out["acc"]}

    # ------------------------------------------------------------------ inference
    def cascade_refine(self, features: Sequence[Tensor], rois: Tensor,
                       image_sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor | None]:
        """Every grid stage in turn on ``rois`` FloatTensor[D, 5] (D > 0), each stage re-pooling
        from the previous stage's clamped boxes.

        Returns:
            the last stage's boxes FloatTensor[D, 4] (clamped to ``[0, w] x [0, h]``) and its
            trunk features FloatTensor[D, C', S/2, S/2] (computed from its input boxes).
        """
        feat = None
        for s in range(self.num_stages):
            feat, out = self.stage_forward(s, features, rois)
            boxes = self._decode(s, out, rois, image_sizes)
            rois = torch.cat([rois[:, :1], boxes], dim=1)
        return rois[:, 1:5], feat

    def refine_boxes(self, features: Sequence[Tensor], rois: Tensor, image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """FloatTensor[D, 4]: the boxes after every grid stage (see :meth:`cascade_refine`)."""
        if rois.shape[0] == 0:
            return rois.new_zeros((0, 4))
        return self.cascade_refine(features, rois, image_sizes)[0]

    def rsm_probs(self, features: Sequence[Tensor], rois: Tensor, labels: Tensor) -> Tensor:
        """FloatTensor[D]: the RSM's softmax probability of ``labels`` LongTensor[D] for the boxes
        ``rois`` FloatTensor[D, 5]."""
        assert self.rsm_head is not None
        cls_score, _ = self.rsm_head(self.bbox_roi_extractor(features, rois))
        probs = F.softmax(cls_score.float(), dim=-1)
        return probs[torch.arange(labels.numel(), device=probs.device), labels]

    @torch.no_grad()
    def simple_test(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                    image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per image: ``boxes`` FloatTensor[D, 4], ``scores`` FloatTensor[D] (:func:`cpm_scores`),
        ``labels`` LongTensor[D], D <= ``max_per_img``, by decreasing score."""
        rois = boxes_to_rois(proposals).to(features[0].device)
        cls_score, _, _ = self.bbox_forward(features, rois)
        cap = self.max_before_refine if self.max_before_refine is not None else max(cls_score.numel(), 1)
        dets = self.bbox_head.get_det_bboxes(rois, cls_score, None, image_sizes, self.score_thr, self.nms_iou, cap)
        det_rois = boxes_to_rois([d["boxes"] for d in dets]).to(features[0].device)
        labels = torch.cat([d["labels"] for d in dets]).to(det_rois.device)
        scores = torch.cat([d["scores"] for d in dets]).to(det_rois.device)
        if det_rois.shape[0]:
            boxes, feat = self.cascade_refine(features, det_rois, image_sizes)
            iou = self.iou_head.predict_iou(self.iou_head(feat)) if self.iou_head is not None else None
            final_rois = torch.cat([det_rois[:, :1], boxes], dim=1)
            rsm = self.rsm_probs(features, final_rois, labels) if self.rsm_head is not None else None
            scores = cpm_scores(scores, iou, rsm, self.rsm_score_weight)
        else:
            boxes = det_rois.new_zeros((0, 4))
        img = det_rois[:, 0].long()
        results = []
        for i in range(len(image_sizes)):
            inds = torch.nonzero(img == i).squeeze(1)
            b, s, lab = boxes[inds], scores[inds], labels[inds]
            if self.nms_after_refine is not None and inds.numel():
                keep = batched_nms(b, s, lab, self.nms_after_refine)
            else:
                keep = torch.argsort(s, descending=True, stable=True)
            keep = keep[: self.max_per_img]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
        return results
