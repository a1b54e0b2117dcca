"""The experiment pipeline: one entry module per DVC stage plus the runtime they share.

Stages: :mod:`pipeline.prepare`, :mod:`pipeline.train`, :mod:`pipeline.evaluate`,
:mod:`pipeline.report`. Shared runtime: :mod:`pipeline.data` (datasets, transforms,
samplers), :mod:`pipeline.engine` (training loop), :mod:`pipeline.evaluation` (COCO
metrics and result files), :mod:`pipeline.tracking` (MLflow).
"""
import os as _os

# MLflow and DVC telemetry off before either is imported anywhere in the pipeline.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("DO_NOT_TRACK", "1")
_os.environ.setdefault("DVC_NO_ANALYTICS", "1")
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
