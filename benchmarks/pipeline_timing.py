"""Where the time of the default pipeline goes: one row per DVC stage, and the total.

    python3 benchmarks/pipeline_timing.py run [--log logs/repro.log] [-- dvc repro args]
        runs the README's first command (``bash scripts/run.sh repro``, environment set-up
        included) with every output line time-stamped into the log, then prints the table;
    python3 benchmarks/pipeline_timing.py table logs/repro.log
        prints the table of a log written by ``run``;
    .venv/bin/python benchmarks/pipeline_timing.py mlflow
        prints what the MLflow store knows instead (each stage run's start to end; no set-up
        and no process start-up, so it is a lower bound of the wall time).

A stage's wall time in a log is from DVC's "Running stage '<name>'" line to the next stage's
line (or the end), so it includes Python start-up, imports and DVC's own hashing and caching
of the stage's outputs. "setup" is everything before the first stage (``scripts/setup_env.sh``
and DVC's start). Each row also shows its share of the total and the total's ratio to the
30-minute budget of the README's first command. Timings are printed, never asserted; ``run``
and ``table`` need only the standard library, so they work before the environment exists.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 30 * 60
_STAMP = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\] (.*)$")
_RUNNING = re.compile(r"Running stage '([^']+)'")
_SKIPPED = re.compile(r"Stage '([^']+)' (didn't change|is cached)")


def run_logged(log: Path, dvc_args: list[str]) -> int:
    """Run ``bash scripts/run.sh repro <dvc_args>``, echo its output and write it to ``log``
    with each line prefixed by the seconds since the start; returns the exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    cmd = ["bash", str(REPO / "scripts" / "run.sh"), "repro", *dvc_args]
    with open(log, "w", encoding="utf-8") as out:
        out.write(f"[{0.0:9.1f}] $ {' '.join(cmd)}  # started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            # tqdm redraws with carriage returns: keep the last state of the line only.
            out.write(f"[{time.monotonic() - start:9.1f}] {line.rstrip().split(chr(13))[-1]}\n")
            out.flush()
        rc = proc.wait()
        out.write(f"[{time.monotonic() - start:9.1f}] exit status {rc}\n")
    return rc


def stage_times(lines: list[str]) -> tuple[list[tuple[str, float, str]], float]:
    """Rows (stage, seconds, how: ran | skipped) from a time-stamped log, and the total seconds."""
    events: list[tuple[float, str, str]] = []
    last = 0.0
    for line in lines:
        m = _STAMP.match(line)
        if not m:
            continue
        t, text = float(m.group(1)), m.group(2)
        last = t
        if r := _RUNNING.search(text):
            events.append((t, r.group(1), "ran"))
        elif s := _SKIPPED.search(text):
            events.append((t, s.group(1), "skipped" if s.group(2) == "didn't change" else "run-cache"))
    rows: list[tuple[str, float, str]] = []
    first = events[0][0] if events else last
    rows.append(("setup (environment, DVC start)", first, "ran"))
    for i, (t, name, how) in enumerate(events):
        end = events[i + 1][0] if i + 1 < len(events) else last
        rows.append((name, end - t, how))
    return rows, last


def print_table(rows: list[tuple[str, float, str]], total: float, source: str) -> None:
    print(f"Stage wall time ({source})\n")
    print("| stage | how | seconds | share |")
    print("|---|---|---|---|")
    for name, sec, how in rows:
        print(f"| {name} | {how} | {sec:.1f} | {100.0 * sec / max(total, 1e-9):.1f} % |")
    groups: dict[str, float] = {}
    for name, sec, _ in rows:
        groups[name.split("@")[0]] = groups.get(name.split("@")[0], 0.0) + sec
    print("\n| kind of stage | seconds | share |")
    print("|---|---|---|")
    for name, sec in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {sec:.1f} | {100.0 * sec / max(total, 1e-9):.1f} % |")
    print(f"\ntotal {total:.1f} s = {total / 60:.1f} min; ratio to the 30-minute budget: {total / BUDGET_S:.2f}")


def mlflow_rows() -> tuple[list[tuple[str, float, str]], float]:
    """Per stage, the newest FINISHED MLflow runs' start-to-end seconds (evaluate: its splits summed)."""
    sys.path.insert(0, str(REPO))
    from pipeline.tracking import client, experiment_id

    c = client()
    runs = c.search_runs([experiment_id(c)], "attributes.status = 'FINISHED'", max_results=5000,
                         order_by=["attributes.start_time DESC"])
    newest: dict[str, object] = {}
    for r in runs:
        newest.setdefault(r.info.run_name, r)
    per_stage: dict[str, float] = {}
    for name, r in newest.items():
        parts = name.split("/")
        if parts[0] == "train" and len(parts) == 2:
            stage = f"train@{parts[1]}"
        elif parts[0] == "evaluate" and len(parts) == 3 and "_" not in parts[2]:
            stage = f"evaluate@{parts[1]}"
        elif parts[0] == "pretrain":
            stage = "pretrain"
        else:
            continue
        if r.info.end_time and r.info.start_time:
            per_stage[stage] = per_stage.get(stage, 0.0) + (r.info.end_time - r.info.start_time) / 1000.0
    rows = [(k, v, "ran") for k, v in sorted(per_stage.items())]
    return rows, sum(v for _, v, _ in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run the README's first command, time-stamped, then print the table")
    p_run.add_argument("--log", type=Path, default=REPO / "logs" / "repro.log")
    p_run.add_argument("dvc_args", nargs="*", help="passed to dvc repro (after --)")
    p_table = sub.add_parser("table", help="print the table of a log written by `run`")
    p_table.add_argument("log", type=Path)
    sub.add_parser("mlflow", help="stage times from the MLflow store (no set-up, no start-up)")
    args = parser.parse_args(argv)
    if args.cmd == "mlflow":
        rows, total = mlflow_rows()
        print_table(rows, total, "MLflow runs' start to end")
        return
    rc = 0
    if args.cmd == "run":
        rc = run_logged(args.log, args.dvc_args)
    log = args.log
    rows, total = stage_times(log.read_text(encoding="utf-8").splitlines())
    print()
    print_table(rows, total, f"wall clock, from {log}")
    if rc:
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
