"""Score every run's result files with both COCO evaluation engines and compare the numbers.

    .venv/bin/python scripts/check_engine_parity.py [--root .] [--splits minival test-dev]

For each ``<root>/results/<run>/<split>_{bbox,segm}.json`` the pipeline wrote (a split whose
annotation file has annotations: synthetic minival and test-dev, COCO minival), the 12 COCO
numbers are computed by pycocotools (the reference) and by faster-coco-eval, each from its own
freshly loaded ground truth, and compared: ``identical`` when every number is bit-equal,
otherwise the largest absolute difference and whether the numbers agree at the 6 decimals the
metrics files keep. Exits 1 when any file disagrees at 6 decimals.

``--root`` is a workspace holding ``results/`` and ``data/prepared/manifest.json`` (the
repository itself after ``dvc repro`` or ``dvc pull``, or a fresh clone that ran it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.manifest import load_manifest  # noqa: E402
from pipeline.evaluation import STAT_NAMES, coco_evaluate, load_coco_quietly  # noqa: E402


def compare_file(ann_file: Path, result_file: Path, iou_type: str) -> tuple[float, int]:
    """(largest absolute difference of the 12 numbers, how many differ at all) between the
    engines on one result file."""
    records = json.loads(result_file.read_text())
    stats = {}
    for engine in ("pycocotools", "faster"):
        gt = load_coco_quietly(ann_file)  # each engine its own: faster-coco-eval annotates gt's dicts
        stats[engine], _, _ = coco_evaluate(gt, records, iou_type, engine=engine, source=str(result_file))
    diffs = [abs(stats["pycocotools"][k] - stats["faster"][k]) for k in STAT_NAMES]
    return max(diffs), sum(d > 0 for d in diffs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO)
    parser.add_argument("--splits", nargs="+", default=["minival", "test-dev"])
    args = parser.parse_args(argv)
    manifest = load_manifest(args.root / "data" / "prepared" / "manifest.json")
    rows, bad = [], 0
    for run_dir in sorted(p for p in (args.root / "results").iterdir() if p.is_dir()):
        for split in args.splits:
            info = manifest.splits.get(split)
            if info is None or not info.has_annotations:
                continue
            for iou_type in ("bbox", "segm"):
                result_file = run_dir / f"{split}_{iou_type}.json"
                if not result_file.is_file():
                    continue
                worst, n_diff = compare_file(info.ann_file, result_file, iou_type)
                same6 = worst < 5e-7
                bad += not same6
                verdict = "identical" if n_diff == 0 else (f"{n_diff} of 12 differ, by at most {worst:.1e}; "
                                                           + ("equal at 6 decimals" if same6 else "DIFFERENT"))
                rows.append(f"| {run_dir.name} | {split} | {iou_type} | {verdict} |")
                print(rows[-1], flush=True)
    print(f"\n{len(rows)} result files compared; {len(rows) - bad} agree at 6 decimals, "
          f"{sum('identical' in r for r in rows)} bit-identical")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
