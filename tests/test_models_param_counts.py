"""Exact parameter counts of every paper-scale preset, derived from the official layer definitions.

Each expected count below is a sum of layer counts written out from the specs
(``shared/specs/{d2det,cpm_rcnn,reppoints}.md``) and from the official code those specs cite,
not read off our model:

- backbones: torchvision's / mmdetection's ResNet and ResNeXt (``Bottleneck``: 1x1, 3x3
  (grouped for ResNeXt), 1x1, BN after each, a 1x1 + BN projection in a stage's first block),
  the RPv2 repository's ``mmdet/models/backbones/mobilenet.py`` (features 0..17, no 1280 conv),
  the deformable-conv offset predictors of mmdetection's ``ModulatedDeformConvPack`` (DCNv2:
  3x3 conv, 27 outputs, bias) and Pet's ``DeformConvPack`` (DCNv1: 3x3 conv, 18 outputs, bias);
  the helpers are first checked against torchvision's published ImageNet model sizes;
- necks and heads: mmdetection's ``FPN``, ``RPNHead``, ``SharedFCBBoxHead`` (v1) /
  ``Shared2FCBBoxHead`` (v2) and ``GridHead``; D2Det's ``DeformRoIPoolingPack`` / ``AWPool``
  (``mmdet/ops/dcn/deform_pool.py``) and ``D2DetHead`` (``mmdet/models/mask_heads/D2Det_head.py``);
  CPM R-CNN's (Pet) ``roi_cls_head``, ``roi_grid_head``, ``Grid_output`` and
  ``GridCascadeRCNN``; the RPv2 repository's ``RepPointsHead``, ``RepPointsV2Head``,
  ``CornerPoolPack``, ``DenseRepPointsHead`` and ``DenseRepPointsV2Head`` with the settings of
  their configs.

Where ours differs from the original on purpose the test computes the original's count first
and then applies the named difference, with the reason:

- Faster R-CNN: mmdetection v1's ``SharedFCBBoxHead`` (num_classes=81) regresses 81 x 4 boxes,
  one for the background class; ours (v2 labels, ``Shared2FCBBoxHead``) regresses 80 x 4.
- D2Det instance: the official head hard-codes 81 mask channels and 81 mask-IoU outputs
  (COCO + mmdet v1's background index 0, never read); ours has 80 (the mmdet2.1 port's fix,
  documented in ``models/d2det/d2det_instance_head.py``).

Classifier conventions that are *not* differences: the softmax R-CNN classifiers (Faster
R-CNN, D2Det, Grid R-CNN, CPM R-CNN's box branch and RSM) have 80 + 1 outputs in the original
and in ours (``num_classes + 1``); the RPN and the RepPoints heads are sigmoid with 3 anchors /
80 classes in both. Normalisation layers count 2 parameters per channel (BN, GN, affine
InstanceNorm; also Pet's ``AffineChannel2d``, whose weights are frozen but still parameters).

``trainable`` is ours: every ResNet preset freezes the stem and res2 (``frozen_stages=1``;
BN affine parameters elsewhere keep training, as mmdetection's ``norm_eval``), MobileNetV2
freezes nothing.
"""
from __future__ import annotations

import pytest

from models.summary import preset_counts

NUM_CLASSES = 80  # COCO foreground classes


# ---------------------------------------------------------------------------------- layers
def conv(cin: int, cout: int, k: int, bias: bool = True, groups: int = 1) -> int:
    """nn.Conv2d(cin, cout, k, groups=groups, bias=bias)."""
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def deconv(cin: int, cout: int, k: int, groups: int = 1) -> int:
    """nn.ConvTranspose2d(cin, cout, k, groups=groups) (with bias): weight [cin, cout / groups, k, k]."""
    return cin * (cout // groups) * k * k + cout


def norm(c: int) -> int:
    """BatchNorm2d / GroupNorm / affine InstanceNorm2d / AffineChannel2d: weight + bias."""
    return 2 * c


def fc(i: int, o: int) -> int:
    """nn.Linear(i, o)."""
    return i * o + o


def dcn_v1(cin: int, cout: int, k: int = 3) -> int:
    """mmdet ``DeformConv`` (RepPoints heads): a bias-free kernel, offsets come from elsewhere."""
    return conv(cin, cout, k, bias=False)


# ------------------------------------------------------------------------------- backbones
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
DCN_V2_OFFSET = 27  # ModulatedDeformConvPack.conv_offset: 3 * deformable_groups(1) * 3 * 3 (o1, o2, mask)
DCN_V1_OFFSET = 18  # DeformConvPack.conv_offset: 2 * deformable_groups(1) * 3 * 3 (offsets only)


def bottleneck(inplanes: int, planes: int, groups: int, width_per_group: int, downsample: bool,
               dcn_offset: int = 0) -> int:
    """torchvision / mmdet ``Bottleneck`` (expansion 4, width = planes * wpg / 64 * groups); with
    DCN its 3x3 keeps its (bias-free, grouped) kernel and gains a dense 3x3 offset conv with bias."""
    width = planes * width_per_group // 64 * groups
    n = conv(inplanes, width, 1, bias=False) + norm(width)
    n += conv(width, width, 3, bias=False, groups=groups) + norm(width)
    n += conv(width, 4 * planes, 1, bias=False) + norm(4 * planes)
    if downsample:
        n += conv(inplanes, 4 * planes, 1, bias=False) + norm(4 * planes)
    if dcn_offset:
        n += conv(width, dcn_offset, 3, bias=True)
    return n


def resnet_stem() -> int:
    return conv(3, 64, 7, bias=False) + norm(64)


def resnet_bottleneck_stage(inplanes: int, planes: int, blocks: int, groups: int = 1, width_per_group: int = 64,
                            dcn_offset: int = 0) -> int:
    first = bottleneck(inplanes, planes, groups, width_per_group, True, dcn_offset)
    return first + (blocks - 1) * bottleneck(4 * planes, planes, groups, width_per_group, False, dcn_offset)


def resnet(depth: int, groups: int = 1, width_per_group: int = 64, dcn_offset: int = 0) -> int:
    """Stem + res2..res5 (no fc). ``dcn_offset``: DCN in res3-res5, ``stage_with_dcn=(F, T, T, T)``,
    ``fallback_on_stride=False`` (the strided first 3x3 of a stage is deformable too)."""
    n, inplanes = resnet_stem(), 64
    for i, blocks in enumerate(RESNET_BLOCKS[depth]):
        planes = 64 * 2**i
        n += resnet_bottleneck_stage(inplanes, planes, blocks, groups, width_per_group, dcn_offset if i > 0 else 0)
        inplanes = 4 * planes
    return n


def resnet_frozen(groups: int = 1, width_per_group: int = 64) -> int:
    """``frozen_stages=1``: stem + res2 (never deformable)."""
    return resnet_stem() + resnet_bottleneck_stage(64, 64, 3, groups, width_per_group)


MNV2_SETTINGS = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))  # t, c, n


def inverted_residual(inp: int, oup: int, t: int) -> int:
    hidden = round(inp * t)
    n = 0 if t == 1 else conv(inp, hidden, 1, bias=False) + norm(hidden)  # pw expansion
    n += conv(hidden, hidden, 3, bias=False, groups=hidden) + norm(hidden)  # dw
    return n + conv(hidden, oup, 1, bias=False) + norm(oup)  # pw-linear


def mobilenet_v2() -> int:
    """RPv2 ``MobileNetV2`` (width 1.0): conv_bn(3, 32) + 17 inverted residuals, no final 1x1 conv."""
    n, inp = conv(3, 32, 3, bias=False) + norm(32), 32
    for t, c, blocks in MNV2_SETTINGS:
        for _ in range(blocks):
            n += inverted_residual(inp, c, t)
            inp = c
    return n


def test_backbone_helpers_match_torchvision_published_sizes():
    """torchvision's documented ImageNet model sizes (``weights.meta['num_params']``) = our
    backbone sums + the parts a detector drops (classifier fc; MobileNetV2's 320 -> 1280 conv)."""
    classifier = fc(2048, 1000)
    assert resnet(50) + classifier == 25_557_032
    assert resnet(101) + classifier == 44_549_160
    assert resnet(101, groups=64, width_per_group=4) + classifier == 83_455_272  # resnext101_64x4d
    assert mobilenet_v2() + conv(320, 1280, 1, bias=False) + norm(1280) + fc(1280, 1000) == 3_504_872


# ----------------------------------------------------------------------------------- necks
C2_C5 = (256, 512, 1024, 2048)
MNV2_OUTS = (24, 32, 96, 320)  # features 3, 6, 13, 17


def fpn_p2_p6_maxpool(out: int = 256) -> int:
    """FPN P2-P6 without norm (mmdet ``add_extra_convs=False``, Pet ``EXTRA_CONV_LEVELS: False``): a
    1x1 lateral and a 3x3 output conv with bias per level, P6 = max-pool (no parameters).
    specs/d2det.md §1.2, specs/cpm_rcnn.md §1.8, §3."""
    return sum(conv(c, out, 1) + conv(out, out, 3) for c in C2_C5)


def fpn_p3_p7_gn_on_input(in_channels: tuple[int, ...], out: int) -> int:
    """FPN P3-P7 with GN(32) (``start_level=1``, ``add_extra_convs='on_input'``, norm_cfg GN):
    bias-free convs + GN; P6 = 3x3/s2 conv on the last backbone level, P7 = 3x3/s2 on P6.
    specs/reppoints.md §4."""
    used = in_channels[1:]
    lateral_and_output = sum(conv(c, out, 1, bias=False) + norm(out) + conv(out, out, 3, bias=False) + norm(out)
                             for c in used)
    p6 = conv(in_channels[-1], out, 3, bias=False) + norm(out)
    p7 = conv(out, out, 3, bias=False) + norm(out)
    return lateral_and_output + p6 + p7


def rpn_head(c: int = 256, anchors: int = 3) -> int:
    """RPNHead: 3x3 conv, 1x1 objectness (sigmoid, one per anchor), 1x1 deltas. specs/d2det.md §1.3."""
    return conv(c, c, 3) + conv(c, anchors, 1) + conv(c, 4 * anchors, 1)


# ------------------------------------------------------------------------------ R-CNN heads
def shared_2fc(in_channels: int = 256, roi: int = 7, width: int = 1024) -> int:
    """The two shared FCs of (Shared)2FCBBoxHead / Pet ``roi_cls_head`` (fc6, fc7)."""
    return fc(in_channels * roi * roi, width) + fc(width, width)


def gn_trunk(cin: int, c: int, convs: int, bias: bool) -> int:
    """``convs`` x [3x3 conv (first stride 2) + GN]: the D2Det DLR (bias-free) and grid (bias) trunks."""
    return conv(cin, c, 3, bias) + norm(c) + (convs - 1) * (conv(c, c, 3, bias) + norm(c))


def grid_deconvs(points: int = 9, point_channels: int = 64) -> int:
    """deconv1 (4x4, groups=points) + GN(points) + deconv2 (4x4, one heatmap per point)."""
    c = points * point_channels
    return deconv(c, c, 4, groups=points) + norm(c) + deconv(c, points, 4, groups=points)


def grid_fusion(edges: int = 24, point_channels: int = 64) -> int:
    """First- and second-order transforms, one per directed edge: dw 5x5 + 1x1, both with bias."""
    per_edge = conv(point_channels, point_channels, 5, groups=point_channels) + conv(point_channels, point_channels, 1)
    return 2 * edges * per_edge


def _check(preset: str, expected: dict[str, int]) -> None:
    counts = preset_counts(preset, "paper", num_classes=NUM_CLASSES)
    assert counts == expected, f"{preset}: ours {counts} != derived {expected}"


def _two_stage(backbone: int, frozen: int, roi_head: int) -> dict[str, int]:
    parts = {"backbone": backbone, "neck": fpn_p2_p6_maxpool(), "rpn_head": rpn_head(), "roi_head": roi_head}
    total = sum(parts.values())
    return {**parts, "total": total, "trainable": total - frozen}


# ----------------------------------------------------------------------------- Faster R-CNN
def test_faster_rcnn_r50_fpn_1x():
    # mmdetection v1 faster_rcnn_r50_fpn_1x: SharedFCBBoxHead(num_fcs=2, 1024, num_classes=81,
    # reg_class_agnostic=False): fc_cls 81, fc_reg 81 * 4 (specs/d2det.md §1, §4 for the same head)
    official_bbox_head = shared_2fc() + fc(1024, NUM_CLASSES + 1) + fc(1024, 4 * (NUM_CLASSES + 1))
    # ours: v2 labels, no regressor for the background class (80 * 4 outputs)
    background_regressor = fc(1024, 4)
    expected = _two_stage(resnet(50), resnet_frozen(), official_bbox_head - background_regressor)
    assert expected["total"] == 41_753_056  # official (v1) 41_757_156
    _check("faster_rcnn_r50_fpn_1x", expected)


# ------------------------------------------------------------------------------------ D2Det
def d2det_drp() -> int:
    """Discriminative RoI pooling (specs/d2det.md §2.1, D2Det ``mmdet/ops/dcn/deform_pool.py``): one
    ``DeformRoIPoolingPack`` per FPN level P2-P5, each with offset FCs 2304 -> 1024 -> 1024 -> 98
    and ``AWPool(256)`` (bias-free 3x3 conv + affine InstanceNorm2d)."""
    offset_fcs = fc(256 * 3 * 3, 1024) + fc(1024, 1024) + fc(1024, 2 * 7 * 7)
    awpool = conv(256, 256, 3, bias=False) + norm(256)
    return 4 * (offset_fcs + awpool)


def d2det_dlr() -> int:
    """Dense local regression head (specs/d2det.md §3.1, ``D2Det_head.py``): 8 bias-free convs of 576
    channels with GN(36) (the computed ``groups`` is never passed), reg 3x3 -> 4, overlap 3x3 -> 1."""
    return gn_trunk(256, 576, 8, bias=False) + conv(576, 4, 3) + conv(576, 1, 3)


def d2det_instance_official() -> int:
    """``MASK_ON`` layers (specs/d2det.md §5.1): deconv 576 -> 256 (k2) + GN(16), deconv 256 -> 256,
    ``D2Det_instance`` 3x3 -> 81 (hard-coded), FCs 577*7*7 -> 1024 -> 1024, ``fc_instance_iou`` -> 81."""
    masks = deconv(576, 256, 2) + norm(256) + deconv(256, 256, 2) + conv(256, 81, 3)
    mask_iou = fc(577 * 7 * 7, 1024) + fc(1024, 1024) + fc(1024, 81)
    return masks + mask_iou


def d2det_roi_head(instance: bool) -> int:
    # classification branch: SharedFCBBoxHead, num_classes=81 (80 + background, softmax), with_reg=False
    cls_branch = shared_2fc() + fc(1024, NUM_CLASSES + 1)
    head = d2det_drp() + cls_branch + d2det_dlr()
    if instance:
        # ours: 80 mask channels and 80 mask-IoU outputs instead of the hard-coded 81 (the
        # background channel is never read: labels 1..80 index the official tensors)
        background_channels = conv(256, 1, 3) + fc(1024, 1)
        head += d2det_instance_official() - background_channels
    return head


@pytest.mark.parametrize("preset, depth, dcn, instance, total", [
    ("d2det_r50_fpn", 50, False, False, 80_092_013),
    ("d2det_r101_fpn", 101, False, False, 99_084_141),
    # D2Det_detection_r101_fpn_dcn_2x: dcn=dict(type='DCNv2', deformable_groups=1, fallback_on_stride=False),
    # stage_with_dcn=(False, True, True, True) (specs/d2det.md §1.1)
    ("d2det_r101_fpn_dcn", 101, True, False, 101_013_399),
    ("d2det_r101_fpn_mask", 101, False, True, 130_205_709),  # official 130_209_039 (81-way instance outputs)
])
def test_d2det(preset, depth, dcn, instance, total):
    backbone = resnet(depth, dcn_offset=DCN_V2_OFFSET if dcn else 0)
    expected = _two_stage(backbone, resnet_frozen(), d2det_roi_head(instance))
    assert expected["total"] == total
    _check(preset, expected)


# ------------------------------------------------------------------------------- Grid R-CNN
def test_grid_rcnn_r50_fpn_2x():
    # mmdetection grid_rcnn_r50_fpn_gn-head_2x (specs/cpm_rcnn.md §1.3, §1.4, §1.8; mmdet
    # ``roi_heads/mask_heads/grid_head.py``): Shared2FCBBoxHead(with_reg=False, 80 + 1 classes);
    # GridHead: 8 ConvModules(bias=True) of 9 * 64 = 576 channels with GN(36), 2 x 24 fusion
    # transforms, grouped deconvs. Same layer set as ours: no difference.
    roi_head = shared_2fc() + fc(1024, NUM_CLASSES + 1) + gn_trunk(256, 576, 8, bias=True) + grid_fusion() \
        + grid_deconvs()
    expected = _two_stage(resnet(50), resnet_frozen(), roi_head)
    assert expected["total"] == 64_548_201
    _check("grid_rcnn_r50_fpn_2x", expected)


# -------------------------------------------------------------------------------- CPM R-CNN
def cpm_roi_head() -> int:
    """``GridCascadeRCNN`` of the ``e2e_grid_cascade@567`` configs (specs/cpm_rcnn.md §2.3, §2.7):
    - box branch ``roi_cls_head`` (fc6, fc7) + ``Cls_output`` (NUM_CLASSES = 81, softmax);
    - 3 grid stages with their own weights, ``FUSED_ON: False``: ``roi_grid_head`` (8 x [3x3 conv with
      bias, GN(36)]) + ``Grid_output`` (grouped deconvs, GN(9));
    - ISM on the last stage (``Grid_output.iou_fc1/2``, ``iou_pred``): 576*7*7 -> 1024 -> 1024 -> 2;
    - RSM (``RESCORE_ON``): a second ``roi_cls_head`` + ``Cls_output``.
    Same as ours: no difference."""
    cls_branch = shared_2fc() + fc(1024, NUM_CLASSES + 1)
    grid_stage = gn_trunk(256, 576, 8, bias=True) + grid_deconvs()
    ism = fc(576 * 7 * 7, 1024) + fc(1024, 1024) + fc(1024, 2)
    return cls_branch + 3 * grid_stage + ism + cls_branch


@pytest.mark.parametrize("preset, depth, groups, width_per_group, dcn_offset, total", [
    # caffe-style ResNet in Pet (stride on the 1x1): same layers, same count as torchvision's
    ("cpm_rcnn_r50_fpn", 50, 1, 64, 0, 153_888_590),
    ("cpm_rcnn_r101_fpn", 101, 1, 64, 0, 172_880_718),
    # X-101-64x4d-FPN-DCN: STAGE_WITH_CONV ('normal', 'deform', 'deform', 'deform') = Pet's DCN v1
    # DeformConvPack in every C3-C5 grouped 3x3 (groups = cardinality 64, 1 deformable group): an
    # 18-channel offset conv with bias, no modulation mask (specs/cpm_rcnn.md §3, §5)
    ("cpm_rcnn_x101_fpn_dcn", 101, 64, 4, DCN_V1_OFFSET, 216_929_898),
])
def test_cpm_rcnn(preset, depth, groups, width_per_group, dcn_offset, total):
    backbone = resnet(depth, groups, width_per_group, dcn_offset)
    expected = _two_stage(backbone, resnet_frozen(groups, width_per_group), cpm_roi_head())
    assert expected["total"] == total
    _check(preset, expected)


# ---------------------------------------------------------------------------- RepPoints V1/V2
def reppoints_towers(c: int) -> int:
    """cls and reg towers: 2 x 3 ConvModules(3x3, GN(32)), bias-free (specs/reppoints.md §1.1)."""
    return 2 * 3 * (conv(c, c, 3, bias=False) + norm(c))


def reppoints_v1_head(c: int, moment: bool) -> int:
    """RepPointsHead (specs/reppoints.md §1.1; RPv2 / mmdet ``reppoints_head.py``): towers, init points
    (3x3 conv + 1x1 -> 18), cls DeformConv + 1x1 -> 80 (sigmoid; mmdet v1's num_classes=81 also gives
    81 - 1 sigmoid channels), refine DeformConv + 1x1 -> 18; ``moment_transfer`` (2) for 'moment'."""
    init = conv(c, c, 3) + conv(c, 2 * 9, 1)
    cls = dcn_v1(c, c) + conv(c, NUM_CLASSES, 1)
    refine = dcn_v1(c, c) + conv(c, 2 * 9, 1)
    return reppoints_towers(c) + init + cls + refine + (2 if moment else 0)


def corner_pool_pack(c: int, k: int) -> int:
    """RPv2 ``CornerPoolPack`` (``mmdet/ops/corner_pool/corner_pool.py``), first_kernel_size 3,
    kernel_size 1: p1/p2 ConvModules c -> k (GN), p_conv1 k -> c (3x3, no bias) + GN, conv1 1x1 (no
    bias) + GN, conv2 1x1 ConvModule (GN)."""
    return 2 * (conv(c, k, 3, bias=False) + norm(k)) + conv(k, c, 3, bias=False) + norm(c) \
        + conv(c, c, 1, bias=False) + norm(c) + conv(c, c, 1, bias=False) + norm(c)


def reppoints_v2_head(c: int, corner_dim: int = 64) -> int:
    """RepPointsV2Head (specs/reppoints.md §2.1; RPv2 ``reppoints_v2_head.py``): V1's layers with both
    DeformConvs reading c + 6 channels, plus the shared ConvModule, TL/BR corner pools, the four
    corner outputs (3x3 -> 1, 3x3 -> 2 each), sem_out (1x1 -> 80) and the 1x1 GN sem embedding."""
    init = conv(c, c, 3) + conv(c, 2 * 9, 1)
    cls = dcn_v1(c + 6, c) + conv(c, NUM_CLASSES, 1)
    refine = dcn_v1(c + 6, c) + conv(c, 2 * 9, 1)
    shared = conv(c, c, 3, bias=False) + norm(c)
    corners = 2 * corner_pool_pack(c, corner_dim) + 2 * (conv(c, 1, 3) + conv(c, 2, 3))
    foreground = conv(c, NUM_CLASSES, 1) + conv(c, c, 1, bias=False) + norm(c)
    return reppoints_towers(c) + init + cls + refine + shared + corners + foreground


def _single_stage(backbone: int, frozen: int, neck: int, head: int) -> dict[str, int]:
    parts = {"backbone": backbone, "neck": neck, "bbox_head": head}
    total = sum(parts.values())
    return {**parts, "total": total, "trainable": total - frozen}


# the rows of the RepPoints V2 README tables (specs/reppoints.md §4, §5.1): backbone, FPN width
REPPOINTS_ROWS = {
    "r50_fpn_1x": ("r50", 256),
    "r50_fpn_giou_1x": ("r50", 256),
    "r50_fpn_giou_mstrain_2x": ("r50", 256),
    "r101_fpn_giou_mstrain_2x": ("r101", 256),
    # *_dconv_c3-c5_*: dcn=dict(type='DCNv2', deformable_groups=1, fallback_on_stride=False),
    # stage_with_dcn=(False, True, True, True)
    "r101_fpn_dcn_giou_mstrain_2x": ("r101_dcn", 256),
    "x101_fpn_giou_mstrain_2x": ("x101", 256),
    "x101_fpn_dcn_giou_mstrain_2x": ("x101_dcn", 256),
    # MobileNetV2 configs: FPN in_channels [24, 32, 96, 320]; "128c": FPN and head 128 wide
    "mnv2_c128_fpn_giou_mstrain_2x": ("mnv2", 128),
    "mnv2_fpn_giou_mstrain_2x": ("mnv2", 256),
}


def reppoints_backbone_and_neck(arch: str, c: int) -> tuple[int, int, int]:
    """(backbone, frozen part, neck) of a RepPoints-family row."""
    if arch == "mnv2":  # frozen_stages=-1, SyncBN trainable
        return mobilenet_v2(), 0, fpn_p3_p7_gn_on_input(MNV2_OUTS, c)
    depth = 50 if arch == "r50" else 101
    groups, wpg = (64, 4) if arch.startswith("x101") else (1, 64)
    dcn = DCN_V2_OFFSET if arch.endswith("_dcn") else 0
    return resnet(depth, groups, wpg, dcn), resnet_frozen(groups, wpg), fpn_p3_p7_gn_on_input(C2_C5, c)


@pytest.mark.parametrize("preset, total", [
    # the original V1 (mmdetection reppoints_moment_r50_fpn_gn-neck+head_1x): moment transform
    ("reppoints_moment_r50_fpn_gn_1x", 36_849_078),
    ("reppoints_v1_r50_fpn_1x", 36_849_076),
    ("reppoints_v1_r50_fpn_giou_1x", 36_849_076),
    ("reppoints_v1_r50_fpn_giou_mstrain_2x", 36_849_076),
    ("reppoints_v1_r101_fpn_giou_mstrain_2x", 55_841_204),
    ("reppoints_v1_r101_fpn_dcn_giou_mstrain_2x", 57_770_462),
    ("reppoints_v1_x101_fpn_giou_mstrain_2x", 94_747_316),
    ("reppoints_v1_x101_fpn_dcn_giou_mstrain_2x", 102_461_918),
    ("reppoints_v1_mnv2_c128_fpn_giou_mstrain_2x", 4_173_300),
    ("reppoints_v1_mnv2_fpn_giou_mstrain_2x", 10_368_628),
])
def test_reppoints_v1(preset, total):
    moment = preset == "reppoints_moment_r50_fpn_gn_1x"
    arch, c = REPPOINTS_ROWS["r50_fpn_1x" if moment else preset.removeprefix("reppoints_v1_")]
    backbone, frozen, neck = reppoints_backbone_and_neck(arch, c)
    # the RPv2 V1 configs use exact_minmax (no moment_transfer); the original V1 uses moment
    expected = _single_stage(backbone, frozen, neck, reppoints_v1_head(c, moment))
    assert expected["total"] == total
    _check(preset, expected)


@pytest.mark.parametrize("preset, total", [
    ("reppoints_v2_r50_fpn_1x", 38_717_962),
    ("reppoints_v2_r50_fpn_giou_1x", 38_717_962),
    ("reppoints_v2_r50_fpn_giou_mstrain_2x", 38_717_962),
    ("reppoints_v2_r101_fpn_giou_mstrain_2x", 57_710_090),
    ("reppoints_v2_r101_fpn_dcn_giou_mstrain_2x", 59_639_348),
    ("reppoints_v2_x101_fpn_giou_mstrain_2x", 96_616_202),
    ("reppoints_v2_x101_fpn_dcn_giou_mstrain_2x", 104_330_804),
    # the 128c config narrows in/feat/point_feat channels to 128 but keeps corner_dim=64
    ("reppoints_v2_mnv2_c128_fpn_giou_mstrain_2x", 4_878_666),
    ("reppoints_v2_mnv2_fpn_giou_mstrain_2x", 12_237_514),
])
def test_reppoints_v2(preset, total):
    arch, c = REPPOINTS_ROWS[preset.removeprefix("reppoints_v2_")]
    backbone, frozen, neck = reppoints_backbone_and_neck(arch, c)
    expected = _single_stage(backbone, frozen, neck, reppoints_v2_head(c, corner_dim=64))
    assert expected["total"] == total
    _check(preset, expected)


# -------------------------------------------------------------------------- Dense RepPoints
def dense_reppoints_head(version: int, c: int = 256, points: int = 729, groups: int = 9, score_groups: int = 121,
                         mask_convs: int = 7) -> int:
    """DenseRepPointsHead / DenseRepPointsV2Head (specs/reppoints.md §3; RPv2 ``dense_reppoints_head.py``,
    ``dense_reppoints_v2_head.py``) with the configs' ``stacked_mask_convs=7, fuse_mask_feat=True``:
    towers; ``stacked_mask_convs`` GN ConvModules; ``reppoints_cls_conv`` 1x1 over the 9 sampled groups
    (c (+3 in V2) channels each) + ``reppoints_cls_out`` -> 80; init 3x3 + 1x1 -> 2 * 729; refine 3x3
    (c (+3) inputs) + 1x1 -> 2 * 729; ``reppoints_mask_init_conv`` 3x3 + ``_out`` 1x1 -> 121;
    ``mask_fuse_conv`` 3x3. V2 adds the shared ConvModule, contour score (3x3 -> 1) and offset
    (3x3 -> 2) outputs, ``reppoints_sem_out`` (1x1 -> 80) and the 1x1 GN sem embedding."""
    extra = 3 if version == 2 else 0  # contour [score, offset_x, offset_y] appended in V2
    masks = mask_convs * (conv(c, c, 3, bias=False) + norm(c))
    cls = conv(groups * (c + extra), c, 1) + conv(c, NUM_CLASSES, 1)
    init = conv(c, c, 3) + conv(c, 2 * points, 1)
    refine = conv(c + extra, c, 3) + conv(c, 2 * points, 1)
    scores = conv(c, c, 3) + conv(c, score_groups, 1)
    fuse = conv(c, c, 3)
    head = reppoints_towers(c) + masks + cls + init + refine + scores + fuse
    if version == 2:
        shared = conv(c, c, 3, bias=False) + norm(c)
        contour = conv(c, 1, 3) + conv(c, 2, 3)
        foreground = conv(c, NUM_CLASSES, 1) + conv(c, c, 1, bias=False) + norm(c)
        head += shared + contour + foreground
    return head


@pytest.mark.parametrize("preset, total", [
    ("dense_reppoints_v1_r50_fpn_1x", 42_933_357),
    ("dense_reppoints_v1_r50_fpn_giou_1x", 42_933_357),
    ("dense_reppoints_v1_r50_fpn_giou_mstrain_3x", 42_933_357),
    ("dense_reppoints_v2_r50_fpn_1x", 43_631_040),
    ("dense_reppoints_v2_r50_fpn_giou_1x", 43_631_040),
    ("dense_reppoints_v2_r50_fpn_giou_mstrain_3x", 43_631_040),
])
def test_dense_reppoints(preset, total):
    version = 2 if preset.startswith("dense_reppoints_v2") else 1
    # every Dense row: ImageNet ResNet-50 (frozen stem + res2), GN FPN P3-P7
    expected = _single_stage(resnet(50), resnet_frozen(), fpn_p3_p7_gn_on_input(C2_C5, 256),
                             dense_reppoints_head(version))
    assert expected["total"] == total
    _check(preset, expected)
