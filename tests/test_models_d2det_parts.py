"""D2Det building blocks: DRP extractor, AWPool, softened IoU loss, DLR head (spec d2det.md §2-3)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cuda_ops.deform_roi_pool import deform_roi_pool
from models.d2det.iou_loss import aligned_iou_legacy, iou_loss, softened_iou_loss
from models.d2det.d2det_head import (DenseLocalRegressionHead, average_positive_cells, decode_dense,
                                         dense_targets, encode_dense, random_jitter)
from models.d2det.drp_extractor import AdaptiveWeightedPool, DiscriminativeRoIExtractor

# ---------------------------------------------------------------- targets / decoding


def test_decoded_exact_targets_equal_gt_for_every_cell():
    proposals = torch.tensor([[10.0, 20.0, 80.0, 60.0], [0.0, 0.0, 30.0, 90.0], [50.0, 40.0, 55.0, 47.0]])
    gts = torch.tensor([[15.0, 25.0, 70.0, 75.0], [-5.0, 10.0, 20.0, 80.0], [40.0, 30.0, 90.0, 60.0]])
    boxes = decode_dense(encode_dense(proposals, gts), proposals)
    assert boxes.shape == (3, 49, 4)
    torch.testing.assert_close(boxes, gts[:, None, :].expand(3, 49, 4), rtol=0, atol=1e-4)


def test_cell_order_is_row_major():
    proposals = torch.tensor([[0.0, 0.0, 70.0, 140.0]])
    points, _ = dense_targets(proposals, proposals)
    assert points.shape == (1, 49, 4)
    torch.testing.assert_close(points[0, 1], torch.tensor([15.0, 10.0, 70.0, 140.0]))  # (j=0, i=1)
    torch.testing.assert_close(points[0, 7], torch.tensor([5.0, 30.0, 70.0, 140.0]))  # (j=1, i=0)


def test_overlap_target_margin_counts_positive_cells():
    # proposal 0..70 -> cell centres 5, 15, ..., 65; margin wP/6 = hP/6 = 70/6 ~ 11.67
    proposal = torch.tensor([[0.0, 0.0, 70.0, 70.0]])
    _, ov = dense_targets(proposal, proposal)  # gt = proposal: centres 15..55 are >= 11.67 inside
    assert ov.shape == (1, 49) and int(ov.sum()) == 25
    # gt x 0..40: x centres with l >= 11.67 and r >= 11.67 -> 15, 25 (2 cols); y as before (5 rows)
    _, ov = dense_targets(proposal, torch.tensor([[0.0, 0.0, 40.0, 70.0]]))
    assert int(ov.sum()) == 10
    grid = ov.reshape(7, 7)
    assert grid[:, 1:3][1:6].all() and grid.sum() == grid[1:6, 1:3].sum()
    # the margin is /6 (k-1), not /7: l = 15 - 3.5 = 11.5 < 11.67 -> column 1 drops out
    _, ov = dense_targets(proposal, torch.tensor([[3.5, 0.0, 70.0, 70.0]]))
    assert int(ov.sum()) == 20


# ---------------------------------------------------------------- IoU loss


def test_iou_loss_hand_values_and_softening():
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 with +1
    same = softened_iou_loss(gt, gt)
    torch.testing.assert_close(same, torch.zeros(1))
    half = torch.tensor([[0.0, 0.0, 4.0, 9.0]])  # 5 x 10 inside -> IoU 0.5
    torch.testing.assert_close(aligned_iou_legacy(half, gt), torch.tensor([0.5]))
    torch.testing.assert_close(softened_iou_loss(half, gt), torch.tensor([-math.log(0.5)]))
    tiny = torch.tensor([[0.0, 0.0, 0.0, 4.0]])  # 1 x 5 -> IoU 0.05 <= 0.1 -> -log(0.15)
    torch.testing.assert_close(softened_iou_loss(tiny, gt), torch.tensor([-math.log(0.15)]))
    edge = torch.tensor([[0.0, 0.0, 0.0, 9.0]])  # 1 x 10 -> IoU 0.1 exactly -> softened to 0.2
    torch.testing.assert_close(softened_iou_loss(edge, gt), torch.tensor([-math.log(0.2)]))
    far = torch.tensor([[50.0, 50.0, 60.0, 60.0]])  # disjoint -> 1e-6 + 0.1
    torch.testing.assert_close(softened_iou_loss(far, gt), torch.tensor([-math.log(0.1 + 1e-6)]))


def test_iou_loss_weightings():
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0]]).expand(4, 4)
    pred = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 4.0, 9.0], [0.0, 0.0, 0.0, 4.0], [2.0, 2.0, 7.0, 7.0]])
    w = torch.tensor([1.0, 1.0, 0.0, 0.0])
    l = softened_iou_loss(pred, gt)
    v1 = iou_loss(pred, gt, w, "v1_broadcast", loss_weight=2.0)
    torch.testing.assert_close(v1, 2.0 * l.mean() * w.mean())
    # the official broadcasting quirk, reproduced literally
    torch.testing.assert_close(v1, 2.0 * (l * w[:, None]).mean())
    fixed = iou_loss(pred, gt, w, "masked_mean", loss_weight=1.0)
    torch.testing.assert_close(fixed, (l * w).sum() / 4)
    assert not torch.isclose(v1, fixed)
    with pytest.raises(ValueError):
        iou_loss(pred, gt, w, "mean")  # type: ignore[arg-type]
    empty = torch.zeros(0, 4, requires_grad=True)
    z = iou_loss(empty, torch.zeros(0, 4), torch.zeros(0))
    assert z.item() == 0.0
    z.backward()


# ---------------------------------------------------------------- DRP


def test_awpool_at_init_is_a_3x3_s2_average():
    torch.manual_seed(0)
    pool = AdaptiveWeightedPool(8)
    x = torch.randn(3, 8, 14, 14)
    out = pool(x)
    assert out.shape == (3, 8, 7, 7)
    # uniform weights: the zero padding enters numerator and denominator alike, so the border
    # windows average the valid positions only (count_include_pad=False) ...
    torch.testing.assert_close(out, F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), rtol=1e-5, atol=1e-5)
    # ... and every window that does not touch the padding equals avg_pool2d's default
    torch.testing.assert_close(out[..., 1:, 1:], F.avg_pool2d(x, 3, 2, 1)[..., 1:, 1:], rtol=1e-5, atol=1e-5)


def _pyramid(channels: int, seed: int = 0) -> tuple[list[torch.Tensor], list[int]]:
    g = torch.Generator().manual_seed(seed)
    strides = [4, 8, 16, 32]
    return [torch.randn(2, channels, 256 // s, 320 // s, generator=g) for s in strides], strides


def test_drp_extractor_shape_levels_and_zero_offset_fine_pool():
    torch.manual_seed(0)
    feats, strides = _pyramid(8)
    drp = DiscriminativeRoIExtractor(strides, in_channels=8, offset_fc_channels=32)
    rois = torch.tensor([[0, 10.0, 12.0, 50.0, 60.0],  # ~47 px -> level 0
                         [1, 20.0, 10.0, 150.0, 140.0],  # ~131 px -> level 1
                         [0, 0.0, 0.0, 255.0, 250.0],  # ~253 px -> level 2
                         [1, 0.0, 0.0, 319.0, 255.0]])  # ~286 px -> level 2
    assert drp.map_roi_levels(rois).tolist() == [0, 1, 2, 2]
    assert drp.map_roi_levels(torch.tensor([[0, 0.0, 0.0, 447.0, 447.0]])).tolist() == [3]
    drp.train()
    out = drp(feats, rois)
    assert out.shape == (4, 8, 7, 7)
    out.sum().backward()  # every level reaches the graph (level 3 via the zero term)
    assert all(p.grad is not None for p in drp.parameters())
    # the offset predictor is zero at init, so the fine pool is the offset-free pool
    for i, level in enumerate([0, 1, 2, 2]):
        module, feat = drp.levels[level], feats[level]
        roi = rois[i:i + 1]
        torch.testing.assert_close(module.predict_offsets(feat, roi), torch.zeros(1, 2, 14, 14))
        fine = module.fine_pool(feat, roi)
        ref = deform_roi_pool(feat, roi, None, 1.0 / strides[level], 14, 14, 2, 0.1)
        torch.testing.assert_close(fine, ref)
        torch.testing.assert_close(out[i:i + 1], F.avg_pool2d(ref, 3, 2, 1, count_include_pad=False),
                                   rtol=1e-5, atol=1e-5)
    assert drp(feats, torch.zeros(0, 5)).shape == (0, 8, 7, 7)


# ---------------------------------------------------------------- DLR head


def _small_head(seed: int = 0) -> DenseLocalRegressionHead:
    torch.manual_seed(seed)
    return DenseLocalRegressionHead(in_channels=16, conv_channels=72, num_convs=2, gn_groups=36)


def test_head_output_shapes_and_default_architecture():
    head = DenseLocalRegressionHead()
    n_params = sum(p.numel() for p in head.parameters())
    assert 22.0e6 < n_params < 22.5e6  # §3.1: ~22.2M with dense convs
    assert head.trunk[0].stride == (2, 2) and head.trunk[0].bias is None
    reg, ov = head(torch.randn(2, 256, 14, 14))
    assert reg.shape == (2, 4, 7, 7) and ov.shape == (2, 1, 7, 7)
    assert (reg >= 0).all()


def test_head_loss_with_no_rois_and_with_one_roi():
    head = _small_head()
    reg, ov = head(torch.zeros(0, 16, 14, 14))
    assert reg.shape == (0, 4, 7, 7) and ov.shape == (0, 1, 7, 7)
    losses = head.loss(reg, ov, torch.zeros(0, 4), torch.zeros(0, 4))
    assert losses["loss_reg"].item() == 0.0 and losses["loss_overlap"].item() == 0.0
    sum(losses.values()).backward()
    assert head.reg.weight.grad is not None

    head.zero_grad()
    proposal = torch.tensor([[10.0, 10.0, 80.0, 70.0]])
    gt = torch.tensor([[15.0, 12.0, 85.0, 75.0]])
    reg, ov = head(torch.randn(1, 16, 14, 14))
    for weighting in ("v1_broadcast", "masked_mean"):
        losses = head.loss(reg, ov, proposal, gt, weighting=weighting)
        assert losses["loss_reg"].item() > 0 and losses["loss_overlap"].item() > 0
    losses = head.loss(reg, ov, proposal, gt)
    _, target = dense_targets(proposal, gt)
    ref = F.binary_cross_entropy_with_logits(ov.reshape(1, 49), target)
    torch.testing.assert_close(losses["loss_overlap"], ref)
    sum(losses.values()).backward()
    assert head.trunk[0].weight.grad.abs().sum() > 0


def test_average_positive_cells_and_zero_box_without_positives():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [20.0, 30.0, 60.0, 200.0]])[None].repeat(2, 1, 1)
    logits = torch.tensor([[1.0, 2.0], [-1.0, -3.0]])
    out = average_positive_cells(boxes, logits, torch.tensor([[100, 120], [100, 120]]))
    expected = torch.tensor([15.0, 20.0, 55.0, 125.0]) * 2 / (2 + 1e-5)
    expected[3] = 99.0  # clipped to h - 1
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], torch.zeros(4))


def test_random_jitter_stays_in_image_and_within_amplitude():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 70.0]]).repeat(200, 1)
    out = random_jitter(boxes, (100, 60), generator=g)
    assert out.shape == (200, 4)
    assert (out[:, 0::2] >= 0).all() and (out[:, 0::2] <= 59).all() and (out[:, 1::2] <= 99).all()
    cx = (out[:, 0] + out[:, 2]) / 2
    assert ((cx - 30).abs() <= 40 * 0.15 + 1e-4).all() and (cx - 30).abs().max() > 1.0


@pytest.mark.trajectory
def test_head_training_drives_average_box_onto_gt(record_property):
    head = _small_head(1)
    torch.manual_seed(2)
    feat = torch.randn(1, 16, 14, 14)
    proposal = torch.tensor([[20.0, 30.0, 90.0, 100.0]])
    gt = torch.tensor([[28.0, 25.0, 100.0, 92.0]])
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(60):
        reg, ov = head(feat)
        losses = head.loss(reg, ov, proposal, gt)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    with torch.no_grad():
        reg, ov = head(feat)
        box = head.predict_boxes(reg, ov, proposal, (200, 200))
    iou = aligned_iou_legacy(box, gt).item()
    record_property("iou", iou)
    assert iou > 0.8, (box, iou)
