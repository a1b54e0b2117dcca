"""The trained detector as an MLflow logged model, registered under its run's name.

Each train run logs its final model (``mlflow.pytorch``: the whole module, so that
``mlflow.pytorch.load_model`` gives back a detector that predicts) and registers it under the
run's name in params.yaml, one model version per training. What the pipeline needs besides the
module (the label map, the data config for the test-time resize) travels in the model's
metadata, so ``models:/<name>/<version>`` is enough to predict: :func:`load_logged_model`.

The weights are logged as a copy, not as an external model pointing at the DVC-tracked
``weights/<run>.pth``: a registry entry must load on a machine that has the tracking server
but no DVC cache (a colleague, a serving host), and an external model gives
``mlflow.pytorch.load_model`` nothing to load. The price is storage on the server: 15-35 MB
per training at the CPU scale, 150-900 MB at the paper scale.

The module is pickled (``serialization_format="pickle"``): torch.export's "pt2" cannot trace the
detectors' data-dependent control flow (proposal counts, NMS). Loading a pickle runs code, so
load only models from a store you trust.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch

#: the keys of a weights file (``weights/<run>.pth``) that the logged model carries as metadata
METADATA_KEYS = ("detector", "num_classes", "cat_ids", "categories", "config")

#: prefixes of the model URIs :func:`load_logged_model` takes
MODEL_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


def is_model_uri(text: str) -> bool:
    return str(text).startswith(MODEL_URI_PREFIXES)


def log_and_register(run_id: str, model: torch.nn.Module, state: dict[str, Any],
                     registered_name: str) -> tuple[str, str]:
    """Log ``model`` (a copy, on the CPU, in eval mode) to MLflow run ``run_id`` and register it
    as a new version of ``registered_name``; returns (the ``models:/<name>/<version>`` URI, the
    logged model's id, which evaluate runs link their metrics to)."""
    import mlflow
    import mlflow.pytorch
    import torchvision

    from pipeline.paths import mlflow_tracking_uri

    module = copy.deepcopy(model).cpu().eval()
    metadata = {k: state[k] for k in METADATA_KEYS}
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:  # inside its Tracker: the run is active
        run = nullcontext()
    else:
        mlflow.set_tracking_uri(mlflow_tracking_uri())
        run = mlflow.start_run(run_id=run_id)
    with run:
        info = mlflow.pytorch.log_model(
            module, name="model", registered_model_name=registered_name, metadata=metadata,
            # "pt2" (torch.export) cannot trace a detector's data-dependent control flow
            serialization_format="pickle",
            # explicit requirements: inferring them runs the model in a subprocess
            pip_requirements=[f"torch=={torch.__version__}", f"torchvision=={torchvision.__version__}"],
        )
    version = info.registered_model_version
    uri = f"models:/{registered_name}/{version}" if version is not None else info.model_uri
    return uri, info.model_id


def load_logged_model(uri: str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The detector logged at ``uri`` (``models:/<name>/<version>``, ``runs:/<id>/model``, ...),
    in eval mode on ``device``, and a state dict like a weights file's (:data:`METADATA_KEYS`)."""
    import mlflow.models
    import mlflow.pytorch

    from pipeline.paths import mlflow_tracking_uri

    mlflow.set_tracking_uri(mlflow_tracking_uri())
    model = mlflow.pytorch.load_model(uri, map_location=device)
    metadata = mlflow.models.get_model_info(uri).metadata or {}
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"{uri}: not a detector logged by the train stage (metadata lacks {missing})")
    return model.to(device).eval(), dict(metadata)
