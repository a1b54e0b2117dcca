"""Run by tests/test_evaluate_sharded.py, alone or under torchrun: the evaluate stage
(:func:`pipeline.evaluate.evaluate_model`) on a tiny model, with the stage's error handling."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.evaluate as evaluate_mod  # noqa: E402
from pipeline import distributed  # noqa: E402


class SwitchOnlyHead(torch.nn.Module):
    """A ``bbox_head`` with a ``corner_snapping`` switch the model ignores: the evaluate stage
    then scores minival a second time (the variant path), with the same detections."""

    def __init__(self) -> None:
        super().__init__()
        self.corner_snapping = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", type=Path, required=True, help="a JSON file of params")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--weights-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="metrics/ and results/ go here")
    parser.add_argument("--track", action="store_true")
    parser.add_argument("--switch-head", action="store_true", help="give the model a SwitchOnlyHead")
    args = parser.parse_args()
    if args.switch_head:
        load = evaluate_mod.load_trained_model

        def load_with_switch(checkpoint, device):
            model, state = load(checkpoint, device)
            model.bbox_head = SwitchOnlyHead()
            return model, state

        evaluate_mod.load_trained_model = load_with_switch
    params = json.loads(args.params.read_text())
    try:
        evaluate_mod.evaluate_model(args.model, params, manifest_file=args.manifest, weights_root=args.weights_root,
                                    metrics_root=args.out / "metrics", results_root=args.out / "results",
                                    track=args.track)
    except evaluate_mod.STAGE_ERRORS as e:
        raise SystemExit(f"[evaluate] {e}") from e
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
