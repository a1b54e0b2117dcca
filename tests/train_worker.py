"""Run by tests/test_train_kill.py in a subprocess: train the tiny model into a given directory."""
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
    args = parser.parse_args()
    params = tiny_params()
    params["models"][TINY_MODEL]["overrides"]["schedule"]["epochs"] = args.epochs
    run_training(TINY_MODEL, params, manifest_file=args.manifest, checkpoint_root=args.out / "ckpt", weights_root=args.out / "ckpt",
                 metrics_root=args.out / "metrics", track=True)


if __name__ == "__main__":
    main()
