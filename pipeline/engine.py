"""The training loop: SGD with linear warmup and step decay, gradient clipping, AMP on
CUDA, DDP, atomic checkpoints (at epoch ends, every ``checkpoint_every`` iterations, and on a
preemption signal) and exact resume, also from the middle of an epoch.

Exactness of resume: all randomness is either drawn from the global RNGs (model init,
proposal sampling, DataLoader seeds), whose states are checkpointed, or derived from
``(seed, epoch, index)`` inside the dataset and the batch sampler. The batches of an epoch
are therefore a function of the seed and the epoch alone (also with DataLoader workers: a
worker's seed is never used, each sample seeds its own generator), so a checkpoint only needs
the epoch and the number of its batches already trained: the resumed loader skips those
batches without loading them (:class:`SkipBatches`). The global RNG states of a mid-epoch
checkpoint are restored after the resumed epoch's DataLoader iterator is made (making it draws
the workers' base seed), where the uninterrupted run stood when it saved them. A run that is
killed and resumed from its last checkpoint therefore repeats the lost iterations exactly and
ends with the same parameters as an uninterrupted run (on CPU; CUDA kernels may be
non-deterministic).

Preemption: :class:`StopRequest` is set by a signal handler (``pipeline.train`` installs one
for SIGTERM and SIGUSR1); the loop looks at it after every iteration, saves a checkpoint at
that iteration boundary and raises :class:`Preempted` (exit status :data:`EXIT_PREEMPTED`).
Under DDP the flag travels in the per-iteration all-reduce of the losses, so every rank stops
after the same iteration.
"""
from __future__ import annotations

import csv
import io
import json
import random
import sys
import time
import itertools
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import distributed
from pipeline.checkpoint import CheckpointManager, atomic_write_text, config_fingerprint, rng_state, set_rng_state
from pipeline.errors import DataError
from pipeline.tracking import Tracker


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` uses this process's local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    return torch.device(name)


class WarmupStepSchedule:
    """LR factor at a global iteration: linear warmup, then ×gamma at each step.

    ``factor(it) = gamma ** #{s in steps : it >= s} * w(it)`` where the warmup term is
    ``w(it) = ratio + (1 - ratio) * it / warmup_iters`` for ``it < warmup_iters`` and 1
    afterwards (mmdetection's linear warmup). Steps are given in epochs (fractions
    allowed) and converted to iterations with ``iters_per_epoch`` (1: steps in iterations).
    """

    def __init__(
        self,
        iters_per_epoch: int,
        lr_steps: list[float],
        gamma: float,
        warmup_iters: int,
        warmup_ratio: float,
    ) -> None:
        self.step_iters = [int(round(s * iters_per_epoch)) for s in lr_steps]
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, it: int) -> float:
        factor = self.gamma ** sum(it >= s for s in self.step_iters)
        if self.warmup_iters > 0 and it < self.warmup_iters:
            factor *= self.warmup_ratio + (1.0 - self.warmup_ratio) * it / self.warmup_iters
        return factor


#: Exit status of a training stopped by a preemption signal after checkpointing (BSD's
#: ``EX_TEMPFAIL``: try again later). Re-running the same command resumes the training.
EXIT_PREEMPTED = 75


class StopRequest:
    """A request to stop training at the next iteration boundary, set from a signal handler.

    Setting it only records the signal (safe inside a handler); :class:`Trainer` reads it after
    each iteration. Setting it twice keeps the first signal (a scheduler that signals both a
    launcher and its children must not turn the graceful stop into an abrupt one).
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int) -> None:
        if self.signum is None:
            self.signum = int(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM`` (``signal 99`` for an unknown number)."""
        if self.signum is None:
            return "none"
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


class Preempted(SystemExit):
    """Training stopped on a preemption signal after saving a checkpoint at an iteration boundary.

    A :class:`SystemExit` with status :data:`EXIT_PREEMPTED`, so an uncaught one ends the process
    with that status and no traceback; the MLflow run it ends gets status ``run_status``
    (:class:`pipeline.tracking.Tracker` reads it).
    """

    run_status = "KILLED"

    def __init__(self, signal_name: str, iteration: int, checkpoint: str | None) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.signal_name = signal_name
        self.iteration = int(iteration)
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return (f"preempted by {self.signal_name} after iteration {self.iteration}"
                + (f"; checkpoint {self.checkpoint}" if self.checkpoint else ""))


AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_amp_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``train.amp_dtype``: ``"fp16"`` -> torch.float16, ``"bf16"`` ->
    torch.bfloat16, ``"auto"`` -> bfloat16 on a CUDA device that supports it
    (``torch.cuda.is_bf16_supported()``: Ampere and newer), else float16. Raises ``ValueError``
    for any other setting, and for ``"bf16"`` on a CUDA device without bfloat16 support."""
    if setting == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16
    if setting not in AMP_DTYPES:
        raise ValueError(f"train.amp_dtype must be one of auto, {', '.join(AMP_DTYPES)}; got {setting!r}")
    if setting == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.amp_dtype: bf16 but {torch.cuda.get_device_name(device)} does not support "
                         "bfloat16; use fp16 or auto")
    return AMP_DTYPES[setting]


class SkipBatches(torch.utils.data.Sampler[list[int]]):
    """The batches of ``batch_sampler`` from batch ``skip`` on: the rest of an epoch a mid-epoch
    checkpoint stopped in. Correct only for a batch sampler whose order is a function of its
    epoch (``set_epoch``) alone, as :class:`pipeline.data.GroupedBatchSampler`'s is; the skipped
    batches' images are never loaded."""

    def __init__(self, batch_sampler, skip: int) -> None:
        if skip < 0 or skip > len(batch_sampler):
            raise ValueError(f"cannot skip {skip} of {len(batch_sampler)} batches")
        self.batch_sampler = batch_sampler
        self.skip = int(skip)

    def __len__(self) -> int:
        return len(self.batch_sampler) - self.skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)


@dataclass(frozen=True)
class LrScaling:
    """The learning rate a run trains with under the linear scaling rule.

    ``preset_batch``: the preset's total batch, ``num_gpus x images_per_gpu`` of the preset's own
    schedule (params overrides of ``images_per_gpu`` change the actual batch, not this one);
    ``actual_batch``: processes x ``images_per_gpu`` of this run; ``base_lr``: the schedule's
    ``lr`` (the rate for the preset's batch); ``lr``: the rate used, ``base_lr x actual_batch /
    preset_batch`` when ``enabled`` (schedule ``auto_scale_lr``), else ``base_lr``.
    """

    enabled: bool
    preset_batch: int
    actual_batch: int
    base_lr: float
    lr: float

    def describe(self) -> str:
        """One console line: both batches and the lr used."""
        if self.preset_batch == self.actual_batch:
            return f"batch {self.actual_batch} images (the preset's), lr {self.lr:g}"
        if self.enabled:
            return (f"batch {self.actual_batch} images, preset batch {self.preset_batch}: lr scaled linearly "
                    f"{self.base_lr:g} x {self.actual_batch}/{self.preset_batch} = {self.lr:g} (schedule.auto_scale_lr)")
        return (f"batch {self.actual_batch} images, preset batch {self.preset_batch}: lr left at {self.lr:g} "
                f"(schedule.auto_scale_lr is off)")

    def params(self) -> dict[str, Any]:
        """What the MLflow run records as params ``lr_scaling.*``."""
        return {"auto_scale_lr": self.enabled, "preset_batch": self.preset_batch,
                "actual_batch": self.actual_batch, "base_lr": self.base_lr, "lr": self.lr}


def lr_scaling(schedule: dict[str, Any], preset_schedule: dict[str, Any], world_size: int) -> LrScaling:
    """mmdetection's linear rule (``auto_scale_lr``): ``lr x actual_total_batch / preset_total_batch``.

    Args:
        schedule: the run's resolved schedule (``lr``, ``images_per_gpu``, ``auto_scale_lr``).
        preset_schedule: the preset's own schedule at the run's scale, before params overrides
            (``num_gpus``, default 1, and ``images_per_gpu`` give the preset's total batch).
        world_size: training processes (one GPU each).
    """
    preset_batch = int(preset_schedule.get("num_gpus", 1)) * int(preset_schedule["images_per_gpu"])
    actual_batch = int(world_size) * int(schedule["images_per_gpu"])
    if preset_batch <= 0 or actual_batch <= 0:
        raise ValueError(f"batch sizes must be positive: preset {preset_batch}, actual {actual_batch}")
    enabled = bool(schedule.get("auto_scale_lr", False))
    base_lr = float(schedule["lr"])
    lr = base_lr * actual_batch / preset_batch if enabled else base_lr
    return LrScaling(enabled, preset_batch, actual_batch, base_lr, lr)


def check_target_labels(targets: list[dict[str, Any]], num_classes: int, source: str = "the training set") -> None:
    """Refuse a batch whose ``labels`` fall outside ``0 .. num_classes - 1`` (the classes the model
    was built with) before it reaches the model, where it would be an index error, a CUDA
    device-side assert or a NaN loss deep inside a head.

    Raises:
        DataError: naming ``source`` (the annotation file), the image id of the target and, when the
            target carries ``ann_ids`` (one per label), the annotation id of the first bad label.
    """
    for i, t in enumerate(targets):
        labels = t.get("labels")
        if labels is None:
            continue
        flat = torch.as_tensor(labels).reshape(-1)
        if flat.numel() == 0:
            continue
        bad = ((flat < 0) | (flat >= num_classes)).nonzero().reshape(-1)
        if bad.numel() == 0:
            continue
        j = int(bad[0])
        record = f"image id {t['image_id']}" if "image_id" in t else f"image {i} of the batch"
        ann_ids = t.get("ann_ids")
        if ann_ids is not None and len(ann_ids) == flat.numel():
            record = f"annotation id {int(ann_ids[j])} ({record})"
        raise DataError(
            f"{source}: {record} has label {int(flat[j])}, outside 0..{num_classes - 1}: the model was built "
            f"for {num_classes} classes (labels 0..{num_classes - 1} stand for the sorted category ids of the "
            f"training set); {bad.numel()} of the image's {flat.numel()} labels are out of range")


def move_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]


@dataclass
class TrainResult:
    """Summary written to ``metrics/<model>/train.json``."""

    iterations: int
    epochs: int
    final_losses: dict[str, float]
    seconds: float  # wall time of this call (0 when a finished run is resumed)
    seconds_per_iter: float  # training time per iteration over the whole run, resumed parts included
    resumed_from_epoch: int
    world_size: int
    device: str
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def metrics(self) -> dict[str, Any]:
        """What ``metrics/<run>/train.json`` records: the same on every identical retrain, so
        no timings and no host facts (those go to MLflow: ``seconds_per_iter``, ``world_size``,
        ``device`` of the train run)."""
        return {
            "iterations": self.iterations,
            "epochs": self.epochs,
            "final_losses": {k: round(v, 6) for k, v in self.final_losses.items()},
        }


def convert_sync_batchnorm(model: torch.nn.Module, sync_bn: bool, distributed: bool) -> torch.nn.Module:
    """With ``sync_bn`` and more than one process, replace every ``BatchNorm*d`` by a
    ``SyncBatchNorm`` (statistics over the whole multi-GPU batch: the RepPoints MobileNetV2
    presets' "SyncBN"); otherwise return ``model`` unchanged (one process: plain BatchNorm is
    the same thing). Frozen BN (``FrozenBatchNorm2d``) and BN kept in eval mode (``norm_eval``)
    are unaffected in effect."""
    if sync_bn and distributed:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


class Trainer:
    """Trains one detector on one dataset.

    Args:
        model: the detector; ``model(images, image_sizes, targets)`` returns a dict of
            losses in training mode (keys starting with ``loss`` are summed).
        dataset: training dataset with ``set_epoch(epoch)`` and ``aspect_ratios()``.
        batch_sampler: yields lists of dataset indices; has ``set_epoch`` and ``__len__``
            (batches per rank per epoch).
        collate_fn: turns a list of samples into ``(images, image_sizes, targets)``.
        schedule: preset ``schedule`` section (lr, momentum, weight_decay, warmup_iters,
            warmup_ratio, lr_steps (epochs), gamma, grad_clip, epochs, and ``sync_bn``: under
            DDP, every BatchNorm becomes a SyncBatchNorm, see :func:`convert_sync_batchnorm`).
            An iteration-based schedule (mmdetection's ``IterBasedRunner``) sets ``max_iters``:
            training stops after that many iterations, ``epochs`` becomes the number of
            (partial) passes they take, and ``lr_steps`` are read in iterations.
        checkpoints: where the checkpoints go.
        fingerprint: hash of everything that defines the run; resume only when equal.
        device: torch device of this rank.
        amp: use autocast (CUDA only; ignored on CPU).
        amp_dtype: ``"fp16"`` (float16 autocast with a GradScaler), ``"bf16"`` (bfloat16, no
            scaler: its float32 exponent range needs none) or ``"auto"`` (bf16 where
            ``torch.cuda.is_bf16_supported()``, else fp16); see :func:`resolve_amp_dtype`.
        num_workers: DataLoader workers.
        log_interval: iterations between progress-bar and console updates.
        tracker: MLflow tracker (per-iteration losses and lr are logged to it).
        dist_info: rank / world size.
        stop_at_iteration: stop (as if killed) before this global iteration; for tests.
        checkpoint_every: also checkpoint after every global iteration that is a multiple of
            this, in the middle of an epoch (0: at epoch ends only). Results do not depend on it.
        stop_request: when set (by a signal handler), stop after the current iteration, save a
            checkpoint there and raise :class:`Preempted`.
        num_classes: the classes the model was built with; every batch's labels must lie in
            ``0 .. num_classes - 1`` (:func:`check_target_labels`). Default: the dataset's
            ``num_classes`` where it has one (else no check).
        init_weights: called with the model once at the start of a fresh training, before the
            first iteration, and never when the training resumes from a checkpoint (the
            checkpoint holds the weights): a fine-tuning run's start from another run's weights
            (:mod:`pipeline.finetune`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset,
        batch_sampler,
        collate_fn: Callable,
        schedule: dict[str, Any],
        checkpoints: CheckpointManager,
        fingerprint: str,
        device: torch.device,
        amp: bool = True,
        amp_dtype: str = "auto",
        num_workers: int = 0,
        log_interval: int = 20,
        tracker: Tracker | None = None,
        dist_info: distributed.DistInfo = distributed.DistInfo(),
        stop_at_iteration: int | None = None,
        find_unused_parameters: bool = False,
        checkpoint_every: int = 0,
        stop_request: StopRequest | None = None,
        num_classes: int | None = None,
        init_weights: Callable[[torch.nn.Module], Any] | None = None,
    ) -> None:
        self.device = device
        self.dist = dist_info
        self.model = convert_sync_batchnorm(model, bool(schedule.get("sync_bn")), dist_info.distributed).to(device)
        if dist_info.distributed:
            self.ddp_model: torch.nn.Module = DistributedDataParallel(
                self.model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters,
            )
        else:
            self.ddp_model = self.model
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.collate_fn = collate_fn
        self.schedule = schedule
        self.iters_per_epoch = len(batch_sampler)
        if self.iters_per_epoch == 0:
            raise RuntimeError("the training set yields no batch: is the train split empty?")
        if schedule.get("max_iters") is not None:
            self.max_iters = int(schedule["max_iters"])
            if self.max_iters <= 0:
                raise ValueError(f"schedule.max_iters must be positive, got {schedule['max_iters']}")
            self.epochs = -(-self.max_iters // self.iters_per_epoch)
            step_unit = 1  # lr_steps in iterations
        else:
            self.epochs = int(schedule["epochs"])
            self.max_iters = self.epochs * self.iters_per_epoch
            step_unit = self.iters_per_epoch
        self.checkpoints = checkpoints
        self.fingerprint = fingerprint
        self.amp = bool(amp) and device.type == "cuda"
        self.amp_dtype = resolve_amp_dtype(amp_dtype, device) if self.amp else torch.float32
        self.num_workers = num_workers
        self.log_interval = max(1, int(log_interval))
        self.tracker = tracker
        self.stop_at_iteration = stop_at_iteration
        if int(checkpoint_every) < 0:
            raise ValueError(f"train.checkpoint_every must be >= 0 (0: epoch ends only), got {checkpoint_every}")
        self.checkpoint_every = int(checkpoint_every)
        self.stop_request = stop_request
        self.grad_clip = schedule.get("grad_clip")
        if num_classes is None:
            num_classes = getattr(dataset, "num_classes", None)
        self.num_classes = None if num_classes is None else int(num_classes)
        ann_file = getattr(dataset, "ann_file", None)
        self.data_source = str(ann_file) if ann_file is not None else "the training set"
        self.init_weights = init_weights
        self.resumed_from: str | None = None  # the checkpoint file a resume loaded

        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=float(schedule["lr"]),
            momentum=float(schedule.get("momentum", 0.9)),
            weight_decay=float(schedule.get("weight_decay", 1e-4)),
        )
        self.lr_factor = WarmupStepSchedule(
            step_unit,
            list(schedule.get("lr_steps", [])),
            float(schedule.get("gamma", 0.1)),
            int(schedule.get("warmup_iters", 0)),
            float(schedule.get("warmup_ratio", 0.001)),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        # loss scaling only for float16 (bfloat16 has float32's exponent range)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.start_batch = 0  # batches of epoch start_epoch already trained (a mid-epoch checkpoint)
        self._pending_rng: dict[str, Any] | None = None  # restored once the resumed epoch's loader exists
        self.iteration = 0
        self.train_seconds = 0.0  # wall time spent in training iterations, over all resumed runs
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int, batch_in_epoch: int = 0) -> dict[str, Any]:
        """The training state after ``epoch`` finished epochs and ``batch_in_epoch`` batches of the
        next one (tensors and plain containers only)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "iteration": self.iteration,
            "fingerprint": self.fingerprint,
            "history": self.history,
            "train_seconds": self.train_seconds,
        }

    def resume_if_possible(self) -> int:
        """Load the newest checkpoint when its fingerprint matches; return its epoch (0 if none):
        the finished epochs (a mid-epoch checkpoint also sets :attr:`start_batch`).

        A checkpoint of a different configuration is moved to ``previous/``, not deleted.
        """
        if self.dist.is_main:
            self.checkpoints.remove_stale_temporaries()
        record = self.checkpoints.latest()
        if record is None:
            return 0
        if record.get("fingerprint") != self.fingerprint:
            if self.dist.is_main:
                prev = self.checkpoints.set_aside(
                    f"configuration changed: checkpoint fingerprint {record.get('fingerprint')} "
                    f"!= run fingerprint {self.fingerprint}"
                )
                print(f"[train] configuration changed since the last checkpoint; moved it to {prev}", flush=True)
            distributed.barrier()
            return 0
        state = self.checkpoints.load(record, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.resumed_from = str(self.checkpoints.directory / record["file"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.start_batch = int(state.get("batch_in_epoch", 0))
        self.iteration = int(state["iteration"])
        expected = min(self.start_epoch * self.iters_per_epoch + self.start_batch, self.max_iters)
        if self.iteration != expected or self.start_batch >= self.iters_per_epoch:
            raise RuntimeError(
                f"{self.checkpoints.directory / record['file']}: iteration {self.iteration} does not match "
                f"epoch {self.start_epoch} + {self.start_batch} batches at {self.iters_per_epoch} batches per "
                f"epoch; move {self.checkpoints.directory} aside (or train with --no-resume) to start afresh")
        if self.start_batch:  # the RNGs stood there after the epoch's DataLoader iterator was made
            self._pending_rng = state["rng"]
        else:
            set_rng_state(state["rng"])
        self.history = list(state.get("history", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.dist.is_main:
            print(
                f"[train] resumed from {self.checkpoints.directory / record['file']} "
                f"(epoch {self.start_epoch}" + (f" + {self.start_batch} batches" if self.start_batch else "")
                + f", iteration {self.iteration})",
                flush=True,
            )
        return self.start_epoch

    # ------------------------------------------------------------------ loop
    def _loader(self, epoch: int, skip: int = 0) -> DataLoader:
        """The DataLoader of ``epoch`` (0-based), from its batch ``skip`` on."""
        self.dataset.set_epoch(epoch)
        self.batch_sampler.set_epoch(epoch)
        return DataLoader(
            self.dataset,
            batch_sampler=SkipBatches(self.batch_sampler, skip) if skip else self.batch_sampler,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _step(self, images, image_sizes, targets) -> dict[str, float]:
        if self.num_classes is not None:
            check_target_labels(targets, self.num_classes, self.data_source)
        images = images.to(self.device, non_blocking=True)
        targets = move_targets(targets, self.device)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype if self.amp else torch.float16,
                            enabled=self.amp):
            outputs = self.ddp_model(images, image_sizes, targets)
        losses = {k: v for k, v in outputs.items() if k.startswith("loss")}
        total = sum(v.float() for v in losses.values())
        if not torch.isfinite(total):
            values = {k: float(v) for k, v in outputs.items()}
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iteration}: {values}; the last "
                f"checkpoint in {self.checkpoints.directory} is intact"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=float(self.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        record = {k: float(v.detach()) for k, v in outputs.items()}
        record["loss"] = float(total.detach())
        return record

    def _save(self, epoch: int, batch_in_epoch: int = 0) -> str | None:
        """Checkpoint the state after ``epoch`` finished epochs and ``batch_in_epoch`` batches of
        the next (rank 0 writes, every rank waits). Metrics first, then the checkpoint: every
        step up to a checkpoint is in the store when the checkpoint exists (a resume skips the
        steps the store already has). Returns the file written (None on other ranks)."""
        path = None
        if self.dist.is_main:
            if self.tracker is not None:
                self.tracker.flush()
            run_id = getattr(self.tracker, "run_id", None)
            path = self.checkpoints.save(self.state_dict(epoch, batch_in_epoch), epoch, self.iteration,
                                         self.fingerprint, extra={"mlflow_run_id": run_id} if run_id else None,
                                         batch_in_epoch=batch_in_epoch)
        distributed.barrier()
        return None if path is None else str(path)

    def _stop_requested(self) -> bool:
        """Whether a preemption signal reached this process (its :class:`StopRequest`). Under DDP
        :meth:`train` sends the answer with the iteration's losses through their all-reduce, so
        every rank learns whether any rank was signalled and all stop after the same iteration,
        at no extra collective."""
        return self.stop_request is not None and self.stop_request.requested

    def train(self) -> TrainResult:
        resumed = self.resume_if_possible()
        if self.resumed_from is None and self.init_weights is not None:  # a fresh start, not a resume
            self.init_weights(self.model)
        start_time = time.time()
        segment_start = start_time
        is_main = self.dist.is_main
        bar = tqdm(
            total=self.max_iters,
            initial=self.iteration,
            desc="train",
            unit="it",
            disable=not is_main,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            file=sys.stderr,
        )
        last: dict[str, float] = {}
        stop = False
        self.ddp_model.train()
        for epoch in range(self.start_epoch, self.epochs):
            batch_in_epoch = self.start_batch if epoch == self.start_epoch else 0
            batches = iter(self._loader(epoch, batch_in_epoch))  # draws the workers' base seed
            if self._pending_rng is not None:  # a mid-epoch checkpoint's RNGs, saved at this point
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            for images, image_sizes, targets in batches:
                if self.stop_at_iteration is not None and self.iteration >= self.stop_at_iteration:
                    bar.close()
                    raise KeyboardInterrupt(f"stopped at iteration {self.iteration} (test hook)")
                lr = self.optimizer.param_groups[0]["lr"]
                record = self._step(images, image_sizes, targets)
                if self.dist.distributed:
                    # the stop flag rides on the losses' all-reduce: any rank signalled -> mean > 0
                    record["_stop"] = float(self._stop_requested())
                    record = distributed.all_reduce_mean(record, self.device)
                    stop = record.pop("_stop") > 0
                else:
                    stop = self._stop_requested()
                record["lr"] = lr
                self.iteration += 1
                batch_in_epoch += 1
                row = {"iteration": self.iteration, "epoch": epoch + 1, **record}
                self.history.append(row)
                if self.tracker is not None:
                    self.tracker.log_metrics({f"train/{k}": v for k, v in record.items()}, step=self.iteration)
                last = record
                bar.update(1)
                if self.iteration % self.log_interval == 0 or self.iteration == self.max_iters:
                    shown = {k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")}
                    shown["lr"] = f"{lr:.2e}"
                    bar.set_postfix(shown, refresh=False)
                    if is_main and not sys.stderr.isatty():
                        items = " ".join(f"{k}={v}" for k, v in shown.items())
                        print(f"[train] epoch {epoch + 1}/{self.epochs} iter {self.iteration}/{self.max_iters} {items}", flush=True)
                if self.iteration >= self.max_iters or batch_in_epoch >= self.iters_per_epoch:
                    break  # the epoch (or an iteration-based schedule) ends: the epoch checkpoint follows
                if stop:
                    break
                if self.checkpoint_every and self.iteration % self.checkpoint_every == 0:
                    now = time.time()
                    self.train_seconds += now - segment_start
                    segment_start = now
                    self._save(epoch, batch_in_epoch)
            now = time.time()
            self.train_seconds += now - segment_start
            segment_start = now
            stopped_mid_epoch = stop and batch_in_epoch < self.iters_per_epoch and self.iteration < self.max_iters
            saved = self._save(epoch, batch_in_epoch) if stopped_mid_epoch else self._save(epoch + 1)
            if stop and self.iteration < self.max_iters:  # a finished training just finishes
                bar.close()
                signal_name = self.stop_request.name if self.stop_request is not None else "a signal"
                if is_main:
                    print(f"[train] {signal_name}: stopped after iteration {self.iteration}/{self.max_iters}, "
                          f"checkpoint {saved}; run the same command again to resume "
                          f"(exit status {EXIT_PREEMPTED})", flush=True)
                raise Preempted(signal_name, self.iteration, saved)
        bar.close()
        elapsed = time.time() - start_time
        return TrainResult(
            iterations=self.iteration,
            epochs=self.epochs,
            final_losses={k: v for k, v in last.items() if k.startswith("loss")} or self._last_logged_losses(),
            seconds=elapsed,
            seconds_per_iter=self.train_seconds / max(self.iteration, 1),
            resumed_from_epoch=resumed,
            world_size=self.dist.world_size,
            device=str(self.device),
            history=self.history,
        )

    def _last_logged_losses(self) -> dict[str, float]:
        if not self.history:
            return {}
        return {k: v for k, v in self.history[-1].items() if k.startswith("loss")}


def write_history_csv(history: list[dict[str, float]], path: Path) -> None:
    """Write the per-iteration history (iteration, epoch, lr, losses) as CSV for ``dvc plots``."""
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


__all__ = [
    "EXIT_PREEMPTED",
    "LrScaling",
    "Preempted",
    "SkipBatches",
    "StopRequest",
    "Trainer",
    "TrainResult",
    "WarmupStepSchedule",
    "check_target_labels",
    "config_fingerprint",
    "lr_scaling",
    "resolve_device",
    "seed_everything",
    "write_history_csv",
    "write_json",
]
