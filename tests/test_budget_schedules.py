"""benchmarks/budget_schedules.py: a timed log's train stages split into loop and overhead, the
fraction of iterations a budget leaves, and a params file whose every run trains that fraction
with the same schedule shape (and still resolves as the train stage resolves it)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import budget_schedules as bs  # noqa: E402

from pipeline.config import load_params, resolve_model_config, runs  # noqa: E402


def _log(stages: list[tuple[str, float, int, float]], setup: float = 100.0) -> list[str]:
    """A pipeline_timing log: set-up, then per stage (name, overhead s, iterations, s/iteration)
    a "Running stage" line, iteration lines every 25 iterations after half the overhead, and the
    rest of the overhead after the last one."""
    t = setup
    lines = [f"[{0.0:9.1f}] $ bash scripts/run.sh repro"]
    for name, overhead, n, rate in stages:
        lines.append(f"[{t:9.1f}] Running stage '{name}':")
        t += overhead / 2
        for i in range(25, n + 1, 25):
            lines.append(f"[{t + i * rate:9.1f}] [train] epoch 1/1 iter {i}/{n} loss=1.0")
        t += n * rate + overhead / 2
    lines.append(f"[{t:9.1f}] exit status 0")
    return lines


def test_stages_split_into_loop_and_overhead_and_the_fraction_fits_the_budget():
    lines = _log([("prepare", 20.0, 0, 0.0), ("train@a", 30.0, 500, 0.2), ("evaluate@a", 40.0, 0, 0.0),
                  ("train_ablation@b-0", 10.0, 250, 0.4)])
    stages, total, fixed = bs.train_stages(lines)
    assert [(s.stage, s.entry, s.iterations) for s in stages] == [("train@a", "a", 500), ("train_ablation@b-0", "b", 250)]
    assert stages[0].seconds_per_iter == pytest.approx(0.2, abs=1e-3)
    assert stages[0].overhead_seconds == pytest.approx(30.0, abs=0.5)
    assert fixed == pytest.approx(100 + 20 + 40, abs=0.5)
    assert total == pytest.approx(fixed + 130 + 110, abs=0.5)
    # 300 s budget: 300 - 160 fixed - 40 overhead = 100 s for 200 s of loops
    assert bs.budget_fraction(stages, fixed, 300.0) == pytest.approx(0.5, abs=0.01)
    assert bs.budget_fraction(stages, fixed, 150.0) == 0.0


def test_scaled_schedule_keeps_the_shape_in_iterations():
    schedule = {"epochs": 2, "lr_steps": [1.7], "warmup_iters": 50}
    assert bs.scaled_schedule(schedule, 251, 0.4) == {"max_iters": 201, "lr_steps": [171], "warmup_iters": 20}
    by_iters = {"epochs": 1, "max_iters": 1000, "lr_steps": [800], "warmup_iters": 100}
    assert bs.scaled_schedule(by_iters, 1, 0.5) == {"max_iters": 500, "lr_steps": [400], "warmup_iters": 50}


def test_the_written_params_resolve_with_every_run_scaled(tmp_path):
    params = load_params(REPO / "params.yaml")
    stages = [("prepare", 10.0, 0, 0.0)]
    iters = {}
    for run in runs(params).values():
        cfg = resolve_model_config(params, run.id)
        n = int(cfg["schedule"]["epochs"]) * 250
        iters[run.entry] = (cfg["schedule"], n)
        stage = f"train@{run.entry}" if run.seed is None else f"train_ablation@{run.entry}-{run.seed}"
        stages.append((stage, 20.0, n, 0.1))
    out = tmp_path / "params_budget.yaml"
    log = _log(stages)
    planned, _, fixed = bs.train_stages(log)
    expected = bs.budget_fraction(planned, fixed, 600.0)
    assert 0 < expected < 1
    bs.main([str(_write(tmp_path / "repro.log", log)), "--budget-min", "10", "--out", str(out)])
    scaled = yaml.safe_load(out.read_text())
    for name, (schedule, n) in iters.items():
        got = resolve_model_config(scaled, name)["schedule"]
        assert got["max_iters"] == max(1, round(n * expected)) and got["max_iters"] < n, name
        fraction = got["max_iters"] / n  # the lr steps and warmup moved with the iterations
        assert len(got["lr_steps"]) == len(schedule["lr_steps"]), name
        for step, epochs in zip(got["lr_steps"], schedule["lr_steps"]):
            assert abs(step - epochs * 250 * fraction) <= 1, name
        assert abs(got["warmup_iters"] - schedule["warmup_iters"] * fraction) <= 1, name
        # everything else of the run (model, data, lr) is the default run's
        base = resolve_model_config(params, name)
        assert got["lr"] == schedule["lr"] and resolve_model_config(scaled, name)["model"] == base["model"]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path
