"""Layers: the dense RoIAlign against torchvision's kernel, and per-image NMS selection."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from models.common.layers.nms import batched_nms_per_image, top_k_per_image
from models.common.layers.roi_align import roi_align, roi_align_dense, use_dense


def _rois(num: int, images: int, extent: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(num, 2, generator=g, dtype=torch.float64) * extent * 0.6
    xy = torch.rand(num, 2, generator=g, dtype=torch.float64) * extent * 1.2 - extent * 0.2
    rois = torch.cat([torch.randint(0, images, (num, 1), generator=g).double(), xy, xy + wh], 1)
    rois[0, 3:] = rois[0, 1:3]  # zero size
    rois[1, 1:] = torch.tensor([-50.0, -50.0, -30.0, -30.0])  # fully outside, top-left
    rois[2, 1:] = torch.tensor([extent + 5, extent + 5, extent + 60, extent + 90])  # fully outside, bottom-right
    return rois


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
def test_dense_roi_align_matches_torchvision_forward_and_gradient(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 4, 13, 17, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(40, 3, 130.0, seed=sampling_ratio)
    expected = tv_roi_align(feats, rois, 7, 0.125, sampling_ratio, aligned)
    got = roi_align_dense(feats, rois, 7, 0.125, sampling_ratio, aligned)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    (g_expected,) = torch.autograd.grad(expected, feats, grad_out)
    (g_got,) = torch.autograd.grad(got, feats, grad_out)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-10, atol=1e-10)


def test_dense_roi_align_chunks_and_empty(monkeypatch):
    import models.common.layers.roi_align as module

    feats = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    rois = _rois(25, 2, 80.0, seed=5)
    full = roi_align_dense(feats, rois, 5, 0.125, 2, True)
    monkeypatch.setattr(module, "DENSE_CHUNK_ELEMENTS", 3 * 9 * 5 * 4)  # 4 RoIs per chunk
    torch.testing.assert_close(roi_align_dense(feats, rois, 5, 0.125, 2, True), full)
    assert roi_align_dense(feats, torch.zeros(0, 5, dtype=torch.float64), 5, 0.125).shape == (0, 3, 5, 5)


def test_roi_align_dispatch_prefers_dense_on_small_cpu_maps_in_training():
    small = torch.randn(2, 8, 20, 32, requires_grad=True)
    large = torch.randn(1, 8, 200, 336, requires_grad=True)
    rois = torch.tensor([[0.0, 10.0, 10.0, 60.0, 60.0], [1.0, 0.0, 0.0, 30.0, 90.0]])
    assert use_dense(small, rois, 7, 1 / 8, 0)
    assert not use_dense(large, rois, 7, 1 / 4, 2)
    out = roi_align(small, rois, 7, 1 / 8, 0)
    torch.testing.assert_close(out, tv_roi_align(small, rois, 7, 1 / 8, 0, True), rtol=1e-5, atol=1e-5)


def test_top_k_per_image_and_batched_nms_per_image():
    order = torch.tensor([4, 0, 3, 1, 2, 5])
    image_ids = torch.tensor([0, 1, 0, 1, 0, 1])
    keep, counts = top_k_per_image(order, image_ids, num_images=3, k=2)
    assert keep.tolist() == [4, 0, 3, 1] and counts == [2, 2, 0]

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    images = torch.tensor([0, 0, 1, 1])
    keep, counts = batched_nms_per_image(boxes, scores, images, images, 2, 0.5, max_per_img=10)
    assert keep.tolist() == [0, 2, 3] and counts == [1, 2]  # box 1 suppressed by box 0 of the same image
