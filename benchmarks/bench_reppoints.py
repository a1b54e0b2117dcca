"""RepPoints V1 and V2 (R-50 GIoU 1x presets) against our Faster R-CNN at the same scale: one
training iteration and one inference (harness and protocol: benchmarks/detector_timing.py;
at the cpu scale all three share the half-width ResNet-18 backbone; RepPoints adds P7 and GN
to the FPN). V2 is timed with its corner snapping on (its default), so its inference includes
the joint-inference step. Usage::

    .venv/bin/python benchmarks/bench_reppoints.py --scale cpu
    .venv/bin/python benchmarks/bench_reppoints.py --scale paper --size 800x1216 --images 2 --device cuda
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_timing import run  # noqa: E402

NAMES = ["faster_rcnn_r50_fpn_1x", "reppoints_v1_r50_fpn_giou_1x", "reppoints_v2_r50_fpn_giou_1x"]

if __name__ == "__main__":
    raise SystemExit(run(NAMES, __doc__))
