"""RPN head, RoI extractor, box head and RoI head on random features (mmdet-style head tests)."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou, nms, roi_align

from models.common.dense_heads.rpn_head import ProposalConfig, RPNHead
from models.common.roi_heads.bbox_head import Shared2FCBBoxHead
from models.common.roi_heads.roi_extractor import SingleRoIExtractor, boxes_to_rois
from models.common.roi_heads.standard_roi_head import StandardRoIHead
from models.common.task_modules.anchor_generator import AnchorGenerator
from models.common.task_modules.assigners import MaxIoUAssigner
from models.common.task_modules.samplers import RandomSampler

IMAGE_SIZES = [(128, 160), (100, 120)]  # padded batch 128 x 160
STRIDES = [8, 16, 32, 64]


def _features(channels: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, channels, math.ceil(128 / s), math.ceil(160 / s), generator=g) for s in STRIDES]


def _rpn_head(**kwargs) -> RPNHead:
    torch.manual_seed(0)
    return RPNHead(16, 16, AnchorGenerator(STRIDES, [0.5, 1.0, 2.0], [2.0]),
                   train_proposals=ProposalConfig(300, 200, 0.7), test_proposals=ProposalConfig(100, 50, 0.7),
                   **kwargs)


# ---------------------------------------------------------------- RPN


def test_rpn_loss_with_empty_gt_has_zero_box_loss():
    head = _rpn_head(allowed_border=-1)
    cls, reg = head(_features())
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    losses = head.loss(cls, reg, IMAGE_SIZES, empty)
    assert losses["loss_rpn_bbox"].item() == 0.0
    assert torch.isfinite(losses["loss_rpn_cls"]) and losses["loss_rpn_cls"].item() > 0
    sum(losses.values()).backward()  # still differentiable
    assert head.rpn_cls.weight.grad is not None


def test_rpn_loss_with_one_object_in_one_image():
    head = _rpn_head(allowed_border=0)
    cls, reg = head(_features())
    gts = [torch.tensor([[20.0, 30.0, 70.0, 90.0]]), torch.zeros(0, 4)]
    losses = head.loss(cls, reg, IMAGE_SIZES, gts)
    assert losses["loss_rpn_bbox"].item() > 0 and losses["loss_rpn_cls"].item() > 0
    sum(losses.values()).backward()
    assert head.rpn_reg.weight.grad.abs().sum() > 0


def test_rpn_ignore_regions_change_the_sampled_anchors():
    gts = [torch.tensor([[20.0, 30.0, 70.0, 90.0]]), torch.zeros(0, 4)]
    ignore = [torch.tensor([[0.0, 0.0, 160.0, 128.0]]), None]  # the whole first image
    cls, reg = _rpn_head(allowed_border=-1)(_features())
    with_ignore = _rpn_head(allowed_border=-1, assigner=MaxIoUAssigner(0.7, 0.3, 0.3, ignore_iof_thr=0.5))
    torch.manual_seed(0)
    plain = with_ignore.loss(cls, reg, IMAGE_SIZES, gts)
    torch.manual_seed(0)
    ignored = with_ignore.loss(cls, reg, IMAGE_SIZES, gts, ignore)
    assert ignored["loss_rpn_bbox"].item() == 0.0 < plain["loss_rpn_bbox"].item()


def _reference_proposals(head: RPNHead, cls, reg, image_sizes, cfg, nms_post=None):
    """mmdetection v1 loop: per image, per level top-k, decode, NMS, keep nms_post (default
    max_num); then top max_num."""
    nms_post = cfg.max_per_img if nms_post is None else nms_post
    anchors = head.anchor_generator.grid_anchors([c.shape[-2:] for c in cls])
    out = []
    for i, (h, w) in enumerate(image_sizes):
        boxes_all, scores_all = [], []
        for level, (c, r) in enumerate(zip(cls, reg)):
            s = c[i].permute(1, 2, 0).reshape(-1).sigmoid()
            d = r[i].permute(1, 2, 0).reshape(-1, 4)
            a = anchors[level]
            if s.numel() > cfg.nms_pre:
                s, idx = s.topk(cfg.nms_pre)
                d, a = d[idx], a[idx]
            b = head.bbox_coder.decode(a, d, (h, w))
            valid = ((b[:, 2] - b[:, 0]) > cfg.min_bbox_size) & ((b[:, 3] - b[:, 1]) > cfg.min_bbox_size)
            b, s = b[valid], s[valid]
            keep = nms(b, s, cfg.nms_iou)[:nms_post]
            boxes_all.append(b[keep])
            scores_all.append(s[keep])
        b, s = torch.cat(boxes_all), torch.cat(scores_all)
        order = s.argsort(descending=True)[: cfg.max_per_img]
        out.append((b[order], s[order]))
    return out


def test_rpn_proposals_equal_the_per_level_v1_reference():
    head = _rpn_head()
    with torch.no_grad():
        cls, reg = head(_features(seed=3))
        reg = [r * 20 for r in reg]  # spread the boxes so that NMS has work to do
    # the last two: nms_post above max_num, as D2Det's instance test RPN (1000 per level, 700 in all)
    cases = [(head.train_proposals, None), (head.test_proposals, None),
             (ProposalConfig(50, 30, 0.5, min_bbox_size=4.0), None), (ProposalConfig(50, 30, 0.5), 50),
             (ProposalConfig(1000, 700, 0.7), 1000)]
    for cfg, nms_post in cases:
        boxes, scores = head.get_proposals(cls, reg, IMAGE_SIZES, cfg)
        reference = _reference_proposals(head, cls, reg, IMAGE_SIZES, cfg, nms_post)
        for b, s, (rb, rs), (h, w) in zip(boxes, scores, reference, IMAGE_SIZES):
            assert b.shape[0] <= cfg.max_per_img and b.shape == (s.shape[0], 4)
            assert (s[:-1] >= s[1:]).all()  # sorted by score
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
            torch.testing.assert_close(s, rs)
            # the same boxes; rows of exactly tied scores may come in either order
            ours = sorted(zip(s.tolist(), b.round(decimals=3).tolist()))
            theirs = sorted(zip(rs.tolist(), rb.round(decimals=3).tolist()))
            assert ours == theirs


def test_rpn_forward_train_and_simple_test_outputs():
    head = _rpn_head()
    feats = _features()
    losses, proposals = head.forward_train(feats, IMAGE_SIZES, [torch.tensor([[20.0, 30.0, 70.0, 90.0]])] * 2)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox"}
    assert len(proposals) == 2 and all(p.shape[0] <= 200 and not p.requires_grad for p in proposals)
    boxes, scores = head.simple_test(feats, IMAGE_SIZES)
    assert all(b.shape[0] <= 50 for b in boxes) and all(((s >= 0) & (s <= 1)).all() for s in scores)


# ---------------------------------------------------------------- RoI extractor


def test_roi_extractor_level_mapping():
    extractor = SingleRoIExtractor([4, 8, 16, 32], finest_scale=56)
    sides = torch.tensor([10.0, 50.0, 111.0, 113.0, 223.0, 225.0, 447.0, 449.0, 2000.0])
    rois = torch.stack([torch.zeros(9), torch.zeros(9), torch.zeros(9), sides, sides], dim=1)
    assert extractor.map_roi_levels(rois).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    legacy = SingleRoIExtractor([4, 8, 16, 32], finest_scale=56, legacy_plus_one=True)
    edge = torch.tensor([[0.0, 0.0, 0.0, 111.0, 111.0]])  # (111 + 1) / 56 = 2 -> level 1 with "+1"
    assert legacy.map_roi_levels(edge).tolist() == [1] and extractor.map_roi_levels(edge).tolist() == [0]


def test_roi_extractor_pools_each_roi_from_its_level():
    feats = [torch.randn(2, 3, 64 // s, 64 // s) for s in (1, 2, 4)]
    extractor = SingleRoIExtractor([1, 2, 4], output_size=5, sampling_ratio=2, finest_scale=8)
    rois = torch.tensor([[0.0, 2.0, 2.0, 10.0, 9.0], [1.0, 5.0, 5.0, 25.0, 30.0], [1.0, 0.0, 0.0, 60.0, 60.0]])
    levels = extractor.map_roi_levels(rois)
    assert levels.tolist() == [0, 1, 2]
    out = extractor(feats, rois)
    assert out.shape == (3, 3, 5, 5)
    for i, level in enumerate(levels.tolist()):
        expected = roi_align(feats[level], rois[i : i + 1], 5, 1.0 / [1, 2, 4][level], 2, True)
        torch.testing.assert_close(out[i : i + 1], expected, rtol=1e-5, atol=1e-5)


def test_boxes_to_rois():
    rois = boxes_to_rois([torch.ones(2, 4), torch.zeros(0, 4), 2 * torch.ones(1, 4)])
    assert rois[:, 0].tolist() == [0.0, 0.0, 2.0] and rois.shape == (3, 5)


# ---------------------------------------------------------------- box head and RoI head

NUM_CLASSES = 4


def _roi_head(**head_kwargs) -> StandardRoIHead:
    torch.manual_seed(0)
    return StandardRoIHead(
        SingleRoIExtractor([8, 16, 32], output_size=7, sampling_ratio=0, finest_scale=56),
        Shared2FCBBoxHead(16, 7, 32, NUM_CLASSES, **head_kwargs),
        MaxIoUAssigner(0.5, 0.5, 0.5),
        RandomSampler(64, 0.25, add_gt_as_proposals=True),
        score_thr=0.05, nms_iou=0.5, max_per_img=20,
    )


def _proposals(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in IMAGE_SIZES:
        xy = torch.rand(100, 2, generator=g) * torch.tensor([w - 20.0, h - 20.0])
        wh = 8 + torch.rand(100, 2, generator=g) * 60
        out.append(torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))], 1))
    return out


def test_roi_head_loss_with_empty_gt():
    head = _roi_head()
    feats = _features()
    empty = [torch.zeros(0, 4)] * 2
    losses = head.forward_train(feats[:3], _proposals(), empty, [torch.zeros(0, dtype=torch.long)] * 2)
    assert losses["loss_bbox"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
    assert "acc" in losses and not losses["acc"].requires_grad
    (losses["loss_cls"] + losses["loss_bbox"]).backward()


def test_roi_head_loss_with_one_object():
    head = _roi_head()
    feats = [f.requires_grad_() for f in _features()]
    gts = [torch.tensor([[20.0, 30.0, 70.0, 90.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.long)]
    sampling = head.assign_and_sample(_proposals(), gts, labels)
    assert sampling[0].num_pos >= 1 and sampling[0].pos_is_gt.any() and sampling[1].num_pos == 0
    losses = head.bbox_loss(feats, sampling)
    assert losses["loss_bbox"].item() > 0 and losses["loss_cls"].item() > 0
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    assert feats[0].grad is not None


def test_bbox_head_targets_use_background_index_num_classes():
    head = _roi_head()
    gts = [torch.tensor([[20.0, 30.0, 70.0, 90.0]]), torch.zeros(0, 4)]
    sampling = head.assign_and_sample(_proposals(), gts, [torch.tensor([2]), torch.zeros(0, dtype=torch.long)])
    labels, label_weights, targets, weights = head.bbox_head.get_targets(sampling)
    num_pos = sampling[0].num_pos
    assert labels[:num_pos].eq(2).all() and labels[num_pos:].eq(NUM_CLASSES).all()
    assert label_weights.eq(1).all() and weights[:num_pos].eq(1).all() and weights[num_pos:].eq(0).all()
    decoded = head.bbox_head.bbox_coder.decode(sampling[0].pos_boxes, targets[:num_pos])
    torch.testing.assert_close(decoded, gts[0].expand(num_pos, 4), rtol=1e-4, atol=1e-3)


def test_class_agnostic_and_cls_only_heads_train():
    for kwargs in ({"reg_class_agnostic": True}, {"with_reg": False}):
        head = _roi_head(**kwargs)
        gts = [torch.tensor([[20.0, 30.0, 70.0, 90.0]]), torch.zeros(0, 4)]
        losses = head.forward_train(_features()[:3], _proposals(), gts,
                                    [torch.tensor([1]), torch.zeros(0, dtype=torch.long)])
        assert ("loss_bbox" in losses) == kwargs.get("with_reg", True)
        assert torch.isfinite(losses["loss_cls"])


def test_get_det_bboxes_thresholds_nms_and_limits():
    head = Shared2FCBBoxHead(16, 7, 32, num_classes=2)
    rois = torch.tensor([
        [0.0, 10.0, 10.0, 50.0, 50.0],
        [0.0, 11.0, 11.0, 50.0, 50.0],  # overlaps RoI 0 heavily
        [0.0, 100.0, 100.0, 300.0, 300.0],  # crosses the border of image 0 (128 x 160)
        [1.0, 5.0, 5.0, 20.0, 20.0],
    ])
    logits = torch.log(torch.tensor([
        [0.90, 0.05, 0.05],
        [0.80, 0.15, 0.05],
        [0.02, 0.60, 0.38],
        [0.01, 0.01, 0.98],  # background in image 1 -> no detection
    ]))
    dets = head.get_det_bboxes(rois, logits, torch.zeros(4, 8), IMAGE_SIZES, score_thr=0.1, nms_iou=0.5,
                               max_per_img=10)
    assert len(dets) == 2 and dets[1]["boxes"].shape == (0, 4)
    d = dets[0]
    # class 0: RoI 0 (0.90) suppresses RoI 1 (0.80); class 1: RoIs 1 (0.15) and 2 (0.60)
    assert d["labels"].tolist() == [0, 1, 1]
    torch.testing.assert_close(d["scores"], torch.tensor([0.90, 0.60, 0.15]))
    torch.testing.assert_close(d["boxes"][1], torch.tensor([100.0, 100.0, 160.0, 128.0]))  # clipped
    top1 = head.get_det_bboxes(rois, logits, torch.zeros(4, 8), IMAGE_SIZES, 0.1, 0.5, max_per_img=1)
    assert [len(x["scores"]) for x in top1] == [1, 0]

    cls_only = Shared2FCBBoxHead(16, 7, 32, num_classes=2, with_reg=False)
    dets = cls_only.get_det_bboxes(rois, logits, None, IMAGE_SIZES, 0.1, 0.5, 10)
    torch.testing.assert_close(dets[0]["boxes"][0], rois[0, 1:])


def test_roi_head_simple_test_output_format():
    head = _roi_head().eval()
    dets = head.simple_test(_features()[:3], _proposals(), IMAGE_SIZES)
    assert len(dets) == 2
    for d, (h, w) in zip(dets, IMAGE_SIZES):
        k = d["boxes"].shape[0]
        assert k <= 20 and d["scores"].shape == (k,) and d["labels"].dtype == torch.long
        assert ((d["labels"] >= 0) & (d["labels"] < NUM_CLASSES)).all()
        assert (d["boxes"][:, 2] <= w).all() and (d["boxes"][:, 3] <= h).all()
    empty = head.simple_test(_features()[:3], [torch.zeros(0, 4), torch.zeros(0, 4)], IMAGE_SIZES)
    assert [e["boxes"].shape for e in empty] == [(0, 4), (0, 4)]


@pytest.mark.parametrize("num_gts", [0, 1, 3])
def test_sampled_positives_overlap_their_gt(num_gts):
    head = _roi_head()
    g = torch.Generator().manual_seed(num_gts)
    gts = torch.rand(num_gts, 2, generator=g) * 80
    gts = torch.cat([gts, gts + 20 + torch.rand(num_gts, 2, generator=g) * 40], 1)
    res = head.assign_and_sample(_proposals()[:1], [gts], [torch.zeros(num_gts, dtype=torch.long)])[0]
    if res.num_pos:
        iou = box_iou(res.pos_boxes, res.pos_gt_boxes).diagonal()
        assert (iou >= 0.5 - 1e-6).all()
    assert res.num_pos + res.num_neg <= 64 and res.num_pos <= 16
