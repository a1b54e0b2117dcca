"""Our Faster R-CNN against torchvision's, one training iteration and one inference.

Both detectors run in this process on the same synthetic batch (noise images with random
boxes), with matched settings: image size, RPN pre/post-NMS counts, NMS thresholds, RPN
and RoI sample sizes and positive fractions, RoIAlign 7x7 with sampling ratio 2, 1024-wide
(paper) or 256-wide (cpu) box head, detections per image; ours trains every anchor
(``allowed_border=-1``) as torchvision does. A training iteration is
zero_grad + forward + backward + SGD step; inference is an eval-mode forward under
``torch.no_grad``. After ``--warmup`` untimed runs the two detectors are timed in
alternation (so load drift on a shared machine hits both alike) and the median of
``--iters`` is reported, with the ratio ours / torchvision (< 1 means ours is faster).

Scales:

- ``paper``: our paper preset vs ``torchvision.models.detection.fasterrcnn_resnet50_fpn(
  weights=None, weights_backbone=None)``. Without weights torchvision trains the whole
  ResNet-50 with BatchNorm in train mode, so ours is set the same way (``frozen_stages=-1,
  norm_eval=False``); ``--frozen-backbone`` instead compares the pretrained-style set-up
  (ours: the preset's stem + layer1 frozen, with ``norm="frozen_bn"``; torchvision:
  FrozenBatchNorm2d and ``trainable_backbone_layers=3``, i.e. what
  ``fasterrcnn_resnet50_fpn`` builds with backbone weights). Both start from the same
  ResNet-50 weights (copied from ours).
- ``cpu``: our CPU preset vs torchvision's ``FasterRCNN`` class on an identical copy of our
  backbone + FPN (torchvision has no half-width ResNet), with anchors, proposal counts,
  RoI sampling and a 256-wide ``TwoMLPHead`` set to match, so the difference is in the
  RPN / RoI head code.

Timings never fail the run. Usage::

    .venv/bin/python benchmarks/bench_faster_rcnn.py --scale paper --size 512 --iters 5
    .venv/bin/python benchmarks/bench_faster_rcnn.py --scale cpu
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import build_model  # noqa: E402
from models.presets import PRESETS  # noqa: E402

NUM_CLASSES = 80
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def parse_size(text: str) -> tuple[int, int]:
    """``512`` -> (512, 512); ``160x256`` -> (160, 256) as (h, w)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[0]), int(parts[1])


def make_batch(num_images: int, size: tuple[int, int], boxes_per_image: int, seed: int):
    """Raw 0-255 images [B, 3, H, W] and targets with labels 0..79 (random boxes 16 px .. half the image)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = torch.rand(num_images, 3, h, w, generator=g) * 255
    targets = []
    for _ in range(num_images):
        bw = 16 + torch.rand(boxes_per_image, generator=g) * (w / 2 - 16)
        bh = 16 + torch.rand(boxes_per_image, generator=g) * (h / 2 - 16)
        x1 = torch.rand(boxes_per_image, generator=g) * (w - bw)
        y1 = torch.rand(boxes_per_image, generator=g) * (h - bh)
        boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)
        labels = torch.randint(0, NUM_CLASSES, (boxes_per_image,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def our_model(scale: str, frozen_backbone: bool) -> nn.Module:
    cfg = copy.deepcopy(PRESETS["faster_rcnn_r50_fpn_1x"]["scales"][scale]["model"])
    cfg["backbone"]["pretrained"] = None
    if scale == "paper" and not frozen_backbone:
        cfg["backbone"].update(frozen_stages=-1, norm_eval=False)
    elif scale == "paper":
        cfg["backbone"]["norm"] = "frozen_bn"  # torchvision freezes the BN affine parameters too
    cfg["rpn_head"]["allowed_border"] = -1  # torchvision trains every anchor
    cfg["roi_head"]["bbox_roi_extractor"]["sampling_ratio"] = 2  # torchvision's MultiScaleRoIAlign
    return build_model("faster_rcnn", cfg, NUM_CLASSES)


class _PyramidAsDict(nn.Module):
    """Our backbone + FPN returning torchvision's OrderedDict of pyramid levels."""

    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.body = backbone
        self.fpn = neck
        self.out_channels = neck.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        outs = self.fpn(self.body(x))
        return OrderedDict([(str(i), o) for i, o in enumerate(outs[:-1])] + [("pool", outs[-1])])


def torchvision_model(scale: str, frozen_backbone: bool, size: tuple[int, int], ours: nn.Module) -> nn.Module:
    from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    rpn_cfg = PRESETS["faster_rcnn_r50_fpn_1x"]["scales"][scale]["model"]["rpn_head"]
    roi_cfg = PRESETS["faster_rcnn_r50_fpn_1x"]["scales"][scale]["model"]["roi_head"]
    common = dict(
        min_size=min(size), max_size=max(size), image_mean=[m / 255 for m in MEAN], image_std=[s / 255 for s in STD],
        rpn_pre_nms_top_n_train=rpn_cfg["train_proposals"]["nms_pre"],
        rpn_post_nms_top_n_train=rpn_cfg["train_proposals"]["max_per_img"],
        rpn_pre_nms_top_n_test=rpn_cfg["test_proposals"]["nms_pre"],
        rpn_post_nms_top_n_test=rpn_cfg["test_proposals"]["max_per_img"],
        rpn_nms_thresh=0.7, rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
        box_batch_size_per_image=roi_cfg["sampler"]["num"], box_positive_fraction=0.25,
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
    )
    if scale == "paper":
        if not frozen_backbone:
            model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1,
                                            **common)
        else:
            from torchvision.models import resnet50
            from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
            from torchvision.ops import FrozenBatchNorm2d

            backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
            model = FasterRCNN(backbone, num_classes=NUM_CLASSES + 1, **common)
        # Same ResNet weights as ours (the parameter names match), so both compute the same
        # backbone function: an untrained ResNet-50 without zero-initialised residuals and with
        # identity frozen BN blows its activations up to inf/NaN, which would time NaN paths.
        result = model.backbone.body.load_state_dict(ours.backbone.state_dict(), strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing:
            raise RuntimeError(f"backbone weights did not transfer: {missing[:5]}")
        return model
    # cpu: same backbone + FPN module as ours (a copy), torchvision heads matched to our preset.
    strides = rpn_cfg["anchor_generator"]["strides"]
    anchor_scale = rpn_cfg["anchor_generator"]["scales"][0]
    channels = ours.neck.out_channels
    fc = roi_cfg["bbox_head"]["fc_out_channels"]
    featmap_names = [str(i) for i in range(len(roi_cfg["bbox_roi_extractor"]["featmap_strides"]))]
    return FasterRCNN(
        _PyramidAsDict(copy.deepcopy(ours.backbone), copy.deepcopy(ours.neck)),
        num_classes=None,
        rpn_anchor_generator=AnchorGenerator(tuple((int(s * anchor_scale),) for s in strides),
                                             ((0.5, 1.0, 2.0),) * len(strides)),
        rpn_head=RPNHead(channels, 3),
        box_roi_pool=MultiScaleRoIAlign(featmap_names, 7, 2),
        box_head=TwoMLPHead(channels * 49, fc),
        box_predictor=FastRCNNPredictor(fc, NUM_CLASSES + 1),
        **common,
    )


def interleaved_medians(steps: dict[str, Callable[[], object]], warmup: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each step, timed in alternation (A B A B ...) so that
    machine-load drift hits every contender alike."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def our_steps(model: nn.Module, images: torch.Tensor, targets: list[dict]):
    """(train_step, infer) closures for our detector: normalised batch tensor + image sizes."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = (images - mean) / std
    sizes = [tuple(images.shape[-2:])] * images.shape[0]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def train_step():
        model.train()
        opt.zero_grad()
        losses = model(x, sizes, targets)
        sum(v for k, v in losses.items() if k.startswith("loss")).backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(x, sizes)

    return train_step, infer


def torchvision_steps(model: nn.Module, images: torch.Tensor, targets: list[dict]):
    """(train_step, infer) closures for torchvision's detector: list of 0-1 images, labels 1..80."""
    imgs = [im / 255 for im in images]
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 0 = background
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def train_step():
        model.train()
        opt.zero_grad()
        losses = model(imgs, tv_targets)
        sum(losses.values()).backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(imgs)

    return train_step, infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=["paper", "cpu"], default="paper")
    parser.add_argument("--size", default=None, help="image size H or HxW (default: paper 512, cpu 160x256)")
    parser.add_argument("--images", type=int, default=None, help="images per batch (default: paper 2, cpu 8)")
    parser.add_argument("--boxes", type=int, default=5, help="gt boxes per image")
    parser.add_argument("--iters", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repeats first")
    parser.add_argument("--frozen-backbone", action="store_true", help="paper: compare pretrained-style freezing")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    size = parse_size(args.size or ("512" if args.scale == "paper" else "160x256"))
    num_images = args.images or (2 if args.scale == "paper" else 8)
    images, targets = make_batch(num_images, size, args.boxes, args.seed)

    torch.manual_seed(args.seed)
    ours = our_model(args.scale, args.frozen_backbone)
    steps: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    for name, make in (
        ("ours", lambda: our_steps(ours, images, targets)),
        ("torchvision", lambda: torchvision_steps(
            torchvision_model(args.scale, args.frozen_backbone, size, ours), images, targets)),
    ):
        try:
            torch.manual_seed(args.seed)
            train_step, infer = make()
            train_step()  # fail here, not inside the timing loop
            infer()
            steps[name] = (train_step, infer)
        except Exception:  # a failure of one side is reported, never fatal
            traceback.print_exc()
    results: dict[str, tuple[float, float] | None] = {name: None for name in ("ours", "torchvision")}
    try:
        train = interleaved_medians({n: s[0] for n, s in steps.items()}, args.warmup, args.iters)
        infer = interleaved_medians({n: s[1] for n, s in steps.items()}, args.warmup, args.iters)
        for name in steps:
            results[name] = (train[name], infer[name])
    except Exception:
        traceback.print_exc()

    print(f"Faster R-CNN benchmark: scale={args.scale} images={num_images} size={size[0]}x{size[1]} "
          f"boxes/img={args.boxes} threads={torch.get_num_threads()} warmup={args.warmup} iters={args.iters} "
          f"frozen_backbone={args.frozen_backbone} device=cpu torch={torch.__version__}")
    print(f"{'model':<12} {'train s/iter':>13} {'infer s/iter':>13}")
    for name, res in results.items():
        if res is None:
            print(f"{name:<12} {'failed':>13} {'failed':>13}")
        else:
            print(f"{name:<12} {res[0]:>13.3f} {res[1]:>13.3f}")
    if results.get("ours") and results.get("torchvision"):
        (ot, oi), (tt, ti) = results["ours"], results["torchvision"]
        print(f"{'ratio':<12} {ot / tt:>13.2f} {oi / ti:>13.2f}   (ours / torchvision; < 1 = ours faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
