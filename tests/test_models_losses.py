"""Loss values against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from models.common.losses.accuracy import accuracy
from models.common.losses.cross_entropy import CrossEntropyLoss, binary_cross_entropy, cross_entropy
from models.common.losses.smooth_l1 import SmoothL1Loss, smooth_l1_loss


def test_smooth_l1_values():
    pred = torch.tensor([[0.0, 0.5, 2.0, -1.0]])
    target = torch.zeros(1, 4)
    # beta 1: |d| < 1 -> 0.5 d^2; else |d| - 0.5
    per = torch.tensor([0.0, 0.125, 1.5, 0.5])
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=1.0, reduction="none"), per[None])
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=1.0), per.mean())
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=1.0, reduction="sum"), per.sum())
    # beta 1/9: 0.5 -> 0.5 - 1/18
    torch.testing.assert_close(smooth_l1_loss(torch.tensor([0.5]), torch.tensor([0.0]), beta=1 / 9),
                               torch.tensor(0.5 - 1 / 18))
    torch.testing.assert_close(smooth_l1_loss(torch.tensor([0.05]), torch.tensor([0.0]), beta=1 / 9),
                               torch.tensor(0.5 * 0.05**2 * 9))
    # beta 0 is L1
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=0.0), torch.tensor(3.5 / 4))


def test_smooth_l1_weight_avg_factor_and_empty():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    weight = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    loss = SmoothL1Loss(beta=0.0, loss_weight=2.0)(pred, torch.zeros(2, 2), weight, avg_factor=4)
    torch.testing.assert_close(loss, torch.tensor(2.0 * 3.0 / 4))
    empty = torch.zeros(0, 4, requires_grad=True)
    out = smooth_l1_loss(empty, torch.zeros(0, 4), avg_factor=1.0)
    assert out.item() == 0.0 and out.requires_grad
    assert smooth_l1_loss(empty, torch.zeros(0, 4)).item() == 0.0


def test_cross_entropy_values():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    l0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    l1 = math.log(3.0)
    torch.testing.assert_close(cross_entropy(logits, labels), torch.tensor((l0 + l1) / 2))
    torch.testing.assert_close(cross_entropy(logits, labels, torch.tensor([1.0, 0.0]), avg_factor=1.0),
                               torch.tensor(l0))
    torch.testing.assert_close(CrossEntropyLoss(loss_weight=2.0)(logits, labels, avg_factor=4.0),
                               torch.tensor(2.0 * (l0 + l1) / 4))


def test_binary_cross_entropy_values():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    per = torch.tensor([math.log(2.0), math.log(1 + math.exp(2.0)), math.log(1 + math.exp(-1.0))])
    torch.testing.assert_close(binary_cross_entropy(logits, targets), per.mean())
    torch.testing.assert_close(CrossEntropyLoss(use_sigmoid=True)(logits, targets, avg_factor=2.0), per.sum() / 2)
    with pytest.raises(ValueError):
        binary_cross_entropy(logits, targets[:2])


def test_accuracy_percent():
    pred = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    assert accuracy(pred, torch.tensor([0, 1, 1, 1])).item() == pytest.approx(75.0)
    assert accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0
