#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install the pinned
# dependencies from requirements.lock, then the project itself in editable mode.
#
# torch/torchvision: torchvision has no CPU-only build, so we pin the registry's
# torch 2.14.1 + torchvision 0.29.1 pair (CUDA 13 builds). They run on a machine with
# no GPU; on a machine with one, the same pair uses it.
#
# Idempotent: a stamp file records the hash of requirements.lock; a second call with an
# unchanged lock file returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.requirements.sha256
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  $PY -m venv "$VENV"
fi
echo "[setup] installing pinned dependencies (requirements.lock); the first time takes a few minutes"
# Some machines list local package mirrors that lack a few folders; pip warns once per
# package about them. Those lines are dropped; pip's own exit status still decides.
quiet_mirrors() { grep -v "^WARNING: Location 'file://" || true; }
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.lock 2>&1 | quiet_mirrors
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | quiet_mirrors
echo "$want" > "$STAMP"
echo "[setup] environment ready: $VENV"
