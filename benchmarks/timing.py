"""The timing loop the op benchmarks share: contenders run in alternation, medians reported."""
from __future__ import annotations

import statistics
from collections.abc import Callable


def alternating_medians(runs: dict[str, Callable[[], float]], warmup: int, iters: int) -> dict[str, float]:
    """Median seconds of each contender. Every ``runs[name]()`` performs one timed run and
    returns its seconds; ``warmup`` untimed rounds come first (builds, caches, allocator), then
    ``iters`` rounds in which the contenders take turns, so a slow phase of the machine hits all
    of them alike."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(iters):
        for k, run in runs.items():
            times[k].append(run())
    return {k: statistics.median(t) for k, t in times.items()}
