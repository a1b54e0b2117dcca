"""Grid R-CNN Plus grid head: targets, loss, decoding, shapes and fusion (spec cpm_rcnn.md §1)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.d2det.d2det_head import DenseLocalRegressionHead
from models.grid_rcnn.grid_head import (GridHead, decode_grid_boxes, edge_point_sets, gn_conv_trunk, grid_loss,
                                        grid_neighbours, grid_point_pixels, grid_targets, heatmap_peaks,
                                        sub_region_origins)

# RoI 56 x 56 -> extended region (-18, -8, 94, 104), 112 x 112: one whole-map pixel = 2 image px
ROI = torch.tensor([[10.0, 20.0, 66.0, 76.0]])
GT = torch.tensor([[21.0, 31.0, 61.0, 71.0]])


def cross(x: int, y: int) -> set[tuple[int, int]]:
    """(x, y) crop pixels of a radius-1 '+' centred at (x, y), clipped to [0, 28)."""
    pts = {(x, y), (x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)}
    return {(a, b) for a, b in pts if 0 <= a < 28 and 0 <= b < 28}


def positives(target_map: torch.Tensor) -> set[tuple[int, int]]:
    """(x, y) of the ones of a [28, 28] map."""
    ys, xs = torch.nonzero(target_map, as_tuple=True)
    return set(zip(xs.tolist(), ys.tolist()))


def reference_targets(rois, gts, radius=1, ratio=1.0):
    """Per-RoI, per-point loop over the whole 56 x 56 map, then the crops (spec §1.5)."""
    out = torch.zeros(rois.shape[0], 9, 28, 28)
    origins = [0, 14, 28]
    for i in range(rois.shape[0]):
        x1, y1, x2, y2 = rois[i].tolist()
        w, h = x2 - x1, y2 - y1
        ex1, ey1, ex2, ey2 = x1 - ratio * w / 2, y1 - ratio * h / 2, x2 + ratio * w / 2, y2 + ratio * h / 2
        if ex2 - ex1 <= 3 or ey2 - ey1 <= 3:
            continue
        gx1, gy1, gx2, gy2 = gts[i].tolist()
        for j in range(9):
            col, row = j // 3, j % 3
            px = gx1 + col / 2 * (gx2 - gx1)
            py = gy1 + row / 2 * (gy2 - gy1)
            cx = int((px - ex1) / (ex2 - ex1) * 56)
            cy = int((py - ey1) / (ey2 - ey1) * 56)
            whole = torch.zeros(56, 56)
            for x in range(cx - radius, cx + radius + 1):
                for y in range(cy - radius, cy + radius + 1):
                    if 0 <= x < 56 and 0 <= y < 56 and (x - cx) ** 2 + (y - cy) ** 2 <= radius ** 2:
                        whole[y, x] = 1
            x0, y0 = origins[col], origins[row]
            out[i, j] = whole[y0:y0 + 28, x0:x0 + 28]
    return out


def small_head(fuse: bool) -> GridHead:
    torch.manual_seed(0)
    return GridHead(in_channels=8, point_feat_channels=4, num_convs=1, fuse_neighbours=fuse).eval()


# ---------------------------------------------------------------- geometry


def test_grid_geometry_constants():
    assert sub_region_origins(3, 56) == [(0, 0), (0, 14), (0, 28), (14, 0), (14, 14), (14, 28),
                                         (28, 0), (28, 14), (28, 28)]
    assert edge_point_sets(3) == {"x1": [0, 1, 2], "y1": [0, 3, 6], "x2": [6, 7, 8], "y2": [2, 5, 8]}
    nbs = grid_neighbours(3)
    assert nbs[0] == (1, 3) and nbs[4] == (1, 3, 5, 7) and nbs[7] == (4, 6, 8)
    assert [len(n) for n in nbs] == [2, 3, 2, 3, 4, 3, 2, 3, 2] and sum(map(len, nbs)) == 24


# ---------------------------------------------------------------- targets


def test_targets_hand_case_corner_centre_and_others():
    t = grid_targets(ROI, GT)
    assert t.shape == (1, 9, 28, 28) and t.dtype == torch.float32
    # top-left point (21, 31): (21 + 18) / 2 = 19.5 -> 19, (31 + 8) / 2 = 19.5 -> 19; crop origin (0, 0)
    assert positives(t[0, 0]) == cross(19, 19)
    # centre (41, 51): 29.5 -> 29 in the whole map, crop origin (14, 14) -> (15, 15)
    assert positives(t[0, 4]) == cross(15, 15)
    # bottom-left (21, 71): (19, 39) -> crop origin (0, 28) -> (19, 11); top-right (61, 31): (39, 19) -> (11, 19)
    assert positives(t[0, 2]) == cross(19, 11)
    assert positives(t[0, 6]) == cross(11, 19)
    # bottom-right (61, 71): (39, 39) -> origin (28, 28) -> (11, 11)
    assert positives(t[0, 8]) == cross(11, 11)
    assert int(t.sum()) == 45
    cx, cy = grid_point_pixels(ROI, GT)
    assert cx[0].tolist() == [19, 19, 19, 29, 29, 29, 39, 39, 39]
    assert cy[0].tolist() == [19, 29, 39, 19, 29, 39, 19, 29, 39]


def test_targets_truncate_toward_zero_and_clip_to_map():
    roi = torch.tensor([[0.0, 0.0, 100.0, 100.0]])  # E = (-50, -50, 150, 150), 200 px -> 56
    # x1 at -52.5: (-2.5 / 200) * 56 = -0.7 -> int() gives 0 (floor would give -1); y1 = 0 -> 14
    t = grid_targets(roi, torch.tensor([[-52.5, 0.0, 60.0, 80.0]]))
    assert positives(t[0, 0]) == {(0, 14), (1, 14), (0, 13), (0, 15)}  # (-1, 14) is off the map
    # x1 at 51: 101 / 200 * 56 = 28.28 -> 28, outside point 0's crop [0, 28): only (27, 14) remains
    t = grid_targets(roi, torch.tensor([[51.0, 0.0, 60.0, 80.0]]))
    assert positives(t[0, 0]) == {(27, 14)}


def test_targets_tiny_rois_are_all_zero():
    gt = torch.tensor([[10.0, 10.0, 12.0, 30.0]])
    # E_w = 2 * 1.5 = 3.0 <= 3 -> zero; E_w = 3.2 > 3 -> targets
    assert grid_targets(torch.tensor([[10.0, 10.0, 11.5, 30.0]]), gt).sum() == 0
    assert grid_targets(torch.tensor([[10.0, 10.0, 11.6, 30.0]]), gt).sum() > 0
    assert grid_targets(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 9, 28, 28)


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_targets_match_a_reference_loop(ratio):
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(40, 2, generator=g) * 300
    wh = torch.rand(40, 2, generator=g) * 200 + 2
    rois = torch.cat([xy, xy + wh], 1)
    gts = rois + (torch.rand(40, 4, generator=g) - 0.5) * wh.repeat(1, 2) * 0.8
    gts = torch.cat([torch.minimum(gts[:, :2], gts[:, 2:]), torch.maximum(gts[:, :2], gts[:, 2:])], 1)
    expected = reference_targets(rois, gts, ratio=ratio)
    got = grid_targets(rois, gts, mapping_ratio=ratio)
    assert torch.equal(got, expected)
    assert expected.sum() > 100  # the case is not trivially empty


# ---------------------------------------------------------------- decoding


def test_decode_a_hand_placed_peak_gives_the_gt_box():
    cx, cy = grid_point_pixels(ROI, GT)
    origins = torch.tensor(sub_region_origins(3, 56))
    logits = torch.full((1, 9, 28, 28), -10.0)
    for j in range(9):
        logits[0, j, cy[0, j] - origins[j, 1], cx[0, j] - origins[j, 0]] = 10.0
    # pixel 19 -> -18 + 19.5 * 2 = 21, pixel 39 -> 61 (likewise in y): exactly the gt
    torch.testing.assert_close(decode_grid_boxes(logits, ROI), GT, rtol=0, atol=1e-4)
    scores, u, v = heatmap_peaks(logits)
    torch.testing.assert_close(scores, torch.full((1, 9), torch.sigmoid(torch.tensor(10.0)).item()))
    assert torch.equal(u, cx) and torch.equal(v, cy)


def smoothed(targets: torch.Tensor) -> torch.Tensor:
    """Cross-filtered targets: the '+' centre scores 5, its arms 2, so the argmax is the centre."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    n, c, h, w = targets.shape
    return F.conv2d(targets.reshape(n * c, 1, h, w), k[None, None], padding=1).reshape(n, c, h, w)


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_decode_targets_recovers_gt_within_half_a_map_pixel(ratio):
    torch.testing.assert_close(decode_grid_boxes(smoothed(grid_targets(ROI, GT)) * 4 - 2, ROI), GT,
                               rtol=0, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 400
    wh = torch.rand(30, 2, generator=g) * 150 + 20
    rois = torch.cat([xy, xy + wh], 1)
    gts = rois + (torch.rand(30, 4, generator=g) - 0.5) * wh.repeat(1, 2) * 0.2
    logits = smoothed(grid_targets(rois, gts, mapping_ratio=ratio)) * 4 - 2
    boxes = decode_grid_boxes(logits, rois, mapping_ratio=ratio)
    pixel = ((1 + ratio) * wh / 56).repeat(1, 2)  # one whole-map pixel in image px
    err = (boxes - gts).abs()
    assert (err <= 0.5 * pixel + 1e-3).all()
    assert err.max() > 0.05  # quantisation is real (the check is not vacuous)


def test_decode_weights_edge_points_by_their_probability():
    logits = torch.full((1, 9, 28, 28), -20.0)
    # x1 points 0, 1, 2 with probabilities 0.75, 0.5, 0.25 at whole-map columns 19, 21, 9
    # -> x = -18 + (U + 0.5) * 2 = 21, 25, 1 -> x1 = (0.75*21 + 0.5*25 + 0.25*1) / 1.5 = 19
    logits[0, 0, 5, 19] = math.log(3.0)
    logits[0, 1, 5, 21] = 0.0
    logits[0, 2, 5, 9] = -math.log(3.0)
    box = decode_grid_boxes(logits, ROI)
    torch.testing.assert_close(box[0, 0], torch.tensor(19.0), rtol=0, atol=1e-4)
    # every x1 probability underflows to 0: plain mean instead of 0/0
    logits[0, :3] = -200.0
    box = decode_grid_boxes(logits, ROI)
    assert torch.isfinite(box).all()
    torch.testing.assert_close(box[0, 0], torch.tensor((-17.0 + -17.0 + -17.0) / 3), rtol=0, atol=1e-4)


def test_decode_clamps_only_with_image_sizes():
    cx, cy = grid_point_pixels(ROI, GT)
    logits = torch.full((1, 9, 28, 28), -10.0)
    origins = torch.tensor(sub_region_origins(3, 56))
    for j in range(9):
        logits[0, j, cy[0, j] - origins[j, 1], cx[0, j] - origins[j, 0]] = 10.0
    torch.testing.assert_close(decode_grid_boxes(logits, ROI, image_sizes_per_box=(60, 50)),
                               torch.tensor([[21.0, 31.0, 50.0, 60.0]]), rtol=0, atol=1e-4)
    torch.testing.assert_close(decode_grid_boxes(logits, ROI, image_sizes_per_box=torch.tensor([[100, 100]])),
                               GT, rtol=0, atol=1e-4)
    assert decode_grid_boxes(torch.zeros(0, 9, 28, 28), torch.zeros(0, 4)).shape == (0, 4)


# ---------------------------------------------------------------- loss


def test_loss_hand_values():
    t = grid_targets(ROI, GT)  # 45 positives of 9 * 28 * 28 = 7056
    zeros = torch.zeros(1, 9, 28, 28, requires_grad=True)
    torch.testing.assert_close(grid_loss(zeros, t), torch.tensor(15 * math.log(2.0)))
    # with fusion on both heatmaps count, each x15
    torch.testing.assert_close(grid_loss({"fused": zeros, "unfused": zeros}, t), torch.tensor(30 * math.log(2.0)))
    # +2 on the positives, -2 elsewhere: every element costs log(1 + e^-2)
    torch.testing.assert_close(grid_loss(t * 4 - 2, t), torch.tensor(15 * math.log1p(math.exp(-2.0))))
    # a constant logit c: mean over ALL elements, not over the positives
    c = -math.log(0.99 / 0.01)
    expected = 15 * (45 * math.log1p(math.exp(-c)) + 7011 * math.log1p(math.exp(c))) / 7056
    torch.testing.assert_close(grid_loss(torch.full((1, 9, 28, 28), c), t), torch.tensor(expected))


def test_loss_without_positives_is_zero_and_differentiable():
    pred = torch.zeros(0, 9, 28, 28, requires_grad=True)
    loss = grid_loss({"unfused": pred}, torch.zeros(0, 9, 28, 28))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert pred.grad is not None and pred.grad.shape == (0, 9, 28, 28)


# ---------------------------------------------------------------- module


def test_default_head_shapes_structure_and_init():
    torch.manual_seed(0)
    head = GridHead()
    convs = [m for m in head.trunk if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in head.trunk if isinstance(m, torch.nn.GroupNorm)]
    assert len(convs) == 8 and convs[0].stride == (2, 2) and all(c.stride == (1, 1) for c in convs[1:])
    assert convs[0].in_channels == 256 and all(c.out_channels == 576 and c.bias is not None for c in convs)
    assert all(n.num_groups == 36 for n in norms) and head.deconv1_norm.num_groups == 9
    assert head.deconv1.groups == 9 and head.deconv2.groups == 9 and head.deconv2.out_channels == 9
    torch.testing.assert_close(head.deconv2.bias, torch.full((9,), -math.log(99.0)))
    assert head.fusion.num_edges == 24
    # mmdet GridHead's parameter count: biased convs, GN, 2 grouped deconvs, 48 edge transforms
    trunk = 256 * 576 * 9 + 576 + 7 * (576 * 576 * 9 + 576) + 8 * 2 * 576
    deconvs = 576 * 64 * 16 + 576 + 2 * 576 + 576 * 16 + 9
    fusion = 48 * (64 * 25 + 64 + 64 * 64 + 64)
    assert sum(p.numel() for p in head.parameters()) == trunk + deconvs + fusion

    x = torch.randn(2, 256, 14, 14)
    head.train()
    assert head.forward_trunk(x).shape == (2, 576, 7, 7)
    out = head(x)
    assert set(out) == {"fused", "unfused"} and all(v.shape == (2, 9, 28, 28) for v in out.values())
    with torch.no_grad():
        head.eval()
        out = head(x)
        assert set(out) == {"fused"} and out["fused"].shape == (2, 9, 28, 28)
        assert head(torch.zeros(0, 256, 14, 14))["fused"].shape == (0, 9, 28, 28)
        boxes = head.predict_boxes(out, torch.tensor([[0.0, 0.0, 50.0, 40.0], [10.0, 10.0, 30.0, 90.0]]), (100, 100))
        assert boxes.shape == (2, 4) and torch.isfinite(boxes).all()
    with pytest.raises(ValueError):
        head(torch.zeros(1, 256, 7, 7))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = GridHead(in_channels=32, point_feat_channels=8, num_convs=3).train()
    rois = torch.tensor([[0.0, 0.0, 60.0, 40.0], [20.0, 10.0, 90.0, 100.0]])
    gts = torch.tensor([[5.0, 2.0, 58.0, 44.0], [25.0, 5.0, 80.0, 95.0]])
    x = torch.randn(2, 32, 14, 14, requires_grad=True)
    loss = head.loss(head(x), head.get_targets(rois, gts))["loss_grid"]
    assert 2 * 15 * 0.0 < loss.item() < 2 * 15 * 0.1  # the -4.6 prior: about 2 * 15 * 0.05 at init
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def point_dependencies(head: GridHead, key: str) -> list[set[int]]:
    """For each perturbed trunk channel group j: the points whose heatmap changes."""
    torch.manual_seed(1)
    c = head.point_feat_channels
    feat = torch.randn(1, 9 * c, 7, 7)
    with torch.no_grad():
        base = head.forward_heatmaps(feat)[key]
        deps = []
        for j in range(9):
            f = feat.clone()
            f[:, j * c:(j + 1) * c] += 1.0
            diff = (head.forward_heatmaps(f)[key] - base).abs().flatten(2).amax(-1)[0]
            assert ((diff == 0) | (diff > 1e-6)).all()  # unchanged points are bit-identical
            deps.append({k for k in range(9) if diff[k] > 0})
    return deps


def manhattan(a: int, b: int) -> int:
    return abs(a // 3 - b // 3) + abs(a % 3 - b % 3)


def test_without_fusion_each_point_depends_only_on_its_own_group():
    head = small_head(fuse=False)
    assert head.fusion is None
    assert point_dependencies(head, "unfused") == [{j} for j in range(9)]
    head.train()
    assert set(head.forward_heatmaps(torch.randn(1, 36, 7, 7))) == {"unfused"}


def test_fusion_reaches_two_hops_and_uses_the_unfused_base():
    head = small_head(fuse=True)
    # second order over first order: point k hears every group within Manhattan distance 2
    deps = point_dependencies(head, "fused")
    assert deps == [{k for k in range(9) if manhattan(j, k) <= 2} for j in range(9)]
    assert 8 not in deps[0] and 0 not in deps[8]  # opposite corners stay independent
    # without first-order messages F1 = F: one hop only
    with torch.no_grad():
        head.fusion.first_dw.weight.zero_()
        head.fusion.first_dw.bias.zero_()
        head.fusion.first_pw.bias.zero_()
    assert point_dependencies(head, "fused") == [{k for k in range(9) if manhattan(j, k) <= 1} for j in range(9)]
    # without second-order messages F2 = F (the unfused base, not F1): fused == unfused
    with torch.no_grad():
        head.fusion.second_pw.weight.zero_()
        head.fusion.second_pw.bias.zero_()
        head.train()
        out = head.forward_heatmaps(torch.randn(2, 36, 7, 7))
    assert torch.equal(out["fused"], out["unfused"])


def test_fusion_matches_an_explicit_per_edge_computation():
    head = small_head(fuse=True)
    fus = head.fusion
    c = 4
    feat = torch.randn(2, 36, 7, 7)

    def transform(dw, pw, e, x):
        sl = slice(e * c, (e + 1) * c)
        y = F.conv2d(x, dw.weight[sl], dw.bias[sl], padding=2, groups=c)
        return F.conv2d(y, pw.weight[sl], pw.bias[sl])

    parts = [feat[:, j * c:(j + 1) * c] for j in range(9)]
    edges = list(zip(fus.edge_src.tolist(), fus.edge_dst.tolist()))
    first = [p.clone() for p in parts]
    second = [p.clone() for p in parts]
    for e, (j, i) in enumerate(edges):
        first[i] = first[i] + transform(fus.first_dw, fus.first_pw, e, parts[j])
    for e, (j, i) in enumerate(edges):
        second[i] = second[i] + transform(fus.second_dw, fus.second_pw, e, first[j])
    with torch.no_grad():
        torch.testing.assert_close(fus(feat), torch.cat(second, 1), rtol=1e-5, atol=1e-5)


def test_init_choices():
    torch.manual_seed(0)
    mm = GridHead(in_channels=16, point_feat_channels=8, num_convs=2)
    pt = GridHead(in_channels=16, point_feat_channels=8, num_convs=2, init="pytorch")
    assert torch.count_nonzero(mm.trunk[0].bias) == 0 and torch.count_nonzero(pt.trunk[0].bias) > 0
    torch.testing.assert_close(mm.deconv2.bias, torch.full((9,), -math.log(99.0)))
    assert (pt.deconv2.bias.abs() < 1.0).all()
    # Kaiming fan_out per edge: depthwise std sqrt(2 / (8 * 25)) = 0.1, not the stacked conv's fan
    assert abs(mm.fusion.first_dw.weight.std().item() - 0.1) < 0.01
    with pytest.raises(ValueError):
        GridHead(init="xavier")


def test_trunk_builder_has_d2det_trunk_layout():
    dlr = DenseLocalRegressionHead(in_channels=16, conv_channels=36, num_convs=3, gn_groups=9)
    ours = gn_conv_trunk(16, 36, 3, 9, bias=False)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in dlr.trunk.state_dict().items()]
    assert [type(m) for m in ours] == [type(m) for m in dlr.trunk]
    assert ours[0].stride == dlr.trunk[0].stride == (2, 2)
