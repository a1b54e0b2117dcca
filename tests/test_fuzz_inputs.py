"""Fuzzing bad input (issue 19): every input is accepted, or refused with the project's
:class:`DataError` / :class:`ConfigError` naming the file (and the record, where there is one).
Never another exception, never a hang (each example runs under the profile's deadline, and
inputs are kept small), never a partial output file.

Targets:

* the COCO annotation loader (:class:`CocoDetectionDataset`: validation, targets, masks) on
  mutated and truncated JSON: wrong types, out-of-range and enormous numbers, NaN, unicode,
  deep nesting, integer literals beyond Python's digit limit;
* the manifest reader (:func:`load_manifest`) on the same kinds of mutation;
* params.yaml: :func:`load_params` on mutated YAML bytes and :func:`resolve_model_config` on
  entries with unknown keys, wrong types and missing or unknown presets;
* image decoding in prepare (:func:`check_coco_tree`), training (the dataset's
  ``__getitem__``) and predict (:func:`pipeline.predict.read_rgb`): truncated, zero-byte,
  bit-flipped, huge-dimension (declared in the header only; nothing huge is allocated),
  16-bit, CMYK, palette (with transparency), 1-bit, gray+alpha images.

The number of examples comes from the hypothesis profile (tests/conftest.py): ``ci`` by
default, ``HYPOTHESIS_PROFILE=long`` for the long run recorded in tests/README.md.
"""
from __future__ import annotations

import copy
import io
import json
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, note
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from models.presets import PRESETS
from pipeline.config import load_params, resolve_model_config
from pipeline.data.coco_source import check_coco_tree
from pipeline.data.dataset import CocoDetectionDataset
from pipeline.data.images import MAX_IMAGE_PIXELS, read_image_size
from pipeline.data.manifest import SPLIT_NAMES, load_manifest
from pipeline.errors import ConfigError, DataError
from tests.data_fixtures import build_coco_tree

pytestmark = pytest.mark.timeout(900)

#: The longest message an error may have: enormous values in a file must not make enormous messages.
MAX_MESSAGE = 2000

# --------------------------------------------------------------------------- JSON values and mutations

HUGE_INTS = st.sampled_from([2**31, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400, -(10**400)])
RLE_TEXT = st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=111), max_size=12)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=-2, max_value=20),
    HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    RLE_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8,
)
#: Byte strings spliced into a serialized file: NUL, invalid UTF-8, a BOM, an integer literal
#: beyond Python's 4300-digit limit, 50000 opening brackets, non-standard numbers, emoji, a lone
#: surrogate escape, a float literal that overflows.
NASTY_BYTES = [
    b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"1" * 5000, b"[" * 50000, b"{", b"NaN", b"-Infinity",
    "\u00e9\u4e2d".encode(), "\U0001f600".encode(), b'"\\ud800"', b"1e999", b"\n", b"&a [*a]",
]


def _slots(node: Any, out: list[tuple[Any, Any]]) -> None:
    """Every (container, key) of a JSON document, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((node, k))
            _slots(v, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((node, i))
            _slots(v, out)


def mutate(doc: Any, data: st.DataObject, values: st.SearchStrategy = JSON_VALUES) -> Any:
    """``doc`` with one place replaced, deleted or added (a drawn JSON value)."""
    doc = copy.deepcopy(doc)
    slots: list[tuple[Any, Any]] = []
    _slots(doc, slots)
    if not slots:
        return data.draw(values)
    container, key = data.draw(st.sampled_from(slots))
    op = data.draw(st.sampled_from(("replace", "replace", "delete", "add")))
    if op == "replace":
        container[key] = data.draw(values)
    elif op == "delete":
        del container[key]
    elif isinstance(container, dict):
        container[data.draw(st.text(max_size=8))] = data.draw(values)
    else:
        container.insert(key, data.draw(values))
    return doc


def mutate_bytes(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` unchanged, truncated, emptied, spliced with a nasty byte string, or with a byte flipped."""
    op = data.draw(st.sampled_from(("none", "none", "truncate", "empty", "splice", "flip")))
    note(f"byte mutation: {op}")
    if op == "truncate":
        return raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))]
    if op == "empty":
        return b""
    if op == "splice":
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.sampled_from(NASTY_BYTES)) + raw[at:]
    if op == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    return raw


def mutated_json_bytes(doc: Any, data: st.DataObject, max_mutations: int = 3) -> bytes:
    """A document with up to ``max_mutations`` value mutations, serialized, then a byte mutation."""
    for _ in range(data.draw(st.integers(0, max_mutations))):
        doc = mutate(doc, data)
    return mutate_bytes(json.dumps(doc, allow_nan=True).encode(), data)


def refused_or_none(fn: Callable[[], Any], errors: tuple[type[Exception], ...], must_name: list[str]) -> Any:
    """``fn()``'s result, or None when it raised one of ``errors`` whose message names one of
    ``must_name`` (the file, or the files that may be at fault) and is of bounded length. Any
    other exception propagates and fails the example."""
    try:
        return fn()
    except errors as e:
        msg = str(e)
        assert any(name in msg for name in must_name), f"the error does not name {must_name}: {msg}"
        assert len(msg) <= MAX_MESSAGE, f"message of {len(msg)} characters"
        return None


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder with ``img/a.png``: the 8 x 6 RGB image the fuzzed annotation files list."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "img").mkdir()
    Image.fromarray(np.arange(8 * 6 * 3, dtype=np.uint8).reshape(6, 8, 3)).save(d / "img" / "a.png")
    return d


# --------------------------------------------------------------------------- the COCO annotation loader

IMG_W, IMG_H = 8, 6


def _compressed_rle(seed: int) -> dict[str, Any]:
    mask = np.asfortranarray((np.random.default_rng(seed).random((IMG_H, IMG_W)) > 0.5).astype(np.uint8))
    rle = mask_utils.encode(mask)
    return {"size": [IMG_H, IMG_W], "counts": rle["counts"].decode()}


@st.composite
def coco_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid, tiny COCO annotation document whose images are all ``img/a.png`` (8 x 6)."""
    n_images = draw(st.integers(1, 3))
    images = [{"id": i + 1, "file_name": "a.png", "width": IMG_W, "height": IMG_H} for i in range(n_images)]
    cat_ids = draw(st.lists(st.integers(1, 90), min_size=1, max_size=3, unique=True))
    categories = [{"id": c, "name": f"cat{c}", "supercategory": "thing"} for c in cat_ids]
    annotations = []
    coord = st.floats(-3, 12, allow_nan=False)
    for k in range(draw(st.integers(0, 4))):
        x, y, w, h = draw(coord), draw(coord), draw(coord), draw(coord)
        kind = draw(st.sampled_from(("polygon", "rle", "compressed")))
        if kind == "polygon":
            seg: Any = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        elif kind == "rle":
            seg = {"size": [IMG_H, IMG_W], "counts": [IMG_H * IMG_W]}
        else:
            seg = _compressed_rle(draw(st.integers(0, 3)))
        annotations.append({
            "id": k + 1, "image_id": draw(st.sampled_from([im["id"] for im in images])),
            "category_id": draw(st.sampled_from(cat_ids)), "bbox": [x, y, w, h], "area": abs(w * h),
            "iscrowd": draw(st.sampled_from((0, 0, 1))), "segmentation": seg,
        })
    return {"info": {"description": "fuzz"}, "images": images, "annotations": annotations, "categories": categories}


@given(st.data())
def test_coco_annotation_loader(fuzz_dir: Path, data: st.DataObject) -> None:
    """Building a dataset (validation, targets) and reading every sample (image, masks) from a
    mutated annotation file succeeds or raises DataError naming the annotation file or image."""
    ann = fuzz_dir / "instances_fuzz.json"
    ann.write_bytes(mutated_json_bytes(data.draw(coco_documents()), data))
    names = [str(ann), str(fuzz_dir / "img")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate boxes are skipped with a warning
        ds = refused_or_none(lambda: CocoDetectionDataset(ann, fuzz_dir / "img", with_masks=True), (DataError,), names)
        if ds is None:
            return
        assert all(r > 0 for r in ds.aspect_ratios())
        for i in range(len(ds)):
            sample = refused_or_none(lambda: ds[i], (DataError,), names)
            if sample is not None:
                image, target = sample
                assert image.shape[0] == 3 and target["boxes"].shape[-1] == 4


# --------------------------------------------------------------------------- the manifest reader

VALID_MANIFEST: dict[str, Any] = {
    "version": 1,
    "source": "synthetic",
    "name": "synthetic",
    "splits": {
        name: {"ann_file": f"synthetic/annotations/{name}.json", "img_dir": "synthetic/img", "has_annotations": True}
        for name in SPLIT_NAMES
    },
    "summary": {"train": {"images": 3, "instances": 4}},
}


@given(st.data())
def test_manifest_reader(fuzz_dir: Path, data: st.DataObject) -> None:
    """A mutated manifest loads into well-typed splits or raises DataError naming the file."""
    path = fuzz_dir / "manifest.json"
    path.write_bytes(mutated_json_bytes(VALID_MANIFEST, data))
    manifest = refused_or_none(lambda: load_manifest(path), (DataError,), [str(path)])
    if manifest is None:
        return
    assert isinstance(manifest.source, str) and isinstance(manifest.summary, dict)
    assert isinstance(manifest.name, str) and (manifest.name or manifest.source == "")
    for name, split in manifest.splits.items():
        assert name in SPLIT_NAMES and isinstance(split.has_annotations, bool)
        assert isinstance(split.ann_file, Path) and isinstance(split.img_dir, Path)
        assert manifest.split(name) is split


# --------------------------------------------------------------------------- params.yaml and overrides

PRESET_NAMES = sorted(PRESETS)


def _leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a nested configuration mapping (inner and leaf keys)."""
    out: list[tuple[str, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _leaf_paths(v, (*prefix, k))
    return out


def _set_path(root: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = root
    for k in path[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[path[-1]] = value


@st.composite
def params_documents(draw: st.DrawFn) -> dict[str, Any]:
    """params with one entry ``m`` under models or ablations: a preset (sometimes unknown or
    missing), a scale, and overrides setting preset keys (to their own kind of value or any
    JSON value) and unknown keys."""
    preset = draw(st.sampled_from([*PRESET_NAMES, "no_such_preset", None]))
    entry: dict[str, Any] = {"scale": draw(st.sampled_from(("cpu", "cpu", "paper", "gpu")))}
    if preset is not None:
        entry["preset"] = preset
    overrides: dict[str, Any] = {}
    base = PRESETS[preset]["scales"]["cpu"] if preset in PRESETS else PRESETS[PRESET_NAMES[0]]["scales"]["cpu"]
    paths = _leaf_paths(base) + [("schedule", "max_iters"), ("schedule", "sync_bn"), ("schedule", "epochz"),
                                 ("model", "no_such_head"), ("nonsense",)]
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(paths))
        same_kind = st.sampled_from([1, 0.5, True, "x", [1, 2], {"k": 1}, None])
        _set_path(overrides, path, draw(st.one_of(JSON_VALUES, same_kind)))
    entry["overrides"] = overrides
    section = draw(st.sampled_from(("models", "ablations")))
    return {"seed": 0, "ablation_seeds": [0, 1], "models": {}, "ablations": {}, section: {"m": entry}}


@given(st.data())
def test_params_override_resolution(fuzz_dir: Path, data: st.DataObject) -> None:
    """Resolving an entry with fuzzed preset, scale and overrides (and a mutated params
    document) returns a configuration holding the overrides, or raises ConfigError naming
    params.yaml and the entry."""
    params = data.draw(params_documents())
    for _ in range(data.draw(st.integers(0, 2))):
        params = mutate(params, data)
    if not isinstance(params, dict):
        params = {"models": params}
    name = data.draw(st.sampled_from(("m", "m_seed1", "absent")))
    note(f"params: {params!r:.2000}")
    cfg = refused_or_none(lambda: resolve_model_config(params, name), (ConfigError,), ["params.yaml"])
    if cfg is None:
        return
    assert {"model", "data", "schedule", "preset", "scale", "detector"} <= set(cfg)
    assert isinstance(cfg["model"], dict) and isinstance(cfg["data"], dict) and isinstance(cfg["schedule"], dict)


@given(st.data())
def test_params_yaml_file(fuzz_dir: Path, data: st.DataObject) -> None:
    """A mutated params.yaml (text and bytes) loads, or raises ConfigError naming the file; what
    loads resolves every entry or raises ConfigError."""
    params = data.draw(params_documents())
    for _ in range(data.draw(st.integers(0, 2))):
        params = mutate(params, data)
    path = fuzz_dir / "params.yaml"
    path.write_bytes(mutate_bytes(yaml.safe_dump(params, allow_unicode=True).encode(), data))
    loaded = refused_or_none(lambda: load_params(path), (ConfigError,), [str(path)])
    if loaded is None:
        return
    for name in ("m", "m_seed0"):
        refused_or_none(lambda: resolve_model_config(loaded, name), (ConfigError,), ["params.yaml"])


# --------------------------------------------------------------------------- image decoding

MODES = ("RGB", "L", "RGBA", "P", "P+transparency", "I;16", "CMYK", "1", "LA")


def _png_with_size(raw: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (CRC fixed), pixel data unchanged."""
    assert raw[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + raw[24:29]
    return raw[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + raw[33:]


def _jpeg_with_size(raw: bytes, width: int, height: int) -> bytes:
    """A JPEG whose start-of-frame marker declares ``width`` x ``height``."""
    at = raw.find(b"\xff\xc0")
    assert at > 0
    return raw[: at + 5] + struct.pack(">HH", height, width) + raw[at + 9 :]


@st.composite
def image_files(draw: st.DrawFn) -> tuple[bytes, int, int, str, str]:
    """``(bytes, width, height, mode, mutation)``: a small image in one of :data:`MODES`, saved as
    PNG or JPEG, then left intact or truncated, emptied, bit-flipped, extended, or given a
    header that declares more than MAX_IMAGE_PIXELS pixels."""
    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    info: dict[str, Any] = {}
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "P+transparency":
        im = rgb.convert("P")
        info["transparency"] = 0
    else:
        im = rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG" if mode in ("I;16", "P+transparency", "RGBA", "LA", "P", "1") \
        else draw(st.sampled_from(("JPEG", "PNG")))
    buf = io.BytesIO()
    im.save(buf, format=fmt, **info)
    raw = buf.getvalue()
    mutation = draw(st.sampled_from(("none", "none", "truncate", "empty", "flip", "trailing", "huge")))
    if mutation == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif mutation == "empty":
        raw = b""
    elif mutation == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif mutation == "trailing":
        raw = raw + draw(st.binary(min_size=1, max_size=64))
    elif mutation == "huge":
        limit = 65535 if fmt == "JPEG" else 2**31 - 1
        hh = draw(st.integers(MAX_IMAGE_PIXELS // limit + 1, limit))
        ww = draw(st.integers(MAX_IMAGE_PIXELS // hh + 1, limit))
        raw = _jpeg_with_size(raw, ww, hh) if fmt == "JPEG" else _png_with_size(raw, ww, hh)
    note(f"{mode} {fmt} {w}x{h}, mutation {mutation}, {len(raw)} bytes")
    return raw, w, h, mode, mutation


def _check_decoded(image: np.ndarray | None, w: int, h: int, mutation: str) -> None:
    """An intact image always decodes; what decodes is uint8 [h, w, 3]."""
    if mutation == "none":
        assert image is not None, "an intact image was refused"
    if image is not None and mutation != "huge":
        assert image.dtype == np.uint8 and image.shape == (h, w, 3)


@given(image_files())
def test_image_decoding_in_predict(fuzz_dir: Path, case: tuple[bytes, int, int, str, str]) -> None:
    """predict's reader (and the shared decoder) decode an image or raise DataError naming it."""
    from pipeline.predict import read_rgb

    raw, w, h, mode, mutation = case
    path = fuzz_dir / "predict_input.png"
    path.write_bytes(raw)
    image = refused_or_none(lambda: read_rgb(path), (DataError,), [str(path)])
    if image is not None and mutation == "flip":
        # No annotation constrains predict's input: a flipped header byte may declare another
        # size, and then the picture must have the size its header declares.
        w, h = read_image_size(path)
    _check_decoded(image, w, h, mutation)
    if image is not None and mode == "I;16" and mutation == "none":
        with Image.open(path) as im:
            assert np.array_equal(image[:, :, 0], (np.asarray(im).astype(np.int64) >> 8).astype(np.uint8))


@given(image_files())
def test_image_decoding_in_training(fuzz_dir: Path, case: tuple[bytes, int, int, str, str]) -> None:
    """The dataset's ``__getitem__`` decodes the listed image or raises DataError naming the
    image file and its image id."""
    raw, w, h, _, mutation = case
    d = fuzz_dir / "train_images"
    d.mkdir(exist_ok=True)
    (d / "x.img").write_bytes(raw)
    ann = fuzz_dir / "train_ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "x.img", "width": w, "height": h}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, w, h], "area": w * h,
                         "iscrowd": 0, "segmentation": [[0, 0, w, 0, w, h, 0, h]]}],
        "categories": [{"id": 1, "name": "thing"}],
    }))
    ds = CocoDetectionDataset(ann, d, with_masks=True)
    try:
        sample = ds[0]
    except DataError as e:
        assert str(d / "x.img") in str(e) and "image id 7" in str(e), str(e)
        sample = None
    _check_decoded(None if sample is None else ds.load_image(0), w, h, mutation)


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of a tiny COCO tree (coco_mini) to break images in."""
    return build_coco_tree(tmp_path_factory.mktemp("coco_fuzz") / "coco")


@given(image_files())
def test_image_decoding_in_prepare(coco_tree: Path, case: tuple[bytes, int, int, str, str]) -> None:
    """prepare's check of a COCO tree reads the header of the first listed image: accepted, or
    a DataError naming the image file (and the image id)."""
    root = coco_tree
    raw, w, h, _, mutation = case
    ann = root / "annotations" / "instances_train2017.json"
    doc = json.loads(ann.read_text())
    doc["images"][0].update(width=w, height=h)
    ann.write_text(json.dumps(doc))
    image = root / "train2017" / doc["images"][0]["file_name"]
    image.write_bytes(raw)
    try:
        check_coco_tree(root)
        accepted = True
    except DataError as e:
        assert str(image) in str(e) and f"image id {doc['images'][0]['id']}" in str(e), str(e)
        accepted = False
    if mutation == "none":
        assert accepted


# --------------------------------------------------------------------------- predict: no partial output

class _NoDetections(torch.nn.Module):
    """A detector that finds nothing (and, from its ``fail_at``-th call on, raises)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, images: torch.Tensor, image_sizes: Any, targets: Any) -> list[dict[str, torch.Tensor]]:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("the detector broke down")
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                for _ in range(images.shape[0])]


_PREDICT_STATE = {"config": {"data": {"test_scale": [64, 48]}}, "cat_ids": [1], "categories": [{"id": 1, "name": "a"}]}


def _predict_folder(tmp_path: Path) -> Path:
    """``in/a.png`` (intact) and ``in/b.png`` (header intact, pixels cut)."""
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(source / "a.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(buf, format="PNG")
    (source / "b.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return source


def test_predict_skips_an_image_that_fails_halfway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image whose header reads but whose pixels are truncated fails in the middle of the
    run: it is skipped, the other image's outputs are written, and UnreadableImages (a DataError
    naming it) is raised at the end; the repaired folder then goes through."""
    import pipeline.predict as predict

    monkeypatch.setattr(predict, "load_checkpoint", lambda checkpoint, device: (_NoDetections(), _PREDICT_STATE))
    source = _predict_folder(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(predict.UnreadableImages, match="b.png") as e:
        predict.run_predict(tmp_path / "weights.pth", source, out, device="cpu", batch_size=1)
    assert isinstance(e.value, DataError) and len(str(e.value)) <= MAX_MESSAGE
    assert [p.name for p, _ in e.value.failures] == ["b.png"] and e.value.records == []
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "predictions.json"]
    shutil.copy(source / "a.png", source / "b.png")  # the same folder, repaired, goes through
    records = predict.run_predict(tmp_path / "weights.pth", source, out, device="cpu", batch_size=1)
    assert records == [] and sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "predictions.json"]


def test_predict_writes_nothing_when_the_run_stops_halfway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that stops half-way (here the detector raises on its second batch, after the first
    picture was staged) leaves no picture and no predictions.json in the output folder."""
    import pipeline.predict as predict

    monkeypatch.setattr(predict, "load_checkpoint",
                        lambda checkpoint, device: (_NoDetections(fail_at=2), _PREDICT_STATE))
    source = _predict_folder(tmp_path)
    shutil.copy(source / "a.png", source / "b.png")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="broke down"):
        predict.run_predict(tmp_path / "weights.pth", source, out, device="cpu", batch_size=1)
    assert not out.exists() or list(out.iterdir()) == []


# --------------------------------------------------------------------------- what the long profile found
# Each input below made a long-profile run fail before its fix; kept here so CI tries it every time.

@pytest.mark.parametrize("file_name", ["1" * 300 + "a.png", "\ud800.png", "sub/" + "x" * 256])
def test_an_unusable_file_name_is_refused_at_load(fuzz_dir: Path, file_name: str) -> None:
    """A ``file_name`` the file system cannot look up (a part over 255 bytes: ENAMETOOLONG from
    ``stat``; a lone surrogate: not encodable) is a DataError naming the file and the image id."""
    ann = fuzz_dir / "instances_badname.json"
    ann.write_text(json.dumps({
        "images": [{"id": 5, "file_name": file_name, "width": IMG_W, "height": IMG_H}],
        "annotations": [], "categories": [{"id": 1, "name": "thing"}],
    }))
    with pytest.raises(DataError, match="image id 5") as e:
        CocoDetectionDataset(ann, fuzz_dir / "img")
    assert str(ann) in str(e.value) and len(str(e.value)) <= MAX_MESSAGE


@pytest.mark.parametrize("text", ['seed: "\\U7fffffff"\n', 'seed: "\\Uffffffff"\n', "seed: " + "1" * 5001 + "\n"])
def test_yaml_beyond_pythons_limits_is_a_config_error(tmp_path: Path, text: str) -> None:
    """A ``\\U`` escape beyond U+10FFFF (ValueError) or beyond a C int (OverflowError, found by
    the second long run) and an integer of 5001 digits (ValueError) make PyYAML raise;
    load_params turns each into a ConfigError naming the file."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_params(path)
    assert str(path) in str(e.value) and len(str(e.value)) <= MAX_MESSAGE
