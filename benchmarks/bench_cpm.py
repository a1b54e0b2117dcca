"""Grid R-CNN and CPM R-CNN against our Faster R-CNN at the same scale, and the cost each CPM
module adds: one training iteration and one inference (harness and protocol:
benchmarks/detector_timing.py; at the cpu scale all share the Faster R-CNN CPU backbone, FPN
and RPN). ``cpm_none`` is CPM's single grid stage without fusion, ISM or RSM; ``cpm_cmm``,
``cpm_ism``, ``cpm_rsm`` add one module each; ``cpm_rcnn_r50_fpn`` has all three. Usage::

    .venv/bin/python benchmarks/bench_cpm.py --scale cpu
    .venv/bin/python benchmarks/bench_cpm.py --scale paper --size 800x1216 --images 2 --device cuda
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_timing import run  # noqa: E402


def _switches(cmm: bool, ism: bool, rsm: bool) -> tuple[str, dict]:
    return "cpm_rcnn_r50_fpn", {"roi_head": {"with_cmm": cmm, "with_ism": ism, "with_rsm": rsm}}


VARIANTS = {
    "cpm_none": _switches(False, False, False),
    "cpm_cmm": _switches(True, False, False),
    "cpm_ism": _switches(False, True, False),
    "cpm_rsm": _switches(False, False, True),
}
NAMES = ["faster_rcnn_r50_fpn_1x", "grid_rcnn_r50_fpn_2x", *VARIANTS, "cpm_rcnn_r50_fpn"]

if __name__ == "__main__":
    raise SystemExit(run(NAMES, __doc__, variants=VARIANTS))
