"""D2Det assembled from the presets: the RoI head's training / inference steps, the instance
branch's targets, losses with no and one object, overfitting one batch, the paper presets."""
from __future__ import annotations

import copy

import pytest
import torch

from models.build import build_model
from models.presets import PRESETS
from models.d2det.d2det_instance_head import (mask_area_ratios, mask_iou_targets, mask_targets,
                                                  overlap_from_masks)
from models.d2det.d2det_roi_head import D2DetRoIHead
from models.summary import preset_counts
from models.common.task_modules.samplers import SamplingResult
from tests.detection_checks import mean_ratio, overfit, top_k_match_iou, total_loss

DET, MASK = "d2det_r50_fpn", "d2det_r101_fpn_mask"
NUM_CLASSES = 3


def _cpu_cfg(preset: str, num_rois: int | None = None) -> dict:
    cfg = copy.deepcopy(PRESETS[preset]["scales"]["cpu"]["model"])
    if num_rois is not None:
        cfg["roi_head"]["sampler"]["num"] = num_rois
    return cfg


def _model(preset: str, seed: int = 0, num_rois: int | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("d2det", _cpu_cfg(preset, num_rois), NUM_CLASSES)


def _batch(with_masks: bool):
    """Two 160 x 160 noise images with coloured objects (rectangles; one ellipse with mask)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 160, 160, generator=g) * 0.3
    boxes = [torch.tensor([[20.0, 30.0, 70.0, 90.0], [100.0, 100.0, 140.0, 130.0], [90.0, 20.0, 150.0, 60.0]]),
             torch.tensor([[40.0, 40.0, 120.0, 120.0], [10.0, 130.0, 30.0, 150.0]])]
    labels = [torch.tensor([0, 1, 2]), torch.tensor([1, 0])]
    colours = torch.tensor([[2.0, -2.0, -2.0], [-2.0, 2.0, -2.0], [-2.0, -2.0, 2.0]])
    targets = []
    yy, xx = torch.meshgrid(torch.arange(160.0) + 0.5, torch.arange(160.0) + 0.5, indexing="ij")
    for i in range(2):
        masks = torch.zeros((len(boxes[i]), 160, 160), dtype=torch.uint8)
        for k, (box, label) in enumerate(zip(boxes[i], labels[i])):
            x1, y1, x2, y2 = box.tolist()
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0  # ellipse inscribed in the box
            masks[k] = inside.to(torch.uint8)
            images[i, :, inside] = colours[label][:, None] + 0.3 * torch.randn(3, int(inside.sum()), generator=g)
        t = {"boxes": boxes[i], "labels": labels[i]}
        if with_masks:
            t["masks"] = masks
        targets.append(t)
    return images, targets




@pytest.mark.parametrize("preset", [DET, MASK])
def test_train_and_eval_outputs_including_an_image_without_objects(preset):
    with_masks = preset == MASK
    model = _model(preset, num_rois=64).train()
    images, targets = _batch(with_masks)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}
    if with_masks:
        empty["masks"] = torch.zeros((0, 160, 160), dtype=torch.uint8)
    losses = model(images, [(160, 160)] * 2, [targets[0], empty])
    expected = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc", "loss_reg", "loss_overlap"}
    if with_masks:
        expected |= {"loss_instance", "loss_mask_iou"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    total_loss(losses).backward()
    head = model.roi_head
    assert head.dlr_head.reg.weight.grad is not None and head.dlr_head.reg.weight.grad.abs().sum() > 0
    assert head.bbox_roi_extractor.levels[0].awpool.logit.weight.grad is not None
    if with_masks:
        assert head.instance_head.mask_logits.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        dets = model(images, [(160, 150), (160, 160)])
    for det, (h, w) in zip(dets, [(160, 150), (160, 160)]):
        assert det["boxes"].shape[0] <= 100 and det["boxes"].shape == (det["scores"].shape[0], 4)
        assert (det["boxes"][:, 2] <= w - 1).all() and (det["boxes"][:, 3] <= h - 1).all()
        assert (det["boxes"] >= 0).all() and (det["labels"] < NUM_CLASSES).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
        if with_masks:
            k = det["boxes"].shape[0]
            assert det["masks"].shape == (k, 1, 28, 28) and det["mask_scores"].shape == (k,)
            assert ((det["masks"] >= 0) & (det["masks"] <= 1)).all()
        else:
            assert "masks" not in det


def _sampling_result(pos_boxes: torch.Tensor, gts: torch.Tensor) -> SamplingResult:
    p = pos_boxes.shape[0]
    return SamplingResult(
        pos_inds=torch.arange(p), neg_inds=torch.zeros(0, dtype=torch.long), pos_boxes=pos_boxes,
        neg_boxes=torch.zeros((0, 4)), pos_gt_boxes=gts, pos_gt_labels=torch.zeros(p, dtype=torch.long),
        pos_assigned_gt_inds=torch.zeros(p, dtype=torch.long), pos_is_gt=torch.zeros(p, dtype=torch.bool), num_gts=1)


def test_regression_rois_are_jittered_positives_capped_per_batch():
    model = _model(DET)
    head: D2DetRoIHead = model.roi_head
    head.max_num_reg = 50
    gt = torch.tensor([[30.0, 40.0, 90.0, 100.0]])
    results = [_sampling_result(gt.repeat(40, 1), gt.repeat(40, 1)) for _ in range(2)]
    torch.manual_seed(0)
    sel = head.select_regression_rois(results, [(160, 160), (160, 160)])
    assert sel["rois"].shape == (50, 5)
    assert set(sel["rois"][:, 0].long().tolist()) == {0, 1}
    boxes = sel["rois"][:, 1:]
    assert not torch.allclose(boxes, gt.expand_as(boxes))  # jittered
    w = gt[0, 2] - gt[0, 0]
    assert ((boxes - gt).abs() <= 0.15 * w * 1.5 + 1e-4).all()  # centre and size moves of at most 15%
    assert torch.equal(sel["gt_boxes"], gt.expand(50, 4))
    head.max_num_reg = 1000
    assert head.select_regression_rois(results, [(160, 160)] * 2)["rois"].shape[0] == 80


def test_roi_head_losses_with_no_object_and_with_one_object():
    model = _model(DET).train()
    head: D2DetRoIHead = model.roi_head
    feats = [torch.randn(1, 64, 20, 20, requires_grad=True), torch.randn(1, 64, 10, 10), torch.randn(1, 64, 5, 5)]
    proposals = [torch.tensor([[10.0, 10.0, 60.0, 70.0], [80.0, 20.0, 150.0, 90.0]])]
    none = head.forward_train(feats, proposals, [torch.zeros((0, 4))], [torch.zeros(0, dtype=torch.long)],
                              None, [(160, 160)])
    assert none["loss_reg"].item() == 0.0 and none["loss_overlap"].item() == 0.0 and none["loss_cls"].item() > 0
    total_loss(none).backward()  # zero losses stay connected to the graph
    one = head.forward_train(feats, proposals, [torch.tensor([[12.0, 14.0, 58.0, 66.0]])],
                             [torch.tensor([1])], None, [(160, 160)])
    # at init the regression outputs ~0 -> every cell decodes to a point; IoU ~0 -> softened -log(0.1)
    import math
    assert 0 < one["loss_reg"].item() <= 2.0 * math.log(10) + 1e-4
    assert abs(one["loss_overlap"].item() - math.log(2)) < 0.05
    total_loss(one).backward()


def test_refinement_averages_positive_cells_and_falls_back_to_the_proposal():
    model = _model(DET).eval()
    head: D2DetRoIHead = model.roi_head
    dlr = head.dlr_head
    with torch.no_grad():
        dlr.reg.weight.zero_()
        dlr.reg.bias.fill_(0.25)  # every cell: l = r = t = b = 0.25 of the proposal size
        dlr.overlap.weight.zero_()
        dlr.overlap.bias.fill_(1.0)
    feats = [torch.randn(1, 64, 20, 20), torch.randn(1, 64, 10, 10), torch.randn(1, 64, 5, 5)]
    rois = torch.tensor([[0.0, 20.0, 20.0, 90.0, 76.0]])
    boxes, empty = head.refine_boxes(feats, rois, [(160, 160)])
    # mean over the 49 cells of (x - w/4, y - h/4, x + w/4, y + h/4) = centre +- size/4
    expected = torch.tensor([[20 + 70 / 4, 20 + 56 / 4, 90 - 70 / 4, 76 - 56 / 4]])
    assert torch.allclose(boxes, expected, atol=1e-2) and not empty.any()
    with torch.no_grad():
        dlr.overlap.bias.fill_(-1.0)  # no positive cell
    boxes, empty = head.refine_boxes(feats, rois, [(160, 160)])
    assert empty.all() and torch.allclose(boxes, rois[:, 1:])
    head.empty_cells = "zero"
    boxes, _ = head.refine_boxes(feats, rois, [(160, 160)])
    assert torch.equal(boxes, torch.zeros((1, 4)))


def test_instance_targets_by_hand():
    masks = torch.zeros((1, 40, 40), dtype=torch.uint8)
    masks[0, 10:30, 10:20] = 1  # 20 rows x 10 columns = 200 pixels
    boxes = torch.tensor([[10.0, 10.0, 20.0, 30.0], [10.0, 10.0, 20.0, 20.0]])
    gt_index = torch.tensor([0, 0])
    targets = mask_targets(boxes, masks, gt_index, 28)
    assert targets.shape == (2, 28, 28) and targets.min() >= 0 and targets.max() <= 1
    assert targets[0].mean() > 0.95  # the box is the mask's bounding box
    ratios = mask_area_ratios(boxes, masks, gt_index)
    # int boxes are inclusive: rows 10..30 / 10..20 and columns 10..20 -> all 200 / 110 of 200 pixels
    assert torch.allclose(ratios, torch.tensor([1.0, 0.55]))
    # a perfect predicted mask of the half box: IoU = inter / (pred + full_gt - inter)
    logits = targets[1:] * 10 - 5
    iou = mask_iou_targets(logits, targets[1:], ratios[1:])
    t = targets[1].sum()
    assert torch.allclose(iou, t / (t + t / 0.55 - t))
    assert torch.equal(mask_iou_targets(logits, targets[1:], torch.zeros(1)), torch.zeros(1))
    overlap = overlap_from_masks(targets, 7)
    assert overlap.shape == (2, 49) and overlap[0].sum() >= 40


@pytest.mark.trajectory
@pytest.mark.parametrize("preset", [DET, MASK])
def test_overfits_one_synthetic_batch(preset, record_property):
    """240 iterations on one batch drive the loss down (and the dense regression's own loss), and
    every gt is found at IoU > 0.5 among the 10 top-scoring detections of its image. (At 80
    iterations the instance model's 20 px object came out at IoU 0.47-0.58 depending on the CPU
    kernel set; at 160, once the CPU pooling went through the embedding_bag reference, at
    0.44-0.48 under AVX2 kernels.)"""
    with_masks = preset == MASK
    model = _model(preset, seed=0, num_rois=64)
    images, targets = _batch(with_masks)
    sizes = [(160, 160)] * 2
    regs: list[float] = []
    history = overfit(model, images, sizes, targets, 240, on_losses=lambda l: regs.append(l["loss_reg"].item()))
    model.eval()
    with torch.no_grad():
        dets = model(images, sizes)
    found = torch.cat([top_k_match_iou(det, target, 10) for det, target in zip(dets, targets)])
    record_property("loss_ratio", mean_ratio(history, 3))
    record_property("reg_ratio", mean_ratio(regs, 3))
    record_property("min_gt_iou", found.min().item())
    assert mean_ratio(history, 3) < 0.5, history
    assert mean_ratio(regs, 3) < 0.6, regs  # the dense regression itself learned
    assert (found > 0.5).all(), (found, [d["boxes"][:5] for d in dets])


def test_paper_presets_architecture_and_parameter_counts():
    counts = preset_counts(DET, "paper", num_classes=80)
    model = build_model("d2det", PRESETS[DET]["scales"]["paper"]["model"], 80, load_pretrained=False)
    head: D2DetRoIHead = model.roi_head
    dlr = sum(p.numel() for p in head.dlr_head.parameters())
    assert abs(dlr - 22.2e6) < 0.1e6  # spec §3.1: about 22.2 M parameters
    assert len(head.bbox_roi_extractor.levels) == 4 and head.bbox_roi_extractor.levels[0].sample_per_part == 2
    assert head.bbox_roi_extractor.levels[0].offset_fc[-1].out_features == 98
    assert head.bbox_head.fc_reg is None and head.bbox_head.loss_cls_weight == 2.0
    assert head.max_num_reg == 192 and head.reg_loss_weight == 2.0 and head.iou_weighting == "v1_broadcast"
    assert (head.score_thr, head.nms_iou, head.max_per_img, head.max_final) == (0.03, 0.5, 125, 100)
    assert head.reg_roi_extractor.output_size == 14 and head.instance_head is None
    assert counts["roi_head"] == sum(p.numel() for p in head.parameters())
    sched = PRESETS[DET]["scales"]["paper"]["schedule"]
    assert (sched["epochs"], sched["lr_steps"], sched["warmup_iters"]) == (24, [20, 23], 1000)
    # CPU scale: the Faster R-CNN CPU schedule at lr 0.04 (at its 0.08 D2Det diverged; presets docstring)
    frcnn_cpu = PRESETS["faster_rcnn_r50_fpn_1x"]["scales"]["cpu"]["schedule"]
    for preset in (DET, MASK):
        assert PRESETS[preset]["scales"]["cpu"]["schedule"] == {**frcnn_cpu, "lr": 0.04}

    mask = build_model("d2det", PRESETS[MASK]["scales"]["paper"]["model"], 80, load_pretrained=False)
    mh: D2DetRoIHead = mask.roi_head
    assert mh.instance_head is not None and mh.instance_head.mask_logits.out_channels == 80
    assert mh.instance_head.iou_fcs[0].in_features == 577 * 49
    assert mh.soft_nms_method is None and (mh.score_thr, mh.nms_iou) == (0.05, 0.3)
    # the instance config's test RPN: 1000 per level before NMS, 700 over the levels after
    assert (mask.rpn_head.test_proposals.nms_pre, mask.rpn_head.test_proposals.max_per_img) == (1000, 700)
    assert mh.bbox_roi_extractor.levels[0].sample_per_part == 1


def test_dcn_preset_uses_modulated_deformable_convs_in_c3_to_c5():
    from models.common.layers.deform_conv import ModulatedDeformConv2dPack

    model = build_model("d2det", PRESETS["d2det_r101_fpn_dcn"]["scales"]["paper"]["model"], 80,
                        load_pretrained=False)
    dcn = [m for m in model.backbone.modules() if isinstance(m, ModulatedDeformConv2dPack)]
    assert len(dcn) == 4 + 23 + 3  # every bottleneck of C3-C5 of ResNet-101
    assert not any(isinstance(m, ModulatedDeformConv2dPack) for m in model.backbone.layer1.modules())
