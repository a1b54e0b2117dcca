"""How much one run's minival AP moves with the seed and with the CPU's kernel set.

    .venv/bin/python scripts/measure_spread.py --model cpm_rcnn_r50_fpn --seeds 0 1 2 \\
        --kernels native avx2 default [--out spread/]

Trains and evaluates the params.yaml run ``--model`` (its configuration unchanged; the
prepared data and the pretrained backbone of the workspace) once per seed with the machine's
own kernels (``native``: ``ATEN_CPU_CAPABILITY`` unset), and once per further kernel set
with the first seed (``ATEN_CPU_CAPABILITY=avx2`` / ``default``: the same arithmetic through
AVX2 or scalar kernels, so different float rounding). Every run is its own process (the
kernel set is chosen when torch loads) writing under ``--out``, outside DVC's outputs, with
no MLflow record. Prints one row per run and, per group (seeds; kernel sets), the mean, the
standard deviation and the range of box AP and AP50 in percent points: the noise a
difference between two single runs has to exceed to mean something.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys
from pathlib import Path
from pipeline.config import load_params
from pipeline.train import run_training
from pipeline.evaluate import evaluate_model
model, seed, root = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
params = load_params()
params["seed"] = seed
params["evaluate"]["splits"] = ["minival"]
run_training(model, params, checkpoint_root=root / "checkpoints", metrics_root=root / "metrics",
             weights_root=root / "weights", resume=True, track=False, log_model=False)
ev = evaluate_model(model, params, weights_root=root / "weights", metrics_root=root / "metrics",
                    results_root=root / "results", track=False)
box = ev["minival"]["bbox"]
print("SPREAD " + json.dumps({"AP": box["AP"], "AP50": box["AP50"]}), flush=True)
"""


def run_one(model: str, seed: int, kernels: str, out: Path) -> dict[str, float]:
    root = out / f"{model}-seed{seed}-{kernels}"
    result = root / "result.json"
    if result.exists():  # a finished run is not repeated
        return json.loads(result.read_text())
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernels != "native":
        env["ATEN_CPU_CAPABILITY"] = kernels
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", _CHILD, model, str(seed), str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    (root / "log.txt").write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SPREAD ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run {root.name} failed (exit {proc.returncode}); see {root / 'log.txt'}")
    numbers = json.loads(lines[-1][len("SPREAD "):])
    result.write_text(json.dumps(numbers))
    return numbers


def summary(label: str, rows: list[dict[str, float]]) -> str:
    ap = [100 * r["AP"] for r in rows]
    ap50 = [100 * r["AP50"] for r in rows]
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    return (f"| {label} | {len(rows)} | {statistics.mean(ap):.1f} ± {sd(ap):.1f} | {max(ap) - min(ap):.1f} | "
            f"{statistics.mean(ap50):.1f} ± {sd(ap50):.1f} | {max(ap50) - min(ap50):.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cpm_rcnn_r50_fpn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", default=["native", "avx2", "default"],
                        help="kernel sets for the first seed: native (unset), avx2, default, avx512")
    parser.add_argument("--out", type=Path, default=REPO / "spread")
    args = parser.parse_args(argv)
    seeds_rows, kernel_rows = [], []
    print("| run | box AP | AP50 |\n|---|---|---|")
    for seed in args.seeds:
        r = run_one(args.model, seed, "native", args.out)
        seeds_rows.append(r)
        if seed == args.seeds[0]:
            kernel_rows.append(r)
        print(f"| seed {seed}, native kernels | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} |", flush=True)
    for kernels in args.kernels:
        if kernels == "native":
            continue
        r = run_one(args.model, args.seeds[0], kernels, args.out)
        kernel_rows.append(r)
        print(f"| seed {args.seeds[0]}, {kernels} kernels | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} |", flush=True)
    print("\n| group | runs | box AP mean ± std | AP range | AP50 mean ± std | AP50 range |\n|---|---|---|---|---|---|")
    print(summary(f"seeds {args.seeds}", seeds_rows))
    print(summary(f"kernel sets {args.kernels} (seed {args.seeds[0]})", kernel_rows))
    print(summary("all runs", seeds_rows + kernel_rows[1:]))


if __name__ == "__main__":
    main()
