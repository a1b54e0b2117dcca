"""Figures people would rather look at than read: precision-recall curves from COCOeval,
and training curves from the per-iteration history.

All figures are written with matplotlib's Agg backend (no display needed) as PNG, and the
data behind each curve is written as CSV so ``dvc plots`` can render it too.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipeline.checkpoint import atomic_write_bytes, atomic_write_text

IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())


def pr_curves(ev) -> dict[str, np.ndarray]:
    """Precision at COCO's 101 recall points, per IoU threshold, from an accumulated COCOeval.

    Uses ``ev.eval['precision']`` of shape [T=10 IoUs, R=101 recalls, K classes, A=4 areas,
    M=3 maxDets] at area "all" and 100 detections, averaged over the classes that have
    ground truth (COCO marks the others -1).

    Returns:
        ``recall`` [101] and ``iou=0.50`` ... ``iou=0.95`` [101] each, plus ``mean`` [101]
        (the average over the ten thresholds, whose area is COCO's AP).
    """
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    out: dict[str, np.ndarray] = {"recall": np.asarray(ev.params.recThrs, dtype=float)}
    curves = []
    for t, iou in enumerate(IOU_THRESHOLDS):
        p = precision[t]
        valid = (p > -1).all(axis=0)  # classes with ground truth
        curve = p[:, valid].mean(axis=1) if valid.any() else np.zeros(p.shape[0])
        out[f"iou={iou:.2f}"] = curve
        curves.append(curve)
    out["mean"] = np.mean(curves, axis=0)
    return out


def zero_pr_curves() -> dict[str, np.ndarray]:
    """The curves of a split with no detection at all (COCOeval has nothing to accumulate):
    precision 0 at COCO's 101 recall points for every IoU threshold, in the layout of
    :func:`pr_curves`. The evaluate stage writes them so that ``metrics/<run>/pr`` exists (a DVC
    output) and the overlay plots show the run at zero."""
    recall = np.linspace(0.0, 1.0, 101)
    out: dict[str, np.ndarray] = {"recall": recall}
    for iou in IOU_THRESHOLDS:
        out[f"iou={iou:.2f}"] = np.zeros_like(recall)
    out["mean"] = np.zeros_like(recall)
    return out


def write_curves_csv(curves: dict[str, np.ndarray], path: Path) -> None:
    """One row per recall point, one column per curve (``dvc plots`` reads it)."""
    keys = list(curves)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys)
    for i in range(len(curves[keys[0]])):
        w.writerow([f"{float(curves[k][i]):.6g}" for k in keys])
    atomic_write_text(path, buf.getvalue())


def read_curves_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.reader(f))
    keys, values = rows[0], np.array(rows[1:], dtype=float)
    return {k: values[:, i] for i, k in enumerate(keys)}


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_pr_curves(curves: dict[str, np.ndarray], path: Path, title: str) -> None:
    """Precision-recall curves, one per IoU threshold (0.50 darkest ... 0.95 lightest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, iou in enumerate(IOU_THRESHOLDS):
        key = f"iou={iou:.2f}"
        ap = float(np.mean(curves[key]))
        ax.plot(curves["recall"], curves[key], color=cmap(i / (len(IOU_THRESHOLDS) - 1)), lw=1.4,
                label=f"IoU {iou:.2f} (AP {100 * ap:.1f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6.5, loc="lower left")
    _save(fig, path)
    plt.close(fig)


def plot_training_curves(history_csv: Path, path: Path, title: str) -> None:
    """Each loss term (log scale) and the learning rate against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_curves_csv(history_csv)
    it = data["iteration"]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(6, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    window = max(1, len(it) // 100)
    kernel = np.ones(window) / window
    for key, values in data.items():
        if not key.startswith("loss"):
            continue
        smooth = np.convolve(values, kernel, mode="valid")
        ax.plot(it[window - 1:], smooth, lw=1.2 if key == "loss" else 0.9, label=key)
    ax.set_yscale("log")
    ax.set_ylabel(f"loss (mean of {window} it)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax_lr.plot(it, data["lr"], color="black", lw=1)
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
