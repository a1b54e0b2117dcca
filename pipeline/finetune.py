"""Fine-tuning: a run that starts from the weights of another run (``init_from``).

A params.yaml entry (under ``models`` or ``ablations``) may name a weights file beside its preset,
scale and overrides::

    models:
      faster_rcnn_shapes3:
        preset: faster_rcnn_r50_fpn_1x
        scale: cpu
        init_from: weights/faster_rcnn_coco.pth   # relative to the workspace root, or absolute

or, for an experiment, ``dvc exp run -S '+models.faster_rcnn_shapes3.init_from=weights/faster_rcnn_coco.pth'``.
The train stage depends on the param (``models.<name>``), not on the file: DVC does not track it,
so the run records the file's sha256 instead (the train stage's fingerprint, so that another file
starts the run afresh rather than resuming it; the MLflow params ``init_from`` and
``init_from_sha256``; the final weights' ``init_from``).

At the start of a fresh training, never on a resume (the checkpoint holds the weights), the model
built for this run's dataset is loaded from the file (:func:`apply_init_weights`):

* the file is read with the weights-only loader (:func:`pipeline.weights_io.safe_torch_load`):
  a final weights file ``weights/<run>.pth`` (its tensor digest is verified), an epoch checkpoint
  ``checkpoints/<run>/epoch_*.pth``, or a bare state dict;
* a file of another architecture (a key present in one state dict and absent in the other) or of
  another detector is refused with a :class:`~pipeline.errors.WeightsError` naming the first
  mismatching key in sorted order and both detectors;
* a tensor whose shape differs (the classifiers and class-specific regression layers of a
  checkpoint trained on another number of classes, e.g. COCO's 80) keeps the model's fresh
  initialisation and is listed; when the file records its number of classes, a shape that differs
  for any other reason (another width, another scale) is refused, naming the key;
* everything else loads, buffers (BatchNorm statistics) included.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from pipeline.errors import ConfigError, WeightsError
from pipeline.paths import REPO_ROOT, workspace_root
from pipeline.weights_io import DIGEST_KEY, safe_torch_load, verify_tensor_digest


@dataclass(frozen=True)
class InitSource:
    """The weights file a run starts from: ``setting`` as params.yaml writes it, ``path`` where
    it was found, ``sha256`` of its bytes (64 hex digits)."""

    setting: str
    path: Path
    sha256: str


@dataclass
class FinetuneReport:
    """What :func:`apply_init_weights` did: the keys loaded from the file and the keys that kept
    the fresh initialisation, each with (shape in the file, shape in the model)."""

    source: InitSource
    loaded: list[str] = field(default_factory=list)
    reinitialised: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def describe_reinitialised(self) -> list[str]:
        """``key [81x256 -> 4x256]`` per re-initialised key, in sorted order."""
        return [f"{k} [{_shape(old)} -> {_shape(new)}]" for k, (old, new) in sorted(self.reinitialised.items())]

    def log_line(self, run: str) -> str:
        """The console line of the train stage."""
        line = (f"[train] {run}: fine-tuning from {self.source.setting} (sha256 {self.source.sha256}): "
                f"loaded {len(self.loaded)} tensors, re-initialised {len(self.reinitialised)}")
        return line + (": " + ", ".join(self.describe_reinitialised()) if self.reinitialised else "")

    def record(self) -> dict[str, Any]:
        """What the MLflow run keeps as the artifact ``init_from.json``."""
        return {"init_from": self.source.setting, "path": str(self.source.path), "sha256": self.source.sha256,
                "loaded": len(self.loaded),
                "reinitialised": [{"key": k, "checkpoint_shape": list(old), "model_shape": list(new)}
                                  for k, (old, new) in sorted(self.reinitialised.items())]}


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes (64 hex digits), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_init_from(setting: str, where: str = "init_from", repo_root: Path = REPO_ROOT) -> InitSource:
    """The file of an ``init_from`` setting: an absolute path as is; a relative one under the
    repository root (in an experiment's copy, ``dvc exp run --temp``, under the copy first, then
    under the workspace it was copied from, :func:`pipeline.paths.workspace_root`).

    Raises:
        ConfigError: no such file; the message names ``where`` (``params.yaml: models.m.init_from``)
            and every place looked at.
    """
    given = Path(setting).expanduser()
    candidates = [given] if given.is_absolute() else list(dict.fromkeys(
        [Path(repo_root) / given, workspace_root(Path(repo_root)) / given]))
    for path in candidates:
        if path.is_file():
            return InitSource(str(setting), path, sha256_of(path))
    looked = ", ".join(str(p) for p in candidates)
    raise ConfigError(f"{where} = {setting!r}: no such weights file (looked at {looked}); give the path of a "
                      f"weights file (weights/<run>.pth, relative to the workspace root, or absolute): "
                      f"`dvc pull` or train the run that writes it first, or set it to null")


def read_init_state(source: InitSource) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of ``source`` and what the file says about it (``detector``, ``num_classes``
    when it is a final weights file, else empty).

    Raises:
        WeightsError: unreadable or unsafe (:func:`pipeline.weights_io.safe_torch_load`), a final
            weights file whose tensors do not match their digest, or no state dict in it.
    """
    remedy = ("it is the init_from of this run: give another file, or set init_from to null to train "
              "from the model's own initialisation")
    obj = safe_torch_load(source.path, remedy)
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        if DIGEST_KEY in obj:  # a final weights file: verify its tensors
            verify_tensor_digest(source.path, obj, remedy)
        state = dict(obj["model"])
        for key in ("detector", "num_classes"):
            if key in obj:
                meta[key] = obj[key]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = dict(obj)  # a bare state dict
    else:
        raise WeightsError(f"{source.path}: neither a weights file of the train stage, a checkpoint nor a state "
                           f"dict (no 'model' state dict of tensors in it); {remedy}")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise WeightsError(f"{source.path}: state dict entry {bad!r} is not a tensor; {remedy}")
    return state, meta


def first_key_mismatch(model_keys: set[str], file_keys: set[str]) -> str | None:
    """The first key, in sorted order, present in one state dict and absent in the other, said
    where it is; None when both have the same keys."""
    diff = sorted(model_keys ^ file_keys)
    if not diff:
        return None
    first = diff[0]
    where = ("in the model but not in the checkpoint" if first in model_keys
             else "in the checkpoint but not in the model")
    missing, extra = len(model_keys - file_keys), len(file_keys - model_keys)
    return (f"first mismatching key '{first}' is {where} ({missing} keys only in the model, "
            f"{extra} only in the checkpoint)")


def class_dependent_keys(detector: str, model_cfg: dict[str, Any], num_classes_a: int,
                         num_classes_b: int) -> set[str]:
    """The keys whose shape differs between the model ``detector`` / ``model_cfg`` built for
    ``num_classes_a`` and for ``num_classes_b`` classes: its class-specific layers (classifiers,
    class-specific box regression, per-class mask heads). Built on the meta device (no memory,
    no initialisation cost), on the CPU where a constructor does not allow that; the global RNG
    state is restored after."""
    from models.build import build_model

    def shapes(n: int) -> dict[str, tuple[int, ...]]:
        with torch.random.fork_rng(devices=[]):  # the training's RNG stream is left as it was
            try:
                with torch.device("meta"):
                    model = build_model(detector, model_cfg, n, load_pretrained=False)
            except Exception:  # noqa: BLE001 - a constructor that needs real tensors
                model = build_model(detector, model_cfg, n, load_pretrained=False)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    a, b = shapes(int(num_classes_a)), shapes(int(num_classes_b))
    return {k for k in a.keys() & b.keys() if a[k] != b[k]}


def apply_init_weights(model: torch.nn.Module, source: InitSource, detector: str, model_cfg: dict[str, Any],
                       num_classes: int) -> FinetuneReport:
    """Load ``source`` into ``model`` (the ``detector`` built from ``model_cfg`` for
    ``num_classes`` classes), keeping the fresh initialisation of every tensor whose shape differs.

    Raises:
        WeightsError: the file is unreadable (:func:`read_init_state`); names another detector;
            its keys are not the model's (the first mismatching key in sorted order named); or,
            when it records its number of classes, a tensor's shape differs although it does not
            depend on the number of classes.
    """
    state, meta = read_init_state(source)
    own = model.state_dict()
    other = meta.get("detector")
    mismatch = first_key_mismatch(set(own), set(state))
    if mismatch is not None or (other is not None and other != detector):
        if other is None:
            detectors = f"the checkpoint names no detector, this run is a {detector} model"
        elif other != detector:
            detectors = f"the checkpoint is a {other} model, this run a {detector} model"
        else:
            detectors = f"both are {detector} models"
        raise WeightsError(f"{source.path}: cannot fine-tune from a checkpoint of another architecture "
                           f"({detectors}; {mismatch or 'the state dicts have the same keys'}); init_from must "
                           f"name weights of this run's detector and configuration")
    differ = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
              if tuple(state[k].shape) != tuple(v.shape)}
    file_classes = meta.get("num_classes")
    if differ and isinstance(file_classes, int) and not isinstance(file_classes, bool):
        expected = class_dependent_keys(detector, model_cfg, file_classes, num_classes)
        unexplained = sorted(set(differ) - expected)
        if unexplained:
            k = unexplained[0]
            raise WeightsError(
                f"{source.path}: cannot fine-tune from a checkpoint of another configuration: key '{k}' has shape "
                f"{list(differ[k][0])} in the checkpoint, {list(differ[k][1])} in the model, which the number of "
                f"classes ({file_classes} there, {num_classes} here) does not explain ({len(unexplained)} such "
                f"keys); the model configuration (scale, widths, overrides) must be the checkpoint's")
    merged = {k: (v if k in differ else state[k]) for k, v in own.items()}
    model.load_state_dict(merged)
    return FinetuneReport(source, sorted(k for k in own if k not in differ), differ)
