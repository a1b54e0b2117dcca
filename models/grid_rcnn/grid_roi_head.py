"""Grid R-CNN's second stage, Plus form (spec cpm_rcnn.md §1.2, §1.8; mmdet ``GridRoIHead``):
a classification-only box branch and a grid branch that places the box edges.

Training, per batch (boxes in input pixels, K sampled RoIs, R grid RoIs):

1. assign and sample the proposals (gt boxes added) exactly as Faster R-CNN: MaxIoU
   0.5 / 0.5 / 0.5, 512 RoIs per image with 25% positives;
2. classification branch on *all* sampled RoIs, unjittered: RoIAlign 7x7
   FloatTensor[K, 256, 7, 7] -> :class:`~models.common.roi_heads.bbox_head.Shared2FCBBoxHead`
   with ``with_reg=False`` (FC1024 -> FC1024 -> ``num_classes + 1`` logits):
   ``loss_cls`` (softmax CE, weight 1) and the logging scalar ``acc``; no box regression;
3. grid RoIs (:func:`~models.common.task_modules.regression_sampling.select_positive_rois`): every
   image's positives jittered by ``U(-0.15, 0.15)`` of their size (centre and size, clipped
   to ``[0, W-1] x [0, H-1]``), then at most ``max_num_grid`` (192) of the whole batch by a
   random permutation -> ``rois`` FloatTensor[R, 5];
4. grid branch: RoIAlign 14x14 FloatTensor[R, 256, 14, 14] ->
   :class:`~models.grid_rcnn.grid_head.GridHead` -> heatmap logits FloatTensor[R, 9, 28, 28]
   (``fused`` and ``unfused`` with neighbour fusion on); targets from the jittered box and
   its matched gt box (extended-region mapping, FloatTensor[R, 9, 28, 28]);
   ``loss_grid`` = 15 x BCE per heatmap, summed.

Inference, per image (P proposals, D <= 100 detections):

1. the classification branch scores the proposals: softmax FloatTensor[P, num_classes + 1];
   each (proposal, class) pair above ``score_thr`` (0.03) is a candidate whose box is the
   proposal clipped to ``[0, w] x [0, h]``;
2. class-wise NMS at IoU ``nms_iou`` (0.3), then the ``max_per_img`` (100) best of the image;
3. the grid head (the fused heatmap when fusion is on) on these D boxes; the decoded boxes
   (clamped to ``[0, w] x [0, h]``) replace the coordinates; ``scores`` and ``labels`` stay
   those of step 2 (the classification scores), in the same order. No second NMS.

Output per image: ``boxes`` FloatTensor[D, 4], ``scores`` FloatTensor[D], ``labels``
LongTensor[D] (sorted by decreasing score).

Decisions:

1. The grid RoIs are chosen by the shared :func:`select_positive_rois` (the rule D2Det
   uses; mmdet's ``_random_jitter`` + ``max_num_grid``). The cap scope and the jitter are
   options (``grid_cap_scope``, ``jitter_amplitude``): CPM R-CNN's first stage takes 96
   unjittered positives per image (spec §6.8-9) with ``grid_cap_scope="image"``,
   ``jitter_amplitude=None``. mmdet pools every positive and then keeps a random subset;
   selecting first and pooling only the kept RoIs is the same computation, cheaper.
2. The classification branch sees the sampled RoIs unjittered; only the grid branch sees
   the jittered boxes (mmdet jitters after the bbox branch's loss).
3. gt boxes added as proposals are positives like any other and can reach the grid branch
   (mmdet, STVIR).
4. A batch with no positive: mmdet returns no grid loss at all; here ``loss_grid`` is a
   zero connected to every grid-head parameter and to the features, so the loss keys do not
   change between iterations and DDP sees a gradient (of 0) for every parameter.
5. Decoded boxes are clamped to the unpadded image ``[0, w] x [0, h]`` (grid head Decision
   8: the references' clamp is a no-op; the bound is the one the box head clips proposals
   to). The scores stay the classification scores (Grid R-CNN has no localisation score).
6. A proposal kept for several classes is refined once per detection (same features, hence
   the same box), as in mmdet.
7. Without ``image_sizes`` in training the padded feature extent bounds the jitter (as
   D2Det's head).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from models.common.roi_heads.bbox_head import Shared2FCBBoxHead
from models.grid_rcnn.grid_head import GridHead
from models.common.task_modules.regression_sampling import CapScope, select_positive_rois
from models.common.roi_heads.roi_extractor import SingleRoIExtractor, boxes_to_rois
from models.common.roi_heads.standard_roi_head import StandardRoIHead
from models.common.task_modules.assigners import MaxIoUAssigner
from models.common.task_modules.samplers import RandomSampler, SamplingResult

__all__ = ["GridRoIHead"]


class GridRoIHead(StandardRoIHead):
    """Grid R-CNN's RoI head (see the module docstring).

    Args:
        bbox_roi_extractor: RoIAlign 7x7 of the classification branch.
        bbox_head: :class:`Shared2FCBBoxHead` with ``with_reg=False``.
        grid_roi_extractor: RoIAlign of the grid branch; its ``output_size`` must be the
            grid head's ``roi_feat_size`` (14).
        grid_head: the :class:`GridHead`.
        assigner, sampler: as Faster R-CNN (MaxIoU 0.5; 512 RoIs, 25% positives, gt added).
        max_num_grid: cap on the grid RoIs (192; None: no cap).
        grid_cap_scope: ``"batch"`` (mmdet: 192 per batch) or ``"image"`` (CPM: per image).
        jitter_amplitude: relative jitter of the grid RoIs (0.15; None: no jitter).
        score_thr, nms_iou, max_per_img: class NMS before the refinement (0.03, 0.3, 100).
    """

    def __init__(
        self,
        bbox_roi_extractor: SingleRoIExtractor,
        bbox_head: Shared2FCBBoxHead,
        grid_roi_extractor: SingleRoIExtractor,
        grid_head: GridHead,
        assigner: MaxIoUAssigner | None = None,
        sampler: RandomSampler | None = None,
        max_num_grid: int | None = 192,
        grid_cap_scope: CapScope = "batch",
        jitter_amplitude: float | None = 0.15,
        score_thr: float = 0.03,
        nms_iou: float = 0.3,
        max_per_img: int = 100,
    ) -> None:
        super().__init__(bbox_roi_extractor, bbox_head, assigner, sampler, score_thr, nms_iou, max_per_img)
        if bbox_head.with_reg:
            raise ValueError("Grid R-CNN's classification head has no box regression: set bbox_head.with_reg false")
        if grid_roi_extractor.output_size != grid_head.roi_feat_size:
            raise ValueError(f"the grid head needs {grid_head.roi_feat_size}x{grid_head.roi_feat_size} RoI features, "
                             f"grid_roi_extractor gives {grid_roi_extractor.output_size}")
        if grid_cap_scope not in ("batch", "image"):
            raise ValueError(f"grid_cap_scope must be 'batch' or 'image', got {grid_cap_scope!r}")
        self.grid_roi_extractor = grid_roi_extractor
        self.grid_head = grid_head
        self.max_num_grid = None if max_num_grid is None else int(max_num_grid)
        self.grid_cap_scope: CapScope = grid_cap_scope
        self.jitter_amplitude = None if jitter_amplitude is None else float(jitter_amplitude)

    # ------------------------------------------------------------------ training
    def select_grid_rois(self, sampling_results: Sequence[SamplingResult],
                         image_sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """The grid branch's RoIs (Decision 1): ``rois`` FloatTensor[R, 5], ``gt_boxes``
        FloatTensor[R, 4], ``labels``, ``gt_index`` LongTensor[R], ``is_gt`` BoolTensor[R]."""
        return select_positive_rois(sampling_results, image_sizes, self.max_num_grid, self.grid_cap_scope,
                                    self.jitter_amplitude)

    def grid_forward(self, features: Sequence[Tensor], rois: Tensor) -> dict[str, Tensor]:
        """``rois`` FloatTensor[R, 5] (R > 0) -> the grid head's logits dict, each
        FloatTensor[R, G, 2S, 2S] (``fused`` / ``unfused``, see :class:`GridHead`)."""
        return self.grid_head(self.grid_roi_extractor(features, rois))

    def grid_loss(self, features: Sequence[Tensor], selected: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"loss_grid": ...}`` of the selected RoIs (a connected zero without any, Decision 4)."""
        rois = selected["rois"]
        if rois.shape[0] == 0:
            zero = 0.0 * sum(p.sum() for p in self.grid_head.parameters()) + features[0].sum() * 0.0
            return {"loss_grid": zero}
        out = self.grid_forward(features, rois)
        targets = self.grid_head.get_targets(rois[:, 1:5], selected["gt_boxes"])
        return self.grid_head.loss(out, targets)

    def forward_train(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        gt_boxes_ignore: Sequence[Tensor | None] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """Losses ``loss_cls``, ``loss_grid`` and the logging scalar ``acc``.

        ``features``: pyramid levels FloatTensor[B, C, H_l, W_l]; ``proposals``: per image
        FloatTensor[P_i, 4]; ``gt_boxes`` FloatTensor[N_i, 4] / ``gt_labels`` LongTensor[N_i]
        (N_i may be 0); ``image_sizes``: unpadded (h, w) per image, bounding the jitter
        (Decision 7).
        """
        if image_sizes is None:
            stride = self.grid_roi_extractor.featmap_strides[0]
            hw = (features[0].shape[-2] * stride, features[0].shape[-1] * stride)
            image_sizes = [hw] * len(proposals)
        sampling_results = self.assign_and_sample(proposals, gt_boxes, gt_labels, gt_boxes_ignore)
        losses = self.bbox_loss(features, sampling_results)
        losses.update(self.grid_loss(features, self.select_grid_rois(sampling_results, image_sizes)))
        return losses

    # ------------------------------------------------------------------ inference
    def refine_boxes(self, features: Sequence[Tensor], rois: Tensor, image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Grid refinement of detections.

        Args:
            rois: FloatTensor[D, 5] (image index, box) of the class-NMS'd detections.
            image_sizes: unpadded (h, w) per image.
        Returns:
            FloatTensor[D, 4] decoded boxes (input pixels, clamped to ``[0, w] x [0, h]``).
        """
        if rois.shape[0] == 0:
            return rois.new_zeros((0, 4))
        out = self.grid_forward(features, rois)
        hw = torch.tensor(image_sizes, dtype=torch.float32, device=rois.device).reshape(-1, 2)[rois[:, 0].long()]
        return self.grid_head.predict_boxes(out, rois[:, 1:5].float(), hw)

    @torch.no_grad()
    def simple_test(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                    image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per image: ``boxes`` FloatTensor[D, 4], ``scores`` FloatTensor[D] (classification
        scores), ``labels`` LongTensor[D], D <= ``max_per_img``, by decreasing score."""
        rois = boxes_to_rois(proposals).to(features[0].device)
        cls_score, _, _ = self.bbox_forward(features, rois)
        dets = self.bbox_head.get_det_bboxes(rois, cls_score, None, image_sizes, self.score_thr, self.nms_iou,
                                             self.max_per_img)
        det_rois = boxes_to_rois([d["boxes"] for d in dets]).to(features[0].device)
        refined = self.refine_boxes(features, det_rois, image_sizes)
        counts = [d["boxes"].shape[0] for d in dets]
        return [{"boxes": boxes, "scores": d["scores"], "labels": d["labels"]}
                for d, boxes in zip(dets, refined.split(counts))]
