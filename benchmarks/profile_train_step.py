"""Where one training step of a params.yaml run spends its time, on the real prepared data.

    .venv/bin/python benchmarks/profile_train_step.py --model d2det_r50_fpn [--steps 5] [--warmup 3] [--top 15]

Builds the run exactly as ``train@<model>`` does (its resolved configuration, the prepared
``train`` split through the same transforms, sampler and collate; random weights unless the
configuration names a pretrained backbone), takes ``--warmup`` untimed steps, then profiles
``--steps`` steps with ``torch.profiler`` and prints:

* the wall time of data loading (decode + transforms + collate) against the step itself
  (forward + backward + SGD), as seconds per iteration and as a ratio;
* the top operators by self CPU time, with their share of the profiled total.

``--model all`` profiles every run of params.yaml in turn; ``--time-only`` prints the
seconds per iteration without the profiler (whose overhead inflates them). Two CPU variants for
comparison: ``--channels-last`` (weights and images in NHWC memory format) and ``--no-onednn``
(ATen's own convolutions instead of oneDNN's); run the command with and without one to compare.
The thread count is torch's default, or ``OMP_NUM_THREADS``. Timings are printed, never
asserted; the machine's load changes them, the shares much less.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.build import build_model  # noqa: E402
from pipeline.config import load_params, resolve_model_config, run_entries  # noqa: E402
from pipeline.data import GroupedBatchSampler, build_dataset, collate_detection, load_manifest  # noqa: E402
from pipeline.paths import MANIFEST_FILE, PARAMS_FILE  # noqa: E402


def training_step_fns(name: str, params: dict, batch: int | None = None, rank: int = 0, wrap=None,
                      channels_last: bool = False):
    """The run ``name`` of ``params`` built as its train stage builds it, for timing: returns
    ``(cfg, batch, load, step)``, where ``load()`` draws the next batch of ``batch`` images (the
    schedule's ``images_per_gpu`` when None) of the prepared train split, sampled with seed
    ``seed + rank``, and ``step(images, sizes, targets)`` runs forward, backward and one SGD step.
    ``wrap`` (e.g. DDP) wraps the model before the optimizer is built. ``channels_last`` puts the
    model's weights and each batch of images in ``torch.channels_last`` (NHWC) memory format."""
    cfg = resolve_model_config(params, name)
    seed = int(params.get("seed", 0))
    torch.manual_seed(seed)
    manifest = load_manifest(REPO / MANIFEST_FILE)
    dataset = build_dataset(manifest.split("train"), cfg["data"], train=True, seed=seed)
    batch = int(cfg["schedule"]["images_per_gpu"]) if batch is None else int(batch)
    sampler = GroupedBatchSampler(dataset.aspect_ratios(), batch, seed=seed + rank, shuffle=True)
    divisor = int(cfg["data"].get("size_divisor", 32))
    batches = iter(sampler)
    model = build_model(cfg["detector"], cfg["model"], dataset.num_classes).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if wrap is not None:
        model = wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def load():
        return collate_detection([dataset[i] for i in next(batches)], size_divisor=divisor)

    def step(images, sizes, targets):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        losses = model(images, sizes, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return cfg, batch, load, step


def profile_model(name: str, params: dict, steps: int, warmup: int, top: int, profile: bool = True,
                  channels_last: bool = False) -> None:
    cfg, batch, load, step = training_step_fns(name, params, channels_last=channels_last)
    for _ in range(warmup):
        step(*load())
    t_load = t_step = 0.0
    from contextlib import nullcontext

    ctx = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else nullcontext()
    with ctx as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            data = load()
            t1 = time.perf_counter()
            step(*data)
            t2 = time.perf_counter()
            t_load += t1 - t0
            t_step += t2 - t1
    variant = (", channels_last" if channels_last else "") + ("" if torch.backends.mkldnn.enabled else ", oneDNN off")
    print(f"\n## {name} ({cfg['preset']}, {cfg['scale']} scale, batch {batch}, {torch.get_num_threads()} threads"
          f"{variant})")
    print(f"data loading {t_load / steps:.3f} s/it, step {t_step / steps:.3f} s/it "
          f"(ratio loading / step {t_load / max(t_step, 1e-9):.2f}"
          + ("; times include the profiler's overhead)" if profile else ")"))
    if not profile:
        return
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    print("| operator | calls | self CPU ms / it | share |")
    print("|---|---|---|---|")
    for e in events[:top]:
        print(f"| `{e.key}` | {e.count // steps} | {e.self_cpu_time_total / 1000 / steps:.1f} | "
              f"{100.0 * e.self_cpu_time_total / total:.1f} % |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a run of params.yaml, or 'all'")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--time-only", action="store_true", help="time loading and steps without the profiler")
    parser.add_argument("--channels-last", action="store_true",
                        help="weights and images in channels_last (NHWC) memory format")
    parser.add_argument("--no-onednn", action="store_true",
                        help="torch.backends.mkldnn.enabled = False: ATen's own CPU convolutions instead of oneDNN's")
    args = parser.parse_args(argv)
    if args.no_onednn:
        torch.backends.mkldnn.enabled = False
    params = load_params(args.params)
    names = list(run_entries(params)) if args.model == "all" else [args.model]
    for name in names:
        profile_model(name, params, args.steps, args.warmup, args.top, profile=not args.time_only,
                      channels_last=args.channels_last)


if __name__ == "__main__":
    main()
