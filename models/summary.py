"""Parameter counts of the presets, per part.

    python -m models.summary [--preset NAME] [--scale paper|cpu] [--num-classes 80]

prints one row per (preset, scale) with the parameters of the backbone, neck, RPN head
and RoI head, the total and the trainable total (frozen stages excluded), in millions.
Pretrained weights are not loaded (counts do not depend on them).
"""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

from torch import nn

from models.build import build_model
from models.presets import PRESETS

PARTS = ("backbone", "neck", "rpn_head", "roi_head", "bbox_head")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def preset_counts(preset: str, scale: str, num_classes: int = 80) -> dict[str, int]:
    """Parameter counts of a preset's model: one entry per part, ``total`` and ``trainable``."""
    entry = PRESETS[preset]
    cfg: dict[str, Any] = copy.deepcopy(entry["scales"][scale]["model"])
    model = build_model(entry["detector"], cfg, num_classes, load_pretrained=False)
    counts = {part: count_parameters(getattr(model, part)) for part in PARTS if hasattr(model, part)}
    counts["total"] = count_parameters(model)
    counts["trainable"] = count_parameters(model, trainable_only=True)
    return counts


def format_table(rows: list[tuple[str, str, dict[str, int]]]) -> str:
    columns = [*PARTS, "total", "trainable"]
    width = max([len("preset"), *(len(preset) for preset, _, _ in rows)])
    header = f"{'preset':<{width}} {'scale':<6} " + " ".join(f"{c:>10}" for c in columns)
    lines = [header, "-" * len(header)]
    for preset, scale, counts in rows:
        cells = " ".join(f"{counts.get(c, 0) / 1e6:>9.3f}M" for c in columns)
        lines.append(f"{preset:<{width}} {scale:<6} {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Parameter counts of the model presets, per part.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="one preset (default: all)")
    parser.add_argument("--scale", choices=["paper", "cpu"], default=None, help="one scale (default: all)")
    parser.add_argument("--num-classes", type=int, default=80, help="foreground classes (default 80, COCO)")
    args = parser.parse_args(argv)
    rows = []
    for preset in [args.preset] if args.preset else sorted(PRESETS):
        for scale in [args.scale] if args.scale else sorted(PRESETS[preset]["scales"]):
            rows.append((preset, scale, preset_counts(preset, scale, args.num_classes)))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
