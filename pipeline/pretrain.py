"""DVC stage ``pretrain``: the CPU scale's stand-in for ImageNet initialisation.

    python -m pipeline.pretrain [--params params.yaml] [--out weights/pretrained/cpu_backbone.pth]

Every paper preset starts its backbone from ImageNet weights; a CPU preset's half-width
ResNet-18 has no such checkpoint. This stage makes one: it trains the backbone once as an
image classifier on object crops of the prepared ``train`` split (one class per category,
plus a background class of crops that overlap no object), and writes the backbone's weights
in torchvision's layout (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight`` ...,
``fc.*``), the format :meth:`models.common.backbones.resnet.ResNet.load_pretrained` reads.
The CPU model entries of params.yaml point their ``model.backbone.pretrained`` at it, and
every train stage depends on it, so it is trained once and DVC caches it.

Crops are cut once, with ``context`` of margin on each side, resized to
``crop_size + crop_size // 8`` pixels square and kept in memory as uint8; each batch takes a
random ``crop_size`` window of them and flips half (a cheap form of the random-resized-crop
augmentation of ImageNet training). The minival split's crops (centre window, no flip)
measure the classifier's accuracy, recorded in ``metrics/pretrain.json`` and MLflow.

Everything random is drawn from ``seed``; the output holds no time or path, so the same
data and parameters give a byte-identical file.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.checkpoint import atomic_torch_save, file_digest
from pipeline.config import load_params
from pipeline.data import load_manifest
from pipeline.data.dataset import CocoDetectionDataset
from pipeline.engine import seed_everything, write_json
from pipeline.paths import MANIFEST_FILE, METRICS_DIR, PARAMS_FILE
from pipeline.tracking import Tracker, TrackingStoreError, prepared_data_digest

#: Where the stage writes the backbone (relative to the repository root); params.yaml's CPU
#: entries name the same path in ``model.backbone.pretrained``.
DEFAULT_OUT = Path("weights/pretrained/cpu_backbone.pth")


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] and b [M, 4] (xyxy) -> [N, M]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


def _cut(image: np.ndarray, box: np.ndarray, context: float, size: int) -> np.ndarray:
    """Square crop around ``box`` (xyxy pixels) widened by ``context`` of its longer side on
    each side, zero-padded where it leaves the image, resized to ``size`` -> uint8 [3, size, size]."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * context)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    t = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    h, w = image.shape[:2]
    # affine_grid works in normalised coordinates of the source image (align_corners=False).
    theta = torch.tensor([[[side / w, 0.0, 2.0 * cx / w - 1.0], [0.0, side / h, 2.0 * cy / h - 1.0]]])
    grid = F.affine_grid(theta, [1, 3, size, size], align_corners=False)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8).numpy()


def extract_crops(dataset, context: float, size: int, background_per_image: int, rng: np.random.Generator,
                  desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Object and background crops of every image of ``dataset``.

    Returns (uint8 [N, 3, size, size], int64 [N]); labels are the dataset's 0..C-1, and C for
    background crops (random squares of 16..96 px whose IoU with every object and crowd
    region is below 0.1).
    """
    crops, labels = [], []
    num_classes = dataset.num_classes
    for idx in tqdm(range(len(dataset)), desc=desc, unit="img", mininterval=5.0):
        image = dataset.load_image(idx)
        boxes, labels_i, ignore = dataset.annotated_boxes(idx)
        for box, label in zip(boxes, labels_i):
            crops.append(_cut(image, box, context, size))
            labels.append(int(label))
        h, w = image.shape[:2]
        occupied = np.concatenate([boxes, ignore]).reshape(-1, 4)
        for _ in range(background_per_image):
            for _attempt in range(10):
                s = float(rng.uniform(16, min(96, h, w)))
                x, y = float(rng.uniform(0, w - s)), float(rng.uniform(0, h - s))
                cand = np.array([[x, y, x + s, y + s]], np.float32)
                if _box_iou(cand, occupied).max(initial=0.0) < 0.1:
                    crops.append(_cut(image, cand[0], 0.0, size))
                    labels.append(num_classes)
                    break
    return np.stack(crops), np.asarray(labels, np.int64)


class CropClassifier(nn.Module):
    """The CPU backbone with global average pooling and a linear classifier.

    Forward: FloatTensor[B, 3, S, S] (normalised) -> logits FloatTensor[B, num_classes + 1].
    """

    def __init__(self, backbone_cfg: dict[str, Any], num_outputs: int) -> None:
        super().__init__()
        from models.common.backbones.resnet import ResNet

        cfg = {k: v for k, v in backbone_cfg.items() if k not in ("frozen_stages", "norm_eval", "out_indices",
                                                                  "pretrained")}
        self.backbone = ResNet(**cfg, out_indices=(3,), frozen_stages=-1, norm_eval=False, pretrained=None)
        self.fc = nn.Linear(self.backbone.out_channels[-1], num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.backbone(x)[-1]
        return self.fc(feat.mean(dim=(2, 3)))

    def torchvision_state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights under torchvision's ResNet names, the classifier as ``fc.*``."""
        state = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        state.update({f"fc.{k}": v.detach().clone() for k, v in self.fc.state_dict().items()})
        return state


def _normalise(batch: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (batch.float() - mean) / std


def pretrain_backbone(params: dict[str, Any], manifest_file: Path = MANIFEST_FILE, out: Path = DEFAULT_OUT,
                      metrics_file: Path = METRICS_DIR / "pretrain.json", track: bool = True) -> dict[str, Any]:
    """Train the classifier of ``params['pretrain']`` and write the backbone to ``out``.

    Returns the metrics written to ``metrics_file`` (crop counts, final loss, minival accuracy).
    """
    cfg = params["pretrain"]
    seed = int(cfg.get("seed", params.get("seed", 0)))
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    manifest = load_manifest(manifest_file)
    size = int(cfg["crop_size"])
    stored = size + size // 8
    context = float(cfg.get("context", 0.25))
    bg = int(cfg.get("background_per_image", 1))
    train_split = manifest.split("train")
    train_set = CocoDetectionDataset(train_split.ann_file, train_split.img_dir)
    x_train, y_train = extract_crops(train_set, context, stored, bg, rng, "crops train")
    num_outputs = train_set.num_classes + 1
    val_split = manifest.splits.get("minival")
    x_val = y_val = None
    if val_split is not None and val_split.has_annotations:
        val_set = CocoDetectionDataset(val_split.ann_file, val_split.img_dir)
        x_val, y_val = extract_crops(val_set, context, stored, bg, np.random.default_rng(seed + 1), "crops minival")

    model = CropClassifier(cfg["backbone"], num_outputs)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    epochs, batch = int(cfg["epochs"]), int(cfg["batch_size"])
    iters_per_epoch = max(1, len(x_train) // batch)
    total = epochs * iters_per_epoch
    warmup = min(int(cfg.get("warmup_iters", 50)), total)
    base_lr = float(cfg["lr"])
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9, weight_decay=float(cfg["weight_decay"]),
                          nesterov=True)

    def lr_at(it: int) -> float:  # linear warmup, then cosine to zero
        if it < warmup:
            return base_lr * (it + 1) / warmup
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * (it - warmup) / max(1, total - warmup)))

    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    tags = {"stage": "pretrain", "model": "cpu_backbone", "scale": "cpu",
            "dataset": f"{manifest.name} train ({len(train_set)} images, {len(x_train)} crops)"}
    start = time.time()
    with Tracker("pretrain/cpu_backbone", tags, enabled=track) as tracker:
        tracker.log_dataset(f"{manifest.name}/train", prepared_data_digest(manifest_file),
                            str(manifest.split("train").ann_file), "train")
        tracker.log_params({"pretrain": cfg, "num_crops": len(x_train)})
        model.train()
        it = 0
        loss_value = float("nan")
        bar = tqdm(total=total, desc="pretrain", unit="it", mininterval=5.0)
        for epoch in range(epochs):
            order = torch.randperm(len(xt), generator=gen)
            for b in range(iters_per_epoch):
                sel = order[b * batch:(b + 1) * batch]
                ox, oy = torch.randint(0, stored - size + 1, (2,), generator=gen).tolist()
                x = xt[sel, :, oy:oy + size, ox:ox + size]
                flip = torch.rand(len(sel), generator=gen) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                for g in opt.param_groups:
                    g["lr"] = lr_at(it)
                loss = F.cross_entropy(model(_normalise(x, mean, std)), yt[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                it += 1
                loss_value = float(loss.detach())
                tracker.log_metrics({"pretrain/loss": loss_value, "pretrain/lr": lr_at(it - 1)}, step=it)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        bar.close()
        metrics: dict[str, Any] = {"train_crops": int(len(x_train)), "iterations": total, "final_loss": loss_value,
                                   "classes": num_outputs}
        if x_val is not None:
            model.eval()
            off = (stored - size) // 2
            correct = 0
            with torch.no_grad():
                for b in range(0, len(x_val), 256):
                    x = torch.from_numpy(x_val[b:b + 256, :, off:off + size, off:off + size])
                    pred = model(_normalise(x, mean, std)).argmax(1)
                    correct += int((pred == torch.from_numpy(y_val[b:b + 256])).sum())
            metrics["minival_crops"] = int(len(x_val))
            metrics["minival_accuracy"] = correct / max(1, len(x_val))
        tracker.log_metrics({f"pretrain/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=total)
        atomic_torch_save(model.torchvision_state_dict(), Path(out))
        tracker.set_tag("weights_sha256", file_digest(Path(out)))
        tracker.log_params({"host.seconds": round(time.time() - start, 1)})
        write_json(metrics, Path(metrics_file))
        tracker.flush()
        tracker.log_artifact(Path(metrics_file))
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--manifest", type=Path, default=MANIFEST_FILE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--metrics", type=Path, default=METRICS_DIR / "pretrain.json")
    args = parser.parse_args(argv)
    try:
        metrics = pretrain_backbone(load_params(args.params), args.manifest, args.out, args.metrics)
    except TrackingStoreError as e:
        raise SystemExit(f"[pretrain] {e}") from e
    print(f"[pretrain] wrote {args.out}: {metrics}", flush=True)


if __name__ == "__main__":
    main()
