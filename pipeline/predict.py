"""Run a trained detector on image files: COCO result records and pictures of the detections.

    python -m pipeline.predict --checkpoint weights/faster_rcnn_r50_fpn.pth \\
        --input IMAGE_OR_FOLDER --out DIR [--score-thr 0.3] [--device auto] [--batch-size 4]

``--checkpoint`` also takes an MLflow model URI: ``models:/faster_rcnn_r50_fpn/3`` (a registered
version; every train run registers one) or ``runs:/<run id>/model``.

``--input`` is one image or a folder, whose ``.jpg``/``.jpeg``/``.png`` files are read in
sorted order (grayscale, RGBA and palette images are converted to RGB). Each image gets
the checkpoint's test transform (its ``data.test_scale``, no flip) and the detector runs
under ``torch.no_grad``. Written to ``DIR``:

* ``predictions.json``: COCO result records ``{"image_id", "file_name", "category_id",
  "category_name", "bbox": [x, y, w, h], "score"}`` with ``image_id`` the image's index in the
  sorted list (unreadable files keep their index), ``category_id`` the COCO id of the class,
  ``category_name`` its name (the checkpoint's ``categories``) and the box in original image
  pixels; every detection the model returns, at most 100 per image, highest score first;
* ``<stem>.png`` per image: the detections scoring at least ``--score-thr`` drawn on the
  image with their class names (upscaled when small, see :mod:`pipeline.visualize`). When two
  inputs share a stem (``a.jpg``, ``a.png``) their pictures are named ``a_jpg.png`` and ``a_png.png``.

An image that cannot be read (zero-byte, truncated, not JPEG/PNG, or declaring more than
:data:`pipeline.data.images.MAX_IMAGE_PIXELS` pixels) does not stop the run: a warning names the
file and why, every other image is predicted, and at the end the unreadable files are listed
and the command exits with status 1. The readable images' pictures and their records in
``predictions.json`` are written as usual (``predictions.json`` then lists only them; an
unreadable file has no picture and no record, and a picture an earlier run left for it in
``--out`` is removed). Exit statuses:

* 0: every image was predicted;
* 1: some images could not be read; the others' outputs are in ``--out``, the failures listed;
* 2: nothing to do, nothing written into ``--out``: a missing checkpoint or input, an unreadable
  checkpoint, a folder without images, an unreadable ``--input`` file, or a folder none of whose
  images could be read.

Outputs are staged and moved into ``--out`` only once the run is over, so a run that stops
half-way (an error, an interrupt) leaves no partial output: ``predictions.json`` is moved last,
and its presence means that every image listed in it has its picture. The checkpoint is read
with ``torch.load(weights_only=True)`` (a file holding anything but tensors and plain
containers is refused, unrun) and its tensors are checked against the digest the train stage
wrote into it (:func:`pipeline.evaluate.read_weights`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.collate import collate_detection
from pipeline.data.images import decode_rgb, read_image_size
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransforms
from pipeline.engine import resolve_device
from pipeline.errors import ConfigError, DataError, WeightsError, short_repr
from pipeline.evaluate import load_trained_model
from pipeline.logged_model import is_model_uri, load_logged_model
from pipeline.evaluation import detections_to_coco, write_results
from pipeline.visualize import draw_output, save_png

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
EXIT_SOME_IMAGES_FAILED = 1
EXIT_BAD_INPUT = 2
#: At most this many unreadable files are named in an exception's message (each is warned about
#: when it is skipped, and the command lists them all at the end).
MAX_LISTED_FAILURES = 10


class UnreadableImages(DataError):
    """Some input images could not be read; the others were predicted and their outputs written.

    Attributes:
        records: the COCO result records written to ``predictions.json`` (readable images only).
        failures: ``(path, why)`` per unreadable image, in input order.
        out_dir: where the readable images' outputs were written.
    """

    def __init__(self, message: str, records: list[dict[str, Any]], failures: list[tuple[Path, str]],
                 out_dir: Path) -> None:
        super().__init__(message)
        self.records = records
        self.failures = failures
        self.out_dir = out_dir


def _failed_names(failures: Sequence[tuple[Path, str]]) -> str:
    """The names of the first :data:`MAX_LISTED_FAILURES` unreadable files and a count of the rest."""
    names = ", ".join(short_repr(p.name, 100) for p, _ in failures[:MAX_LISTED_FAILURES])
    more = len(failures) - MAX_LISTED_FAILURES
    return names + (f" and {more} more" if more > 0 else "")


def _warn_unreadable(path: Path, error: DataError) -> None:
    tqdm.write(f"predict: warning: skipped an unreadable image: {error}", file=sys.stderr)


def list_images(source: Path) -> list[Path]:
    """The image files to predict: ``source`` itself, or a folder's .jpg/.jpeg/.png files, sorted.

    Raises DataError when ``source`` does not exist or the folder holds no such file.
    """
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DataError(f"{source}: folder holds no image (.jpg, .jpeg, .png)")
        return paths
    raise DataError(f"{source}: input not found")


def output_names(paths: Sequence[Path]) -> list[str]:
    """Picture file name per input: ``<stem>.png``, or ``<stem>_<ext>.png`` where stems collide."""
    counts = Counter(p.stem for p in paths)
    return [f"{p.stem}.png" if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}.png" for p in paths]


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file as uint8 [H, W, 3] RGB (:func:`pipeline.data.images.decode_rgb`:
    JPEG or PNG; grayscale, palette, RGBA, CMYK and 16-bit images converted); DataError naming
    the file if it is missing, truncated, undecodable or declares too many pixels."""
    return np.array(decode_rgb(path))


def build_test_transforms(data_cfg: dict[str, Any]) -> DetectionTransforms:
    """The test transform of a model's ``data`` configuration: ``test_scale``, no flip, its mean/std
    (as :func:`pipeline.data.dataset.build_dataset` builds it for a test split)."""
    if "test_scale" not in data_cfg:
        raise ConfigError(f"checkpoint's data configuration lacks 'test_scale' (have: {sorted(data_cfg)})")
    return DetectionTransforms(
        scales=[tuple(data_cfg["test_scale"])],
        flip_ratio=0.0,
        mean=data_cfg.get("mean", IMAGENET_MEAN),
        std=data_cfg.get("std", IMAGENET_STD),
    )


def class_names_of(state: dict[str, Any]) -> list[str]:
    """Name of each contiguous label, from the checkpoint's ``categories`` (the COCO id where unnamed)."""
    names = {int(c["id"]): str(c["name"]) for c in state.get("categories", [])}
    return [names.get(int(c), str(c)) for c in state["cat_ids"]]


def iter_predictions(
    model: torch.nn.Module,
    state: dict[str, Any],
    paths: Sequence[Path],
    device: torch.device,
    score_thr: float = 0.3,
    batch_size: int = 4,
    max_dets: int = 100,
    image_ids: Sequence[int] | None = None,
    on_error: Callable[[Path, DataError], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Predict ``paths`` batch by batch, yielding one result per image in order.

    Args:
        model: the detector of ``state`` (eval mode), on ``device``.
        state: the checkpoint dict (``config``, ``cat_ids``, ``categories``).
        paths: image files.
        device: where the model runs.
        score_thr: detections scoring below it are left out of the picture (not the records).
        batch_size: images per forward pass.
        max_dets: at most this many records per image, highest score first.
        image_ids: the ``image_id`` of each path (default: its position in ``paths``).
        on_error: called with the path and the DataError of an image that cannot be decoded,
            which is then skipped (no result); without it the DataError propagates.

    Yields:
        dicts with ``image_id`` int, ``path`` Path, ``file_name`` str, ``orig_size``
        (h0, w0), ``records`` (COCO bbox result records plus ``file_name`` and
        ``category_name``, original image pixels) and ``picture`` UInt8Tensor [3, H, W] (the
        detections drawn with their class names, see :func:`pipeline.visualize.draw_detections`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = list(range(len(paths))) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} image_ids for {len(paths)} paths")
    data_cfg = state["config"]["data"]
    transforms = build_test_transforms(data_cfg)
    size_divisor = int(data_cfg.get("size_divisor", 32))
    cat_ids = [int(c) for c in state["cat_ids"]]
    class_names = class_names_of(state)
    name_of = dict(zip(cat_ids, class_names))
    rng = np.random.default_rng(0)  # one test scale and no flip: nothing is random
    model.eval()
    with tqdm(total=len(paths), desc="predict", unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            batch_paths, originals, samples = [], [], []
            for path, image_id in zip(paths[start : start + batch_size], ids[start : start + batch_size]):
                try:
                    image = read_rgb(path)
                except DataError as e:
                    if on_error is None:
                        raise
                    on_error(path, e)
                    bar.update(1)
                    continue
                batch_paths.append(path)
                originals.append(image)
                target = {"image_id": image_id, "orig_size": tuple(image.shape[:2])}
                samples.append(transforms(image, target, rng))
            if not samples:
                continue
            images, image_sizes, targets = collate_detection(samples, size_divisor=size_divisor)
            with torch.no_grad():
                outputs = model(images.to(device), image_sizes, None)
            for path, image, out, tgt in zip(batch_paths, originals, outputs, targets):
                records, _ = detections_to_coco(out, tgt, cat_ids, max_dets=max_dets)
                for r in records:
                    r["file_name"] = path.name
                    r["category_name"] = name_of.get(int(r["category_id"]), str(r["category_id"]))
                yield {
                    "image_id": int(tgt["image_id"]),
                    "path": path,
                    "file_name": path.name,
                    "orig_size": tgt["orig_size"],
                    "records": records,
                    "picture": draw_output(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), out, tgt,
                                           class_names, score_thr),
                }
                bar.update(1)


def predict_images(
    model: torch.nn.Module,
    state: dict[str, Any],
    paths: Sequence[Path],
    device: torch.device,
    score_thr: float = 0.3,
    batch_size: int = 4,
) -> list[dict[str, Any]]:
    """All of :func:`iter_predictions` as a list (one dict per image, pictures included)."""
    return list(iter_predictions(model, state, paths, device, score_thr=score_thr, batch_size=batch_size))


def load_checkpoint(checkpoint: Path | str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The detector and its state from a weights file (:func:`pipeline.evaluate.load_trained_model`)
    or from an MLflow model URI (``models:/<name>/<version>``, ``runs:/<id>/model``;
    :func:`pipeline.logged_model.load_logged_model`).

    Either way the weights are read with ``torch.load(weights_only=True)`` and their tensor digest
    is verified. Raises DataError naming the checkpoint when it is missing or the URI cannot be
    resolved, and WeightsError naming the file when it holds objects other than tensors and plain
    containers (refused for safety), is corrupt, fails its digest or does not fit its model."""
    if is_model_uri(str(checkpoint)):
        try:
            return load_logged_model(str(checkpoint), device)
        except WeightsError:
            raise
        except Exception as e:  # unknown name or version, unreachable store, not ours
            raise DataError(f"{checkpoint}: cannot load the logged model: {type(e).__name__}: {e}") from e
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: checkpoint not found")
    return load_trained_model(checkpoint, device)


def run_predict(
    checkpoint: Path,
    source: Path,
    out_dir: Path,
    score_thr: float = 0.3,
    device: str = "auto",
    batch_size: int = 4,
) -> list[dict[str, Any]]:
    """Predict ``source`` with ``checkpoint``; write ``out_dir``/predictions.json and one PNG per image.

    Returns the COCO result records written to predictions.json. Outputs are staged and moved
    into ``out_dir`` once the run is over: a run that stops with an exception other than
    :class:`UnreadableImages` writes nothing there.

    An image that cannot be read (its header, checked before the model is loaded, or its pixels)
    is warned about on stderr and skipped (for a single input file, its DataError is raised).
    When some were skipped, the other images' outputs are written (an earlier run's picture of a
    skipped image is removed) and then :class:`UnreadableImages` (a DataError) is raised, naming
    them, with the written records in its ``records`` and ``(path, why)`` per skipped image, in
    input order, in its ``failures``. When none could be read, a DataError is raised and nothing
    is written.
    """
    paths = list_images(source)
    failures: list[tuple[Path, str]] = []

    def skip(path: Path, error: DataError) -> None:
        _warn_unreadable(path, error)
        failures.append((path, str(error)))

    readable: list[int] = []  # indices into paths
    for k, p in enumerate(paths):  # unreadable headers (zero-byte, not JPEG/PNG, huge) before loading a model
        try:
            read_image_size(p)
            readable.append(k)
        except DataError as e:
            if len(paths) == 1:
                raise
            skip(p, e)
    if not readable:
        raise DataError(f"{source}: none of its {len(paths)} image(s) could be read: {_failed_names(failures)}")
    try:
        dev = resolve_device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device}: {e}") from e
    model, state = load_checkpoint(checkpoint, dev)
    out_dir = Path(out_dir)
    names = output_names(paths)
    records: list[dict[str, Any]] = []
    # Everything is written into a staging folder and moved into out_dir only once the run is over,
    # so a run that stops half-way leaves no partial output.
    out_dir.mkdir(parents=True, exist_ok=True)
    predicted: list[str] = []  # picture names
    staging = Path(tempfile.mkdtemp(prefix=".predict-", dir=out_dir))
    try:
        for result in iter_predictions(model, state, [paths[k] for k in readable], dev, score_thr=score_thr,
                                       batch_size=batch_size, image_ids=readable,
                                       on_error=skip if len(paths) > 1 else None):
            records.extend(result["records"])
            name = names[result["image_id"]]
            save_png(result["picture"], staging / name)
            predicted.append(name)
        if not predicted:
            raise DataError(f"{source}: none of its {len(paths)} image(s) could be read: {_failed_names(failures)}")
        write_results(records, staging / "predictions.json")
        order = {p: k for k, p in enumerate(paths)}
        failures.sort(key=lambda f: order[f[0]])
        for path, _ in failures:  # a picture left by an earlier run would not match predictions.json
            (out_dir / names[order[path]]).unlink(missing_ok=True)
        for name in [*predicted, "predictions.json"]:  # predictions.json last: its presence means complete
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if failures:
        raise UnreadableImages(
            f"{source}: {len(failures)} of {len(paths)} image(s) could not be read and have no output: "
            f"{_failed_names(failures)}; the other {len(predicted)} were predicted ({len(records)} detections in "
            f"{out_dir / 'predictions.json'}, their pictures beside it)",
            records, failures, out_dir)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="final weights written by the train stage (weights/<model>.pth), or an MLflow model "
                             "URI (models:/<model>/<version>, runs:/<run id>/model)")
    parser.add_argument("--input", type=Path, required=True, help="an image file or a folder of .jpg/.jpeg/.png")
    parser.add_argument("--out", type=Path, required=True, help="folder for predictions.json and the pictures")
    parser.add_argument("--score-thr", type=float, default=0.3, help="draw detections scoring at least this")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        records = run_predict(args.checkpoint, args.input, args.out, args.score_thr, args.device, args.batch_size)
    except UnreadableImages as e:
        lines = [f"predict: {len(e.failures)} unreadable image(s):", *(f"  {why}" for _, why in e.failures),
                 f"predict: error: {e}"]
        print("\n".join(lines), file=sys.stderr)
        sys.exit(EXIT_SOME_IMAGES_FAILED)
    except (DataError, ConfigError, WeightsError) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(f"[predict] wrote {len(records)} detections to {args.out / 'predictions.json'} and the pictures beside it",
          flush=True)


if __name__ == "__main__":
    main()
