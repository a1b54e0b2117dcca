"""D2Det against our Faster R-CNN at the same scale: one training iteration and one inference
(the harness and its protocol: benchmarks/detector_timing.py; at the cpu scale the detectors
share backbone / FPN / RPN / RoI sampling; the instance model gets box-shaped masks). Usage::

    .venv/bin/python benchmarks/bench_d2det.py --scale cpu
    .venv/bin/python benchmarks/bench_d2det.py --scale paper --size 800x1216 --images 2 --device cuda
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_timing import run  # noqa: E402

NAMES = ["faster_rcnn_r50_fpn_1x", "d2det_r50_fpn", "d2det_r101_fpn_mask"]

if __name__ == "__main__":
    raise SystemExit(run(NAMES, __doc__))
