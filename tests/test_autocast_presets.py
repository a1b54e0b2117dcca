"""Every paper preset trains and predicts under CPU bfloat16 autocast, and creates no tensor
on an implicit device (issue 18, items 5 and 6: what can be checked of AMP and device
placement without a GPU).

One model per preset, at the paper architecture (no pretrained weights) but on one 128 x 128
image with two gt boxes and their masks (every detector gets masks; those that do not need
them ignore them). Per preset:

- the training step (forward + backward) runs under ``torch.autocast("cpu", bfloat16)`` *and*
  inside ``with torch.device("meta"):``. The model and the inputs are real CPU tensors made
  outside the context, so a factory call inside the model without an explicit device
  (``torch.zeros(n)``, ``torch.randperm(n)``) makes a meta tensor, which fails where it meets
  a real one (or, a 0-dim one, ``.item()``), and would put a tensor on the wrong device on a
  GPU. Every loss must be a finite float32 CPU tensor and every gradient a CPU tensor;
- inference runs under the same autocast and meta device, with every ``score_thr`` of the
  preset set to 0 so that the post-processing (NMS / Soft-NMS, box decoding, mask pasting)
  has boxes to work on (at most 10 per image kept): boxes and scores must come out float32 on the CPU, and finite.

About 70 s on 2 shared CPU cores for the 34 presets.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from models.build import build_model
from models.presets import PRESETS

SIZE = 128
NUM_CLASSES = 80


# test-time caps so that score_thr 0 stays cheap (CPM R-CNN refines every box it keeps)
CAPS = {"max_per_img": 10, "max_before_refine": 20}


def _zero_score_thresholds(cfg: Any) -> Any:
    """``cfg`` with every ``score_thr`` key (at any depth) set to 0.0 and the :data:`CAPS` keys
    capped."""
    if isinstance(cfg, dict):
        out = {}
        for k, v in cfg.items():
            if k == "score_thr":
                out[k] = 0.0
            elif k in CAPS:  # None: no cap in the preset
                out[k] = CAPS[k] if v is None else min(v, CAPS[k])
            else:
                out[k] = _zero_score_thresholds(v)
        return out
    if isinstance(cfg, list):
        return [_zero_score_thresholds(v) for v in cfg]
    return cfg


def _batch() -> tuple[torch.Tensor, list[tuple[int, int]], list[dict[str, torch.Tensor]]]:
    """One image FloatTensor[1, 3, SIZE, SIZE], its size and a target with two boxes
    FloatTensor[2, 4], labels LongTensor[2] and box-shaped masks UInt8Tensor[2, SIZE, SIZE]."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, SIZE, SIZE, generator=gen)
    boxes = torch.tensor([[10.0, 12.0, 70.0, 90.0], [40.0, 30.0, 120.0, 110.0]])
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        mask[y1:y2, x1:x2] = 1
    return image, [(SIZE, SIZE)], [{"boxes": boxes, "labels": torch.tensor([1, 5]), "masks": masks}]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_paper_preset_under_bf16_autocast_and_meta_default_device(preset):
    entry = PRESETS[preset]
    cfg = _zero_score_thresholds(copy.deepcopy(entry["scales"]["paper"]["model"]))
    torch.manual_seed(0)
    model = build_model(entry["detector"], cfg, NUM_CLASSES, load_pretrained=False)
    images, sizes, targets = _batch()

    model.train()
    with torch.device("meta"), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images, sizes, targets)
        losses = {k: v for k, v in outputs.items() if k.startswith("loss")}
        assert losses, f"{preset}: no loss in {sorted(outputs)}"
        sum(losses.values()).backward()
    for name, value in losses.items():
        assert value.device.type == "cpu", f"{preset}: {name} on {value.device}"
        assert value.dtype == torch.float32, f"{preset}: {name} is {value.dtype}"
        assert torch.isfinite(value).all(), f"{preset}: {name} = {value}"
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    assert grads, f"{preset}: no gradient"
    assert all(g.device.type == "cpu" and torch.isfinite(g).all() for _, g in grads), \
        [n for n, g in grads if g.device.type != "cpu" or not torch.isfinite(g).all()][:5]

    model.eval()
    with torch.no_grad(), torch.device("meta"), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = model(images, sizes)
    assert len(detections) == 1
    det = detections[0]
    for key in ("boxes", "scores"):
        assert det[key].device.type == "cpu", f"{preset}: {key} on {det[key].device}"
        assert det[key].dtype == torch.float32, f"{preset}: {key} is {det[key].dtype}"
        assert torch.isfinite(det[key]).all(), f"{preset}: non-finite {key}"
    assert det["boxes"].shape == (det["scores"].shape[0], 4)
    assert det["scores"].shape[0] > 0, f"{preset}: no detection with every score_thr at 0"
