"""cuda_ops.deform_roi_pool against a literal per-sample loop of spec d2det.md §2.2."""
from __future__ import annotations

import math

import pytest
import torch

from cuda_ops.deform_roi_pool import DeformRoIPool, deform_roi_pool


def _c_round(x: float) -> float:
    """C round(): half away from zero."""
    return math.copysign(math.floor(abs(x) + 0.5), x)


def _bilinear(fm: torch.Tensor, h: float, w: float) -> torch.Tensor:
    """fm [C, H, W]; floor/ceil corners as in the CUDA kernel."""
    x1, x2 = math.floor(w), math.ceil(w)
    y1, y2 = math.floor(h), math.ceil(h)
    dx, dy = w - x1, h - y1
    return ((1 - dx) * (1 - dy) * fm[:, y1, x1] + (1 - dx) * dy * fm[:, y2, x1]
            + dx * (1 - dy) * fm[:, y1, x2] + dx * dy * fm[:, y2, x2])


def _loop_reference(features, rois, offsets, scale, P, Q, S, trans_std):
    """Direct transcription of the spec, one sample at a time (float64 Python scalars)."""
    _, C, H, W = features.shape
    N = rois.shape[0]
    out = torch.zeros(N, C, P, P, dtype=torch.float64)
    for n in range(N):
        b, x1, y1, x2, y2 = rois[n].tolist()
        fm = features[int(b)].double()
        rsw = _c_round(x1) * scale - 0.5
        rsh = _c_round(y1) * scale - 0.5
        rew = (_c_round(x2) + 1) * scale - 0.5
        reh = (_c_round(y2) + 1) * scale - 0.5
        rw = max(rew - rsw, 0.1)
        rh = max(reh - rsh, 0.1)
        bw, bh = rw / P, rh / P
        sw, sh = bw / S, bh / S
        for ph in range(P):
            for pw in range(P):
                part_h = math.floor(ph / P * Q)
                part_w = math.floor(pw / P * Q)
                if offsets is None:
                    tx = ty = 0.0
                else:
                    tx = float(offsets[n, 0, part_h, part_w]) * trans_std
                    ty = float(offsets[n, 1, part_h, part_w]) * trans_std
                wstart = pw * bw + rsw + tx * rw
                hstart = ph * bh + rsh + ty * rh
                acc = torch.zeros(C, dtype=torch.float64)
                count = 0
                for ih in range(S):
                    for iw in range(S):
                        w = wstart + iw * sw
                        h = hstart + ih * sh
                        if w < -0.5 or w > W - 0.5 or h < -0.5 or h > H - 0.5:
                            continue
                        w = min(max(w, 0.0), W - 1.0)
                        h = min(max(h, 0.0), H - 1.0)
                        acc += _bilinear(fm, h, w)
                        count += 1
                out[n, :, ph, pw] = acc / count if count else 0.0
    return out


def _random_case(seed: int, n_rois: int = 12, B: int = 3, C: int = 4, H: int = 9, W: int = 11,
                 stride: int = 4, Q: int = 3):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    img_w, img_h = W * stride, H * stride
    # boxes spilling past every border, plus a few exact .5 coordinates for round()
    x1 = torch.rand(n_rois, generator=g, dtype=torch.float64) * (img_w + 20) - 20
    y1 = torch.rand(n_rois, generator=g, dtype=torch.float64) * (img_h + 20) - 20
    bw = torch.rand(n_rois, generator=g, dtype=torch.float64) * img_w * 0.8
    bh = torch.rand(n_rois, generator=g, dtype=torch.float64) * img_h * 0.8
    b = torch.randint(0, B, (n_rois,), generator=g).double()
    rois = torch.stack([b, x1, y1, x1 + bw, y1 + bh], dim=1)
    rois[0, 1:] = torch.tensor([2.5, 3.5, 20.5, 17.5], dtype=torch.float64)
    rois[1, 1:] = torch.tensor([-2.5, -6.5, 10.5, 30.5], dtype=torch.float64)
    offsets = torch.randn(n_rois, 2, Q, Q, generator=g, dtype=torch.float64) * 2.0
    return feats, rois, offsets


def test_c_round_helper_is_half_away_from_zero():
    from cuda_ops.deform_roi_pool import _round_half_away
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6])
    assert _round_half_away(x).tolist() == [1.0, 2.0, 3.0, -1.0, -2.0, -3.0, 2.0, -3.0]


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("P,Q", [(3, 3), (4, 2)])
@pytest.mark.parametrize("with_offsets", [True, False])
def test_matches_loop_reference(S, P, Q, with_offsets):
    feats, rois, offsets = _random_case(seed=10 * S + P, Q=Q)
    off = offsets if with_offsets else None
    trans_std = 0.1
    ours = deform_roi_pool(feats, rois, off, 0.25, P, Q, S, trans_std)
    ref = _loop_reference(feats, rois, off, 0.25, P, Q, S, trans_std)
    assert ours.shape == (rois.shape[0], feats.shape[1], P, P)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert (ref != 0).any()


def test_large_offsets_skip_samples_and_float32():
    feats, rois, offsets = _random_case(seed=3, Q=7)
    offsets = offsets * 10.0  # push many samples off the map
    ours = deform_roi_pool(feats.float(), rois.float(), offsets.float(), 0.25, 7, 7, 2, 0.1)
    ref = _loop_reference(feats, rois, offsets, 0.25, 7, 7, 2, 0.1)
    assert (ref == 0).all(dim=1).any(), "expected some all-skipped bins"
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-5)


def test_all_samples_skipped_gives_zero():
    feats = torch.randn(1, 3, 6, 6, dtype=torch.float64) + 5.0
    # RoI entirely to the right of / below the map
    rois = torch.tensor([[0, 100.0, 100.0, 140.0, 150.0]], dtype=torch.float64)
    out = deform_roi_pool(feats, rois, None, 0.25, 3, 3, 2, 0.1)
    assert out.shape == (1, 3, 3, 3)
    assert torch.equal(out, torch.zeros_like(out))
    # and with offsets pushing an in-map RoI out of it
    rois = torch.tensor([[0, 4.0, 4.0, 12.0, 12.0]], dtype=torch.float64)
    offsets = torch.full((1, 2, 3, 3), 100.0, dtype=torch.float64)
    out = deform_roi_pool(feats, rois, offsets, 0.25, 3, 3, 2, 0.1)
    assert torch.equal(out, torch.zeros_like(out))


def test_zero_offsets_equal_no_trans():
    feats, rois, _ = _random_case(seed=7, Q=7)
    zeros = torch.zeros(rois.shape[0], 2, 7, 7, dtype=torch.float64)
    a = deform_roi_pool(feats, rois, zeros, 0.25, 14, 7, 2, 0.1)
    b = deform_roi_pool(feats, rois, None, 0.25, 14, 7, 2, 0.1)
    assert torch.equal(a, b)
    mod = DeformRoIPool(output_size=14, part_size=7, sample_per_part=2, trans_std=0.1,
                        spatial_scale=0.25)
    assert torch.equal(mod(feats, rois), b)
    assert torch.equal(mod(feats, rois, zeros), a)


def test_gradcheck_features_and_offsets():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 2, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    # integer-ish RoIs through round(); scale 1/3 and P=3,S=2 put samples at thirds and
    # sixths of a pixel, and small offsets keep them off the integer grid
    rois = torch.tensor([[0, 3.0, 2.0, 17.0, 14.0],
                         [1, -4.0, 5.0, 11.0, 25.0],
                         [1, 10.0, 1.0, 22.0, 9.0]], dtype=torch.float64)
    offsets = (torch.rand(3, 2, 3, 3, generator=g, dtype=torch.float64) * 0.2 + 0.05)
    offsets.requires_grad_(True)

    def fn(f, o):
        return deform_roi_pool(f, rois, o, 1.0 / 3.0, 3, 3, 2, 0.1)

    # RoI edges at thirds of a pixel minus 0.5 plus random offsets keep the samples off the
    # integer grid (bilinear kinks); eps is far below their distance to it
    assert torch.autograd.gradcheck(fn, (feats, offsets), eps=1e-6, atol=1e-7)


def test_offset_gradient_is_bilinear_derivative_times_trans_std_roi_w():
    # one bin, one sample: out = bilinear(F, h, w), dw/dT = trans_std * roi_w
    feats = (torch.arange(20, dtype=torch.float64).reshape(1, 1, 4, 5) ** 1.5)
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 2.0]], dtype=torch.float64)  # roi_w=4, roi_h=3
    offsets = torch.tensor([[[[0.3]], [[0.5]]]], dtype=torch.float64, requires_grad=True)
    out = deform_roi_pool(feats, rois, offsets, 1.0, 1, 1, 1, 0.5)
    out.sum().backward()
    w = -0.5 + 0.3 * 0.5 * 4.0  # 0.1
    h = -0.5 + 0.5 * 0.5 * 3.0  # 0.25
    f = feats[0, 0]
    expect = ((1 - w) * (1 - h) * f[0, 0] + w * (1 - h) * f[0, 1]
              + (1 - w) * h * f[1, 0] + w * h * f[1, 1])
    assert out.item() == pytest.approx(float(expect), abs=1e-12)
    dx = float((1 - h) * (f[0, 1] - f[0, 0]) + h * (f[1, 1] - f[1, 0]))
    dy = float((1 - w) * (f[1, 0] - f[0, 0]) + w * (f[1, 1] - f[0, 1]))
    assert offsets.grad[0, 0, 0, 0].item() == pytest.approx(dx * 0.5 * 4.0, abs=1e-12)
    assert offsets.grad[0, 1, 0, 0].item() == pytest.approx(dy * 0.5 * 3.0, abs=1e-12)

    # a sample clamped onto the border (h = -0.2 -> 0) sits on an integer row, where the
    # kernel's floor == ceil makes the y-derivative 0; the x-derivative still flows
    offsets2 = torch.tensor([[[[0.3]], [[0.2]]]], dtype=torch.float64, requires_grad=True)
    deform_roi_pool(feats, rois, offsets2, 1.0, 1, 1, 1, 0.5).sum().backward()
    assert offsets2.grad[0, 1, 0, 0].item() == 0.0
    assert offsets2.grad[0, 0, 0, 0].item() == pytest.approx(
        float(f[0, 1] - f[0, 0]) * 0.5 * 4.0, abs=1e-12)


def test_empty_rois():
    feats = torch.randn(1, 5, 4, 4)
    out = deform_roi_pool(feats, torch.zeros(0, 5), None, 0.25, 7, 7, 2, 0.1)
    assert out.shape == (0, 5, 7, 7)
