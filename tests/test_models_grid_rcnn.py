"""Grid R-CNN (Plus form) assembled from the presets: losses with no and one object, test-time
outputs (grid-decoded, clamped boxes with the classification scores), the grid branch without
positives, the shared positive-RoI selection, overfitting one batch, the paper preset."""
from __future__ import annotations

import copy

import pytest
import torch

from models.build import build_model
from models.presets import PRESETS
from models.grid_rcnn.grid_head import NeighbourFusion
from models.grid_rcnn.grid_roi_head import GridRoIHead
from models.common.task_modules.regression_sampling import select_positive_rois
from models.common.roi_heads.roi_extractor import SingleRoIExtractor, boxes_to_rois
from models.summary import preset_counts
from models.common.task_modules.samplers import SamplingResult
from tests.detection_checks import mean_ratio, overfit, rectangles_batch, top_k_match_iou, total_loss

PRESET = "grid_rcnn_r50_fpn_2x"
NUM_CLASSES = 3


def _model(seed: int = 0, num_rois: int | None = 64) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = copy.deepcopy(PRESETS[PRESET]["scales"]["cpu"]["model"])
    if num_rois is not None:
        cfg["roi_head"]["sampler"]["num"] = num_rois
    return build_model("grid_rcnn", cfg, NUM_CLASSES)


def _cpu_features(requires_grad: bool = False) -> list[torch.Tensor]:
    """One image's 64-channel P3-P5 of a 160 x 160 input."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 64, 20, 20, generator=g, requires_grad=requires_grad),
            torch.randn(1, 64, 10, 10, generator=g), torch.randn(1, 64, 5, 5, generator=g)]


def test_train_losses_with_an_image_without_objects_reach_the_backbone():
    model = _model().train()
    images, targets = rectangles_batch()
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}
    losses = model(images, [(160, 160)] * 2, [targets[0], empty])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc", "loss_grid"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_grid"].item() > 0
    total_loss(losses).backward()
    head: GridRoIHead = model.roi_head
    assert head.grid_head.deconv2.weight.grad.abs().sum() > 0
    assert head.grid_head.fusion.first_pw.weight.grad.abs().sum() > 0
    assert head.bbox_head.fc_cls.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad is not None and model.backbone.conv1.weight.grad.abs().sum() > 0


def test_eval_outputs_are_grid_decoded_clamped_and_keep_the_classification_scores():
    model = _model().eval()
    images, _ = rectangles_batch()
    sizes = [(160, 150), (150, 160)]
    head: GridRoIHead = model.roi_head
    with torch.no_grad():
        dets = model(images, sizes)
        # the same path by hand: cls scores on the proposals -> class NMS -> grid boxes
        feats = model.extract_feat(images)
        proposals, _ = model.rpn_head.simple_test(feats, sizes)
        rois = boxes_to_rois(proposals)
        cls_score, bbox_pred, _ = head.bbox_forward(feats, rois)
        assert bbox_pred is None
        cls_dets = head.bbox_head.get_det_bboxes(rois, cls_score, None, sizes, 0.03, 0.3, 100)
    changed = 0
    for i, (det, cls_det, (h, w)) in enumerate(zip(dets, cls_dets, sizes)):
        k = det["boxes"].shape[0]
        assert 0 < k <= 100 and det["boxes"].shape == (k, 4) and det["labels"].shape == (k,)
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:]) and (det["labels"] < NUM_CLASSES).all()
        # only the coordinates changed: same detections, same scores and labels, in the same order
        assert torch.equal(det["scores"], cls_det["scores"]) and torch.equal(det["labels"], cls_det["labels"])
        det_rois = torch.cat([torch.full((k, 1), float(i)), cls_det["boxes"]], dim=1)
        with torch.no_grad():
            expected = head.grid_head.predict_boxes(head.grid_forward(feats, det_rois), cls_det["boxes"],
                                                    torch.tensor([[h, w]], dtype=torch.float32))
        assert torch.allclose(det["boxes"], expected, atol=1e-4)
        changed += int((det["boxes"] - cls_det["boxes"]).abs().amax(dim=1).gt(1e-3).sum())
    assert changed > 0


def test_grid_decoding_by_hand_replaces_the_coordinates_and_clamps_to_the_image():
    head: GridRoIHead = _model().roi_head.eval()
    with torch.no_grad():  # class 1 wins everywhere: score e^5 / (e^5 + 3)
        head.bbox_head.fc_cls.weight.zero_()
        head.bbox_head.fc_cls.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    # each point's 28 x 28 crop peaks at column u (left 0, middle 13, right 27), likewise rows
    peak = [0, 13, 27]

    def fake_grid_forward(features, rois):
        logits = torch.full((rois.shape[0], 9, 28, 28), -5.0)
        for j in range(9):
            logits[:, j, peak[j % 3], peak[j // 3]] = 3.0
        return {"fused": logits}

    head.grid_forward = fake_grid_forward
    proposals = [torch.tensor([[4.0, 10.0, 44.0, 50.0], [100.0, 90.0, 140.0, 130.0]])]
    dets = head.simple_test(_cpu_features(), proposals, [(160, 150)])[0]
    p = torch.exp(torch.tensor(5.0)) / (torch.exp(torch.tensor(5.0)) + 3)
    assert torch.equal(dets["labels"], torch.tensor([1, 1])) and torch.allclose(dets["scores"], p.expand(2))
    order = dets["boxes"][:, 0].argsort()
    # x1 = bx1 - w/2 + (0 + 0.5)/56 * 2w, x2 = bx1 - w/2 + (28 + 27 + 0.5)/56 * 2w (likewise y)
    raw = torch.tensor([[4 - 20 + 40 / 56, 10 - 20 + 40 / 56, 4 - 20 + 55.5 / 28 * 40, 10 - 20 + 55.5 / 28 * 40],
                        [100 - 20 + 40 / 56, 90 - 20 + 40 / 56, 100 - 20 + 55.5 / 28 * 40, 90 - 20 + 55.5 / 28 * 40]])
    assert raw[0, 0] < 0 and raw[1, 2] > 150  # outside the image before clamping
    expected = torch.stack([raw[:, 0].clamp(0, 150), raw[:, 1].clamp(0, 160), raw[:, 2].clamp(0, 150),
                            raw[:, 3].clamp(0, 160)], dim=1)
    assert torch.allclose(dets["boxes"][order], expected, atol=1e-4)


def test_grid_branch_without_positives_gives_a_zero_loss_connected_to_the_graph():
    head: GridRoIHead = _model().roi_head.train()
    feats = _cpu_features(requires_grad=True)
    proposals = [torch.tensor([[10.0, 10.0, 60.0, 70.0], [80.0, 20.0, 150.0, 90.0]])]
    none = head.forward_train(feats, proposals, [torch.zeros((0, 4))], [torch.zeros(0, dtype=torch.long)],
                              None, [(160, 160)])
    assert set(none) == {"loss_cls", "acc", "loss_grid"}
    assert none["loss_grid"].item() == 0.0 and none["loss_grid"].requires_grad and none["loss_cls"].item() > 0
    total_loss(none).backward()
    assert all(p.grad is not None for p in head.grid_head.parameters())
    assert feats[0].grad is not None
    one = head.forward_train(feats, proposals, [torch.tensor([[12.0, 14.0, 58.0, 66.0]])], [torch.tensor([1])],
                             None, [(160, 160)])
    assert one["loss_grid"].item() > 0 and torch.isfinite(one["loss_grid"])


def _sampling_result(pos_boxes: torch.Tensor, image: int) -> SamplingResult:
    p = pos_boxes.shape[0]
    return SamplingResult(
        pos_inds=torch.arange(p), neg_inds=torch.zeros(0, dtype=torch.long), pos_boxes=pos_boxes,
        neg_boxes=torch.zeros((0, 4)), pos_gt_boxes=pos_boxes + 1.0, pos_gt_labels=torch.full((p,), image),
        pos_assigned_gt_inds=torch.arange(p), pos_is_gt=torch.arange(p) % 2 == 0, num_gts=p)


def _boxes(n: int, offset: float) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float32) + offset
    return torch.stack([x, x + 2, x + 20, x + 30], dim=1)


def test_positive_roi_selection_caps_and_jitters_as_computed_by_hand():
    a = 0.15
    results = [_sampling_result(_boxes(40, 0.0), 0), _sampling_result(_boxes(40, 100.0), 1)]
    sizes = [(120, 130), (200, 140)]

    # batch scope, jittered: draws = the jitter offsets of image 0, of image 1, then one permutation
    sel = select_positive_rois(results, sizes, 50, "batch", a, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    expected = []
    for res, (h, w) in zip(results, sizes):
        u = (torch.rand((40, 4), generator=g) * 2 - 1) * a
        b = res.pos_boxes
        cx = (b[:, 0] + b[:, 2]) / 2 + (b[:, 2] - b[:, 0]) * u[:, 0]
        cy = (b[:, 1] + b[:, 3]) / 2 + (b[:, 3] - b[:, 1]) * u[:, 1]
        bw, bh = (b[:, 2] - b[:, 0]) * (1 + u[:, 2]), (b[:, 3] - b[:, 1]) * (1 + u[:, 3])
        box = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
        box[:, 0::2] = box[:, 0::2].clamp(0, w - 1)
        box[:, 1::2] = box[:, 1::2].clamp(0, h - 1)
        expected.append(box)
    keep = torch.randperm(80, generator=g)[:50]
    assert sel["rois"].shape == (50, 5)
    assert torch.allclose(sel["rois"][:, 1:], torch.cat(expected)[keep], atol=1e-5)
    assert torch.equal(sel["rois"][:, 0].long(), keep // 40)
    all_gt = torch.cat([r.pos_gt_boxes for r in results])
    assert torch.equal(sel["gt_boxes"], all_gt[keep]) and torch.equal(sel["labels"], keep // 40)
    assert torch.equal(sel["gt_index"], keep % 40) and torch.equal(sel["is_gt"], keep % 40 % 2 == 0)

    # deterministic under a seed of the global RNG
    torch.manual_seed(3)
    first = select_positive_rois(results, sizes, 50, "batch", a)
    torch.manual_seed(3)
    second = select_positive_rois(results, sizes, 50, "batch", a)
    assert all(torch.equal(first[k], second[k]) for k in first)

    # image scope without jitter (CPM): per image at most 20 of the unchanged boxes; no draw for
    # an image under the cap
    results = [_sampling_result(_boxes(30, 0.0), 0), _sampling_result(_boxes(5, 200.0), 1)]  # image 1 overflows
    sel = select_positive_rois(results, sizes, 20, "image", None, generator=torch.Generator().manual_seed(1))
    keep0 = torch.randperm(30, generator=torch.Generator().manual_seed(1))[:20]
    assert sel["rois"].shape == (25, 5)
    assert torch.equal(sel["rois"][:20, 1:], results[0].pos_boxes[keep0])
    assert torch.equal(sel["rois"][20:, 1:], results[1].pos_boxes)  # in order, not clipped to the image
    assert torch.equal(sel["rois"][:, 0], torch.tensor([0.0] * 20 + [1.0] * 5))

    # no cap, and a cap of 0
    assert torch.equal(select_positive_rois(results, sizes, None, "batch", None)["rois"][:, 1:],
                       torch.cat([r.pos_boxes for r in results]))
    assert select_positive_rois(results, sizes, 0, "image", a)["rois"].shape == (0, 5)
    with pytest.raises(ValueError):
        select_positive_rois(results, sizes, 10, "gpu", a)


@pytest.mark.trajectory
def test_overfits_one_synthetic_batch(record_property):
    """80 iterations on one batch: the loss halves, the grid heatmaps learn, every gt is found
    among the 10 top-scoring detections of its image, and the grid boxes fit the gts better than
    the classified proposals they come from."""
    model = _model(seed=0)
    images, targets = rectangles_batch()
    sizes = [(160, 160)] * 2
    grid: list[float] = []
    history = overfit(model, images, sizes, targets, 80, on_losses=lambda l: grid.append(l["loss_grid"].item()))
    record_property("loss_ratio", mean_ratio(history, 3))
    record_property("grid_ratio", mean_ratio(grid, 3))
    assert mean_ratio(history, 3) < 0.5, history
    assert mean_ratio(grid, 3) < 0.95, grid
    model.eval()
    head: GridRoIHead = model.roi_head
    with torch.no_grad():
        dets = model(images, sizes)
        feats = model.extract_feat(images)
        proposals, _ = model.rpn_head.simple_test(feats, sizes)
        rois = boxes_to_rois(proposals)
        cls_dets = head.bbox_head.get_det_bboxes(rois, head.bbox_forward(feats, rois)[0], None, sizes,
                                                 head.score_thr, head.nms_iou, head.max_per_img)
    grid_ious, cls_ious = [], []
    for det, cls_det, target in zip(dets, cls_dets, targets):
        grid_ious.append(top_k_match_iou(det, target, 10))
        cls_ious.append(top_k_match_iou(cls_det, target, 10))
    grid_iou, cls_iou = torch.cat(grid_ious), torch.cat(cls_ious)
    record_property("min_gt_iou", grid_iou.min().item())
    record_property("grid_minus_cls_iou", (grid_iou.mean() - cls_iou.mean()).item())
    assert (grid_iou > 0.5).all(), (grid_iou, [d["boxes"][:5] for d in dets])
    assert grid_iou.mean() > cls_iou.mean(), (grid_iou, cls_iou)


def test_paper_preset_architecture_schedule_and_parameter_count():
    entry = PRESETS[PRESET]
    model = build_model("grid_rcnn", entry["scales"]["paper"]["model"], 80, load_pretrained=False)
    head: GridRoIHead = model.roi_head
    grid = head.grid_head
    convs = [m for m in grid.trunk if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in grid.trunk if isinstance(m, torch.nn.GroupNorm)]
    assert len(convs) == 8 and convs[0].stride == (2, 2) and convs[0].in_channels == 256
    assert all(c.out_channels == 576 for c in convs) and all(n.num_groups == 36 for n in norms)
    assert isinstance(grid.fusion, NeighbourFusion) and grid.fusion.num_edges == 24
    assert grid.deconv1_norm.num_groups == 9 and grid.deconv2.out_channels == 9 and grid.heatmap_size == 28
    assert (grid.loss_weight, grid.pos_radius, grid.mapping_ratio) == (15.0, 1, 1.0)
    assert head.bbox_head.fc_reg is None and not head.bbox_head.with_reg and head.bbox_head.fc_cls.out_features == 81
    assert head.bbox_roi_extractor.output_size == 7 and head.grid_roi_extractor.output_size == 14
    assert head.grid_roi_extractor.featmap_strides == [4, 8, 16, 32] and head.grid_roi_extractor.sampling_ratio == 0
    assert (head.max_num_grid, head.grid_cap_scope, head.jitter_amplitude) == (192, "batch", 0.15)
    assert (head.score_thr, head.nms_iou, head.max_per_img) == (0.03, 0.3, 100)
    assert (head.assigner.pos_iou_thr, head.assigner.neg_iou_thr, head.assigner.min_pos_iou) == (0.5, (0.0, 0.5), 0.5)
    assert (head.sampler.num, head.sampler.pos_fraction, head.sampler.add_gt_as_proposals) == (512, 0.25, True)
    frcnn = PRESETS["faster_rcnn_r50_fpn_1x"]["scales"]
    assert entry["scales"]["paper"]["model"]["rpn_head"] == frcnn["paper"]["model"]["rpn_head"]
    sched = entry["scales"]["paper"]["schedule"]
    assert (sched["epochs"], sched["lr"], sched["lr_steps"], sched["warmup_iters"], sched["warmup_ratio"]) == \
        (25, 0.02, [17, 23], 3665, 1 / 80)
    # grid head: trunk convs + GN, 2 x 24 fusion transforms (dw 5x5 + 1x1, 64 ch), grouped deconvs + GN
    trunk = 256 * 576 * 9 + 576 + 7 * (576 * 576 * 9 + 576) + 8 * 2 * 576
    fusion = 2 * 24 * (64 * 25 + 64 + 64 * 64 + 64)
    deconvs = 576 * 64 * 16 + 576 + 2 * 576 + 576 * 16 + 9
    assert sum(p.numel() for p in grid.parameters()) == trunk + fusion + deconvs
    counts = preset_counts(PRESET, "paper", num_classes=80)
    assert counts["roi_head"] == sum(p.numel() for p in head.parameters())
    assert abs(counts["total"] - 64.55e6) < 0.01e6

    # CPU scale: the Faster R-CNN CPU scale with a narrower grid head
    cpu = entry["scales"]["cpu"]
    for key in ("backbone", "neck", "rpn_head"):
        assert cpu["model"][key] == frcnn["cpu"]["model"][key]
    # the Faster R-CNN CPU schedule, as CPM R-CNN's (presets docstring)
    assert cpu["schedule"] == frcnn["cpu"]["schedule"]
    assert cpu["data"] == frcnn["cpu"]["data"]
    cpu_grid = cpu["model"]["roi_head"]["grid_head"]
    assert (cpu_grid["num_convs"], 9 * cpu_grid["point_feat_channels"], cpu_grid["conv_gn_groups"],
            cpu_grid["fuse_neighbours"]) == (4, 144, 9, True)


def test_build_rejects_a_regressing_box_head_and_a_mismatched_grid_extractor():
    cfg = copy.deepcopy(PRESETS[PRESET]["scales"]["cpu"]["model"])
    cfg["roi_head"]["bbox_head"]["with_reg"] = True
    with pytest.raises(ValueError, match="with_reg"):
        build_model("grid_rcnn", cfg, NUM_CLASSES)
    head: GridRoIHead = _model().roi_head  # the builder sizes the grid head from the extractor
    assert head.grid_head.roi_feat_size == head.grid_roi_extractor.output_size == 14
    other = SingleRoIExtractor([8, 16, 32], output_size=16)
    with pytest.raises(ValueError, match="14x14"):
        GridRoIHead(head.bbox_roi_extractor, head.bbox_head, other, head.grid_head)
