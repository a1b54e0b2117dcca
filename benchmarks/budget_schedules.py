"""What the default pipeline would have to train to fit a wall-time budget, from a timed run.

    .venv/bin/python benchmarks/budget_schedules.py logs/repro.log [--budget-min 30] [--out params_budget.yaml]

Reads a log written by ``pipeline_timing.py run`` (a whole default ``dvc repro``, every line
time-stamped) and splits its wall time into

* the fixed part: set-up, prepare, pretrain, every evaluation and the report (none of which a
  shorter training makes cheaper);
* per train stage, its training loop (iterations x seconds per iteration, the rate measured
  between the stage's first and last ``[train] ... iter i/N`` lines) and its overhead (the rest of
  the stage: start-up, imports, model build, checkpoints, DVC's hashing of the outputs).

The budget left after the fixed part and the overheads is shared among the loops by one
fraction ``f`` of every run's iterations, so every model keeps its share of the training time
and the shape of its schedule (warmup and lr steps scaled by ``f`` too). The script prints the
plan (iterations before and after, seconds per iteration, the loop's predicted seconds) and,
with ``--out``, writes a copy of ``params.yaml`` whose every ``models`` and ``ablations`` entry
overrides ``schedule.max_iters``, ``lr_steps`` (then in iterations) and ``warmup_iters``.
Put that file in place of ``params.yaml`` in a fresh clone and time the pipeline with
``pipeline_timing.py run`` to measure what every model reaches at the budget (the report stage
writes their AP). Seconds are printed, never asserted.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pipeline_timing import _RUNNING, _STAMP, BUDGET_S, stage_times  # noqa: E402

_ITER = re.compile(r"\[train\] epoch \d+/\d+ iter (\d+)/(\d+)")
_TRAIN_STAGE = re.compile(r"^(train|train_ablation)@(.+?)(?:-(\d+))?$")


@dataclass(frozen=True)
class TrainStage:
    """One train stage of a timed run: its DVC stage name, the params entry it trains, its wall
    seconds, its iterations and its measured seconds per iteration (``None``: fewer than two
    iteration lines in the log)."""

    stage: str
    entry: str
    seconds: float
    iterations: int
    seconds_per_iter: float | None

    @property
    def loop_seconds(self) -> float:
        """Seconds of the training loop: iterations x seconds per iteration (the whole stage when
        the rate is unknown)."""
        if self.seconds_per_iter is None:
            return self.seconds
        return min(self.seconds, self.iterations * self.seconds_per_iter)

    @property
    def overhead_seconds(self) -> float:
        """The stage's seconds outside its training loop."""
        return self.seconds - self.loop_seconds


def train_stages(lines: list[str]) -> tuple[list[TrainStage], float, float]:
    """The train stages of a time-stamped log, the log's total seconds and its fixed seconds
    (every stage that is not a train stage, set-up included)."""
    rows, total = stage_times(lines)
    # The iteration lines of each stage: (timestamp, iteration, of N), in log order.
    iters: dict[str, list[tuple[float, int, int]]] = {}
    current = None
    for line in lines:
        m = _STAMP.match(line)
        if not m:
            continue
        t, text = float(m.group(1)), m.group(2)
        if r := _RUNNING.search(text):
            current = r.group(1)
        elif current is not None and (it := _ITER.search(text)):
            iters.setdefault(current, []).append((t, int(it.group(1)), int(it.group(2))))
    stages: list[TrainStage] = []
    fixed = 0.0
    for name, seconds, how in rows:
        m = _TRAIN_STAGE.match(name)
        points = iters.get(name, [])
        if m is None or how != "ran" or not points:
            fixed += seconds
            continue
        (t0, i0, n), (t1, i1, _) = points[0], points[-1]
        rate = (t1 - t0) / (i1 - i0) if i1 > i0 else None
        stages.append(TrainStage(name, m.group(2), seconds, n, rate))
    return stages, total, fixed


def budget_fraction(stages: list[TrainStage], fixed: float, budget_s: float) -> float:
    """The fraction of every run's iterations that fits ``budget_s`` after ``fixed`` seconds and
    the stages' overheads; 0 when those alone exceed the budget."""
    loops = sum(s.loop_seconds for s in stages)
    left = budget_s - fixed - sum(s.overhead_seconds for s in stages)
    if loops <= 0:
        return 1.0
    return max(0.0, left / loops)


def scaled_schedule(schedule: dict, iters_per_epoch: int, fraction: float) -> dict:
    """Overrides of a resolved ``schedule`` that train ``fraction`` of its iterations with the same
    shape: ``max_iters``, ``lr_steps`` (in iterations, as the trainer reads them under
    ``max_iters``) and ``warmup_iters``, each scaled by ``fraction`` (at least one iteration)."""
    total = schedule.get("max_iters") or int(schedule["epochs"]) * iters_per_epoch
    steps = [s if schedule.get("max_iters") else s * iters_per_epoch for s in schedule.get("lr_steps", [])]
    return {
        "max_iters": max(1, round(total * fraction)),
        "lr_steps": [max(1, round(s * fraction)) for s in steps],
        "warmup_iters": round(int(schedule.get("warmup_iters", 0)) * fraction),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="a log written by pipeline_timing.py run")
    parser.add_argument("--budget-min", type=float, default=BUDGET_S / 60, help="wall-time budget in minutes")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the params the log's run used")
    parser.add_argument("--out", type=Path, help="write the scaled params here")
    args = parser.parse_args(argv)

    try:
        lines = args.log.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SystemExit(f"{args.log}: cannot read the timing log: {e}") from e
    stages, total, fixed = train_stages(lines)
    if not stages:
        raise SystemExit(f"{args.log}: no train stage with iteration lines; is it a log of pipeline_timing.py run?")
    budget = args.budget_min * 60
    fraction = budget_fraction(stages, fixed, budget)
    overheads = sum(s.overhead_seconds for s in stages)
    loops = sum(s.loop_seconds for s in stages)
    print(f"log {args.log}: total {total:.0f} s; fixed (set-up, prepare, pretrain, evaluations, report) "
          f"{fixed:.0f} s; train stages {sum(s.seconds for s in stages):.0f} s = loops {loops:.0f} s "
          f"+ overheads {overheads:.0f} s")
    print(f"budget {budget:.0f} s leaves {budget - fixed - overheads:.0f} s for the loops: "
          f"fraction {fraction:.3f} of every run's iterations\n")
    print("| stage | s/iteration | iterations | at the budget | loop s | at the budget |")
    print("|---|---|---|---|---|---|")
    for s in stages:
        rate = f"{s.seconds_per_iter:.3f}" if s.seconds_per_iter is not None else "?"
        print(f"| {s.stage} | {rate} | {s.iterations} | {max(1, round(s.iterations * fraction))} | "
              f"{s.loop_seconds:.0f} | {s.loop_seconds * fraction:.0f} |")
    if fraction >= 1.0:
        print("\nthe run already fits the budget; nothing to scale")
        return
    if args.out is None:
        return

    import yaml

    from pipeline.config import load_params, resolve_model_config, run_entries

    params = load_params(args.params)
    entries = {s.entry: s for s in stages}
    for name, (section, entry) in run_entries(params).items():
        stage = entries.get(name)
        if stage is None:
            raise SystemExit(f"{args.params}: {section}.{name} has no train stage in {args.log}")
        schedule = resolve_model_config(params, name)["schedule"]
        epochs = int(schedule["epochs"])
        iters_per_epoch = math.ceil(stage.iterations / epochs) if not schedule.get("max_iters") else 1
        overrides = entry.setdefault("overrides", {}) or {}
        entry["overrides"] = overrides
        overrides.setdefault("schedule", {}).update(scaled_schedule(schedule, iters_per_epoch, fraction))
        params[section][name] = entry
    args.out.write_text("# params.yaml with every run's schedule scaled by benchmarks/budget_schedules.py "
                        f"to fraction {fraction:.3f}\n# of its iterations ({args.log}, budget "
                        f"{args.budget_min:g} min)\n" + yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
