#!/usr/bin/env bash
# The two README commands, on a fresh machine (2 cores, no GPU, package registries only):
#
#   bash scripts/run.sh repro   # set up .venv, then `dvc repro` (prepare -> train -> evaluate -> report)
#   bash scripts/run.sh test    # set up .venv, then the test suite
#
# Anything after the first argument is passed to dvc / pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1
what=${1:-repro}
shift || true
case "$what" in
  repro)
    dvc repro "$@"
    echo
    echo "Done. Tables: reports/results.md and README.md. Runs: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db"
    ;;
  test)
    python -m pytest "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh [repro|test] [args...]" >&2
    exit 2
    ;;
esac
