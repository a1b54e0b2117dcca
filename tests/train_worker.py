"""Run by tests/test_train_kill.py and tests/test_train_preempt.py in a subprocess: train the tiny
model into a given directory. A preemption ends it with status 75 (pipeline.engine.Preempted)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.train import run_training  # noqa: E402
from tests.conftest import TINY_MODEL, tiny_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
    params = tiny_params()
    params["models"][TINY_MODEL]["overrides"]["schedule"]["epochs"] = args.epochs
    params["train"].update(checkpoint_every=args.checkpoint_every, num_workers=args.num_workers)
    run_training(TINY_MODEL, params, manifest_file=args.manifest, checkpoint_root=args.out / "ckpt", weights_root=args.out / "ckpt",
                 metrics_root=args.out / "metrics", track=True)


if __name__ == "__main__":
    main()
