"""Grid R-CNN "Plus" grid head and its targets, loss and box decoding (spec cpm_rcnn.md §1).

The base of CPM R-CNN. Only the head is here; RoI selection, pooling and the detector live in
the RoI head that will use it.

Conventions (all boxes ``(x1, y1, x2, y2)`` in input-image pixels, no +1 widths):

- ``G = g*g`` grid points (9, ``g = 3``), indexed **column-major**: ``j = g*col + row`` with
  ``col = j // g`` (x: 0 left, 1 centre, 2 right) and ``row = j % g`` (y: 0 top ... 2 bottom).
  Edge point sets (``g = 3``): x1 ``{0, 1, 2}``, y1 ``{0, 3, 6}``, x2 ``{6, 7, 8}``,
  y2 ``{2, 5, 8}``.
- RoI features are ``S x S`` (14); the whole virtual heatmap is ``M = 4*S`` (56) pixels per
  side and covers the *extended region* ``E`` of the RoI ``b``: ``b`` enlarged by
  ``r*w/2`` and ``r*h/2`` per side (``r`` = ``mapping_ratio``; 1 for Grid R-CNN, so ``E`` is
  2w x 2h; CPM's cascade stages use 1, 0.5, 0.25). Features are still pooled from ``b``.
- Each point predicts only its ``M/2 x M/2`` (28 x 28) sub-region of the whole map, with
  origin ``(x0, y0)`` per column / row index ``(0, M/4, M/2)`` = ``(0, 14, 28)``.
- Whole-map pixel ``(U, V)`` (integers) has its centre at
  ``x = E_x1 + (U + 0.5)/M * E_w`` (likewise y).

Architecture (mmdet ``GridHead`` / CPM ``roi_grid_head`` + ``Grid_output``), for R RoIs:

- trunk: ``num_convs`` (8) x [conv3x3 pad 1 (first stride 2) -> GN(4G = 36) -> ReLU],
  256 -> 576 -> ... -> 576: FloatTensor[R, 576, S/2, S/2];
- channel group ``j`` = channels ``[C_p*j, C_p*(j+1))`` (``C_p`` = 64) belongs to point j;
- optional neighbour fusion (§1.4), see :class:`NeighbourFusion`;
- deconv1: ConvTranspose 4x4 stride 2 pad 1, 576 -> 576, groups G -> GN(G = 9) -> ReLU;
- deconv2: ConvTranspose 4x4 stride 2 pad 1, 576 -> G, groups G: logits FloatTensor[R, G, 2S, 2S]
  (28 x 28). Both deconvs and the GN after deconv1 are per point, so without fusion the
  heatmap of point j depends only on channel group j of the trunk output.

Decisions (the spec's open points and code quirks that concern the head):

1. Neighbour fusion is a constructor flag, ``fuse_neighbours`` (default True = the mmdet /
   STVIR Grid R-CNN Plus baseline); CPM R-CNN turns it off (spec §1.4, §6.2). With fusion
   on, training returns the fused *and* the unfused heatmap (same deconvs) and the loss is
   the sum of both; inference computes only the fused one. With fusion off only the unfused
   heatmap exists, in training and at test.
2. Initialisation is a constructor choice, ``init``: ``"mmdet"`` (default; Kaiming normal
   fan_out/ReLU with zero bias for every Conv2d including the fusion transforms, computed per
   directed edge as in mmdet's per-edge modules; ConvTranspose N(0, 0.001) with zero bias;
   deconv2 bias ``-log(0.99/0.01)``) or ``"pytorch"`` (PyTorch defaults: what CPM actually
   trains with, since its ``init_weights`` is never called; spec §2.8.6).
3. The trunk convs have a bias (``conv_bias=True``) although GN follows: both mmdet
   (``ConvModule(..., bias=True)``) and CPM (plain ``nn.Conv2d``) have it. This is why D2Det's
   ``DenseLocalRegressionHead`` trunk (bias-free, Kaiming-only init, and reachable only by
   building a whole DLR head with its two output convs) is not reused; :func:`gn_conv_trunk`
   builds the same flat ``[conv, GN, ReLU] * n`` layout with a bias switch, so D2Det can share
   it later (``bias=False``) without changing its state-dict keys.
4. Targets follow the reference arithmetic in float32: point ``p_x = f*g_x1 + (1-f)*g_x2``
   with ``f = 1 - col/(g-1)``; ``cx = trunc(((p_x - E_x1) / E_w) * M)`` (truncation toward
   zero, so -0.7 -> 0, not floor); positives are the whole-map pixels within Euclidean
   distance ``pos_radius`` (1: a 5-pixel "+") of ``(cx, cy)`` inside ``[0, M)``, then
   cropped to the point's sub-region (computed directly in the crop; no 56 x 56 map).
5. Tiny RoIs: if ``E_w <= g`` or ``E_h <= g`` (the references compare the extended size with
   ``grid_size`` = 3 px) the RoI's targets are all zero, and it still counts in the loss mean.
6. Loss: ``loss_weight`` (15) x BCE-with-logits averaged over all ``R*G*(2S)^2`` elements, per
   heatmap present (fused + unfused with fusion on). With no RoI (R = 0) the references would
   give NaN (mean of nothing); here the loss is a zero connected to the graph. The BCE is
   computed in float32.
7. Decoding: argmax over each 28 x 28 crop (first maximum in row-major order on ties), plus
   the crop origin, mapped with CPM's cascade form
   ``x = (b_x1 - r*w/2) + ((U + 0.5)/M) * (1 + r) * w`` (bit-identical to mmdet's
   ``(U + 0.5)/(M/2) * w + b_x1 - w/2`` for r = 1). Each edge is the sigmoid-probability
   weighted mean of its g points (normalised by the sum of probabilities, as every
   implementation does, not by g as the paper's Eq. 2 is recalled). If all g probabilities of
   an edge underflow to 0 the plain mean is used instead of 0/0.
8. Clamping: both references' final clamp is a no-op (an in-place ``clamp_`` on an
   advanced-indexing copy; CPM's would also swap w and h). :func:`decode_grid_boxes` clamps
   to ``[0, W] x [0, H]`` (mmdet v2's intended bound, as the repository's box head clips) only
   when image sizes are passed; without them the boxes are returned unclamped, as the
   references effectively do.
9. GN groups: 4G = 36 after every trunk conv and G = 9 after deconv1 (spec §2.8.10).
10. RoI selection is not part of the head: the ≤192 jittered positives per batch (mmdet, spec
    §1.8) or ≤96 unjittered per image (CPM, spec §6.8-9) need the sampling results and belong
    to the RoI head: :class:`~models.grid_rcnn.grid_roi_head.GridRoIHead` selects them with
    :func:`~models.common.task_modules.regression_sampling.select_positive_rois` (shared with D2Det; cap
    per batch or per image, jitter optional).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GridHead", "NeighbourFusion", "gn_conv_trunk", "grid_neighbours", "edge_point_sets",
           "sub_region_origins", "extended_regions", "grid_point_pixels", "grid_targets", "grid_loss",
           "heatmap_peaks", "decode_grid_boxes", "GRID_LOSS_WEIGHT"]

GRID_LOSS_WEIGHT = 15.0  # mmdet / STVIR / CPM (LOSS_WEIGHT)
GridInit = Literal["mmdet", "pytorch"]


# ---------------------------------------------------------------------------- grid geometry
def _grid_size(grid_points: int) -> int:
    g = int(round(math.sqrt(grid_points)))
    if g * g != grid_points or g < 2:
        raise ValueError(f"grid_points must be a square number >= 4, got {grid_points}")
    return g


def grid_neighbours(grid_size: int = 3) -> list[tuple[int, ...]]:
    """4-connected neighbours of every point (column-major index), in the order left, up,
    down, right. For g = 3: corners have 2, edge middles 3, the centre 4 (24 directed edges)."""
    out = []
    for col in range(grid_size):
        for row in range(grid_size):
            nb = []
            if col > 0:
                nb.append((col - 1) * grid_size + row)
            if row > 0:
                nb.append(col * grid_size + row - 1)
            if row < grid_size - 1:
                nb.append(col * grid_size + row + 1)
            if col < grid_size - 1:
                nb.append((col + 1) * grid_size + row)
            out.append(tuple(nb))
    return out


def edge_point_sets(grid_size: int = 3) -> dict[str, list[int]]:
    """Point indices on each box edge: ``{"x1": [0, 1, 2], "y1": [0, 3, 6], "x2": [6, 7, 8],
    "y2": [2, 5, 8]}`` for g = 3."""
    g = grid_size
    return {"x1": list(range(g)), "y1": [i * g for i in range(g)],
            "x2": [g * (g - 1) + i for i in range(g)], "y2": [i * g + g - 1 for i in range(g)]}


def sub_region_origins(grid_size: int = 3, whole_map_size: int = 56) -> list[tuple[int, int]]:
    """Origin ``(x0, y0)`` of each point's ``M/2 x M/2`` sub-region in the whole map.

    First index 0, last index ``M//4*2``, a middle index ``i`` at
    ``max(int((i/(g-1) - 0.25) * M), 0)`` (Grid R-CNN Plus); for g = 3, M = 56: 0, 14, 28.
    """
    half = whole_map_size // 4 * 2

    def origin(i: int) -> int:
        if i == 0:
            return 0
        if i == grid_size - 1:
            return half
        return max(int((i / (grid_size - 1) - 0.25) * whole_map_size), 0)

    return [(origin(j // grid_size), origin(j % grid_size)) for j in range(grid_size * grid_size)]


def extended_regions(rois: Tensor, mapping_ratio: float = 1.0) -> Tensor:
    """FloatTensor[P, 4]: ``b`` enlarged by ``r*w/2`` and ``r*h/2`` on every side (pixels)."""
    w = rois[:, 2] - rois[:, 0]
    h = rois[:, 3] - rois[:, 1]
    r = float(mapping_ratio)
    return torch.stack([rois[:, 0] - r * (w / 2), rois[:, 1] - r * (h / 2),
                        rois[:, 2] + r * (w / 2), rois[:, 3] + r * (h / 2)], dim=1)


def _point_factors(grid_size: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Interpolation factors ``(f_x, f_y)`` FloatTensor[G]: point = f*x1 + (1-f)*x2."""
    j = torch.arange(grid_size * grid_size, device=like.device)
    fx = 1.0 - (j // grid_size).to(like.dtype) / (grid_size - 1)
    fy = 1.0 - (j % grid_size).to(like.dtype) / (grid_size - 1)
    return fx, fy


def grid_point_pixels(rois: Tensor, gt_boxes: Tensor, grid_points: int = 9, whole_map_size: int = 56,
                      mapping_ratio: float = 1.0) -> tuple[Tensor, Tensor]:
    """Whole-map pixel of every gt grid point (Decision 4).

    Args:
        rois: FloatTensor[P, 4] positive RoIs (pixels) the features are pooled from.
        gt_boxes: FloatTensor[P, 4] their matched gt boxes (pixels).
        grid_points: G.
        whole_map_size: M (56).
        mapping_ratio: r of the extended region.

    Returns:
        ``(cx, cy)`` LongTensor[P, G] each: ``trunc(((p - E_1) / E_size) * M)``; may lie outside
        ``[0, M)``. Rows of degenerate RoIs (``E_w`` or ``E_h`` == 0) are meaningless.
    """
    g = _grid_size(grid_points)
    rois = rois.float()
    gt = gt_boxes.float()
    ext = extended_regions(rois, mapping_ratio)
    ew = ext[:, 2] - ext[:, 0]
    eh = ext[:, 3] - ext[:, 1]
    ew = torch.where(ew == 0, torch.ones_like(ew), ew)
    eh = torch.where(eh == 0, torch.ones_like(eh), eh)
    fx, fy = _point_factors(g, rois)
    px = fx * gt[:, 0:1] + (1 - fx) * gt[:, 2:3]
    py = fy * gt[:, 1:2] + (1 - fy) * gt[:, 3:4]
    cx = torch.trunc((px - ext[:, 0:1]) / ew[:, None] * whole_map_size)
    cy = torch.trunc((py - ext[:, 1:2]) / eh[:, None] * whole_map_size)
    # far-away points only need to stay far away; clamping keeps the int64 squares small
    lim = 2 * whole_map_size
    cx = torch.nan_to_num(cx).clamp(-lim, 2 * lim).long()
    cy = torch.nan_to_num(cy).clamp(-lim, 2 * lim).long()
    return cx, cy


def grid_targets(rois: Tensor, gt_boxes: Tensor, grid_points: int = 9, roi_feat_size: int = 14,
                 pos_radius: int = 1, mapping_ratio: float = 1.0) -> Tensor:
    """Heatmap targets with extended region mapping and point-specific sub-regions (§1.5).

    Args:
        rois: FloatTensor[P, 4] positive RoIs in image pixels (the boxes the features come from).
        gt_boxes: FloatTensor[P, 4] matched gt boxes in image pixels.
        grid_points: G (9).
        roi_feat_size: S (14); the whole map is ``M = 4S`` and each crop ``2S``.
        pos_radius: Euclidean radius (whole-map pixels) of the positive disc (1: "+" cross).
        mapping_ratio: r of the extended region (1 = Grid R-CNN's 2x region).

    Returns:
        FloatTensor[P, G, 2S, 2S] of 0/1 (on ``rois.device``). RoIs with ``E_w <= g`` or
        ``E_h <= g`` get all zeros (Decision 5).
    """
    g = _grid_size(grid_points)
    whole = 4 * roi_feat_size
    half = whole // 4 * 2
    p = rois.shape[0]
    if p == 0:
        return rois.new_zeros((0, grid_points, half, half), dtype=torch.float32)
    cx, cy = grid_point_pixels(rois, gt_boxes, grid_points, whole, mapping_ratio)
    origins = torch.tensor(sub_region_origins(g, whole), dtype=torch.long, device=rois.device)
    pix = torch.arange(half, dtype=torch.long, device=rois.device)
    # whole-map coordinate of every crop pixel, minus the point's pixel
    dx = pix[None, None, None, :] + origins[None, :, 0, None, None] - cx[:, :, None, None]  # [P, G, 1, 2S]
    dy = pix[None, None, :, None] + origins[None, :, 1, None, None] - cy[:, :, None, None]  # [P, G, 2S, 1]
    pos = dx * dx + dy * dy <= int(pos_radius) ** 2
    ext = extended_regions(rois.float(), mapping_ratio)
    big = ((ext[:, 2] - ext[:, 0]) > g) & ((ext[:, 3] - ext[:, 1]) > g)
    return (pos & big[:, None, None, None]).to(torch.float32)


# ---------------------------------------------------------------------------- loss
def grid_loss(heatmaps: Tensor | dict[str, Tensor], targets: Tensor,
              loss_weight: float = GRID_LOSS_WEIGHT) -> Tensor:
    """``loss_weight * mean BCE-with-logits`` per heatmap, summed over the heatmaps (§1.6).

    Args:
        heatmaps: logits FloatTensor[P, G, 2S, 2S], or the head's output dict (its
            ``"fused"`` and ``"unfused"`` entries that are present are each weighted and summed).
        targets: FloatTensor[P, G, 2S, 2S] from :func:`grid_targets`.
        loss_weight: 15.

    Returns:
        scalar FloatTensor; 0 (connected to the graph) when P = 0 (Decision 6).
    """
    if isinstance(heatmaps, dict):
        preds = [heatmaps[k] for k in ("fused", "unfused") if heatmaps.get(k) is not None]
        if not preds:
            raise ValueError("no 'fused' or 'unfused' heatmap in the head output")
    else:
        preds = [heatmaps]
    total = None
    for pred in preds:
        if pred.shape != targets.shape:
            raise ValueError(f"heatmap {tuple(pred.shape)} and target {tuple(targets.shape)} differ")
        if pred.numel() == 0:
            term = pred.float().sum() * 0.0
        else:
            term = loss_weight * F.binary_cross_entropy_with_logits(pred.float(), targets.float(), reduction="mean")
        total = term if total is None else total + term
    return total


# ---------------------------------------------------------------------------- decoding
def heatmap_peaks(logits: Tensor, roi_feat_size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per point: probability and whole-map pixel of its crop's maximum (§1.7 steps 1-3).

    Args:
        logits: FloatTensor[R, G, 2S, 2S].
        roi_feat_size: S (default: half the crop size).

    Returns:
        ``scores`` FloatTensor[R, G] (sigmoid of the max logit), ``U``, ``V`` LongTensor[R, G]
        whole-map column / row (crop argmax, first in row-major order on ties, plus the origin).
    """
    r, gp, h, w = logits.shape
    g = _grid_size(gp)
    s = roi_feat_size if roi_feat_size is not None else h // 2
    if h != w or h != (4 * s) // 4 * 2:
        raise ValueError(f"expected {(4 * s) // 4 * 2}x{(4 * s) // 4 * 2} heatmaps, got {h}x{w}")
    probs = torch.sigmoid(logits.float()).reshape(r, gp, h * w)
    idx = probs.argmax(dim=-1)
    scores = probs.gather(-1, idx[..., None])[..., 0]
    origins = torch.tensor(sub_region_origins(g, 4 * s), dtype=torch.long, device=logits.device)
    return scores, idx % w + origins[:, 0], torch.div(idx, w, rounding_mode="floor") + origins[:, 1]


def decode_grid_boxes(logits: Tensor, rois: Tensor, mapping_ratio: float = 1.0,
                      image_sizes_per_box: Tensor | tuple[int, int] | None = None) -> Tensor:
    """Boxes from grid heatmaps (§1.7; Decisions 7-8).

    Args:
        logits: FloatTensor[R, G, 2S, 2S] heatmap logits (the fused one when fusion is on).
        rois: FloatTensor[R, 4] the boxes the features were pooled from (pixels).
        mapping_ratio: r of the extended region the heatmaps were trained with.
        image_sizes_per_box: (h, w) for every box, Tensor[R, 2] or one tuple; if given the boxes
            are clamped to ``[0, w] x [0, h]``, otherwise returned unclamped.

    Returns:
        FloatTensor[R, 4] boxes in pixels.
    """
    r_, gp, h, _ = logits.shape
    if rois.shape[0] != r_:
        raise ValueError(f"{rois.shape[0]} RoIs for {r_} heatmaps")
    g = _grid_size(gp)
    whole = 2 * h  # = 4S for the 2S x 2S crops
    if r_ == 0:
        return rois.new_zeros((0, 4), dtype=torch.float32)
    scores, u, v = heatmap_peaks(logits, h // 2)
    b = rois.float()
    widths = (b[:, 2] - b[:, 0])[:, None]
    heights = (b[:, 3] - b[:, 1])[:, None]
    ratio = float(mapping_ratio)
    xs = (u.float() + 0.5) / whole * (1 + ratio) * widths + (b[:, 0:1] - ratio * (widths / 2))
    ys = (v.float() + 0.5) / whole * (1 + ratio) * heights + (b[:, 1:2] - ratio * (heights / 2))
    sets = edge_point_sets(g)

    def vote(coords: Tensor, inds: list[int]) -> Tensor:
        s = scores[:, inds]
        total = s.sum(dim=1, keepdim=True)
        s = torch.where(total > 0, s, torch.ones_like(s))
        return (coords[:, inds] * s).sum(dim=1) / s.sum(dim=1)

    boxes = torch.stack([vote(xs, sets["x1"]), vote(ys, sets["y1"]), vote(xs, sets["x2"]), vote(ys, sets["y2"])],
                        dim=1)
    if image_sizes_per_box is not None:
        if isinstance(image_sizes_per_box, Tensor):
            hw = image_sizes_per_box.to(device=boxes.device, dtype=boxes.dtype).reshape(-1, 2).expand(r_, 2)
        else:
            hw = boxes.new_tensor([float(image_sizes_per_box[0]), float(image_sizes_per_box[1])]).expand(r_, 2)
        upper = hw.flip(-1).repeat(1, 2)  # (w, h, w, h)
        boxes = torch.minimum(boxes.clamp(min=0), upper)
    return boxes


# ---------------------------------------------------------------------------- modules
def gn_conv_trunk(in_channels: int, channels: int, num_convs: int, gn_groups: int, bias: bool = True,
                  first_stride: int = 2) -> nn.Sequential:
    """``num_convs`` x [conv3x3 pad 1 -> GroupNorm(gn_groups) -> ReLU], flat in one
    ``nn.Sequential`` (``[conv, gn, relu] * n``); the first conv has stride ``first_stride``.
    Parameters keep PyTorch's default initialisation."""
    if num_convs < 1:
        raise ValueError("num_convs must be >= 1")
    if channels % gn_groups:
        raise ValueError(f"{channels} channels are not divisible into {gn_groups} GroupNorm groups")
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride=first_stride if i == 0 else 1,
                             padding=1, bias=bias),
                   nn.GroupNorm(gn_groups, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class NeighbourFusion(nn.Module):
    """Feature fusion among 4-connected grid points (spec §1.4), all edges batched.

    One transform ``T`` per directed edge ``j -> i`` and per stage: depthwise 5x5 (pad 2)
    then 1x1, ``C_p -> C_p``, both with bias, no norm or activation. With ``F_i`` the trunk
    features of point i:

    - first order: ``F1_i = F_i + sum_{j in N(i)} T1_{j->i}(F_j)``;
    - second order: ``F2_i = F_i + sum_{j in N(i)} T2_{j->i}(F1_j)`` (base: unfused ``F_i``).

    The per-edge transforms are stored as one grouped conv pair per stage (edge e owns
    channels ``[C_p*e, C_p*(e+1))``); edges are ordered by target point, then left, up, down,
    right (:attr:`edge_src`, :attr:`edge_dst`).

    Forward: FloatTensor[R, G*C_p, H, W] -> FloatTensor[R, G*C_p, H, W] (``F2`` concatenated).
    """

    def __init__(self, grid_points: int = 9, point_feat_channels: int = 64) -> None:
        super().__init__()
        g = _grid_size(grid_points)
        self.grid_points = grid_points
        self.point_feat_channels = point_feat_channels
        src, dst = [], []
        for i, nbs in enumerate(grid_neighbours(g)):
            for j in nbs:
                src.append(j)
                dst.append(i)
        self.num_edges = len(src)
        self.register_buffer("edge_src", torch.tensor(src, dtype=torch.long), persistent=False)
        self.register_buffer("edge_dst", torch.tensor(dst, dtype=torch.long), persistent=False)
        ch = self.num_edges * point_feat_channels
        self.first_dw = nn.Conv2d(ch, ch, 5, padding=2, groups=ch)
        self.first_pw = nn.Conv2d(ch, ch, 1, groups=self.num_edges)
        self.second_dw = nn.Conv2d(ch, ch, 5, padding=2, groups=ch)
        self.second_pw = nn.Conv2d(ch, ch, 1, groups=self.num_edges)

    def _messages(self, feats: Tensor, dw: nn.Conv2d, pw: nn.Conv2d) -> Tensor:
        """``feats`` [R, G, C_p, H, W] -> per-edge messages [R, E, C_p, H, W] from the edge sources."""
        r, _, c, h, w = feats.shape
        x = feats[:, self.edge_src].reshape(r, self.num_edges * c, h, w)
        return pw(dw(x)).reshape(r, self.num_edges, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        r, _, h, w = x.shape
        f = x.reshape(r, self.grid_points, self.point_feat_channels, h, w)
        f1 = f.index_add(1, self.edge_dst, self._messages(f, self.first_dw, self.first_pw))
        f2 = f.index_add(1, self.edge_dst, self._messages(f1, self.second_dw, self.second_pw))
        return f2.reshape(r, self.grid_points * self.point_feat_channels, h, w)

    def init_mmdet(self) -> None:
        """Kaiming normal (fan_out, ReLU), zero bias, with the fan of one edge's own conv
        (mmdet builds a separate ``Conv2d`` per edge)."""
        c = self.point_feat_channels
        for dw, pw in ((self.first_dw, self.first_pw), (self.second_dw, self.second_pw)):
            nn.init.normal_(dw.weight, std=math.sqrt(2.0 / (c * 25)))  # per edge [C_p, 1, 5, 5]: fan_out C_p*25
            nn.init.normal_(pw.weight, std=math.sqrt(2.0 / c))  # per edge [C_p, C_p, 1, 1]: fan_out C_p
            nn.init.zeros_(dw.bias)
            nn.init.zeros_(pw.bias)


class GridHead(nn.Module):
    """Grid R-CNN Plus grid head (spec §1.3-1.7; see the module docstring and its Decisions).

    Args:
        in_channels: C of the RoIAlign features (256).
        roi_feat_size: S, side of the RoI features (14, even); heatmaps are 2S x 2S (28).
        grid_points: G (9), a square number.
        point_feat_channels: C_p, channels per point (64); the trunk has G*C_p (576).
        num_convs: trunk depth (8); the first conv has stride 2 (S -> S/2).
        conv_gn_groups: GroupNorm groups of the trunk (default 4G = 36).
        conv_bias: bias in the trunk convs (True, Decision 3).
        fuse_neighbours: build and apply the neighbour fusion (Decision 1).
        init: ``"mmdet"`` or ``"pytorch"`` (Decision 2).
        pos_radius: target disc radius in whole-map pixels (1).
        loss_weight: BCE weight (15).
        mapping_ratio: r of the extended region (1.0; CPM stages 1.0 / 0.5 / 0.25).

    Forward:
        FloatTensor[R, in_channels, S, S] -> dict of logits FloatTensor[R, G, 2S, 2S]:
        ``"unfused"`` (fusion off, or training), ``"fused"`` (fusion on). Use
        :meth:`inference_heatmap` for the one to decode.
    """

    def __init__(self, in_channels: int = 256, roi_feat_size: int = 14, grid_points: int = 9,
                 point_feat_channels: int = 64, num_convs: int = 8, conv_gn_groups: int | None = None,
                 conv_bias: bool = True, fuse_neighbours: bool = True, init: GridInit = "mmdet",
                 pos_radius: int = 1, loss_weight: float = GRID_LOSS_WEIGHT, mapping_ratio: float = 1.0) -> None:
        super().__init__()
        self.grid_size = _grid_size(grid_points)
        if roi_feat_size % 2:
            raise ValueError(f"roi_feat_size must be even, got {roi_feat_size}")
        if init not in ("mmdet", "pytorch"):
            raise ValueError(f"init must be 'mmdet' or 'pytorch', got {init!r}")
        self.in_channels = int(in_channels)
        self.roi_feat_size = int(roi_feat_size)
        self.grid_points = int(grid_points)
        self.point_feat_channels = int(point_feat_channels)
        self.conv_channels = self.grid_points * self.point_feat_channels
        self.whole_map_size = 4 * self.roi_feat_size
        self.heatmap_size = self.whole_map_size // 4 * 2
        self.pos_radius = int(pos_radius)
        self.loss_weight = float(loss_weight)
        self.mapping_ratio = float(mapping_ratio)
        self.fuse_neighbours = bool(fuse_neighbours)
        gn = 4 * self.grid_points if conv_gn_groups is None else int(conv_gn_groups)
        self.trunk = gn_conv_trunk(self.in_channels, self.conv_channels, num_convs, gn, bias=conv_bias)
        self.fusion = NeighbourFusion(self.grid_points, self.point_feat_channels) if self.fuse_neighbours else None
        c = self.conv_channels
        self.deconv1 = nn.ConvTranspose2d(c, c, 4, stride=2, padding=1, groups=self.grid_points)
        self.deconv1_norm = nn.GroupNorm(self.grid_points, c)
        self.deconv2 = nn.ConvTranspose2d(c, self.grid_points, 4, stride=2, padding=1, groups=self.grid_points)
        if init == "mmdet":
            self._init_mmdet()

    def _init_mmdet(self) -> None:
        for m in self.trunk.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.fusion is not None:
            self.fusion.init_mmdet()
        for m in (self.deconv1, self.deconv2):
            nn.init.normal_(m.weight, std=0.001)
            nn.init.zeros_(m.bias)
        nn.init.constant_(self.deconv2.bias, -math.log(0.99 / 0.01))

    def forward_trunk(self, x: Tensor) -> Tensor:
        """FloatTensor[R, in_channels, S, S] -> FloatTensor[R, G*C_p, S/2, S/2] (the map CPM's
        IoU scoring module reads)."""
        if x.shape[-2:] != (self.roi_feat_size, self.roi_feat_size):
            raise ValueError(f"expected {self.roi_feat_size}x{self.roi_feat_size} RoI features, got {tuple(x.shape)}")
        return self.trunk(x)

    def heatmap(self, feat: Tensor) -> Tensor:
        """Point features FloatTensor[R, G*C_p, S/2, S/2] -> logits FloatTensor[R, G, 2S, 2S]."""
        return self.deconv2(F.relu(self.deconv1_norm(self.deconv1(feat)), inplace=True))

    def forward_heatmaps(self, feat: Tensor) -> dict[str, Tensor]:
        """Trunk output -> ``{"fused", "unfused"}`` logits as described in the class docstring."""
        out: dict[str, Tensor] = {}
        if self.fusion is not None:
            out["fused"] = self.heatmap(self.fusion(feat))
        if self.fusion is None or self.training:
            out["unfused"] = self.heatmap(feat)
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_heatmaps(self.forward_trunk(x))

    @staticmethod
    def inference_heatmap(out: dict[str, Tensor]) -> Tensor:
        """The heatmap to decode: ``"fused"`` when present, else ``"unfused"``."""
        return out["fused"] if out.get("fused") is not None else out["unfused"]

    def get_targets(self, rois: Tensor, gt_boxes: Tensor) -> Tensor:
        """FloatTensor[P, 4] RoIs + FloatTensor[P, 4] gt boxes (pixels) -> FloatTensor[P, G, 2S, 2S];
        see :func:`grid_targets`."""
        return grid_targets(rois, gt_boxes, self.grid_points, self.roi_feat_size, self.pos_radius,
                            self.mapping_ratio)

    def loss(self, out: dict[str, Tensor] | Tensor, targets: Tensor) -> dict[str, Tensor]:
        """``{"loss_grid": ...}``; see :func:`grid_loss`."""
        return {"loss_grid": grid_loss(out, targets, self.loss_weight)}

    def predict_boxes(self, out: dict[str, Tensor] | Tensor, rois: Tensor,
                      image_sizes_per_box: Tensor | tuple[int, int] | None = None) -> Tensor:
        """FloatTensor[R, 4] boxes from the head output (or logits) for ``rois`` [R, 4];
        see :func:`decode_grid_boxes`."""
        logits = self.inference_heatmap(out) if isinstance(out, dict) else out
        return decode_grid_boxes(logits, rois, self.mapping_ratio, image_sizes_per_box)
