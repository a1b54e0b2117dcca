"""Compile the ``cuda_ops`` CUDA extensions ahead of use, with or without a GPU.

``python -m cuda_ops.build`` builds (or finds up to date in the cache) the deformable RoI
pooling, the corner pooling and the 2-D Chamfer distance extensions (``--op`` picks one),
imports each and prints where it went and how long it took. Without a visible GPU the
architectures default to ``$TORCH_CUDA_ARCH_LIST`` or ``9.0`` (H100/H200); the cache directory
is the one the loaders (``load_deform_roi_pool_ext``, ``load_corner_pool_ext``,
``load_chamfer_2d_ext``) use on a GPU of that architecture, so a later run there only loads the
library. Exit status 1 when a build fails (nvcc or ninja missing, compile error). Usage::

    .venv/bin/python -m cuda_ops.build                      # all ops, default archs, cached
    .venv/bin/python -m cuda_ops.build --op corner_pool     # one op
    .venv/bin/python -m cuda_ops.build --op chamfer_2d
    .venv/bin/python -m cuda_ops.build --clean -v           # rebuild from scratch, show commands
    .venv/bin/python -m cuda_ops.build --arch "8.0;9.0"
"""
from __future__ import annotations

import argparse
import shutil
import sys

from cuda_ops._extension import OPS, build_dir_for, build_ext, resolve_arch_list

# the functions each extension binds (printed when present)
FUNCTIONS = {
    "deform_roi_pool": ("forward", "backward_features", "backward_offsets"),
    "corner_pool": ("forward", "backward"),
    "chamfer_2d": ("forward", "backward"),
}


def main(argv: list[str] | None = None) -> int:
    """Build the chosen extensions; print build directory, architectures and seconds of each.
    Returns the exit status (1 if any build failed; the others are still built)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=[*OPS, "all"], default="all",
                    help="which extension to build (default: all)")
    ap.add_argument("--arch", default=None,
                    help="TORCH_CUDA_ARCH_LIST to compile for (default: $TORCH_CUDA_ARCH_LIST, "
                         "else the visible GPUs', else 9.0)")
    ap.add_argument("--clean", action="store_true",
                    help="delete this configuration's build directory first")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands")
    args = ap.parse_args(argv)
    archs = resolve_arch_list(args.arch)
    ops = list(OPS) if args.op == "all" else [args.op]
    status = 0
    for op in ops:
        if args.clean:
            shutil.rmtree(build_dir_for(archs, op), ignore_errors=True)
        try:
            res = build_ext(op, archs, verbose=args.verbose)
        except Exception as e:  # noqa: BLE001 - report any build failure as exit status 1
            print(f"cuda_ops.build: {op}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            status = 1
            continue
        libs = sorted(p.name for p in res.build_dir.glob("*.so"))
        print(f"cuda_ops.build: {op} extension for archs {res.arch_list}")
        print(f"  build dir: {res.build_dir}")
        print(f"  library:   {', '.join(libs) or '(none found)'}")
        funcs = [n for n in FUNCTIONS.get(op, ()) if hasattr(res.module, n)]
        print(f"  functions: {', '.join(funcs)}")
        print(f"  time:      {res.seconds:.1f} s (compile + import; ~0 when already cached)")
    return status


if __name__ == "__main__":
    sys.exit(main())
