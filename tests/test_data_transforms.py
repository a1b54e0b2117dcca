"""DetectionTransforms: keep-ratio rescale, multi-scale modes, flip of boxes and masks, normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.transforms import DetectionTransforms, flip_boxes, rescale_size

MEAN = (10.0, 20.0, 30.0)
STD = (2.0, 4.0, 5.0)


def _sample(h: int = 60, w: int = 80) -> tuple[np.ndarray, dict]:
    """An image with two white rectangles and their boxes/masks; one crowd box."""
    image = np.zeros((h, w, 3), np.uint8)
    boxes = np.array([[10, 20, 30, 40], [50, 5, 75, 25]], np.float32)  # xyxy, pixel edges
    masks = np.zeros((2, h, w), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        image[y1:y2, x1:x2] = 255
        masks[i, y1:y2, x1:x2] = 1
    target = {"boxes": boxes, "ignore_boxes": np.array([[0, 0, 8, 8]], np.float32), "masks": masks,
              "labels": torch.tensor([0, 1]), "image_id": 7}
    return image, target


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_rescale_size_follows_mmcv() -> None:
    # scale = min(1333 / 640, 800 / 427) = 1.8735...; int(x * s + 0.5)
    assert rescale_size(427, 640, 1333, 800) == (800, 1199)
    assert rescale_size(640, 427, 1333, 800) == (1199, 800)
    assert rescale_size(190, 160, 300, 200) == (238, 200)  # short edge binds: s = 1.25


@pytest.mark.parametrize("flip", [False, True])
def test_boxes_and_masks_follow_resize_and_flip_exactly(flip: bool) -> None:
    image, target = _sample()
    t = DetectionTransforms(scales=[(160, 120)], flip_ratio=1.0 if flip else 0.0, mean=MEAN, std=STD)
    img, out = t(image, target, np.random.default_rng(0))
    assert img.shape == (3, 120, 160) and img.dtype == torch.float32
    assert out["img_size"] == (120, 160)
    assert out["flipped"] is flip
    assert torch.equal(out["scale_factor"], torch.tensor([2.0, 2.0]))
    expected = torch.tensor([[20, 40, 60, 80], [100, 10, 150, 50]], dtype=torch.float32)
    if flip:
        expected = torch.stack([160 - expected[:, 2], expected[:, 1], 160 - expected[:, 0], expected[:, 3]], 1)
    assert torch.equal(out["boxes"], expected)
    ignore = torch.tensor([[144.0, 0, 160, 16]]) if flip else torch.tensor([[0.0, 0, 16, 16]])
    assert torch.equal(out["ignore_boxes"], ignore)
    assert out["masks"].shape == (2, 120, 160) and out["masks"].dtype == torch.uint8
    for i in range(2):
        assert _mask_box(out["masks"][i]) == expected[i].tolist()
        # the bright pixels of the image are exactly where the masks are
        x1, y1, x2, y2 = (int(v) for v in expected[i])
        white = (torch.tensor([255.0, 255.0, 255.0]) - torch.tensor(MEAN)) / torch.tensor(STD)
        assert torch.allclose(img[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].mean(dim=(1, 2)), white, atol=1e-4)
    assert out["labels"].tolist() == [0, 1] and out["image_id"] == 7


def test_non_integer_scale_uses_realised_factors() -> None:
    image, target = _sample(h=160, w=190)
    t = DetectionTransforms(scales=[(300, 200)])
    _, out = t(image, target, np.random.default_rng(0))
    assert out["img_size"] == (200, 238)
    sx, sy = 238 / 190, 200 / 160
    assert torch.allclose(out["scale_factor"], torch.tensor([sx, sy]))
    expected = torch.from_numpy(target["boxes"]) * torch.tensor([sx, sy, sx, sy])
    assert torch.allclose(out["boxes"], expected)
    for i in range(2):
        assert np.allclose(_mask_box(out["masks"][i]), expected[i].tolist(), atol=1.0)


def test_normalisation_in_rgb_0_255_units() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 12, 28, 40
    img, out = DetectionTransforms(mean=MEAN, std=STD)(image, {}, np.random.default_rng(0))
    assert torch.allclose(img, torch.tensor([1.0, 2.0, 2.0])[:, None, None].expand(3, 4, 6))
    assert out["img_size"] == (4, 6) and out["boxes"].shape == (0, 4) and out["ignore_boxes"].shape == (0, 4)
    assert out["flipped"] is False


def test_empty_targets_keep_their_shapes() -> None:
    image = np.zeros((50, 40, 3), np.uint8)
    target = {"boxes": np.zeros((0, 4), np.float32), "ignore_boxes": np.zeros((0, 4), np.float32),
              "masks": np.zeros((0, 50, 40), np.uint8)}
    _, out = DetectionTransforms(scales=[(100, 80)], flip_ratio=1.0)(image, target, np.random.default_rng(0))
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 100, 80)


def test_value_mode_picks_given_scales_and_range_mode_samples_between() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    value = DetectionTransforms(scales=[(400, 100), (600, 150)], multiscale_mode="value")
    sizes = {value(image, {}, np.random.default_rng(s))[1]["img_size"] for s in range(30)}
    assert sizes == {(100, 200), (150, 300)}

    rng_mode = DetectionTransforms(scales=[(1333, 480), (1333, 960)], multiscale_mode="range")
    shorts = {rng_mode.sample_scale(np.random.default_rng(s))[1] for s in range(200)}
    assert min(shorts) >= 480 and max(shorts) <= 960 and len(shorts) > 50
    assert rng_mode.sample_scale(np.random.default_rng(3)) == rng_mode.sample_scale(np.random.default_rng(3))


def test_flip_ratio_is_a_probability() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    t = DetectionTransforms(flip_ratio=0.5)
    flips = [t(image, {}, np.random.default_rng(s))[1]["flipped"] for s in range(400)]
    assert 0.4 < np.mean(flips) < 0.6


def test_flip_boxes_formula() -> None:
    b = np.array([[1.5, 2.0, 4.0, 9.0]], np.float32)
    assert flip_boxes(b, 10).tolist() == [[6.0, 2.0, 8.5, 9.0]]
    assert np.array_equal(flip_boxes(flip_boxes(b, 10), 10), b)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="exactly two"):
        DetectionTransforms(scales=[(1333, 800)], multiscale_mode="range")
    with pytest.raises(ValueError, match="multiscale_mode"):
        DetectionTransforms(scales=[(1333, 800)], multiscale_mode="ratio")
    with pytest.raises(ValueError, match="flip_ratio"):
        DetectionTransforms(flip_ratio=1.5)
    with pytest.raises(ValueError, match="pair"):
        DetectionTransforms(scales=[(1333, 800, 3)])


def test_keep_ratio_false_resizes_to_exact_size() -> None:
    image, target = _sample(h=60, w=80)
    _, out = DetectionTransforms(scales=[(100, 90)], keep_ratio=False)(image, target, np.random.default_rng(0))
    assert out["img_size"] == (90, 100)
    assert torch.allclose(out["scale_factor"], torch.tensor([100 / 80, 90 / 60]))
