"""Loading weights without running code, and the tensor digest of a final weights file.

Every ``.pth`` the project reads (final weights ``weights/<run>.pth``, epoch checkpoints
``checkpoints/<run>/epoch_*.pth``, the copy logged to MLflow, pretrained backbone weights) is
read by :func:`safe_torch_load`: ``torch.load(..., weights_only=True)``, whose unpickler only
rebuilds tensors and plain containers (dict, list, tuple, str, int, float, bool, None) and
refuses every other global a pickle names. A file that names one (a pickled module, a NumPy
array, an object whose ``__reduce__`` calls a function) is refused with a
:class:`~pipeline.errors.WeightsError` before any of it runs; so is a file whose zip or pickle
is broken. No type is added to torch's safe globals.

The tensor digest (:func:`tensor_digest`) is the sha256 of a state dict's tensors, written into
the final weights file at save time (``"tensor_sha256"``) and checked on every load by evaluate
and predict (:func:`verify_tensor_digest`): a flipped byte in a tensor, or two tensors swapped,
changes it. The zip container's own CRCs are not checked by torch on load, so this is the only
guard against a tensor changed on disk or in transit.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import WeightsError

#: the key of a final weights file that holds :func:`tensor_digest` of its ``"model"`` state dict
DIGEST_KEY = "tensor_sha256"

#: what torch's weights-only unpickler says when a pickle names a global it does not allow
_UNSAFE_MARKERS = ("Unsupported global", "Unsupported class", "unsupported global")


def safe_torch_load(path: Path | str, remedy: str, map_location: str | torch.device = "cpu",
                    what: str = "weights") -> Any:
    """``torch.load(path, weights_only=True)``, with every failure as a WeightsError naming ``path``.

    Args:
        path: the file to read.
        remedy: what the user should do to get a good copy, appended to every error message
            (e.g. ``"run `dvc pull weights/x.pth` ..."``).
        map_location: where the tensors go.
        what: what the file is, for the messages (``"weights"``, ``"checkpoint"``).

    Raises:
        WeightsError: the file is missing; it holds objects other than tensors and plain
            containers (not loaded, for safety: unpickling them could run code); or its zip or
            pickle is broken (a truncated or corrupt file).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: {what} file not found; {remedy}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unsupported_detail(str(e))
        if detail is not None:
            raise WeightsError(
                f"{path}: holds objects other than tensors and plain containers ({detail}); it is not loaded, "
                f"for safety: unpickling them could run code the file carries; {remedy}") from None
        raise WeightsError(f"{path}: cannot read the {what} (broken pickle: {_unpickler_reason(str(e))}); "
                           f"the file is corrupt or incomplete; {remedy}") from None
    except Exception as e:  # zip, EOF and storage errors of a truncated or corrupt file
        raise WeightsError(f"{path}: cannot read the {what} ({type(e).__name__}: {_first_sentence(str(e))}); "
                           f"the file is corrupt or incomplete; {remedy}") from None


def _first_sentence(message: str) -> str:
    """The first sentence of an error message (torch appends paragraphs of advice)."""
    text = " ".join(message.split())
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def _unpickler_reason(message: str) -> str:
    """What torch's weights-only unpickler reports after ``WeightsUnpickler error:`` (e.g.
    ``Unsupported operand 127``), without the advice around it (which suggests loading the file
    with weights-only off: exactly what must not be done)."""
    text = " ".join(message.split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].split(" Check the documentation", 1)[0].strip()
        if reason:
            return reason
    return _first_sentence(text)


def _unsupported_detail(message: str) -> str | None:
    """What torch's weights-only unpickler refused (``it names the global pathlib.Path.touch``), or
    None when the error is not about a disallowed global (a broken pickle instead). Torch's advice
    to allow-list the global is left out: a file of ours never needs it."""
    m = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.<>]+)", message)
    if m is not None:
        return f"it names the global {m.group(1)}"
    if any(marker in message for marker in _UNSAFE_MARKERS):
        return "it names a global torch does not allow"
    return None


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of ``t`` (CPU, contiguous, native byte order), without a copy where possible."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The sha256 (64 hex digits) of a state dict's tensors: their names, dtypes, shapes and bytes.

    For each key in sorted order the hash is fed one header line, the JSON list
    ``[key, dtype, shape, nbytes]`` (e.g. ``["backbone.conv1.weight", "torch.float32",
    [64, 3, 7, 7], 37632]``) followed by ``"\\n"``, then the tensor's ``nbytes`` raw bytes (CPU,
    contiguous, row-major, the machine's byte order: little-endian on every platform torch
    supports). The same tensors give the same digest whatever the dict's order or device;
    a changed byte, dtype or shape, or two tensors swapped, give another.

    Raises:
        TypeError: a value is not a tensor.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(t).__name__}, not a tensor")
        nbytes = t.numel() * t.element_size()
        header = json.dumps([str(key), str(t.dtype), list(t.shape), nbytes], separators=(",", ":"))
        h.update(header.encode("utf-8") + b"\n")
        if nbytes:
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def verify_tensor_digest(path: Path | str, state: Mapping[str, Any], remedy: str) -> None:
    """Check ``state[DIGEST_KEY]`` (written at save time) against the digest of ``state["model"]``.

    Raises:
        WeightsError: naming ``path``, when the file carries no digest, or when it differs from
            the tensors' (with the expected and the actual digest and ``remedy``).
    """
    expected = state.get(DIGEST_KEY)
    if not isinstance(expected, str):
        raise WeightsError(f"{path}: carries no tensor digest ('{DIGEST_KEY}'; written before digests were "
                           f"added, or not by the train stage), so its tensors cannot be verified; {remedy}")
    try:
        actual = tensor_digest(state["model"])
    except TypeError as e:
        raise WeightsError(f"{path}: the model state is not all tensors ({e}); {remedy}") from None
    if actual != expected:
        raise WeightsError(f"{path}: the tensors do not match the digest written when the file was saved "
                           f"(expected tensor_sha256 {expected}, got {actual}): the file was changed or "
                           f"damaged after training; {remedy}")
