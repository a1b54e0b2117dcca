"""collate_detection: padding to a divisible size, sizes and targets passed through."""
from __future__ import annotations

import pytest
import torch

from pipeline.data.collate import collate_detection


def test_pads_bottom_right_to_multiple_of_divisor() -> None:
    a = torch.randn(3, 50, 70)
    b = torch.randn(3, 65, 40)
    ta, tb = {"image_id": 1}, {"image_id": 2}
    images, sizes, targets = collate_detection([(a, ta), (b, tb)], size_divisor=32)
    assert images.shape == (2, 3, 96, 96)
    assert sizes == [(50, 70), (65, 40)]
    assert targets[0] is ta and targets[1] is tb
    assert torch.equal(images[0, :, :50, :70], a) and torch.equal(images[1, :, :65, :40], b)
    assert images[0, :, 50:].abs().sum() == 0 and images[0, :, :, 70:].abs().sum() == 0
    assert images[1, :, 65:].abs().sum() == 0 and images[1, :, :, 40:].abs().sum() == 0


def test_exact_multiple_and_no_divisor() -> None:
    a = torch.ones(3, 64, 32)
    images, _, _ = collate_detection([(a, {})], size_divisor=32)
    assert images.shape == (1, 3, 64, 32)
    b = torch.ones(3, 33, 17)
    images, sizes, _ = collate_detection([(a, {}), (b, {})], size_divisor=1)
    assert images.shape == (2, 3, 64, 32) and sizes == [(64, 32), (33, 17)]


def test_empty_batch_is_an_error() -> None:
    with pytest.raises(ValueError):
        collate_detection([])
