"""GPU check for a maintainer with one CUDA GPU (under 10 minutes; never part of CI).

    python benchmarks/gpu_check.py [--out gpu_check.json] [--iters 20] [--amp-dtype auto|bf16|fp16]
                                   [--preset NAME ...]

1. Builds the CUDA extensions of ``cuda_ops`` (deformable RoI pool, corner pool, Chamfer 2-D;
   as ``python -m cuda_ops.build`` does) and compares each kernel, forward and backward, with
   its PyTorch reference on random inputs (float32; max abs difference printed, fails above
   1e-4 relative to the reference's scale). Soft-NMS has no kernel: it is run on the GPU and
   compared with the CPU result.
2. Trains every paper preset (or those given with ``--preset``) for ``--iters`` iterations
   (default 20) at 1333 x 800, batch 2, SGD lr 0.002, with AMP (``--amp-dtype``: auto = bf16
   where ``torch.cuda.is_bf16_supported()``, fp16 with a GradScaler otherwise). The data are
   SYNTHETIC: random images and 1-5 random boxes (with box-shaped masks) per image, so only
   speed, memory and finite losses are checked, not accuracy. No pretrained weights are loaded.
   Per preset it prints and records images/s (iterations after the first 3, which warm up),
   peak memory (``torch.cuda.max_memory_allocated``, MiB) and the last loss.
3. Writes the per-op and per-preset records to the JSON file ``--out``.

Without CUDA it prints that it skipped and exits 0. Exit status 1 when a kernel disagrees with
its reference or a preset fails (error recorded in the JSON).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _compare(name: str, fn_kernel, fn_ref, inputs: list[torch.Tensor]) -> dict:
    """Run both on copies of ``inputs`` (leaves requiring grad), backward of a random weighted
    sum; max abs differences of outputs and input gradients, relative to the reference scale."""
    res = {"op": name}
    outs, grads = [], []
    gen = torch.Generator(device=inputs[0].device).manual_seed(0)
    for fn in (fn_kernel, fn_ref):
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        out = fn(*xs)
        w = torch.randn(out.shape, device=out.device, generator=gen.manual_seed(0))
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad for x in xs if x.grad is not None])
    scale = outs[1].abs().max().clamp(min=1e-6)
    res["forward_max_abs_diff"] = float((outs[0] - outs[1]).abs().max())
    res["backward_max_abs_diff"] = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-6)) * float(scale)
                                       for a, b in zip(*grads)) if grads[1] else 0.0
    res["ok"] = res["forward_max_abs_diff"] <= 1e-4 * float(scale) and res["backward_max_abs_diff"] <= 1e-4 * float(scale)
    return res


def check_ops() -> list[dict]:
    """Every kernel against its reference (float32, on the GPU)."""
    from cuda_ops import _extension
    from cuda_ops.chamfer_2d import chamfer_distance, chamfer_distance_reference
    from cuda_ops.corner_pool import corner_pool, corner_pool_reference
    from cuda_ops.deform_roi_pool import deform_roi_pool, deform_roi_pool_reference
    from cuda_ops.soft_nms import soft_nms

    dev = torch.device("cuda")
    records = []
    for op in sorted(_extension.OPS):
        t0 = time.time()
        getattr(_extension, f"build_{op}_ext")()
        loaded = getattr(_extension, f"load_{op}_ext")() is not None
        print(f"[ops] built {op} in {time.time() - t0:.0f}s (loaded: {loaded})", flush=True)
        if not loaded:
            records.append({"op": op, "ok": False, "error": "the extension did not load"})
    g = torch.Generator(device=dev).manual_seed(0)
    feats = torch.randn(2, 64, 50, 76, device=dev, generator=g)
    rois = torch.tensor([[0, 10.0, 20.0, 300.0, 200.0], [1, 50.0, 8.0, 190.0, 160.0]], device=dev)
    offs = torch.randn(2, 2, 7, 7, device=dev, generator=g) * 0.3
    args = (0.25, 7, 7, 2, 0.1)
    records.append(_compare("deform_roi_pool", lambda f, o: deform_roi_pool(f, rois, o, *args),
                            lambda f, o: deform_roi_pool_reference(f, rois, o, *args), [feats, offs]))
    x = torch.randn(2, 32, 40, 56, device=dev, generator=g)
    for d in ("top", "bottom", "left", "right"):
        records.append(_compare(f"corner_pool_{d}", lambda t: corner_pool(t, d),
                                lambda t: corner_pool_reference(t, d), [x]))
    a = torch.rand(8, 729, 2, device=dev, generator=g) * 100
    b = torch.rand(8, 500, 2, device=dev, generator=g) * 100
    records.append(_compare("chamfer_2d", lambda p, q: chamfer_distance(p, q)[0].sum() + chamfer_distance(p, q)[1].sum(),
                            lambda p, q: chamfer_distance_reference(p, q)[0].sum() + chamfer_distance_reference(p, q)[1].sum(),
                            [a, b]))
    xy = torch.rand(300, 2, device=dev, generator=g) * 500
    boxes = torch.cat([xy, xy + 20 + torch.rand(300, 2, device=dev, generator=g) * 100], 1)
    scores = torch.rand(300, device=dev, generator=g)
    kg, sg = soft_nms(boxes, scores)
    kc, sc = soft_nms(boxes.cpu(), scores.cpu())
    records.append({"op": "soft_nms (GPU vs CPU)", "ok": bool(torch.equal(kg.cpu(), kc)) and torch.allclose(sg.cpu(), sc),
                    "kept": int(kc.numel())})
    for r in records:
        print(f"[ops] {r}", flush=True)
    return records


def synthetic_batch(dev: torch.device, gen: torch.Generator, batch: int = 2, h: int = 800, w: int = 1344):
    """Random images FloatTensor[B, 3, 800, 1344] (1333 padded to a multiple of 32), sizes
    (800, 1333) and per image 1-5 random boxes, labels in 0..79 and box-shaped uint8 masks."""
    images = torch.randn(batch, 3, h, w, device=dev, generator=gen)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 6, (), generator=gen, device=dev))
        xy = torch.rand(n, 2, device=dev, generator=gen) * torch.tensor([1000.0, 550.0], device=dev)
        wh = 32 + torch.rand(n, 2, device=dev, generator=gen) * 220
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(n, h, w, dtype=torch.uint8, device=dev)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(0, 80, (n,), device=dev, generator=gen), "masks": masks})
    return images, [(800, 1333)] * batch, targets


def train_preset(name: str, iters: int, amp_dtype: torch.dtype) -> dict:
    from models.build import build_model
    from models.presets import PRESETS

    dev = torch.device("cuda")
    entry = PRESETS[name]
    torch.manual_seed(0)
    model = build_model(entry["detector"], copy.deepcopy(entry["scales"]["paper"]["model"]), 80,
                        load_pretrained=False).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    gen = torch.Generator(device=dev).manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    warm, t0, loss = 3, None, float("nan")
    for it in range(iters):
        if it == warm:
            torch.cuda.synchronize()
            t0 = time.time()
        images, sizes, targets = synthetic_batch(dev, gen)
        with torch.autocast("cuda", dtype=amp_dtype):
            out = model(images, sizes, targets)
        total = sum(v.float() for k, v in out.items() if k.startswith("loss"))
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at iteration {it}: {[(k, float(v)) for k, v in out.items()]}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        loss = float(total)
    torch.cuda.synchronize()
    timed = max(iters - warm, 0)
    return {"preset": name, "ok": True, "iters": iters, "batch": 2, "image_size": [1333, 800],
            "amp_dtype": str(amp_dtype).removeprefix("torch."),
            "images_per_s": 2 * timed / (time.time() - t0) if timed and t0 else None,
            "peak_memory_mib": torch.cuda.max_memory_allocated() / 2 ** 20, "last_loss": loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="JSON file for the records (default gpu_check.json)")
    parser.add_argument("--iters", type=int, default=20, help="training iterations per preset (default 20)")
    parser.add_argument("--amp-dtype", choices=["auto", "bf16", "fp16"], default="auto",
                        help="autocast dtype (default auto: bf16 where supported, else fp16 + GradScaler)")
    parser.add_argument("--preset", action="append", default=None, help="only this paper preset (repeatable)")
    parser.add_argument("--skip-ops", action="store_true", help="skip the kernel build and comparison")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; skipped (nothing checked). Run it on a machine with a CUDA GPU.")
        return 0
    from models.presets import PRESETS
    from pipeline.engine import resolve_amp_dtype

    amp_dtype = resolve_amp_dtype(args.amp_dtype, torch.device("cuda"))
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "synthetic_data": True,
              "ops": [], "presets": []}
    if not args.skip_ops:
        report["ops"] = check_ops()
    for name in args.preset or list(PRESETS):
        try:
            rec = train_preset(name, args.iters, amp_dtype)
        except Exception as ex:  # recorded, the other presets still run
            rec = {"preset": name, "ok": False, "error": "".join(traceback.format_exception_only(ex)).strip()}
        torch.cuda.empty_cache()
        print(f"[train] {rec}", flush=True)
        report["presets"].append(rec)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"gpu_check: wrote {args.out}")
    return 0 if all(r["ok"] for r in report["ops"] + report["presets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
