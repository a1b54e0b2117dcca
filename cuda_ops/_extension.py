"""Just-in-time build and lazy loading of the CUDA extensions of ``cuda_ops``.

Three extensions, each with a loader and a build function:

- ``deform_roi_pool`` (``csrc/deform_roi_pool{.cpp,_cuda.cu}``): ``load_deform_roi_pool_ext``
  / ``build_deform_roi_pool_ext``;
- ``corner_pool`` (``csrc/corner_pool{.cpp,_cuda.cu}``): ``load_corner_pool_ext`` /
  ``build_corner_pool_ext``;
- ``chamfer_2d`` (``csrc/chamfer_2d{.cpp,_cuda.cu}``): ``load_chamfer_2d_ext`` /
  ``build_chamfer_2d_ext``.

A loader compiles its extension with ``torch.utils.cpp_extension.load`` (ninja + nvcc) the
first time it is called in a process and returns the module, or ``None`` when the kernels
cannot be used here; ``None`` means the caller runs the PyTorch reference. The outcome
(module or ``None``) is remembered per extension for the process, and the reason for a
``None`` is logged once as a warning:

- ``DETLAB_DISABLE_CUDA_OPS`` set to anything but ``""``/``0``/``false``/``no`` (checked on
  every call, never remembered, logged at INFO): the reference is forced;
- ``torch.cuda.is_available()`` is false, or torch is not a CUDA build;
- no CUDA toolkit (``nvcc``) or no ``ninja`` is found;
- the compilation or the import fails.

Builds go to ``$DETLAB_CUDA_CACHE`` (default ``$XDG_CACHE_HOME/detlab/cuda_ops`` or
``~/.cache/detlab/cuda_ops``) under ``torch-<version>/<archs>/<op>`` (``<op>`` is
``deform_roi_pool``, ``corner_pool`` or ``chamfer_2d``), so a torch upgrade or another GPU
architecture builds afresh, and a second process (or a ``python -m cuda_ops.build`` run
beforehand) only loads the cached library. The architectures are ``$TORCH_CUDA_ARCH_LIST``
when set, else those of the visible GPUs, else :data:`DEFAULT_ARCH_LIST` (H100/H200), so that
the build works on a machine without a GPU.

``build_deform_roi_pool_ext()`` / ``build_corner_pool_ext()`` / ``build_chamfer_2d_ext()``
(each ``build_ext(op)``) are the same build without the GPU requirement and without
memoisation; they raise on failure (used by ``python -m cuda_ops.build`` and the build tests).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

__all__ = [
    "DEFAULT_ARCH_LIST",
    "DISABLE_ENV",
    "OPS",
    "BuildResult",
    "build_chamfer_2d_ext",
    "build_corner_pool_ext",
    "build_deform_roi_pool_ext",
    "build_ext",
    "cuda_ops_disabled",
    "find_cuda_home",
    "load_chamfer_2d_ext",
    "load_corner_pool_ext",
    "load_deform_roi_pool_ext",
    "resolve_arch_list",
]

log = logging.getLogger(__name__)

DISABLE_ENV = "DETLAB_DISABLE_CUDA_OPS"
CACHE_ENV = "DETLAB_CUDA_CACHE"
DEFAULT_ARCH_LIST = "9.0"  # H100 / H200, the GPUs this project is lent; used when none is visible
CSRC = Path(__file__).resolve().parent / "csrc"


@dataclass(frozen=True)
class _Op:
    """One extension: the module name it is imported as and its sources."""

    ext_name: str
    sources: tuple[Path, ...]


OPS: dict[str, _Op] = {
    "deform_roi_pool": _Op("detlab_deform_roi_pool",
                           (CSRC / "deform_roi_pool.cpp", CSRC / "deform_roi_pool_cuda.cu")),
    "corner_pool": _Op("detlab_corner_pool",
                       (CSRC / "corner_pool.cpp", CSRC / "corner_pool_cuda.cu")),
    "chamfer_2d": _Op("detlab_chamfer_2d",
                      (CSRC / "chamfer_2d.cpp", CSRC / "chamfer_2d_cuda.cu")),
}
# the deform_roi_pool names, kept for existing callers
EXT_NAME = OPS["deform_roi_pool"].ext_name
SOURCES = OPS["deform_roi_pool"].sources
# no --use_fast_math: sample validity and floor/ceil corners (deform_roi_pool) and the NaN
# tests of the running max (corner_pool) must follow IEEE arithmetic as the references' do
# (chamfer_2d rounds its distances with explicit _rn intrinsics, unaffected by flags)
EXTRA_CFLAGS = ["-O3"]
EXTRA_CUDA_CFLAGS = ["-O3"]

_cached: dict[str, ModuleType | None] = {}  # op -> outcome, once tried
_disabled_logged = False
_lock = threading.Lock()


@dataclass(frozen=True)
class BuildResult:
    """A compiled and imported extension: ``module``, its ``build_dir``, the ``arch_list``
    it was compiled for (``TORCH_CUDA_ARCH_LIST`` syntax) and the wall time ``seconds`` of the
    ``load`` call (compile + import; near 0 when the cache was up to date)."""

    module: ModuleType
    build_dir: Path
    arch_list: str
    seconds: float


def cuda_ops_disabled() -> bool:
    """True when ``DETLAB_DISABLE_CUDA_OPS`` asks for the PyTorch references."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def find_cuda_home() -> str | None:
    """The CUDA toolkit root (has ``bin/nvcc`` and ``include/cuda_runtime.h``), or ``None``.

    Tries ``$CUDA_HOME``, ``$CUDA_PATH``, the parent of the ``nvcc`` on ``PATH`` and of its
    real path, then ``/usr/local/cuda``. Torch's own guess takes the parent of ``nvcc`` on
    ``PATH`` unchecked, which is wrong when ``nvcc`` is a wrapper script (``/usr/local/bin``).
    """
    candidates: list[str] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(nvcc)))
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if (os.path.isfile(os.path.join(home, "bin", "nvcc"))
                and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))):
            return home
    return None


def _cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "detlab" / "cuda_ops"


def _visible_arch_list() -> str | None:
    """Capabilities of the visible GPUs (``"8.0;9.0"``), capped at torch's newest ``sm_``; None
    without a GPU."""
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    sms = [int(a.split("_")[1].rstrip("a")) for a in torch.cuda.get_arch_list()
           if a.startswith("sm_") and a.split("_")[1].rstrip("a").isdigit()]
    cap_max = max(((s // 10, s % 10) for s in sms), default=(99, 9))
    caps = {min(torch.cuda.get_device_capability(i), cap_max)
            for i in range(torch.cuda.device_count())}
    return ";".join(f"{ma}.{mi}" for ma, mi in sorted(caps))


def resolve_arch_list(arch_list: str | None = None) -> str:
    """``arch_list`` if given, else ``$TORCH_CUDA_ARCH_LIST``, else the visible GPUs', else
    :data:`DEFAULT_ARCH_LIST`."""
    return (arch_list or os.environ.get("TORCH_CUDA_ARCH_LIST") or _visible_arch_list()
            or DEFAULT_ARCH_LIST).strip()


def build_dir_for(arch_list: str, op: str = "deform_roi_pool") -> Path:
    """``<cache>/torch-<version>/<archs>/<op>`` for a ``TORCH_CUDA_ARCH_LIST``."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; one of {sorted(OPS)}")
    torch_tag = re.sub(r"[^A-Za-z0-9.]+", "_", torch.__version__)
    arch_tag = "-".join("sm_" + re.sub(r"[^A-Za-z0-9]+", "", a).lower()
                        for a in re.split(r"[;\s,]+", arch_list) if a)
    return _cache_root() / f"torch-{torch_tag}" / arch_tag / op


def _ensure_ninja_on_path() -> None:
    """Torch runs ``ninja`` from ``PATH``; a venv used without activation has it only in its
    ``bin`` (or the ``ninja`` package's ``BIN_DIR``)."""
    if shutil.which("ninja"):
        return
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja  # type: ignore[import-not-found]

        dirs.insert(0, str(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    for d in dirs:
        if os.path.isfile(os.path.join(d, "ninja")):
            os.environ["PATH"] = d + os.pathsep + os.environ.get("PATH", "")
            return


def build_ext(op: str, arch_list: str | None = None, verbose: bool = False) -> BuildResult:
    """Compile (or load from the cache) and import the extension ``op`` (a key of
    :data:`OPS`).

    Needs nvcc and ninja, not a GPU. Raises ``ValueError`` for an unknown ``op``,
    ``RuntimeError`` when nvcc or ninja is missing or torch is not a CUDA build, and whatever
    the compiler or the import raise.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; one of {sorted(OPS)}")
    spec = OPS[op]
    if torch.version.cuda is None:
        raise RuntimeError(f"torch {torch.__version__} is not a CUDA build")
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("no CUDA toolkit found (nvcc with include/cuda_runtime.h; "
                           "set CUDA_HOME)")
    _ensure_ninja_on_path()
    os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    # the module computes CUDA_HOME at import, possibly from a wrapper nvcc (see find_cuda_home)
    cpp_extension.CUDA_HOME = cuda_home
    cpp_extension.verify_ninja_availability()
    archs = resolve_arch_list(arch_list)
    build_dir = build_dir_for(archs, op)
    build_dir.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    try:
        t0 = time.perf_counter()
        module = cpp_extension.load(
            name=spec.ext_name, sources=[str(s) for s in spec.sources],
            build_directory=str(build_dir), extra_cflags=EXTRA_CFLAGS,
            extra_cuda_cflags=EXTRA_CUDA_CFLAGS, verbose=verbose)
        seconds = time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old
    return BuildResult(module=module, build_dir=build_dir, arch_list=archs, seconds=seconds)


def build_deform_roi_pool_ext(arch_list: str | None = None, verbose: bool = False) -> BuildResult:
    """Compile (or load from the cache) and import the deformable RoI pooling extension
    (:func:`build_ext` for ``"deform_roi_pool"``)."""
    return build_ext("deform_roi_pool", arch_list, verbose)


def build_corner_pool_ext(arch_list: str | None = None, verbose: bool = False) -> BuildResult:
    """Compile (or load from the cache) and import the corner pooling extension
    (:func:`build_ext` for ``"corner_pool"``)."""
    return build_ext("corner_pool", arch_list, verbose)


def build_chamfer_2d_ext(arch_list: str | None = None, verbose: bool = False) -> BuildResult:
    """Compile (or load from the cache) and import the 2-D Chamfer distance extension
    (:func:`build_ext` for ``"chamfer_2d"``)."""
    return build_ext("chamfer_2d", arch_list, verbose)


def _load(op: str, build: Callable[[], BuildResult]) -> ModuleType | None:
    """The memoised loader behind ``load_<op>_ext``: ``build()`` on the first call of the
    process (when CUDA, a CUDA torch and nvcc are there), its module or ``None`` afterwards;
    see the module docstring."""
    global _disabled_logged
    if cuda_ops_disabled():
        if not _disabled_logged:
            _disabled_logged = True
            log.info("%s is set: cuda_ops use the PyTorch references", DISABLE_ENV)
        return None
    if op in _cached:
        return _cached[op]
    with _lock:
        if op in _cached:
            return _cached[op]
        module: ModuleType | None = None
        reason = ""
        if not torch.cuda.is_available():
            reason = "CUDA is not available"
        elif torch.version.cuda is None:
            reason = f"torch {torch.__version__} is not a CUDA build"
        elif find_cuda_home() is None:
            reason = "no CUDA toolkit (nvcc) found; set CUDA_HOME"
        else:
            try:
                res = build()
                module = res.module
                log.info("cuda_ops: %s extension ready in %s (%.1f s, archs %s)",
                         op, res.build_dir, res.seconds, res.arch_list)
            except Exception as e:  # noqa: BLE001 - any build/import failure means fallback
                reason = f"building the extension failed: {type(e).__name__}: {e}"
        if module is None:
            log.warning("cuda_ops: %s CUDA kernel unavailable (%s); "
                        "using the PyTorch reference", op, reason.strip()[:2000])
        _cached[op] = module
        return module


def load_deform_roi_pool_ext() -> ModuleType | None:
    """The compiled deformable RoI pooling extension, built on the first call of the
    process, or ``None`` (use the PyTorch reference); see the module docstring for when and
    why ``None``."""
    # looked up at call time, so that tests can replace build_deform_roi_pool_ext
    return _load("deform_roi_pool", lambda: build_deform_roi_pool_ext())


def load_corner_pool_ext() -> ModuleType | None:
    """The compiled corner pooling extension, built on the first call of the process, or
    ``None`` (use the PyTorch reference); see the module docstring."""
    return _load("corner_pool", lambda: build_corner_pool_ext())


def load_chamfer_2d_ext() -> ModuleType | None:
    """The compiled 2-D Chamfer distance extension, built on the first call of the process,
    or ``None`` (use the PyTorch reference); see the module docstring."""
    return _load("chamfer_2d", lambda: build_chamfer_2d_ext())


def _reset_cache_for_tests() -> None:
    """Forget the remembered outcomes of the loaders (every extension)."""
    with _lock:
        _cached.clear()
