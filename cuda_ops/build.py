"""Compile the ``cuda_ops`` CUDA extension ahead of use, with or without a GPU.

``python -m cuda_ops.build`` builds (or finds up to date in the cache) the deformable RoI
pooling extension, imports it and prints where it went and how long it took. Without a
visible GPU the architectures default to ``$TORCH_CUDA_ARCH_LIST`` or ``9.0`` (H100/H200);
the cache directory is the one ``load_deform_roi_pool_ext`` uses on a GPU of that
architecture, so a later run there only loads the library. Exit status 1 when the build
fails (nvcc or ninja missing, compile error). Usage::

    .venv/bin/python -m cuda_ops.build                 # default archs, cached
    .venv/bin/python -m cuda_ops.build --clean -v      # rebuild from scratch, show commands
    .venv/bin/python -m cuda_ops.build --arch "8.0;9.0"
"""
from __future__ import annotations

import argparse
import shutil
import sys

from cuda_ops._extension import build_deform_roi_pool_ext, build_dir_for, resolve_arch_list


def main(argv: list[str] | None = None) -> int:
    """Build the extension; print build directory, architectures and seconds. Returns the
    exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=None,
                    help="TORCH_CUDA_ARCH_LIST to compile for (default: $TORCH_CUDA_ARCH_LIST, "
                         "else the visible GPUs', else 9.0)")
    ap.add_argument("--clean", action="store_true",
                    help="delete this configuration's build directory first")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands")
    args = ap.parse_args(argv)
    archs = resolve_arch_list(args.arch)
    if args.clean:
        shutil.rmtree(build_dir_for(archs), ignore_errors=True)
    try:
        res = build_deform_roi_pool_ext(archs, verbose=args.verbose)
    except Exception as e:  # noqa: BLE001 - report any build failure as exit status 1
        print(f"cuda_ops.build: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    libs = sorted(p.name for p in res.build_dir.glob("*.so"))
    print(f"cuda_ops.build: deform_roi_pool extension for archs {res.arch_list}")
    print(f"  build dir: {res.build_dir}")
    print(f"  library:   {', '.join(libs) or '(none found)'}")
    funcs = [n for n in ("forward", "backward_features", "backward_offsets")
             if hasattr(res.module, n)]
    print(f"  functions: {', '.join(funcs)}")
    print(f"  time:      {res.seconds:.1f} s (compile + import; ~0 when already cached)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
