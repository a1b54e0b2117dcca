"""DVC stage ``train@<model>``: train one model of ``params.yaml``.

    python -m pipeline.train --model faster_rcnn_r50_fpn [--no-resume]
    python -m pipeline.train --model cpm_ablation_none --seed 1

Writes the final weights ``weights/<run>.pth`` (the stage's DVC-cached output),
``metrics/<run>/train.json`` and ``metrics/<run>/train_curve.csv``, and records an
MLflow run ``train/<run>`` (params, per-iteration losses and lr, timings, the curve as an
artifact). The resumable state (epoch checkpoints, and mid-epoch ones every
``train.checkpoint_every`` iterations) goes to ``checkpoints/<run>/``, outside DVC's outputs:
DVC neither deletes it before a run (so a killed run resumes) nor pushes it, and the run-cache
stays on. The weights file holds no time or path, so an identical retrain gives it the same hash.
It holds tensors and plain containers only (it loads with ``torch.load(weights_only=True)``) and
the digest of its tensors, ``"tensor_sha256"`` (:func:`pipeline.weights_io.tensor_digest`), which
evaluate and predict verify on load.

The run is ``<model>`` trained with params ``seed``, or, with ``--seed K`` (the stages
``train_ablation@<entry>-<K>``, one per seed of params ``ablation_seeds``), ``<model>_seedK``
trained with seed K (:func:`pipeline.config.run_id`).

With ``train.gpus > 1`` in params.yaml and CUDA present, the stage re-launches itself
under ``torchrun --nproc_per_node <gpus>`` (DDP over NCCL). Under torchrun on CPU (gloo)
it trains with several processes as well, which the tests use.

Multi-node: with ``train.nnodes > 1`` every node runs this same command and it re-launches
itself under ``torchrun --nnodes <nnodes> --node_rank <rank> --rdzv_backend c10d
--rdzv_endpoint <host:port> --rdzv_id <id> --nproc_per_node <gpus>`` (one gloo process per
node without CUDA). ``train.node_rank``, ``train.rdzv_endpoint`` and ``train.rdzv_id`` (default:
the run name) are overridden per node by ``DETLAB_NODE_RANK``, ``DETLAB_RDZV_ENDPOINT`` and
``DETLAB_RDZV_ID`` (:data:`NODE_ENVIRONMENT`); only global rank 0 writes weights, metrics,
checkpoints and MLflow records, and the c10d rendezvous (which ignores ``--node_rank``) may put
it on any node. Every node must see the same repository (a shared filesystem): every rank
resumes from the newest checkpoint in ``checkpoints/``.

Preemption: SIGTERM or SIGUSR1 (a cluster scheduler's warning before it kills the job) lets the
current iteration finish, saves a checkpoint at that iteration boundary, tags the MLflow run
``detlab.preempted=true``, ends it KILLED and exits with status 75
(:data:`pipeline.engine.EXIT_PREEMPTED`, ``EX_TEMPFAIL``). Running the same command again
resumes from that checkpoint and continues the same MLflow run. Under torchrun every rank stops
after the same iteration; the launching process forwards the signal to torchrun as SIGTERM,
which passes it on to the ranks.

Fine-tuning: an entry's ``init_from`` (a weights file, e.g. ``weights/<other run>.pth``) starts a
fresh training from that file's weights instead of the model's initialisation; tensors whose shape
depends on the number of classes keep the fresh initialisation (:mod:`pipeline.finetune`). A resume
continues from its checkpoint and does not apply it again; the file's sha256 is part of the run's
fingerprint, so another file starts the run afresh.

Exit status: 0 trained (or already trained), 75 preempted (run again to resume), 1 an error.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipeline import distributed
from pipeline.checkpoint import CheckpointManager, atomic_torch_save, config_fingerprint, file_digest
from pipeline.config import (init_from_setting, load_params, resolve_model_config, run_id, run_section,
                             training_seed)
from pipeline.data import GroupedBatchSampler, build_dataset, collate_detection, load_manifest
from pipeline.logged_model import log_and_register
from pipeline.engine import (EXIT_PREEMPTED, Preempted, StopRequest, Trainer, lr_scaling, resolve_device,
                             seed_everything, write_history_csv, write_json)
from pipeline.finetune import InitSource, apply_init_weights, resolve_init_from
from pipeline.paths import CHECKPOINT_DIR, MANIFEST_FILE, METRICS_DIR, PARAMS_FILE, WEIGHTS_DIR, weights_file
from pipeline.tracking import Tracker, TrackingStoreError, prepared_data_digest
from pipeline.weights_io import DIGEST_KEY, tensor_digest


#: The signals that ask a training to stop at the next iteration boundary, checkpointed.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


#: Environment variables that override, on one node, the multi-node settings of params.yaml that
#: differ from node to node (``node_rank``) or from job to job (the rendezvous): params.yaml is
#: the same file on every node, so each node's launcher sets these instead of editing it.
NODE_ENVIRONMENT = {"node_rank": "DETLAB_NODE_RANK", "rdzv_endpoint": "DETLAB_RDZV_ENDPOINT",
                    "rdzv_id": "DETLAB_RDZV_ID"}


def multinode_settings(runtime: dict[str, Any], run: str,
                       environ: dict[str, str] | None = None) -> distributed.MultiNode | None:
    """This node's part of a multi-node job, from params ``train.nnodes``, ``train.node_rank``,
    ``train.rdzv_endpoint`` and ``train.rdzv_id`` (default: the run name), each of the last three
    overridden by its environment variable of :data:`NODE_ENVIRONMENT` when that is set and not
    empty. None for ``train.nnodes`` 1 (the default): a single-node job.

    Raises:
        ValueError: a setting is missing or malformed; the message names the param and variable.
    """
    environ = os.environ if environ is None else environ
    try:
        nnodes = int(1 if runtime.get("nnodes") is None else runtime["nnodes"])
    except (TypeError, ValueError):
        raise ValueError(f"train.nnodes must be an integer >= 1, got {runtime.get('nnodes')!r}") from None
    if nnodes < 1:
        raise ValueError(f"train.nnodes must be an integer >= 1, got {nnodes}")
    if nnodes == 1:
        return None
    values: dict[str, Any] = {"node_rank": runtime.get("node_rank", 0) or 0,
                              "rdzv_endpoint": str(runtime.get("rdzv_endpoint") or ""),
                              "rdzv_id": str(runtime.get("rdzv_id") or run)}
    source = {key: f"train.{key}" for key in values}
    for key, variable in NODE_ENVIRONMENT.items():
        if environ.get(variable, "").strip():
            values[key], source[key] = environ[variable].strip(), variable
    try:
        node_rank = int(values["node_rank"])
    except (TypeError, ValueError):
        raise ValueError(f"{source['node_rank']} must be an integer, got {values['node_rank']!r}") from None
    if not values["rdzv_endpoint"]:
        raise ValueError(f"train.nnodes = {nnodes} needs the rendezvous host:port: set train.rdzv_endpoint "
                         f"or {NODE_ENVIRONMENT['rdzv_endpoint']} (the same on every node)")
    try:
        return distributed.MultiNode(nnodes, node_rank, values["rdzv_endpoint"], values["rdzv_id"])
    except ValueError as e:
        raise ValueError(f"{e} ({', '.join(f'{k} from {v}' for k, v in source.items())})") from None


def launch_plan(runtime: dict[str, Any], run: str, environ: dict[str, str] | None = None,
                cuda_devices: int | None = None) -> tuple[int, distributed.MultiNode | None, str]:
    """How the train stage runs on this node: (processes on this node, the multi-node job or
    None, a note to print or ""). One process and no multi-node job means no torchrun at all.

    ``train.gpus > 1`` asks for that many processes per node, one GPU each, with CUDA only
    (without CUDA: one process and a note). ``train.nnodes > 1`` asks for a multi-node job
    (:func:`multinode_settings`), with CUDA or without (then one gloo process per node).
    Under torchrun already (``WORLD_SIZE`` set): (1, None, "").

    Args:
        cuda_devices: the visible CUDA devices (default: counted, 0 without CUDA).
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" in environ:
        return 1, None, ""
    nodes = multinode_settings(runtime, run, environ)
    gpus = int(runtime.get("gpus", 1) or 1)
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus <= 1:
        return 1, nodes, ""
    if cuda_devices == 0:
        return 1, nodes, f"train.gpus = {gpus} but CUDA is not available; training in one process" + (
            " on this node" if nodes else "")
    if gpus > cuda_devices:
        raise ValueError(f"train.gpus = {gpus} but only {cuda_devices} CUDA devices are visible")
    return gpus, nodes, ""


def maybe_relaunch_with_torchrun(runtime: dict[str, Any], run: str, argv: list[str] | None = None) -> None:
    """Re-run ``python -m pipeline.train <argv>`` (default: this command's arguments) under
    torchrun when :func:`launch_plan` asks for more than one process on this node or for a
    multi-node job; exits with torchrun's status, or with :data:`EXIT_PREEMPTED` when a
    preemption signal was forwarded to it and it did not succeed (torchrun reports its ranks'
    status 75 as a failure). Returns (does nothing) otherwise."""
    try:
        processes, nodes, note = launch_plan(runtime, run)
    except ValueError as e:
        raise SystemExit(f"[train] {e}") from e
    if note:
        print(f"[train] {note}", flush=True)
    if processes <= 1 and nodes is None:
        return
    rc, forwarded = distributed.run_torchrun("pipeline.train", processes,
                                             sys.argv[1:] if argv is None else list(argv),
                                             label="[train]", forward_signals=PREEMPTION_SIGNALS, nodes=nodes)
    if forwarded is not None and rc != 0:
        print(f"[train] {signal.Signals(forwarded).name} forwarded to torchrun, which exited with status {rc}; "
              f"the ranks checkpointed at the same iteration: run the same command again to resume", flush=True)
        raise SystemExit(EXIT_PREEMPTED)
    raise SystemExit(rc)


@contextmanager
def preemption_signals(request: StopRequest):
    """Within the block, SIGTERM and SIGUSR1 (:data:`PREEMPTION_SIGNALS`: a scheduler's stop or its
    warning before one, ``kill``) set ``request`` instead of ending the process: the training
    stops after the current iteration, checkpointed (:class:`pipeline.engine.Preempted`). Only
    in the main thread (signals cannot be set elsewhere); the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum, frame):
        request.set(signum)

    previous = {s: signal.signal(s, note) for s in PREEMPTION_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def dataset_description(manifest, split: str, num_images: int) -> str:
    """How a table row (and the MLflow ``dataset`` tag) names the data a number was measured on:
    the manifest's dataset name, the split and its size, e.g. ``synthetic minival (200 images)``
    or ``my-dataset minival (40 images)`` (``data.files.name``); a manifest without a name (written
    before it had one) gives its source."""
    name = getattr(manifest, "name", "") or manifest.source
    return f"{name} {split} ({num_images} images)"


def category_names(dataset) -> list[str]:
    return [c["name"] for c in dataset.coco.loadCats(list(dataset.cat_ids))]


def final_weights(model_state: dict[str, torch.Tensor], cfg: dict[str, Any], cat_ids: list[int],
                  names: list[str], iterations: int, fingerprint: str,
                  init_from: InitSource | None = None) -> dict[str, Any]:
    """The content of a final weights file ``weights/<run>.pth``.

    Tensors and plain containers only (it loads with ``torch.load(weights_only=True)``), no time
    or path (an identical retrain gives the same bytes):

    * ``model``: the state dict; ``tensor_sha256``: its :func:`pipeline.weights_io.tensor_digest`,
      verified by evaluate and predict on load;
    * ``detector``, ``model_cfg`` (``config["model"]``), ``config`` (the resolved model
      configuration), ``num_classes``, ``cat_ids`` (the COCO id of each contiguous label),
      ``categories`` (``[{"id", "name"}]``), ``iteration`` (iterations trained), ``fingerprint``
      (of the configuration, seed and data);
    * ``init_from`` (a fine-tuning run only: ``{"path": <init_from as params.yaml writes it>,
      "sha256": <of the file>}``, the weights it started from; absent otherwise, so the files of
      other runs are unchanged).
    """
    out = {
        "model": model_state,
        "detector": str(cfg["detector"]),
        "model_cfg": cfg["model"],
        "config": cfg,
        "num_classes": len(cat_ids),
        "cat_ids": [int(c) for c in cat_ids],
        "categories": [{"id": int(c), "name": str(n)} for c, n in zip(cat_ids, names)],
        "iteration": int(iterations),
        "fingerprint": str(fingerprint),
        DIGEST_KEY: tensor_digest(model_state),
    }
    if init_from is not None:
        out["init_from"] = {"path": str(init_from.setting), "sha256": str(init_from.sha256)}
    return out


def init_from_source(params: dict[str, Any], model_name: str) -> InitSource | None:
    """The weights file that entry ``model_name`` (of ``models`` or ``ablations``) names in its
    ``init_from`` (found and hashed: :func:`pipeline.finetune.resolve_init_from`), or None."""
    setting = init_from_setting(params, model_name)
    if setting is None:
        return None
    return resolve_init_from(setting, f"params.yaml: {run_section(params, model_name)}.{model_name}.init_from")


def run_training(
    model_name: str,
    params: dict[str, Any],
    manifest_file: Path = MANIFEST_FILE,
    checkpoint_root: Path = CHECKPOINT_DIR,
    metrics_root: Path = METRICS_DIR,
    weights_root: Path = WEIGHTS_DIR,
    resume: bool = True,
    track: bool = True,
    log_model: bool = True,
    stop_at_iteration: int | None = None,
    seed: int | None = None,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train ``model_name`` as configured in ``params``.

    Usable in-process (tests) as well as from the command line. ``seed`` None trains the run
    ``model_name`` with params ``seed``; a seed trains the run ``<model_name>_seed<seed>``
    with it (:func:`pipeline.config.run_id`): its own weights, metrics, checkpoints and MLflow run.

    Returns:
        (the train metrics written to ``metrics/<run>/train.json``, the trained model).

    Raises:
        Preempted: SIGTERM or SIGUSR1 arrived; the training stopped after an iteration and saved a
            checkpoint there (a :class:`SystemExit` with status :data:`EXIT_PREEMPTED`). Calling
            again resumes.
    """
    from models.build import build_model
    from models.presets import PRESETS

    cfg = resolve_model_config(params, model_name)
    runtime = params.get("train", {}) or {}
    run = run_id(model_name, seed)
    given_seed = seed
    seed = training_seed(params, given_seed)
    dist_info = distributed.init_distributed(
        "cuda" if runtime.get("device", "auto") != "cpu" and torch.cuda.is_available() else "cpu"
    )
    device = resolve_device(runtime.get("device", "auto"), dist_info.local_rank)
    seed_everything(seed)

    manifest = load_manifest(manifest_file)
    dataset = build_dataset(manifest.split("train"), cfg["data"], train=True, seed=seed)
    num_classes = len(dataset.cat_ids)
    schedule = cfg["schedule"]
    batch_size = int(schedule["images_per_gpu"])
    sampler = GroupedBatchSampler(
        dataset.aspect_ratios(), batch_size, seed=seed, shuffle=True,
        num_replicas=dist_info.world_size, rank=dist_info.rank,
    )
    size_divisor = int(cfg["data"].get("size_divisor", 32))

    def collate(batch):
        return collate_detection(batch, size_divisor=size_divisor)

    model = build_model(cfg["detector"], cfg["model"], num_classes)
    init_source = init_from_source(params, model_name)
    fingerprint = config_fingerprint(
        {"cfg": cfg, "seed": seed, "data": file_digest(manifest_file), "world_size": dist_info.world_size,
         # only when set: the fingerprints of other runs stay what they were
         **({"init_from_sha256": init_source.sha256} if init_source is not None else {})}
    )
    ckpt = CheckpointManager(Path(checkpoint_root) / run, keep_last=int(runtime.get("keep_checkpoints", 3)))
    if not resume and dist_info.is_main:
        ckpt.set_aside("started with --no-resume")
    distributed.barrier()

    scaling = lr_scaling(schedule, PRESETS[cfg["preset"]]["scales"][cfg["scale"]]["schedule"], dist_info.world_size)
    if dist_info.is_main:
        print(f"[train] {run}: {scaling.describe()}", flush=True)

    tags = {
        "model": run,
        "stage": "train",
        "preset": cfg["preset"],
        "scale": cfg["scale"],
        "detector": cfg["detector"],
        "dataset": dataset_description(manifest, "train", len(dataset)),
    }
    if given_seed is not None:  # a seeded run: its entry and seed (unseeded runs keep their tags)
        tags.update(entry=model_name, seed=str(seed))
    resume_run_id = None
    if resume and dist_info.is_main:  # continue the MLflow run of the checkpoint we resume from
        record = ckpt.latest()
        if record is not None and record.get("fingerprint") == fingerprint:
            resume_run_id = record.get("mlflow_run_id")
    stop_request = StopRequest()
    with preemption_signals(stop_request), \
            Tracker(f"train/{run}", tags, enabled=track and dist_info.is_main,
                    resume_run_id=resume_run_id, system_metrics=True) as tracker:
        tracker.log_dataset(f"{manifest.name}/train", prepared_data_digest(manifest_file),
                            str(manifest.split("train").ann_file), "train")
        tracker.log_params({"seed": seed, "runtime": runtime, "config": cfg, "num_classes": num_classes,
                            "world_size": dist_info.world_size, "lr_scaling": scaling.params()})
        if init_source is not None:  # the run's starting point (DVC tracks the param, not the file)
            tracker.log_params({"init_from": init_source.setting, "init_from_sha256": init_source.sha256})

        def init_weights(module: torch.nn.Module) -> None:
            """Fine-tuning, at a fresh start only (the Trainer never calls it on a resume)."""
            report = apply_init_weights(module, init_source, cfg["detector"], cfg["model"], num_classes)
            if not dist_info.is_main:
                return
            print(report.log_line(run), flush=True)
            tracker.log_params({"init_from_loaded": len(report.loaded),
                                "init_from_reinitialised": ", ".join(sorted(report.reinitialised)) or "none"})
            if tracker.enabled:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "init_from.json"
                    path.write_text(json.dumps(report.record(), indent=2) + "\n")
                    tracker.log_artifact(path)
        trainer = Trainer(
            model=model,
            dataset=dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            schedule={**schedule, "lr": scaling.lr},
            checkpoints=ckpt,
            fingerprint=fingerprint,
            device=device,
            amp=bool(runtime.get("amp", True)),
            amp_dtype=str(runtime.get("amp_dtype", "auto")),
            num_workers=int(runtime.get("num_workers", 0)),
            log_interval=int(runtime.get("log_interval", 20)),
            tracker=tracker,
            dist_info=dist_info,
            stop_at_iteration=stop_at_iteration,
            find_unused_parameters=bool(runtime.get("find_unused_parameters", False)),
            checkpoint_every=int(runtime.get("checkpoint_every", 0) or 0),
            stop_request=stop_request,
            num_classes=num_classes,
            init_weights=init_weights if init_source is not None else None,
        )
        if dist_info.is_main:
            print(
                f"[train] {run}: preset {cfg['preset']} ({cfg['scale']} scale), {len(dataset)} images, "
                f"{num_classes} classes, {trainer.iters_per_epoch} it/epoch x {trainer.epochs} epochs, "
                f"device {device}, world size {dist_info.world_size}",
                flush=True,
            )
        try:
            result = trainer.train()
        except Preempted as e:  # the Tracker ends the run KILLED (Preempted.run_status)
            tracker.set_tag("detlab.preempted", "true")
            tracker.set_tag("detlab.preempted_at_iteration", str(e.iteration))
            raise
        metrics = result.metrics()
        if dist_info.is_main:
            final = final_weights(model.state_dict(), cfg, list(dataset.cat_ids), category_names(dataset),
                                  result.iterations, fingerprint, init_from=init_source)
            weights = weights_file(run, weights_root)
            atomic_torch_save(final, weights)
            tracker.set_tag("weights_sha256", file_digest(weights))
            if log_model and tracker.enabled:  # a copy in MLflow, registered as a new version of <run>
                uri, model_id = log_and_register(tracker.run_id, weights, final, run)
                tracker.set_tag("registered_model", uri)
                tracker.set_tag("logged_model_id", model_id)
            out_dir = Path(metrics_root) / run
            write_json(metrics, out_dir / "train.json")
            write_history_csv(result.history, out_dir / "train_curve.csv")
            tracker.log_metrics({f"final/{k}": v for k, v in result.final_losses.items()}, step=result.iterations)
            tracker.log_metrics({"seconds_per_iter": result.seconds_per_iter}, step=result.iterations)
            tracker.log_params({"host.device": str(device)})
            tracker.flush()
            tracker.log_artifact(out_dir / "train.json")
            tracker.log_artifact(out_dir / "train_curve.csv")
    distributed.barrier()
    return metrics, model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a key of 'models' (or 'ablations') in params.yaml")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--no-resume", action="store_true", help="set existing checkpoints aside and start afresh")
    parser.add_argument("--seed", type=int, default=None,
                        help="train with this seed instead of params 'seed', as the run <model>_seed<SEED> "
                             "(the ablation stages give each seed of 'ablation_seeds')")
    args = parser.parse_args(argv)
    if args.seed is not None and args.seed < 0:
        parser.error(f"--seed must be a non-negative integer, got {args.seed}")
    params = load_params(args.params)
    maybe_relaunch_with_torchrun(params.get("train") or {}, run_id(args.model, args.seed), argv)
    try:
        metrics, _ = run_training(args.model, params, resume=not args.no_resume, seed=args.seed)
        is_main = distributed.current().is_main  # read before cleanup, after which every rank looks like rank 0
    except TrackingStoreError as e:
        raise SystemExit(f"[train] {e}") from e
    finally:
        distributed.cleanup()
    if is_main:
        print(f"[train] done: {metrics}", flush=True)


if __name__ == "__main__":
    main()
