"""Run under torchrun by tests/test_ddp.py: train the tiny model, save this rank's parameters."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.train import run_training  # noqa: E402
from tests.conftest import TINY_MODEL, tiny_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    metrics, model = run_training(TINY_MODEL, tiny_params(), manifest_file=args.manifest,
                                  checkpoint_root=args.out / "ckpt", weights_root=args.out / "weights",
                                  metrics_root=args.out / "metrics", track=False)
    rank = dist.get_rank()
    torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, args.out / f"params_rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
