"""DVC stage ``ablate@<run>``: train, then evaluate, one run of ``ablations`` in params.yaml.

    python -m pipeline.ablate --run cpm_ablation_cmm

An ablation run is an entry like a ``models`` entry (preset, scale, overrides), e.g. CPM R-CNN
with some of its modules switched off (``model.roi_head.with_cmm / with_ism / with_rsm``).
This is :func:`pipeline.train.main` followed by :func:`pipeline.evaluate.main` under the run's
name, so its outputs lie where a model's do: ``checkpoints/<run>/``, ``metrics/<run>/``,
``results/<run>/``, and its MLflow runs are tagged ``model=<run>``. The report reads them for
the component-wise table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import evaluate, train
from pipeline.config import load_params
from pipeline.errors import ConfigError
from pipeline.paths import PARAMS_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a key of 'ablations' in params.yaml")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as e:
        raise SystemExit(f"[ablate] {e}") from e
    ablations = params.get("ablations") or {}
    if args.run not in ablations:
        raise SystemExit(f"[ablate] {args.params}: no run named {args.run!r} under 'ablations' "
                         f"(have: {sorted(ablations)})")
    stage_argv = ["--model", args.run, "--params", str(args.params)]
    try:
        train.main(stage_argv)
    except SystemExit as e:  # train.gpus > 1: training ran under torchrun and exited with its status
        if e.code not in (None, 0):
            raise
    evaluate.main(stage_argv)


if __name__ == "__main__":
    main()
