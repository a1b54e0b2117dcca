"""RepPoints V2 (spec reppoints.md §2, §4, §5.1): Gaussian radius, corner and foreground
targets by hand, the two verification losses, the fusion wiring, corner snapping, head losses
with no and one object, overfitting one batch, and the presets of the RepPoints V2 README's
V1 / V2 tables."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from models.common.backbones.mobilenet_v2 import MobileNetV2
from models.build import build_model
from models.reppoints.reppoints_head import RepPointsHead
from models.reppoints.reppoints_v2_head import (
    RepPointsV2Head,
    corner_targets,
    foreground_targets,
    gaussian_radius,
)
from models.reppoints.corner_pool_block import CornerPoolBlock
from models.reppoints.gaussian_focal_loss import gaussian_focal_loss
from models.reppoints.separate_focal_loss import separate_focal_loss
from models.presets import PRESETS
from models.reppoints.atss_assigner import ATSSAssigner
from models.reppoints.point_generator import PointGenerator
from tests.detection_checks import mean_ratio, overfit, rectangles_batch, top_k_match_iou, total_loss

V2 = "reppoints_v2_r50_fpn_giou_1x"
NUM_CLASSES = 3
VERIFICATION = ("loss_heatmap", "loss_offset", "loss_sem")


def _cpu_model(preset: str = V2, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(PRESETS[preset]["detector"], copy.deepcopy(PRESETS[preset]["scales"]["cpu"]["model"]),
                       NUM_CLASSES)


def _features(channels: int = 64, batch: int = 1, requires_grad: bool = False):
    torch.manual_seed(2)
    sizes = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2)]  # a 160 x 160 batch, strides 8..128
    return [torch.randn(batch, channels, h, w, requires_grad=requires_grad) for h, w in sizes]


# ------------------------------------------------------------------ Gaussian radius


def _iou_cases(r, h, w):
    """IoU of the gt with a box whose two corners moved by r (x and y): same direction
    (CornerNet case 1), both inward (case 2), both outward (case 3)."""
    same = (w - r) * (h - r) / (2 * w * h - (w - r) * (h - r))
    inward = (w - 2 * r) * (h - 2 * r) / (w * h)
    outward = w * h / ((w + 2 * r) * (h + 2 * r))
    return same, inward, outward


@pytest.mark.parametrize("h, w", [(10.0, 10.0), (32.0, 96.0), (200.0, 50.0), (3.0, 400.0)])
def test_gaussian_radius_keeps_every_cornernet_case_above_the_overlap(h, w):
    r = gaussian_radius(torch.tensor([h]), torch.tensor([w]), 0.7).item()
    assert r > 0
    # every case keeps IoU >= 0.7 at the radius and one of them is at the limit (the min root)
    ious = _iou_cases(r, h, w)
    assert min(ious) >= 0.7 - 1e-5, ious
    # a slightly larger shift breaks at least one case (r is the tightest of the three roots
    # that CornerNet's formulas give; its case-2/3 roots are conservative, case 1 exact)
    r1 = ((h + w) - math.sqrt((h + w) ** 2 - 4 * w * h * 0.3 / 1.7)) / 2
    assert r <= r1 + 1e-5
    assert abs(_iou_cases(r1, h, w)[0] - 0.7) < 1e-4
    # by hand for a 10 x 10 box: min(r1, r2, r3)
    if h == w == 10.0:
        r2 = (40 - math.sqrt(1600 - 16 * 30)) / 8
        r3 = (-28 + math.sqrt(28 ** 2 + 16 * 0.7 * 30)) / (8 * 0.7)
        assert r == pytest.approx(min(r1, r2, r3), rel=1e-5)


# ------------------------------------------------------------------ corner targets


def _levels(sizes=((8, 8), (4, 4), (2, 2)), strides=(8, 16, 32)):
    gen = PointGenerator(list(strides))
    return gen.grid_points(list(sizes)), list(sizes)


def test_corner_targets_by_hand():
    priors, sizes = _levels()
    gt = torch.tensor([[12.0, 20.0, 52.0, 60.0]])
    heat, offsets, pos = corner_targets(priors, sizes, gt)
    assert heat.shape == (2, 64 + 16 + 4) and offsets.shape == (2, 84, 2)
    # P3: TL (12, 20) = (1.5, 2.5) cells: ties go to the lower index -> cell (row 2, col 1)
    tl = 2 * 8 + 1
    assert pos[0, :64].nonzero().flatten().tolist() == [tl]
    torch.testing.assert_close(offsets[0, tl], torch.tensor([0.5, 0.5]))
    # BR (52, 60) = (6.5, 7.5) -> (row 7, col 6)
    br = 7 * 8 + 6
    assert pos[1, :64].nonzero().flatten().tolist() == [br]
    torch.testing.assert_close(offsets[1, br], torch.tensor([0.5, 0.5]))
    # one positive per corner per level, heatmap exactly 1 there
    assert pos.sum().item() == 2 * 3 and (heat[pos] == 1).all() and (heat[~pos] < 1).all()
    # P4: TL (0.75, 1.25) -> (row 1, col 1); offset (-0.25, 0.25)
    assert pos[0, 64:80].nonzero().flatten().tolist() == [1 * 4 + 1]
    torch.testing.assert_close(offsets[0, 64 + 5], torch.tensor([-0.25, 0.25]))
    # the Gaussian around the TL on P3: the cell (row 2, col 2) = (16, 16) px, 5.66 px away
    r = gaussian_radius(torch.tensor([40.0]), torch.tensor([40.0])).item()
    sigma = (2 * r + 1) / 6
    d = math.hypot(16 - 12, 16 - 20)
    expected = math.exp(-d * d / (2 * sigma * sigma)) if d < r else 0.0
    assert heat[0, 2 * 8 + 2].item() == pytest.approx(expected, rel=1e-5)
    # cells farther than the radius are 0, except the positive itself (4.5 px away, r = 4.3 px)
    far = torch.cdist(priors[0][:, :2], gt[:, :2]).squeeze(1) >= r
    assert far[tl] and (heat[0, :64][far & ~pos[0, :64]] == 0).all()
    # no gt: all zeros
    h0, o0, p0 = corner_targets(priors, sizes, torch.zeros((0, 4)))
    assert h0.abs().sum() == 0 and o0.abs().sum() == 0 and not p0.any()


def test_corner_targets_nearest_cell_equals_a_brute_force_argmin_and_last_gt_wins_a_shared_cell():
    priors, sizes = _levels()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 60
    wh = torch.rand(20, 2, generator=g) * 40 + 1
    gts = torch.cat([xy, xy + wh], 1)
    gts[3, :2] = torch.tensor([24.0, 36.0])  # exact ties in x and y
    _, _, pos = corner_targets(priors, sizes, gts)
    start = 0
    for pri in priors:
        for c in range(2):
            nearest = torch.cdist(pri[:, :2], gts[:, 2 * c:2 * c + 2]).argmin(dim=0)  # first minimum
            assert set(nearest.tolist()) == set(pos[c, start:start + pri.shape[0]].nonzero().flatten().tolist())
        start += pri.shape[0]
    # two gts whose top-left corners share a P3 cell: the later gt's offset is the target
    two = torch.tensor([[9.0, 9.0, 40.0, 40.0], [7.0, 10.0, 30.0, 50.0]])
    _, off, pos = corner_targets(priors, sizes, two)
    cell = 1 * 8 + 1
    assert pos[0, cell]
    torch.testing.assert_close(off[0, cell], torch.tensor([7.0 / 8 - 1, 10.0 / 8 - 1]))


# ------------------------------------------------------------------ foreground targets


def test_foreground_targets_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 32.0], [8.0, 8.0, 17.0, 16.0], [20.0, 0.0, 60.0, 8.0]])
    labels = torch.tensor([1, 1, 0])
    maps, weights = foreground_targets(boxes, labels, 2, (6, 8), 8)
    assert maps.shape == weights.shape == (2, 6, 8)
    # class 1: the big box covers rows 0..4, cols 0..5 (inclusive int(y2 / 8) = 4, int(x2 / 8) = 5)
    big = torch.zeros(6, 8, dtype=torch.bool)
    big[0:5, 0:6] = True
    assert torch.equal(maps[1].bool(), big)
    small = torch.zeros(6, 8, dtype=torch.bool)
    small[1:3, 1:3] = True  # rows int(8/8)..int(16/8) = 1..2, cols 1..int(17/8) = 1..2
    torch.testing.assert_close(weights[1][small], torch.full((4,), 1 / 72.0))  # the smaller box wins
    torch.testing.assert_close(weights[1][big & ~small], torch.full((26,), 1 / 1280.0))
    # class 0: rows 0..1 (int(8/8) = 1), cols 2..7 (int(60/8) = 7)
    cls0 = torch.zeros(6, 8, dtype=torch.bool)
    cls0[0:2, 2:8] = True
    assert torch.equal(maps[0].bool(), cls0) and (weights[0][cls0] == 1 / 320.0).all()
    assert (weights[maps == 0] == 0).all()
    m0, w0 = foreground_targets(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), 2, (6, 8), 8)
    assert m0.sum() == 0 and w0.sum() == 0


# ------------------------------------------------------------------ losses


def test_gaussian_focal_loss_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0, 0.5])
    target = torch.tensor([1.0, 0.5, 0.0, 1.0])
    p = logits.sigmoid()
    pos = -torch.log(p[[0, 3]]) * (1 - p[[0, 3]]) ** 2
    neg = -torch.log(1 - p[[1, 2]]) * p[[1, 2]] ** 2 * (1 - target[[1, 2]]) ** 4
    expected = (pos.sum() + neg.sum()) / 2
    torch.testing.assert_close(gaussian_focal_loss(logits, target), expected)
    torch.testing.assert_close(gaussian_focal_loss(logits, target, avg_factor=4.0), expected / 2)
    # extreme logits stay finite (log of the logits, not of p + eps)
    big = gaussian_focal_loss(torch.tensor([-200.0, 200.0]), torch.tensor([1.0, 0.0]))
    assert torch.isfinite(big) and big > 100


def test_separate_focal_loss_by_hand():
    logits = torch.tensor([1.0, -0.5, 2.0, -3.0, 0.0])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    w = torch.tensor([0.5, 0.25, 9.0, 9.0, 9.0])  # weights count only at the positives
    p = logits.sigmoid()
    pos = (0.25 * (1 - p[:2]) ** 2 * -torch.log(p[:2]) * w[:2]).sum() / w[:2].sum()
    neg = (0.75 * p[2:] ** 2 * -torch.log(1 - p[2:])).sum() / 2
    torch.testing.assert_close(separate_focal_loss(logits, target, w, avg_factor=2), pos + neg)
    # without positives: the negative term over max(N_pos, 1)
    none = separate_focal_loss(logits, torch.zeros(5), w, avg_factor=0)
    torch.testing.assert_close(none, (0.75 * p ** 2 * -torch.log(1 - p)).sum())
    assert torch.isfinite(separate_focal_loss(torch.tensor([-300.0]), torch.ones(1), torch.ones(1), 1))


# ------------------------------------------------------------------ architecture and fusion


def test_corner_pool_block_shapes_and_direction():
    torch.manual_seed(0)
    block = CornerPoolBlock(32, ("top", "left"), corner_dim=32, norm_groups=8)
    x = torch.randn(2, 32, 7, 9, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape and (out >= 0).all()
    # the pools (whose directions tests/test_cuda_ops_corner_pool.py checks against brute force)
    assert (block.pool_a.direction, block.pool_b.direction) == ("top", "left")
    # the output at the top-left cell sees the far bottom-right input through the pools
    grad = torch.autograd.grad(out[0, :, 0, 0].sum(), x)[0][0].abs().sum(0)
    assert grad[6, 8] > 0
    with pytest.raises(ValueError, match="directions"):
        CornerPoolBlock(32, ("top", "up"))


def test_verification_outputs_are_fused_into_classification_and_refinement():
    head = _cpu_model().bbox_head.train()
    assert isinstance(head, RepPointsV2Head) and isinstance(head, RepPointsHead)
    assert head.cls_dcn_weight.shape[1] == head.feat_channels + 6
    feats = _features()
    cls, init, refine, hm, off, sem = head(feats)
    assert [tuple(t.shape[1:2]) for t in (cls[0], init[0], refine[0], hm[0], off[0], sem[0])] == [
        (NUM_CLASSES,), (18,), (18,), (2,), (4,), (NUM_CLASSES,)]
    # the corner maps are concatenated undetached: the classification loss reaches the corner heads
    cls[0].sum().backward(retain_graph=True)
    for conv in (head.tl_score, head.tl_offset, head.br_score, head.br_offset, head.sem_embed[0]):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    # the foreground logits are an auxiliary output only: they do not feed the classifier
    head.zero_grad()
    refine[1].sum().backward()
    assert head.sem_out.weight.grad is None or head.sem_out.weight.grad.abs().sum() == 0
    assert head.tl_score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("gts", ["none", "one"])
def test_head_losses_with_no_object_and_with_one_object(gts):
    head = _cpu_model().bbox_head.train()
    feats = _features(requires_grad=True)
    boxes = torch.zeros((0, 4)) if gts == "none" else torch.tensor([[20.0, 30.0, 70.0, 92.0]])
    labels = torch.zeros(0, dtype=torch.long) if gts == "none" else torch.tensor([2])
    losses = head.forward_train(feats, [(160, 160)], [boxes], [labels])
    assert set(losses) == {"loss_cls", "loss_pts_init", "loss_pts_refine", *VERIFICATION}
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())
    total_loss(losses).backward()
    assert torch.isfinite(feats[0].grad).all()
    if gts == "none":
        assert losses["loss_offset"].item() == 0.0 and losses["loss_pts_refine"].item() == 0.0
        assert losses["loss_heatmap"].item() > 0 and losses["loss_sem"].item() > 0  # negatives only
    else:
        assert all(v.item() > 0 for v in losses.values())
        # at init the heatmap logits are ~log(0.01/0.99): the positive term dominates the heatmap loss;
        # 5 levels x 1 positive per corner, 0.25 x (TL + BR) / 2
        p = torch.tensor(0.01)
        pos_term = -torch.log(p) * (1 - p) ** 2
        assert 0.25 * pos_term.item() * 0.9 < losses["loss_heatmap"].item() < 0.25 * pos_term.item() * 2
        assert head.tl_offset.weight.grad.abs().sum() > 0 and head.sem_out.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ joint inference


def test_corner_snapping_by_hand():
    head = _cpu_model().bbox_head.eval()
    b, h, w = 1, 6, 8  # P3 maps (stride 8) of a 48 x 64 image
    hm = [torch.full((b, 2, h, w), -5.0), torch.full((b, 2, 3, 4), -5.0)]
    off = [torch.zeros(b, 4, h, w), torch.zeros(b, 4, 3, 4)]
    hm[0][0, 0, 2, 3] = 4.0  # TL peak at (x 3, y 2) cells
    off[0][0, 0:2, 2, 3] = torch.tensor([0.25, -0.5])
    hm[0][0, 1, 4, 6] = 4.0  # BR peak at (x 6, y 4)
    off[0][0, 2:4, 4, 6] = torch.tensor([0.5, 0.5])
    limits = torch.tensor([[64.0, 48.0, 64.0, 48.0]])
    # TL (20, 13): pooled cell (2, 1) -> window rows 1..2, cols 2..3 contains the peak (row 2, col 3)
    # BR (45, 39): pooled cell (5, 4) -> window rows 4..5, cols 5..6 contains (row 4, col 6)
    boxes = torch.tensor([[[20.0, 13.0, 45.0, 39.0], [0.0, 0.0, 5.0, 5.0]]])
    snapped = head.snap_to_corners(1, boxes, limits, hm, off)
    torch.testing.assert_close(snapped[0, 0], torch.tensor([(3 + 0.25) * 8, (2 - 0.5) * 8, 6.5 * 8, 4.5 * 8]))
    # a box far from the peaks snaps to the best cell of its own window (offset 0 there)
    assert snapped[0, 1, 0] in (0.0, 8.0) and snapped[0, 1, 1] in (0.0, 8.0)
    # P3 boxes are kept; P6 / P7 use the P4 maps
    torch.testing.assert_close(head.snap_to_corners(0, boxes, limits, hm, off), boxes)
    hm[1][0, 0, 1, 1] = 4.0
    p6 = head.snap_to_corners(3, torch.tensor([[[20.0, 20.0, 40.0, 40.0]]]), limits, hm, off)
    assert p6[0, 0, :2].tolist() == [16.0, 16.0]


def test_corner_snapping_switch_changes_only_the_boxes():
    model = _cpu_model().eval()
    head = model.bbox_head
    head.score_thr = 0.0
    images = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        on = model(images, [(160, 160)])[0]
        head.corner_snapping = False
        off = model(images, [(160, 160)])[0]
        cls, _, refine, _, _, _ = head(model.extract_feat(images))
        plain = RepPointsHead.get_bboxes(head, cls, refine, [(160, 160)])[0]
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(off[key], plain[key])  # off = the V1 decoding of the same outputs
    torch.testing.assert_close(on["scores"].sort().values, off["scores"].sort().values)
    assert not torch.allclose(on["boxes"], off["boxes"])  # P4-P7 boxes moved


# ------------------------------------------------------------------ the detector


@pytest.mark.trajectory
def test_overfits_one_synthetic_batch_and_the_verification_losses_fall(record_property):
    """60 iterations on one batch of 2 images: total and each verification loss below half of
    their start, every gt found at IoU > 0.5 with corner snapping on (~14 s, one thread)."""
    model = _cpu_model(seed=0)
    images, targets = rectangles_batch()
    sizes = [(160, 160)] * 2
    seen: dict[str, list[float]] = {k: [] for k in VERIFICATION}

    def record(losses):
        for k in VERIFICATION:
            seen[k].append(losses[k].item())

    history = overfit(model, images, sizes, targets, 60, on_losses=record)
    model.eval()
    with torch.no_grad():
        dets = model(images, sizes)
    found = torch.cat([top_k_match_iou(det, target, 10) for det, target in zip(dets, targets)])
    record_property("loss_ratio", mean_ratio(history, 3))
    for k, values in seen.items():
        record_property(f"{k}_ratio", mean_ratio(values, 3))
    record_property("min_gt_iou", found.min().item())
    assert mean_ratio(history, 3) < 0.5, history
    for k, values in seen.items():
        assert mean_ratio(values, 3) < 0.6, (k, values[:3], values[-3:])
    assert (found > 0.5).all(), (found, [d["boxes"][:5] for d in dets])


# ------------------------------------------------------------------ presets of the README tables

TABLE_ROWS = ["r50_fpn_1x", "r50_fpn_giou_1x", "r50_fpn_giou_mstrain_2x", "r101_fpn_giou_mstrain_2x",
              "r101_fpn_dcn_giou_mstrain_2x", "x101_fpn_giou_mstrain_2x", "x101_fpn_dcn_giou_mstrain_2x",
              "mnv2_c128_fpn_giou_mstrain_2x", "mnv2_fpn_giou_mstrain_2x"]


@pytest.mark.parametrize("row", TABLE_ROWS)
def test_table_presets_follow_the_readme_rows(row):
    """Every row of both tables as a preset (configuration checked for all; the V2 ones built at
    paper scale, with their backbone and head)."""
    for version in (1, 2):
        name = f"reppoints_v{version}_{row}"
        entry = PRESETS[name]
        assert entry["detector"] == ("reppoints_v2" if version == 2 else "reppoints")
        paper = entry["scales"]["paper"]
        head = paper["model"]["bbox_head"]
        giou = "giou" in row
        assert head["loss_bbox"] == ("giou" if giou else "smooth_l1")
        assert (head["loss_init_weight"], head["loss_refine_weight"]) == ((1.0, 2.0) if giou else (0.5, 1.0))
        assert head["transform_method"] == "exact_minmax" and head["refine_assigner"]["type"] == "atss"
        assert head["test"]["nms_iou"] == 0.6 and ("corner_snapping" in head["test"]) == (version == 2)
        sched, data = paper["schedule"], paper["data"]
        two_x = row.endswith("2x")
        assert (sched["epochs"], sched["lr_steps"]) == ((24, [16, 22]) if two_x else (12, [8, 11]))
        assert sched["lr"] == 0.01 and sched["warmup_ratio"] == 0.001 and sched["grad_clip"] == 35.0
        if "mstrain" in row:
            assert data["train_scales"] == [[1333, 480], [1333, 960]] and data["multiscale_mode"] == "range"
        else:
            assert data["train_scales"] == [[1333, 800]]
        backbone = paper["model"]["backbone"]
        channels = 128 if "c128" in row else 256
        assert paper["model"]["neck"]["out_channels"] == channels and head["feat_channels"] == channels
        assert sched["sync_bn"] == row.startswith("mnv2")  # README note 7: SyncBN for MobileNetV2
        if row.startswith("mnv2"):
            assert backbone["type"] == "mobilenet_v2" and backbone["frozen_stages"] == -1
            assert not backbone["norm_eval"]
        else:
            depth = 50 if row.startswith("r50") else 101
            assert backbone["depth"] == depth
            assert (backbone.get("groups", 1), backbone.get("width_per_group", 64)) == (
                (64, 4) if row.startswith("x101") else (1, 64))
            assert ("dcn" in backbone) == ("dcn" in row)
        cpu = entry["scales"]["cpu"]
        # the CPU schedule: lr 0.01 for 5 epochs (V1) or 3 (V2) (models/reppoints/presets.py)
        epochs, steps = (3, [2.55]) if version == 2 else (5, [4.25])
        assert cpu["schedule"] == {**PRESETS["faster_rcnn_r50_fpn_1x"]["scales"]["cpu"]["schedule"],
                                   "lr": 0.01, "epochs": epochs, "lr_steps": steps}
    model = build_model("reppoints_v2", PRESETS[f"reppoints_v2_{row}"]["scales"]["paper"]["model"], 80,
                        load_pretrained=False)
    head = model.bbox_head
    assert isinstance(head, RepPointsV2Head) and head.corner_snapping
    assert head.tl_pool.pre_a[0].out_channels == 64 and head.shared_convs[0].in_channels == channels
    if row.startswith("mnv2"):
        assert isinstance(model.backbone, MobileNetV2) and model.neck.start_level == 1
    if "dcn" in row:
        assert len(model.backbone.offset_param_names()) > 0


def test_v2_head_parameter_count_at_paper_scale():
    """The V2 head = the V1 head with 6 more DCN input channels + the shared conv, the
    foreground branch, two corner-pool blocks and the four corner outputs."""
    v1 = build_model("reppoints", PRESETS["reppoints_v1_r50_fpn_giou_1x"]["scales"]["paper"]["model"], 80,
                     load_pretrained=False).bbox_head
    v2 = build_model("reppoints_v2", PRESETS[V2]["scales"]["paper"]["model"], 80, load_pretrained=False).bbox_head
    c, k = 256, 64
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    dcn_extra = 2 * c * 6 * 9
    shared = c * c * 9 + 2 * c
    sem = (c * 80 + 80) + (c * c + 2 * c)
    pool = 2 * (c * k * 9 + 2 * k) + (k * c * 9 + 2 * c) + (c * c + 2 * c) + (c * c + 2 * c)
    outs = 2 * ((c * 9 + 1) + (c * 2 * 9 + 2))
    assert n(v2) - n(v1) == dcn_extra + shared + sem + 2 * pool + outs
    assert 7.2e6 < n(v2) < 7.25e6  # 7.21 M (python -m models.summary), V1 5.34 M


def test_cpu_scale_v2_train_and_eval_outputs():
    model = _cpu_model().train()
    images = torch.randn(2, 3, 160, 256)
    sizes = [(160, 256), (150, 200)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model(images, sizes, targets)
    assert set(losses) == {"loss_cls", "loss_pts_init", "loss_pts_refine", *VERIFICATION}
    total_loss(losses).backward()
    model.eval()
    model.bbox_head.score_thr = 0.0
    with torch.no_grad():
        dets = model(images, sizes)
    for det, (h, w) in zip(dets, sizes):
        boxes = det["boxes"]
        assert 0 < boxes.shape[0] <= 100
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
    # the default cpu V2 uses ATSS and the corner snapping of the paper preset
    assert isinstance(model.bbox_head.refine_assigner, ATSSAssigner) and model.bbox_head.corner_snapping
    assert F.relu is not None
