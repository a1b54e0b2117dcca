"""DVC stage ``evaluate@<model>``: COCO evaluation on minival and test-dev.

    python -m pipeline.evaluate --model faster_rcnn_r50_fpn
    python -m pipeline.evaluate --model cpm_ablation_none --seed 1

``<model>`` below is the run: the model, or with ``--seed K`` (the stages
``evaluate_ablation@<entry>-<K>``) the run ``<model>_seedK`` its train stage wrote
(:func:`pipeline.config.run_id`).

For each split in ``evaluate.splits`` it runs the trained model (``weights/<model>.pth``),
writes the COCO result files to ``results/<model>/`` and, where the split has
annotations, scores them with COCOeval (bbox, and segm when the model predicts masks), at
most ``evaluate.max_dets`` (100) detections per image. ``evaluate.engine`` picks the COCOeval:
``faster`` (faster-coco-eval's C++ one, the default) or ``pycocotools`` (the reference; the two
agree, :mod:`pipeline.evaluation`). Result records with NaN or infinite boxes or scores,
negative sizes, or unknown image or category ids are refused (DataError naming the file and
the record) before scoring.

test-dev additionally gets the COCO submission file
``results/<model>/detections_test-dev2017_<alg>_results.json`` and its zip. Real COCO
test-dev has no public annotations, so it is only scored where annotations exist (the
synthetic split has them); otherwise its metrics file says ``"scored": false``.

A split of ``evaluate.splits`` the manifest lacks (test-dev of a COCO tree without ``test2017/``
or of a ``data.source: files`` dataset without a test-dev file) is skipped with a printed note
(:func:`skip_split`): its metrics file, which dvc.yaml declares as an output, says
``"scored": false, "skipped": true`` with the reason, no result file is written (stale ones of
that split are removed) and no MLflow run is logged for it.

Each scored split gets ``metrics/<model>/<split>.json`` (the COCO numbers; git-tracked, and
the same on an identical re-run: no timings or host facts, which go to MLflow), its
precision-recall curves per IoU threshold (``metrics/<model>/pr/<split>_<task>.csv``, which
the report overlays across models for ``dvc plots``; ``results/<model>/pr_<split>_<task>.png``)
and an MLflow run tagged
``stage=evaluate``, ``split=<split>`` with the 12 COCO numbers per task as ``<split>/<task>_<stat>``
(``minival/bbox_AP``, ...; :func:`metric_key`) and the curves as artifacts.

Models whose ``bbox_head`` has a ``corner_snapping`` switch (RepPoints V2's joint inference:
refined boxes snapped to the predicted corners, or plain V1-style decoding) are scored on
minival a second time with the switch flipped. Those numbers go into the same metrics file,
``metrics/<model>/minival.json``, under ``"variants": {"corner_snapping_off": {...}}`` (``_on``
when the model's default is off; the file's top-level ``"corner_snapping"`` is the default the
main numbers were measured with), their detections to
``results/<model>/minival_corner_snapping_off_bbox.json``, and into an MLflow run tagged
``split=minival/corner_snapping_off``, ``variant=corner_snapping_off`` -- a split value of its
own, so the lookup of the main minival run never picks it up.

The same goes for every switch of :data:`SNAPPING_SWITCHES` the head has: Dense RepPoints V2's
``contour_snapping`` (snapped contour points added to each detection's point set before its
mask is built; boxes and scores do not change) gives ``"variants": {"contour_snapping_off":
{...}}``, the top-level ``"contour_snapping"``, ``results/<model>/minival_contour_snapping_off_*.json``
and an MLflow run tagged ``split=minival/contour_snapping_off``, ``variant=contour_snapping_off``,
``contour_snapping=false``. A head with several switches gets one variant per switch, each
flipping only its own switch.

Sharded over processes: with ``evaluate.processes > 1`` (or ``train.gpus > 1`` on CUDA, or
``--processes N``; :func:`evaluate_processes`) the stage re-launches itself under torchrun
(gloo on CPU, NCCL with one GPU per process on CUDA). Each rank predicts whole batches of the
one-process run (:func:`shard_indices`), rank 0 gathers every rank's records, puts them in
dataset order (:func:`merge_shards`) and alone writes, scores and logs, so the result and
metrics files are byte-identical for any number of processes; the variants above are sharded
the same way. A rank that fails makes every rank stop (:func:`pipeline.distributed.gather_to_main`):
the stage exits non-zero with that rank's message and writes nothing for the split.
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pipeline import distributed
from pipeline.config import load_params, run_id, split_run_id, training_seed
from pipeline.data import build_dataset, collate_detection, load_manifest
from pipeline.engine import resolve_device, write_json
from pipeline.figures import plot_pr_curves, pr_curves, write_curves_csv, zero_pr_curves
from pipeline.evaluation import (
    DEFAULT_ENGINE,
    check_engine,
    coco_evaluate,
    detections_to_coco,
    load_coco_quietly,
    submission_name,
    write_results,
)
from pipeline.errors import ConfigError, DataError, WeightsError
from pipeline.paths import MANIFEST_FILE, METRICS_DIR, PARAMS_FILE, RESULTS_DIR, WEIGHTS_DIR, weights_file
from pipeline.tracking import Tracker, TrackingStoreError, logged_model_id, prepared_data_digest
from pipeline.checkpoint import file_digest
from pipeline.weights_io import DIGEST_KEY, safe_torch_load, verify_tensor_digest
from pipeline.train import dataset_description


#: what a weights file written by the train stage holds
WEIGHTS_KEYS = ("model", "detector", "model_cfg", "config", "num_classes", "cat_ids", DIGEST_KEY)


def weights_remedy(path: Path) -> str:
    """What to run for a good copy of the weights file ``path`` (``weights/<run>.pth``): pull it
    from the DVC remote, or train it again with its stage (``train@<run>``, or
    ``train_ablation@<entry>-<seed>`` for a seeded run)."""
    path = Path(path)
    entry, seed = split_run_id(path.stem)
    stage = f"train@{entry}" if seed is None else f"train_ablation@{entry}-{seed}"
    return (f"get a good copy with `dvc pull weights/{path.name}` (from the DVC remote) "
            f"or `dvc repro {stage}` (train it again)")


def read_weights(path: Path) -> dict[str, Any]:
    """The contents of a final weights file, checked.

    The file is read with ``torch.load(weights_only=True)`` (:func:`pipeline.weights_io.safe_torch_load`:
    nothing in it is run) and its tensors are checked against the digest written at save time
    (:func:`pipeline.weights_io.verify_tensor_digest`).

    Raises :class:`~pipeline.errors.WeightsError` naming ``path`` and what to run (``dvc pull
    weights/<run>.pth`` or ``dvc repro train@<run>``) when the file is missing (not pulled, not
    trained), unreadable (a truncated or corrupt download), holds objects other than tensors and
    plain containers (refused for safety), is not a weights file of this repository, or its
    tensors do not match their digest (expected and actual digest named).
    """
    path = Path(path)
    remedy = weights_remedy(path)
    if not path.exists():
        raise WeightsError(f"{path}: no trained weights; {remedy}")
    state = safe_torch_load(path, remedy)
    missing = [k for k in WEIGHTS_KEYS if not isinstance(state, dict) or k not in state]
    if missing == [DIGEST_KEY]:  # one of ours, from before the digest: verify_tensor_digest says so
        missing = []
    if missing:
        raise WeightsError(f"{path}: not a weights file of the train stage (missing {missing}); {remedy}")
    verify_tensor_digest(path, state, remedy)
    return state


def first_state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, Any]) -> str | None:
    """How ``given`` (a state dict from a file) fails to fit a model whose state dict is
    ``expected``: the first mismatching key in the model's order (missing from the file, or of
    another shape), else the first key the model does not have, with the counts of each kind;
    None when every key and shape fits."""
    missing = [k for k in expected if k not in given]
    shape = [k for k in expected if k in given and isinstance(given[k], torch.Tensor)
             and tuple(given[k].shape) != tuple(expected[k].shape)]
    unexpected = [k for k in given if k not in expected]
    if not (missing or shape or unexpected):
        return None
    first = next((k for k in expected if k in set(missing) | set(shape)), None)
    if first is None:
        what = f"key '{unexpected[0]}' is in the file but not in the model"
    elif first in given:
        what = (f"key '{first}' has shape {list(given[first].shape)} in the file, "
                f"{list(expected[first].shape)} in the model")
    else:
        what = f"key '{first}' of the model is missing from the file"
    return (f"first mismatch: {what} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shape)} of another shape)")


def load_trained_model(checkpoint: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the detector from a final weights file (``weights/<run>.pth``) and load its
    weights (eval mode). Errors as :func:`read_weights`; weights of another architecture than the
    one the file names are a WeightsError naming the first mismatching key."""
    from models.build import build_model

    checkpoint = Path(checkpoint)
    state = read_weights(checkpoint)
    remedy = weights_remedy(checkpoint)
    try:
        model = build_model(state["detector"], state["model_cfg"], state["num_classes"], load_pretrained=False)
    except Exception as e:  # an unknown detector name or a configuration it cannot build
        raise WeightsError(f"{checkpoint}: cannot build the model it names (detector {state['detector']!r}: "
                           f"{type(e).__name__}: {e}); {remedy}") from e
    mismatch = first_state_dict_mismatch(model.state_dict(), state["model"])
    if mismatch is not None:
        raise WeightsError(f"{checkpoint}: the weights are not those of the {state['detector']} model the file "
                           f"names ({mismatch}); {remedy}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise WeightsError(f"{checkpoint}: the weights do not fit the model they name ({e}); {remedy}") from e
    model.to(device).eval()
    return model, state


def shard_indices(num_images: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The dataset indices rank ``rank`` of ``world_size`` predicts: the whole batches ``b`` of the
    one-process run (images ``b * batch_size`` to ``b * batch_size + batch_size - 1``, in order)
    with ``b % world_size == rank``.

    Whole batches, not every ``world_size``-th image: a batch is padded to its largest image, and
    padding changes a detector's features near the image border, so an image batched with other
    images than in the one-process run could get other detections. Dealt this way, every image
    sits in the same batch, at the same place, whatever the number of processes.
    """
    batch_size = max(int(batch_size), 1)
    return [i for i in range(num_images) if (i // batch_size) % world_size == rank]


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    dataset,
    indices: list[int],
    cat_ids: list[int],
    device: torch.device,
    batch_size: int = 8,
    size_divisor: int = 32,
    max_dets: int = 100,
    num_workers: int = 0,
    desc: str = "eval",
    progress: bool = True,
) -> list[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Run ``model`` over the images ``indices`` of ``dataset`` (in that order, ``batch_size`` at a
    time); return one ``(dataset index, bbox records, segm records)`` per image, the records in the
    order :func:`~pipeline.evaluation.detections_to_coco` gives them (score, highest first). Masks
    are RLE-encoded per image as they are pasted, so no (K, H, W) array outlives its image."""
    loader = DataLoader(
        Subset(dataset, list(indices)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=lambda b: collate_detection(b, size_divisor=size_divisor),
    )
    out: list[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]] = []
    order = iter(indices)
    for images, image_sizes, targets in tqdm(loader, desc=desc, unit="batch", mininterval=5.0, disable=not progress):
        outputs = model(images.to(device), image_sizes, None)
        for output, target in zip(outputs, targets):
            bbox, segm = detections_to_coco(output, target, cat_ids, max_dets=max_dets)
            out.append((next(order), bbox, segm))
    return out


def merge_shards(shards: list[list[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]]
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The (bbox, segm) records of every rank's :func:`predict_images` output in the canonical
    order: by dataset index, and within an image in the model's order. The one-process run
    writes the same order, so the result files do not depend on the number of processes."""
    images = sorted((item for shard in shards for item in shard), key=lambda item: item[0])
    indices = [i for i, _, _ in images]
    if len(set(indices)) != len(indices):
        raise RuntimeError("an image was predicted by more than one rank")
    bbox = [r for _, b, _ in images for r in b]
    segm = [r for _, _, s in images for r in s]
    return bbox, segm


def predict_split(
    model: torch.nn.Module,
    dataset,
    cat_ids: list[int],
    device: torch.device,
    batch_size: int = 8,
    size_divisor: int = 32,
    max_dets: int = 100,
    num_workers: int = 0,
    desc: str = "eval",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Run ``model`` over ``dataset``; return (bbox records, segm records, seconds per image).

    Under torchrun each rank predicts its share (:func:`shard_indices`) and rank 0 gathers the
    records (:func:`pipeline.distributed.gather_to_main`) into the canonical order
    (:func:`merge_shards`): rank 0 returns every image's records, the same list a single process
    returns; the other ranks return empty lists. A rank's failure fails every rank (the failed
    one re-raises its error, the others raise :class:`~pipeline.distributed.RankFailed` naming
    it). Seconds per image: the wall time from the moment every rank starts to the end of the
    gathering, over the split's images (so N processes show as a shorter time per image).
    """
    info = distributed.current()
    indices = shard_indices(len(dataset), batch_size, info.rank, info.world_size)
    distributed.barrier()
    start = time.perf_counter()
    shards = distributed.gather_to_main(
        lambda: predict_images(model, dataset, indices, cat_ids, device, batch_size=batch_size,
                               size_divisor=size_divisor, max_dets=max_dets, num_workers=num_workers,
                               desc=desc, progress=info.is_main),
        f"predicting {desc}")
    bbox, segm = merge_shards(shards) if shards is not None else ([], [])
    return bbox, segm, (time.perf_counter() - start) / max(len(dataset), 1)


def pr_curve_file(metrics_root: Path, model_name: str, split_name: str, iou_type: str) -> Path:
    """``metrics/<model>/pr/<split>_<task>.csv``: a model's precision-recall curves of one split and
    task (one folder per model, so the stage declares it whether or not the model has masks)."""
    return Path(metrics_root) / model_name / "pr" / f"{split_name}_{iou_type}.csv"


#: Splits that models with a snapping switch (:data:`SNAPPING_SWITCHES`) are also scored on
#: with it flipped.
VARIANT_SPLITS = ("minival",)

#: Bool attributes of ``model.bbox_head`` that are inference-time switches worth scoring both
#: ways: RepPoints V2's ``corner_snapping`` (joint inference; moves boxes) and Dense RepPoints
#: V2's ``contour_snapping`` (snapped contour points in the mask step; moves masks only).
SNAPPING_SWITCHES = ("corner_snapping", "contour_snapping")


def switch_variant(model: torch.nn.Module, switch: str) -> tuple[str, bool] | None:
    """``(variant name, switch value)`` for the evaluation of ``model`` with its head's
    ``switch`` flipped, or None when the model has no ``bbox_head`` or the head no such switch.

    The variant is the opposite of the model's default, named by the value it uses:
    ``<switch>_off`` when the default is on, ``<switch>_on`` otherwise.
    """
    head = getattr(model, "bbox_head", None)
    if head is None or not hasattr(head, switch):
        return None
    value = not bool(getattr(head, switch))
    return f"{switch}_{'on' if value else 'off'}", value


def corner_snapping_variant(model: torch.nn.Module) -> tuple[str, bool] | None:
    """``(variant name, switch value)`` for the evaluation besides the default, or None.

    RepPoints V2 heads carry a bool ``corner_snapping`` (joint inference). The variant is the
    opposite of the model's default, named by the value it uses: ``corner_snapping_off`` for
    the usual default (on), ``corner_snapping_on`` otherwise.
    """
    return switch_variant(model, "corner_snapping")


def snapping_variants(model: torch.nn.Module) -> list[tuple[str, bool]]:
    """One :func:`switch_variant` per switch of :data:`SNAPPING_SWITCHES` the model's head has,
    in that order (in practice at most one)."""
    return [v for v in (switch_variant(model, s) for s in SNAPPING_SWITCHES) if v is not None]


def variant_switch(variant: str) -> str | None:
    """The switch a variant name flips (``contour_snapping_off`` -> ``contour_snapping``), or
    None when the name is not ``<switch>_on`` / ``<switch>_off`` of :data:`SNAPPING_SWITCHES`."""
    for switch in SNAPPING_SWITCHES:
        if variant in (f"{switch}_on", f"{switch}_off"):
            return switch
    return None


def variant_split(split_name: str, variant: str) -> str:
    """The MLflow ``split`` tag of a variant's run, e.g. ``minival/corner_snapping_off``."""
    return f"{split_name}/{variant}"


def data_split(split_tag: str) -> str:
    """The split of the data an evaluate run scored, from its ``split`` tag: ``minival`` for
    ``minival`` and for a variant's ``minival/corner_snapping_off`` (:func:`variant_split`)."""
    return split_tag.split("/", 1)[0]


def metric_key(split_tag: str, name: str) -> str:
    """The MLflow key of a number of an evaluate run: ``<split>/<name>``, e.g. ``minival/bbox_AP``,
    ``test-dev/segm_AP50``, ``minival/num_detections``, ``minival/seconds_per_image``. The split
    is the data's (:func:`data_split`): a variant's run uses the same keys as the default's, and
    every model's evaluate runs share them, so `mlflow ui`'s compare view lines them up."""
    return f"{data_split(split_tag)}/{name}"


@contextmanager
def attribute_set(obj: Any, name: str, value: Any):
    """Set ``obj.name = value`` for the duration of the block, then restore it."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def score_records(gt, records: dict[str, list[dict[str, Any]]], image_ids: list[int] | None,
                  engine: str = DEFAULT_ENGINE, files: dict[str, Path] | None = None) -> dict[str, tuple]:
    """COCOeval per task: ``{iou_type: (stats, evaluator or None, summary text)}``.

    ``bbox`` is always scored (no detections score 0); ``segm`` only where there are masks.
    ``engine``: ``evaluate.engine`` (:func:`pipeline.evaluation.coco_evaluate`); ``files``: the
    result file of each task's records, named when a record is refused.
    """
    out = {}
    for iou_type in ("bbox", "segm"):
        if iou_type == "segm" and not records.get("segm"):
            continue
        source = str((files or {}).get(iou_type)) if (files or {}).get(iou_type) else f"{iou_type} detections"
        out[iou_type] = coco_evaluate(gt, records.get(iou_type, []), iou_type, image_ids, engine=engine,
                                      source=source)
    return out


def log_evaluate_run(run_name: str, tags: dict[str, str], ev_cfg: dict[str, Any], cfg: dict[str, Any],
                     state: dict[str, Any], metrics: dict[str, Any], sec_per_img: float, artifacts: list[Path],
                     track: bool = True, dataset: tuple[str, str, str, str] | None = None) -> None:
    """One MLflow evaluate run: params, the COCO numbers as ``<split>/<task>_<stat>`` (with
    ``<split>/num_detections`` and ``<split>/seconds_per_image``; :func:`metric_key` of the
    ``split`` tag), the artifacts and the data it scored (``dataset``: name, digest, source,
    context for :meth:`Tracker.log_dataset`)."""
    links = {"model_id": tags.get("logged_model_id")}
    if dataset is not None:
        links.update(dataset_name=dataset[0], dataset_digest=dataset[1])
    with Tracker(run_name, tags, enabled=track, metric_links=links) as tracker:
        if dataset is not None:
            tracker.log_dataset(*dataset)
        tracker.log_params({"evaluate": ev_cfg, "config": cfg, "checkpoint_iteration": state.get("iteration")})
        split = tags["split"]
        flat = {}
        for iou_type in ("bbox", "segm"):
            for k, v in metrics.get(iou_type, {}).items():
                flat[metric_key(split, f"{iou_type}_{k}")] = v
        flat[metric_key(split, "num_detections")] = metrics["num_detections"]
        flat[metric_key(split, "seconds_per_image")] = sec_per_img
        tracker.log_metrics(flat, step=int(state.get("iteration") or 0))
        tracker.flush()
        for f in artifacts:
            tracker.log_artifact(f)


def skip_split(model_name: str, split_name: str, manifest, manifest_file: Path, metrics_root: Path,
               results_dir: Path) -> dict[str, Any]:
    """Handle a split of ``evaluate.splits`` that the manifest lacks: print a note, write
    ``metrics/<model>/<split>.json`` as ``{"model", "split", "dataset", "scored": false,
    "skipped": true, "reason"}`` (no host facts: the same bytes on a re-run), remove result files
    of that split an earlier evaluation left (its COCO result and submission files, PR curves),
    and return that record. No MLflow run is logged for the split."""
    print(f"[evaluate] {model_name}: no {split_name} split in {manifest_file} (dataset {manifest.name}); skipped",
          flush=True)
    metrics: dict[str, Any] = {
        "model": model_name,
        "split": split_name,
        "dataset": f"{manifest.name} (no {split_name} split)",
        "scored": False,
        "skipped": True,
        "reason": (f"the prepared data (dataset {manifest.name}) has no {split_name} split, so nothing was "
                   f"predicted or scored on it"),
    }
    stale = [*results_dir.glob(f"{split_name}_*.json"), *results_dir.glob(f"pr_{split_name}_*.png"),
             *(Path(metrics_root) / model_name / "pr").glob(f"{split_name}_*.csv")]
    if split_name == "test-dev":
        for suffix in ("", "-segm"):
            sub = results_dir / submission_name(model_name, suffix=suffix)
            stale += [sub, sub.with_suffix(".zip")]
    for f in stale:
        f.unlink(missing_ok=True)
    write_json(metrics, Path(metrics_root) / model_name / f"{split_name}.json")
    return metrics


def evaluate_variant(model: torch.nn.Module, variant: tuple[str, bool], dataset, cat_ids: list[int],
                     device: torch.device, gt, image_ids: list[int] | None, results_dir: Path, label: str,
                     split_name: str, predict_kwargs: dict[str, Any],
                     engine: str = DEFAULT_ENGINE) -> tuple[dict[str, Any], float]:
    """Predict and score ``dataset`` once more with the variant's switch (``bbox_head.corner_snapping``
    for ``corner_snapping_off``, ``bbox_head.contour_snapping`` for ``contour_snapping_off``, ...)
    set to the variant's value (restored afterwards); write its detections to
    ``results/<model>/<split>_<variant>_<task>.json``. Returns (its metrics, with the value under
    the switch's key, and seconds per image).

    Under torchrun every rank predicts its share (:func:`predict_split`); rank 0 writes and scores,
    the other ranks return ``({}, seconds per image)`` and write nothing."""
    name, value = variant
    switch = variant_switch(name)
    if switch is None:
        raise ValueError(f"variant {name!r} names none of the switches {SNAPPING_SWITCHES}")
    with attribute_set(model.bbox_head, switch, value):
        bbox, segm, sec_per_img = predict_split(model, dataset, cat_ids, device, desc=f"{label} {name}",
                                                **predict_kwargs)
    if not distributed.current().is_main:
        return {}, sec_per_img
    result_files = {t: results_dir / f"{split_name}_{name}_{t}.json" for t in ("bbox", "segm")}
    write_results(bbox, result_files["bbox"])
    if segm:
        write_results(segm, result_files["segm"])
    metrics: dict[str, Any] = {switch: value, "num_detections": len(bbox)}
    for iou_type, (stats, _, text) in score_records(gt, {"bbox": bbox, "segm": segm}, image_ids, engine,
                                                    result_files).items():
        metrics[iou_type] = {k: round(v, 6) for k, v in stats.items()}
        print(f"[evaluate] {label} {iou_type}, {name}:\n{text}", flush=True)
    return metrics, sec_per_img


def evaluate_model(
    model_name: str,
    params: dict[str, Any],
    manifest_file: Path = MANIFEST_FILE,
    weights_root: Path = WEIGHTS_DIR,
    metrics_root: Path = METRICS_DIR,
    results_root: Path = RESULTS_DIR,
    track: bool = True,
    seed: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate the run ``model_name`` (``weights/<model_name>.pth``), or with ``seed`` the run
    ``<model_name>_seed<seed>`` (:func:`pipeline.config.run_id`), on every split of
    ``params['evaluate']['splits']``.

    Under torchrun (``WORLD_SIZE`` > 1; :func:`evaluate_processes` says when the stage launches it)
    the process joins the group (gloo on CPU, NCCL on CUDA, one GPU per rank), every rank predicts
    its share of each split and rank 0 alone writes the result and metrics files, scores and logs
    to MLflow, with the same bytes as one process would (:func:`predict_split`). Returns the
    metrics on rank 0, ``{}`` on the other ranks.
    """
    ev_cfg = params.get("evaluate", {}) or {}
    device_name = (params.get("train") or {}).get("device", "auto")
    info = distributed.init_distributed("cuda" if device_name != "cpu" and torch.cuda.is_available() else "cpu")
    device = resolve_device(device_name, info.local_rank)
    entry, given_seed = model_name, seed
    model_name = run_id(entry, given_seed)  # the run, from here on
    seed = training_seed(params, given_seed)
    weights = weights_file(model_name, weights_root)
    model, state = load_trained_model(weights, device)
    track = track and info.is_main
    weights_sha = file_digest(weights) if weights.exists() and info.is_main else "unknown"  # tags the MLflow runs
    model_id = logged_model_id(model_name, weights_sha) if track and weights.exists() else None
    cfg = state["config"]
    cat_ids = state["cat_ids"]
    manifest = load_manifest(manifest_file)
    max_dets = int(ev_cfg.get("max_dets", 100))
    engine = check_engine(ev_cfg.get("engine", DEFAULT_ENGINE))
    results_dir = Path(results_root) / model_name
    if info.is_main:
        results_dir.mkdir(parents=True, exist_ok=True)
    variants = snapping_variants(model)
    all_metrics: dict[str, dict[str, Any]] = {}
    for split_name in ev_cfg.get("splits", ["minival", "test-dev"]):
        if split_name not in manifest.splits:  # e.g. test-dev of a dataset that has none
            if info.is_main:
                all_metrics[split_name] = skip_split(model_name, split_name, manifest, Path(manifest_file),
                                                     Path(metrics_root), results_dir)
            continue
        split = manifest.split(split_name)
        dataset = build_dataset(split, cfg["data"], train=False, seed=seed)
        if list(dataset.cat_ids) != list(cat_ids):
            raise RuntimeError(
                f"{split.ann_file}: categories {list(dataset.cat_ids)} differ from the ones the model "
                f"was trained on {list(cat_ids)}"
            )
        predict_kwargs = dict(
            batch_size=int(ev_cfg.get("batch_size", 8)),
            size_divisor=int(cfg["data"].get("size_divisor", 32)),
            max_dets=max_dets,
            num_workers=int((params.get("train") or {}).get("num_workers", 0)),
        )
        bbox, segm, sec_per_img = predict_split(model, dataset, cat_ids, device, desc=f"{model_name} {split_name}",
                                                **predict_kwargs)
        if not info.is_main:  # its share is with rank 0; the variants' predictions are shared too
            if variants and split.has_annotations and split_name in VARIANT_SPLITS:
                for variant in variants:
                    evaluate_variant(model, variant, dataset, cat_ids, device, None, None, results_dir,
                                     f"{model_name} {split_name}", split_name, predict_kwargs, engine)
            continue
        result_files = {t: results_dir / f"{split_name}_{t}.json" for t in ("bbox", "segm")}
        files = write_results(bbox, result_files["bbox"])
        if segm:
            files += write_results(segm, result_files["segm"])
        if split_name == "test-dev":
            files += write_results(bbox, results_dir / submission_name(model_name), zip_it=True)
            if segm:
                files += write_results(segm, results_dir / submission_name(model_name, suffix="-segm"), zip_it=True)
        metrics: dict[str, Any] = {
            "model": model_name,
            "split": split_name,
            "dataset": dataset_description(manifest, split_name, len(dataset)),
            "num_images": len(dataset),
            "num_detections": len(bbox),
            "scored": bool(split.has_annotations),
        }
        # (variant name, switch value, its metrics, its seconds per image) per variant scored
        variant_runs: list[tuple[str, bool, dict[str, Any], float]] = []
        if split.has_annotations:
            gt = load_coco_quietly(split.ann_file)
            image_ids = [int(i) for i in dataset.ids] if hasattr(dataset, "ids") else None
            scored = score_records(gt, {"bbox": bbox, "segm": segm}, image_ids, engine, result_files)
            for iou_type, (stats, ev, text) in scored.items():
                metrics[iou_type] = {k: round(v, 6) for k, v in stats.items()}
                print(f"[evaluate] {model_name} {split_name} {iou_type}:\n{text}", flush=True)
                curves = pr_curves(ev) if ev is not None else zero_pr_curves()  # None: no detection at all
                csv_path = pr_curve_file(Path(metrics_root), model_name, split_name, iou_type)
                png_path = results_dir / f"pr_{split_name}_{iou_type}.png"
                write_curves_csv(curves, csv_path)
                plot_pr_curves(curves, png_path, f"{model_name}: {iou_type} precision-recall, "
                                                 f"{dataset_description(manifest, split_name, len(dataset))}")
                files += [csv_path, png_path]
            if variants and split_name in VARIANT_SPLITS:
                for variant in variants:
                    variant_metrics, v_sec = evaluate_variant(
                        model, variant, dataset, cat_ids, device, gt, image_ids,
                        results_dir, f"{model_name} {split_name}", split_name, predict_kwargs, engine,
                    )
                    variant_runs.append((variant[0], variant[1], variant_metrics, v_sec))
                for name, value in variants:  # the defaults the main numbers were measured with
                    metrics[variant_switch(name)] = not value
                metrics["variants"] = {name: v_metrics for name, _, v_metrics, _ in variant_runs}
        else:
            metrics["reason"] = "no annotations for this split (real COCO test-dev): submit the zip to the COCO server"
        out = Path(metrics_root) / model_name / f"{split_name}.json"
        write_json(metrics, out)
        all_metrics[split_name] = metrics
        tags = {
            "model": model_name,
            "stage": "evaluate",
            "split": split_name,
            "preset": cfg["preset"],
            "scale": cfg["scale"],
            "detector": cfg["detector"],
            "dataset": metrics["dataset"],
            "scored": str(metrics["scored"]).lower(),
            "weights_sha256": weights_sha,
        }
        if model_id:
            tags["logged_model_id"] = model_id
        if given_seed is not None:  # a seeded run: its entry and seed (unseeded runs keep their tags)
            tags.update(entry=entry, seed=str(seed))
        for name, value in variants:
            tags[variant_switch(name)] = str(not value).lower()
        artifacts = [out] + [f for f in files if f.suffix in (".zip", ".png", ".csv")]
        data_input = (f"{manifest.name}/{split_name}", prepared_data_digest(manifest_file), str(split.ann_file),
                      split_name)
        log_evaluate_run(f"evaluate/{model_name}/{split_name}", tags, ev_cfg, cfg, state, metrics, sec_per_img,
                         artifacts, track, data_input)
        for variant_name, value, variant_metrics, v_sec in variant_runs:
            v_split = variant_split(split_name, variant_name)
            log_evaluate_run(f"evaluate/{model_name}/{v_split}",
                             {**tags, "split": v_split, "variant": variant_name,
                              variant_switch(variant_name): str(value).lower()},
                             ev_cfg, cfg, state, variant_metrics, v_sec, [out], track, data_input)
    return all_metrics


#: The errors :func:`main` turns into a one-line exit message (``[evaluate] <message>``, status 1).
STAGE_ERRORS = (WeightsError, TrackingStoreError, DataError, ConfigError, distributed.RankFailed)


def evaluate_processes(params: dict[str, Any], override: int | None = None) -> int:
    """How many processes the evaluate stage shards its inference over (torchrun, one per GPU on
    CUDA, gloo on CPU).

    ``override`` (``--processes``) when given; else ``evaluate.processes`` when above 1 (CPU
    processes are allowed: each predicts its share with one thread, so a multi-core machine
    evaluates faster); else, as the train stage, ``train.gpus`` when it is above 1 and CUDA is
    present and not turned off by ``train.device: cpu``; else 1. On CUDA each process needs a GPU
    of its own: more processes than visible GPUs is a ConfigError. The result files do not depend
    on the number (:func:`predict_split`), so no stage depends on this setting.
    """
    ev_cfg = params.get("evaluate") or {}
    runtime = params.get("train") or {}
    if override is not None:
        processes = override
    else:
        value = ev_cfg.get("processes", 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"evaluate.processes: {value!r} is not a positive integer")
        processes = value
    on_cuda = runtime.get("device", "auto") != "cpu" and torch.cuda.is_available()
    if override is None and processes == 1 and on_cuda:
        processes = max(int(runtime.get("gpus", 1) or 1), 1)
    if on_cuda and processes > torch.cuda.device_count():
        raise ConfigError(f"evaluate: {processes} processes asked for but only {torch.cuda.device_count()} CUDA "
                          f"devices are visible (evaluate.processes, train.gpus or --processes)")
    return processes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a key of 'models' (or 'ablations') in params.yaml")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--seed", type=int, default=None,
                        help="evaluate the run <model>_seed<SEED> (trained with `pipeline.train --seed SEED`)")
    parser.add_argument("--processes", type=int, default=None,
                        help="processes to shard the evaluation over (default: evaluate.processes, or "
                             "train.gpus on CUDA; see evaluate_processes); the result files are the same")
    args = parser.parse_args(argv)
    if args.seed is not None and args.seed < 0:
        parser.error(f"--seed must be a non-negative integer, got {args.seed}")
    if args.processes is not None and args.processes < 1:
        parser.error(f"--processes must be a positive integer, got {args.processes}")
    try:
        params = load_params(args.params)
        processes = evaluate_processes(params, args.processes)
    except ConfigError as e:
        raise SystemExit(f"[evaluate] {e}") from e
    distributed.relaunch_with_torchrun("pipeline.evaluate", processes, argv, label="[evaluate]")
    try:
        evaluate_model(args.model, params, seed=args.seed)
    except STAGE_ERRORS as e:
        raise SystemExit(f"[evaluate] {e}") from e
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
