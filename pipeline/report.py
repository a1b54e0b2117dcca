"""DVC stage ``report``: the results tables, regenerated from MLflow.

    python -m pipeline.report [--models NAME ...]

For every run in ``params.yaml`` (the ``models``, then the ``ablations``, each once per seed of
``ablation_seeds`` as ``<name>_seed<k>``; :func:`pipeline.config.runs`) it takes the newest FINISHED MLflow evaluate run per
split, cross-checks its numbers against the DVC metrics file ``metrics/<model>/<split>.json``
(the stage depends on those files; a mismatch means the store and the workspace disagree
and the stage fails, naming both), then writes ``reports/results.md`` and rewrites the
README's results table between ``<!-- results:begin -->`` and ``<!-- results:end -->``.
Models evaluated with RepPoints V2's corner snapping flipped as well (the metrics file's
``"variants"``, an MLflow run with ``split=minival/corner_snapping_off``) get a table of
their own, checked the same way; it is left out when no model has that variant. Likewise
Dense RepPoints V2 models evaluated with contour snapping flipped (``split=minival/contour_snapping_off``)
get a table of their mask AP on and off, right after it.

The papers' tables follow the model table (Dense RepPoints' with box and mask AP, the latter
read from the runs' ``segm`` numbers); CPM R-CNN's are its test-dev table (filled from
``models`` runs of the row's preset) and its component-wise table (filled from ``ablations``
runs of ``cpm_rcnn_r50_fpn`` by the module switches of their resolved configuration; a row of
several runs, e.g. one per seed, shows mean ± std), with a computed line on whether our ablation
orders the same way as the paper's. Ablation runs are left out of the main table and the papers'
other tables.

Figures go to ``reports/figures/``: per model the minival precision-recall curves, the
training curves and a grid of minival predictions drawn over the images with the ground
truth; the README shows the first model's curves and predictions.

``--models`` restricts the report to some entries of ``models`` / ``ablations`` (e.g. the one model
trained on your own data with ``dvc exp run ... evaluate@<model>``); the DVC stage reports every
run.

Our numbers name the dataset they were measured on; published numbers stand in their own
columns with their source.

A split the evaluate stage skipped because the prepared data has none (its metrics file says
``"skipped": true``, e.g. test-dev of a dataset without one) has no MLflow run to look up: its
cells read "skipped (no test-dev split)" (:func:`ap_cell`) and it is left out of *Measured on*.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path
from typing import Any

from pipeline.checkpoint import atomic_write_text, file_digest
from pipeline.config import load_params, resolve_model_config, runs, training_seed
from pipeline.engine import write_json
from pipeline.evaluate import SNAPPING_SWITCHES, metric_key, pr_curve_file, variant_split, variant_switch
from pipeline.evaluation import STAT_NAMES
from pipeline.figures import plot_pr_curves, plot_training_curves, read_curves_csv
from pipeline.paths import MANIFEST_FILE, METRICS_DIR, PARAMS_FILE, README_FILE, REPORTS_DIR, WEIGHTS_DIR, weights_file
from pipeline.published import CPM_COMPONENT_TABLE, CPM_TESTDEV_TABLE, PAPER_TABLES, PUBLISHED
from pipeline.tracking import TrackingStoreError, client, newest_finished_run

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
TOLERANCE = 1e-5


class ReportError(RuntimeError):
    """MLflow and the DVC metrics files disagree, or a needed run or file is missing."""


def fmt(v: float | None) -> str:
    """A COCO number in percent with one decimal; '–' for missing or COCO's -1 (no objects)."""
    if v is None or v < 0:
        return "–"
    return f"{100 * v:.1f}"


def checked_stats(run, file_metrics: dict[str, Any], path: Path, model_name: str, split: str,
                  where: str = "") -> dict[str, dict[str, float]]:
    """The run's COCO numbers for each task in ``file_metrics`` (``bbox``/``segm``), read from its
    metrics ``<split>/<task>_<stat>`` (:func:`pipeline.evaluate.metric_key` of the run's ``split``
    tag, so ``minival/bbox_AP`` for a variant's run too), each checked against the metrics file
    ``path`` (``where``: the key path inside it, e.g. ``variants.corner_snapping_off.``); a
    difference beyond :data:`TOLERANCE` raises :class:`ReportError`."""
    out = {}
    for iou_type in ("bbox", "segm"):
        if iou_type not in file_metrics:
            continue
        ours = {}
        for name in STAT_NAMES:
            key = metric_key(split, f"{iou_type}_{name}")
            if key not in run.data.metrics:
                raise ReportError(f"MLflow run {run.info.run_id} ({model_name}/{split}) lacks metric {key}; "
                                  f"re-run `dvc repro -f evaluate@{model_name}`")
            mv = run.data.metrics[key]
            fv = file_metrics[iou_type][name]
            if abs(mv - fv) > TOLERANCE:
                raise ReportError(
                    f"{path}: {where}{iou_type} {name} = {fv}, but the newest MLflow run {run.info.run_id} "
                    f"says {mv}; the store and the workspace disagree (re-run evaluate@{model_name})"
                )
            ours[name] = mv
        out[iou_type] = ours
    return out


def skipped_cell(split: str) -> str:
    """The cell of a split the data lacks (the evaluate stage skipped it)."""
    return f"skipped (no {split} split)"


def ap_cell(record: dict[str, Any], task: str = "bbox", missing: str = "–") -> str:
    """Our AP cell of one (run, split) record: its ``task`` AP where the split was scored,
    "not scored" where it was predicted without annotations (real COCO test-dev),
    :func:`skipped_cell` where the data has no such split, ``missing`` where there is no record."""
    if not record:
        return missing
    if record.get("skipped"):
        return skipped_cell(record["split"])
    if not record.get("scored"):
        return "not scored"
    return fmt(record.get(task, {}).get("AP"))


def measured_on(*records: dict[str, Any]) -> str:
    """The *Measured on* cell: the datasets of the records that were evaluated (not skipped)."""
    return "; ".join(r["dataset"] for r in records if r and not r.get("skipped")) or "–"


def newest_run_or_fail(c, model_name: str, split: str, weights_sha256: str | None = None):
    """The newest FINISHED evaluate run of ``model_name`` on ``split``; with ``weights_sha256``,
    the newest that evaluated exactly those weights (the workspace's ``weights/<run>.pth``), so
    that outputs DVC restored from its run-cache or pulled meet the MLflow run that made them,
    not a later run of other weights."""
    run = newest_finished_run(c, model_name, "evaluate", split, weights_sha256)
    if run is None:
        of = f" of the weights {weights_sha256} (weights/{model_name}.pth)" if weights_sha256 else ""
        raise ReportError(
            f"no FINISHED MLflow evaluate run for model {model_name!r}, split {split!r}{of} in "
            f"{c.tracking_uri}; re-run `dvc repro -f evaluate@{model_name}`, or point MLFLOW_TRACKING_URI at "
            f"the store that recorded it (the team's server)"
        )
    return run


def collect(params: dict[str, Any], metrics_root: Path = METRICS_DIR,
            weights_root: Path | None = None) -> list[dict[str, Any]]:
    """One record per (run, split): the MLflow numbers, checked against the metrics file.

    Runs are those of :func:`pipeline.config.runs`: the entries of ``models`` and, once per seed
    of ``ablation_seeds``, of ``ablations`` (``record["section"]``; ``record["model"]`` is the
    run id, ``record["entry"]`` its entry). ``record["seed"]`` is the seed the run trained with
    and ``record["config"]`` a digest of its resolved configuration, so that the component table
    counts a (configuration, seed) pair once. A record also carries ``record["modules"]``, the CPM
    module switches (``with_cmm``/``with_ism``/``with_rsm``) of its resolved configuration, where
    it has them.

    A split the evaluate stage skipped (its metrics file says ``"skipped": true``: the data has
    no such split) gets a record with ``"skipped": True`` and its ``reason``, and no MLflow
    lookup (the stage logs no run for it).

    A split evaluated in variants as well (RepPoints V2 with corner snapping flipped, Dense
    RepPoints V2 with contour snapping flipped, under ``"variants"`` in the metrics file) gets
    ``record["variants"][name]`` with the variant run's numbers, checked the same way, and its
    switch's value under the switch's key (``corner_snapping``, ``contour_snapping``); the
    record itself carries the metrics file's top-level default of each switch it has.
    """
    c = client()
    rows = []
    splits = (params.get("evaluate") or {}).get("splits", ["minival", "test-dev"])
    for model_name, run in runs(params).items():
        section, entry = run.section, run.config(params)
        cfg = resolve_model_config(params, run.entry)
        modules = module_switches(cfg)
        weights = weights_file(model_name, weights_root) if weights_root is not None else None
        digest = file_digest(weights) if weights is not None and weights.exists() else None
        seed = training_seed(params, run.seed)
        config_digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for split in splits:
            path = Path(metrics_root) / model_name / f"{split}.json"
            if not path.exists():
                raise ReportError(f"{path}: missing; run `dvc repro evaluate@{model_name}` first")
            file_metrics = json.loads(path.read_text())
            # what every record of this run and split says, skipped or scored
            run_fields = {"model": model_name, "preset": entry.get("preset"), "split": split, "section": section,
                          "entry": run.entry, "seed": seed, "config": config_digest,
                          **({"modules": modules} if modules is not None else {})}
            if file_metrics.get("skipped"):
                rows.append({
                    **run_fields,
                    "scale": entry.get("scale"),
                    "dataset": file_metrics.get("dataset", f"no {split} split"),
                    "scored": False,
                    "skipped": True,
                    "reason": file_metrics.get("reason", ""),
                    "run_id": None,
                })
                continue
            found = newest_run_or_fail(c, model_name, split, digest)
            record = {
                **run_fields,
                "scale": found.data.tags.get("scale", entry.get("scale")),
                "dataset": found.data.tags.get("dataset", file_metrics.get("dataset")),
                "scored": file_metrics.get("scored", False),
                "run_id": found.info.run_id,
            }
            record.update(checked_stats(found, file_metrics, path, model_name, split))
            for name, v_metrics in (file_metrics.get("variants") or {}).items():
                v_split = variant_split(split, name)
                v_run = newest_run_or_fail(c, model_name, v_split, digest)
                switch = variant_switch(name) or "corner_snapping"
                variant = {"run_id": v_run.info.run_id, switch: v_metrics.get(switch)}
                variant.update(checked_stats(v_run, v_metrics, path, model_name, v_split, where=f"variants.{name}."))
                record.setdefault("variants", {})[name] = variant
            for switch in SNAPPING_SWITCHES:
                if switch in file_metrics:
                    record[switch] = file_metrics[switch]
            rows.append(record)
    return rows


def ablation_modules(params: dict[str, Any], name: str) -> dict[str, bool] | None:
    """The module switches (:data:`CPM_COMPONENT_TABLE` ``switches``) of entry or run ``name``'s
    resolved configuration (``model.roi_head``), or None when its RoI head has not all of them."""
    return module_switches(resolve_model_config(params, name))


def module_switches(cfg: dict[str, Any]) -> dict[str, bool] | None:
    """:func:`ablation_modules` of a resolved configuration ``cfg``."""
    roi_head = (cfg.get("model") or {}).get("roi_head") or {}
    keys = CPM_COMPONENT_TABLE["switches"]
    if not all(k in roi_head for k in keys):
        return None
    return {k: bool(roi_head[k]) for k in keys}


def is_model(record: dict[str, Any]) -> bool:
    """A record of a ``models`` run (not of an ablation run)."""
    return record.get("section", "models") == "models"


def by_model_split(rows: list[dict[str, Any]], models_only: bool = True) -> dict[str, dict[str, dict]]:
    """``{run: {split: record}}``, in the records' order; ``models_only``: leave ablation runs out."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        if is_model(r) or not models_only:
            out.setdefault(r["model"], {})[r["split"]] = r
    return out


def results_table(rows: list[dict[str, Any]]) -> str:
    """The README table: our box AP per split (with its dataset) beside the published AP.
    Ablation runs are left out (they have the component-wise table and the full one)."""
    by_model = by_model_split(rows)
    lines = [
        "| Model | Preset (scale) | Ours: minival box AP / AP50 / AP75 | Ours: APs / APm / APl | Ours: minival mask AP | Ours: test-dev box AP | Measured on | Published minival AP | Published test-dev AP | Published by |",
        "|---|---|:-:|:-:|:-:|:-:|---|:-:|:-:|---|",
    ]
    for model, splits in by_model.items():
        mv = splits.get("minival", {})
        td = splits.get("test-dev", {})
        any_row = mv or td
        preset = any_row.get("preset")
        pub = PUBLISHED.get(preset, {})
        b = mv.get("bbox", {})
        measured = measured_on(mv, td)
        lines.append(
            f"| {model} | {preset} ({any_row.get('scale')}) "
            f"| {fmt(b.get('AP'))} / {fmt(b.get('AP50'))} / {fmt(b.get('AP75'))} "
            f"| {fmt(b.get('APs'))} / {fmt(b.get('APm'))} / {fmt(b.get('APl'))} "
            f"| {fmt(mv.get('segm', {}).get('AP'))} "
            f"| {ap_cell(td, missing='not scored')} "
            f"| {measured} "
            f"| {pub.get('minival', '–') if pub.get('minival') is not None else '–'} "
            f"| {pub.get('test-dev') if pub.get('test-dev') is not None else '–'} "
            f"| {pub.get('source', '–')} |"
        )
    return "\n".join(lines)


def full_table(rows: list[dict[str, Any]]) -> str:
    """All 12 COCO numbers of every scored (model, split, task), in percent."""
    lines = [
        "| Model | Split | Task | " + " | ".join(STAT_NAMES) + " | Measured on |",
        "|---|---|---|" + ":-:|" * len(STAT_NAMES) + "---|",
    ]
    for r in rows:
        for iou_type in ("bbox", "segm"):
            if iou_type in r:
                vals = " | ".join(fmt(r[iou_type][n]) for n in STAT_NAMES)
                lines.append(f"| {r['model']} | {r['split']} | {iou_type} | {vals} | {r['dataset']} |")
    return "\n".join(lines)


def _paper_row_start(row: dict[str, Any], columns: list[str], by_model: dict[str, dict[str, Any]],
                     notes: list[str]) -> tuple[str, str, list[tuple[str, dict[str, Any]]]]:
    """A paper-table row's name (with its footnote number; the note is appended to ``notes``),
    its described cells (``columns``) and our runs of its preset as ``(model, splits)``."""
    name = row["name"]
    if row.get("note"):
        notes.append(row["note"])
        name += f" [{len(notes)}]"
    described = "".join(f" {row.get(col, '–')} |" for col in columns)
    ours = [(m, s) for m, s in by_model.items() if (s.get("minival") or s.get("test-dev") or {}).get("preset")
            == row["preset"]]
    return name, described, ours


def paper_table(spec: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One paper's table (``PAPER_TABLES`` entry) with our AP beside the published AP.

    A paper row gets one line per model of ours (``models``, not ``ablations``) trained from its
    preset (at whatever scale),
    or one line saying it was not run. Our columns hold only our measurements; the task's AP
    (box or mask) is read on minival ("validation") and on test-dev where it was scored.
    The spec's ``columns`` (e.g. ``["type"]``) are the paper's descriptive columns, copied from
    each row; ``name_heading`` and ``split_headings`` name the row-name and the AP columns.
    A spec with ``tasks`` (several AP per row, e.g. box and mask) is drawn by
    :func:`paper_tasks_table`.
    """
    if spec.get("tasks"):
        return paper_tasks_table(spec, rows)
    by_model = by_model_split(rows)
    columns = list(spec.get("columns", []))
    val_heading, test_heading = spec.get("split_headings", ["validation", "test-dev"])
    headings = [spec.get("name_heading", "name"), *columns, f"Ours: {val_heading}", f"Ours: {test_heading}",
                "Our model (scale)", "Measured on", f"Paper: {val_heading}", f"Paper: {test_heading}"]
    lines = [
        f"**{spec['title']}** (published: {spec['source']})",
        "",
        "| " + " | ".join(headings) + " |",
        "|---|" + "---|" * len(columns) + ":-:|:-:|---|---|:-:|:-:|",
    ]
    notes = []
    for row in spec["rows"]:
        pub_v = "–" if row.get("validation") is None else f"{row['validation']:.1f}"
        pub_t = "–" if row.get("test-dev") is None else f"{row['test-dev']:.1f}"
        name, described, ours = _paper_row_start(row, columns, by_model, notes)
        if not ours:
            lines.append(f"| {name} |{described} not run | not run | – | – | {pub_v} | {pub_t} |")
            continue
        for model, splits in ours:
            mv, td = splits.get("minival", {}), splits.get("test-dev", {})
            any_row = mv or td
            task = row["task"]
            v = fmt(mv.get(task, {}).get("AP")) if mv else "–"
            t = ap_cell(td, task)
            measured = measured_on(mv, td)
            lines.append(f"| {name} |{described} {v} | {t} | {model} ({any_row.get('scale')}) | {measured} "
                         f"| {pub_v} | {pub_t} |")
    lines.extend(_paper_notes(spec, notes))
    return "\n".join(lines)


def _paper_notes(spec: dict[str, Any], notes: list[str]) -> list[str]:
    """The lines under a paper table: its rows' numbered notes, then the seed's notes."""
    lines = []
    for i, note in enumerate(notes, 1):
        lines.append("")
        lines.append(f"[{i}] {note}.")
    if spec.get("notes"):
        lines.append("")
        lines.append("The README's notes:")
        lines.extend(f"- {note}." for note in spec["notes"])
    return lines


def paper_tasks_table(spec: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A paper table whose rows give AP for several tasks (``spec["tasks"]``, ``(task, heading)``
    pairs, e.g. Dense RepPoints' box and mask AP), each cell "minival / test-dev".

    As in :func:`paper_table`, a paper row gets one line per model of ours (``models``) trained
    from its preset, or one line saying it was not run. Per task our cell reads the run's AP of
    that COCO task (``bbox`` or ``segm``) on minival and on test-dev ("not scored" where test-dev
    was not scored, "skipped (no test-dev split)" where the data has none, "–" where the split
    or the task is missing; :func:`ap_cell`); the paper's cell the row's
    published ``(minival, test-dev)`` pair, "–" where the seed prints "---".
    """
    by_model = by_model_split(rows)
    columns = list(spec.get("columns", []))
    tasks = list(spec["tasks"])
    headings = [spec.get("name_heading", "name"), *columns, *(f"Ours: {h}" for _, h in tasks),
                "Our model (scale)", "Measured on", *(f"Paper: {h}" for _, h in tasks)]
    lines = [
        f"**{spec['title']}** (published: {spec['source']})",
        "",
        "| " + " | ".join(headings) + " |",
        "|---|" + "---|" * len(columns) + ":-:|" * len(tasks) + "---|---|" + ":-:|" * len(tasks),
    ]
    notes = []
    for row in spec["rows"]:
        paper = "".join(f" {_pub(row[task][0])} / {_pub(row[task][1])} |" for task, _ in tasks)
        name, described, ours = _paper_row_start(row, columns, by_model, notes)
        if not ours:
            lines.append(f"| {name} |{described}" + " not run |" * len(tasks) + f" – | – |{paper}")
            continue
        for model, splits in ours:
            mv, td = splits.get("minival", {}), splits.get("test-dev", {})
            any_row = mv or td
            cells = []
            for task, _ in tasks:
                v = fmt(mv.get(task, {}).get("AP")) if mv else "–"
                t = ap_cell(td, task)
                cells.append(f" {v} / {t} |")
            measured = measured_on(mv, td)
            lines.append(f"| {name} |{described}{''.join(cells)} {model} ({any_row.get('scale')}) | {measured} "
                         f"|{paper}")
    lines.extend(_paper_notes(spec, notes))
    return "\n".join(lines)


def paper_tables(rows: list[dict[str, Any]], noise: float = 0.0) -> str:
    """Every paper table of :data:`PAPER_TABLES`, then CPM R-CNN's two (test-dev and
    component-wise), separated by blank lines."""
    return "\n\n".join([*(paper_table(spec, rows) for spec in PAPER_TABLES),
                        cpm_testdev_table(rows), cpm_component_table(rows, noise=noise)])


def _pub(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def cpm_testdev_table(rows: list[dict[str, Any]], spec: dict[str, Any] = CPM_TESTDEV_TABLE) -> str:
    """CPM R-CNN's test-dev table: per backbone row, one line per model of ours (``models``)
    trained from the row's preset, its test-dev box AP / AP50 / APs / APm / APl where test-dev
    was scored ("not scored" / "skipped (no test-dev split)" otherwise), beside the README's
    numbers; "not run" where we have no such model."""
    lines = [
        f"**{spec['title']}** (published: {spec['source']})",
        "",
        "| Backbone | LR | Ours: mAP (test-dev) | Ours: AP50 | Ours: APs / APm / APl | Our model (scale) "
        "| Measured on | Paper: mAP | Paper: AP50 | Paper: APs / APm / APl |",
        "|---|---|:-:|:-:|:-:|---|---|:-:|:-:|:-:|",
    ]
    by_model = by_model_split(rows)
    for row in spec["rows"]:
        head = f"| {row['Backbone']} | {row['LR']} |"
        paper = (f"| {_pub(row['AP'])} | {_pub(row['AP50'])} "
                 f"| {_pub(row['APs'])} / {_pub(row['APm'])} / {_pub(row['APl'])} |")
        ours = [(m, s) for m, s in by_model.items() if next(iter(s.values())).get("preset") == row["preset"]]
        if not ours:
            lines.append(f"{head} not run | not run | not run | – | – {paper}")
            continue
        for model, splits in ours:
            td = splits.get("test-dev")
            scale = next(iter(splits.values())).get("scale")
            if td is None:
                cols, measured = "– | – | –", "–"
            elif td.get("skipped"):
                cols, measured = f"{skipped_cell('test-dev')} | – | –", td["dataset"]
            elif not td.get("scored"):
                cols, measured = "not scored | not scored | not scored", td["dataset"]
            else:
                b = td.get("bbox", {})
                cols = (f"{fmt(b.get('AP'))} | {fmt(b.get('AP50'))} "
                        f"| {fmt(b.get('APs'))} / {fmt(b.get('APm'))} / {fmt(b.get('APl'))}")
                measured = td["dataset"]
            lines.append(f"{head} {cols} | {model} ({scale}) | {measured} {paper}")
    return "\n".join(lines)


def component_runs(rows: list[dict[str, Any]], spec: dict[str, Any] = CPM_COMPONENT_TABLE
                   ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Per row of ``spec``: (the row, the minival records of our runs of the spec's preset whose
    resolved module switches are exactly the row's), in the records' order, each (configuration,
    seed) once (:func:`distinct_runs`). The runs are the ablations (one per seed of
    ``ablation_seeds``) and the models alike: the all-modules row reads the ``models`` run of the
    preset (``cpm_rcnn_r50_fpn``, trained with params ``seed``), which an ablation entry of the
    same configuration would only repeat at that seed."""
    minival = [r for r in rows if r["split"] == "minival" and r.get("modules") is not None
               and r.get("preset") == spec["preset"]]
    return [(row, distinct_runs([r for r in minival
                                 if tuple(r["modules"][k] for k in spec["switches"]) == tuple(row["modules"])]))
            for row in spec["rows"]]


def distinct_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` with each (configuration, seed) pair once, the first kept: two runs of the
    same configuration (``record["config"]``, else its entry) trained with the same seed
    (``record["seed"]``) are one measurement, not two. A record without a seed is always kept."""
    seen: set[tuple[str, Any]] = set()
    out = []
    for r in records:
        if r.get("seed") is None:
            out.append(r)
            continue
        key = (r.get("config") or r.get("entry") or r["model"], r["seed"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def ap_summary(records: list[dict[str, Any]]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation, n) of the records' minival box AP (those that have one;
    COCO's -1 counts as missing); the std is None unless n > 1, the mean None when n is 0."""
    aps = [ap for ap in (r.get("bbox", {}).get("AP") for r in records) if ap is not None and ap >= 0]
    if not aps:
        return None, None, 0
    return statistics.mean(aps), (statistics.stdev(aps) if len(aps) > 1 else None), len(aps)


def fmt_mean_std(mean: float | None, std: float | None, n: int) -> str:
    """An AP cell of the component table: :func:`fmt` of one run's AP, ``mean ± std (n=<n>)`` in
    percent for several runs (std: the sample standard deviation), '–' for none."""
    if n <= 1 or std is None:
        return fmt(mean)
    return f"{100 * mean:.1f} ± {100 * std:.1f} (n={n})"


def paper_way(aps: list[float | None]) -> tuple[list[bool | None], bool | None]:
    """For APs in the component table's row order (none; each module alone; all modules):
    per module, whether it alone is above the baseline, and whether all modules together beat
    every other row; None where a needed AP is missing."""
    base, *singles, full = aps
    alone = [None if base is None or ap is None else ap > base for ap in singles]
    best = None if any(ap is None for ap in aps) else all(full > ap for ap in (base, *singles))
    return alone, best


NOISE = "within noise"


def our_way(aps: list[float | None], noise: float = 0.0, spreads: list[float | None] | None = None
            ) -> tuple[list[bool | str | None], bool | str | None]:
    """:func:`paper_way` for our runs, where a difference smaller than ``noise`` (the measured
    run-to-run spread of box AP, params.yaml ``noise.box_ap``) says nothing: such a comparison
    is :data:`NOISE` instead of True or False. ``aps`` are the rows' APs (the mean where a row has
    several runs); ``spreads``, in the same order, the rows' standard deviations (None or 0 for a
    row of one run): a difference smaller than the larger spread of the two rows compared is
    :data:`NOISE` too. ``noise`` 0 without spreads gives :func:`paper_way`'s answers."""
    spread = [float(v or 0.0) for v in (spreads if spreads is not None else [None] * len(aps))]
    if len(spread) != len(aps):
        raise ValueError(f"{len(aps)} APs but {len(spread)} spreads")
    if noise <= 0 and not any(spread):
        return paper_way(aps)
    base, *singles, full = aps
    s_base, *s_singles, s_full = spread

    def compare(a: float | None, b: float | None, sa: float, sb: float) -> bool | str | None:
        if a is None or b is None:
            return None
        return NOISE if abs(a - b) < max(noise, sa, sb) else a > b

    alone = [compare(ap, base, s, s_base) for ap, s in zip(singles, s_singles)]
    if any(ap is None for ap in aps):
        return alone, None
    top, s_top = max([(base, s_base), *zip(singles, s_singles)], key=lambda pair: pair[0])
    return alone, compare(full, top, s_full, s_top)


def _yes_no(v: bool | str | None) -> str:
    if isinstance(v, str):
        return v
    return "not run" if v is None else ("yes" if v else "no")


def component_verdict(ours: list[bool | str | None], paper: list[bool | None]) -> str:
    """Whether our comparisons go the paper's way: "cannot tell yet" with a run missing, "no" if
    one outside the noise goes the other way, "within noise" if none is outside it, else "yes"
    (saying how many were within noise)."""
    if any(v is None for v in ours):
        return "cannot tell yet (runs missing)"
    decided = [(o, p) for o, p in zip(ours, paper) if not isinstance(o, str)]
    if not decided:
        return NOISE
    if any(o != p for o, p in decided):
        return "no"
    quiet = len(ours) - len(decided)
    return "yes" if quiet == 0 else f"yes where the differences exceed the noise ({quiet} of {len(ours)} within it)"


def cpm_component_table(rows: list[dict[str, Any]], spec: dict[str, Any] = CPM_COMPONENT_TABLE,
                        noise: float = 0.0) -> str:
    """CPM R-CNN's component-wise table: per combination of modules, one line with our minival
    box AP of the runs with exactly those switches (:func:`component_runs`: the ablation runs,
    one per seed, and the model run; each (configuration, seed) once) beside the README's
    val2017 AP: the AP of a single run as before, ``mean ± std (n=<runs>)`` of several (sample
    std). Then whether our runs order the same way as the paper's (each module alone above the
    baseline; all three best), computed from the unrounded means. A difference of ours smaller
    than ``noise`` (box AP as a fraction, the measured spread), or than the larger std of the two
    rows compared, is "within noise"."""
    mods = spec["modules"]
    lines = [
        f"**{spec['title']}** (published: {spec['source']}; {spec['preset']}, val2017)",
        "",
        "| " + " | ".join(mods) + " | Ours: minival AP | Our run (scale) | Measured on | Paper: AP (val2017) |",
        "|" + ":-:|" * len(mods) + ":-:|---|---|:-:|",
    ]
    means: list[float | None] = []
    spreads: list[float | None] = []
    several = False
    for row, found in component_runs(rows, spec):
        marks = "".join(f" {'✓' if on else ''} |" for on in row["modules"])
        mean, std, n = ap_summary(found)
        means.append(mean)
        spreads.append(std)
        several = several or n > 1
        if not found:
            lines.append(f"|{marks} not run | – | – | {_pub(row['AP'])} |")
            continue
        lines.append(f"|{marks} {fmt_mean_std(mean, std, n)} | {_run_names(found)} "
                     f"| {'; '.join(dict.fromkeys(r['dataset'] for r in found))} | {_pub(row['AP'])} |")
    paper_alone, paper_best = paper_way([row["AP"] for row in spec["rows"]])
    our_alone, our_best = our_way(means, noise, spreads)
    single = [mods[row["modules"].index(True)] for row in spec["rows"][1:-1]]

    def summary(alone, best):
        return ("each module alone above the baseline: "
                + ", ".join(f"{m} {_yes_no(v)}" for m, v in zip(single, alone))
                + f"; all three best: {_yes_no(best)}")

    verdict = component_verdict([*our_alone, our_best], [*paper_alone, paper_best])
    notes = []
    if noise > 0:
        notes.append(f"a difference under {100 * noise:.1f} AP, the measured run-to-run spread at this scale, "
                     "is within noise")
    if several:
        notes.append("a row of several runs (seeds) is compared by its mean, and a difference under the "
                     "larger standard deviation of the two rows is within noise" + (" too" if noise > 0 else ""))
    noise_note = "".join(f"; {note}" for note in notes)
    lines += [
        "",
        f"Does our ablation go the paper's way? **{verdict}**. Paper: {summary(paper_alone, paper_best)}. "
        f"Ours (minival box AP{noise_note}): {summary(our_alone, our_best)}.",
    ]
    return "\n".join(lines)


def _run_names(records: list[dict[str, Any]]) -> str:
    """The "Our run (scale)" cell: each run's name with its scale, one scale after all names
    when they share it (``a_seed0, a_seed1 (cpu)``)."""
    scales = list(dict.fromkeys(r.get("scale") for r in records))
    if len(scales) == 1:
        return f"{', '.join(r['model'] for r in records)} ({scales[0]})"
    return ", ".join(f"{r['model']} ({r.get('scale')})" for r in records)


SNAPPING_TITLE = "RepPoints V2 joint inference (corner snapping)"
CONTOUR_SNAPPING_TITLE = "Dense RepPoints V2 contour snapping"


def snapping_pairs(rows: list[dict[str, Any]], switch: str
                   ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """``(minival record, numbers with switch on, numbers with it off)`` for each minival record
    with a ``<switch>_on`` / ``<switch>_off`` variant that carries the switch's value; one of
    the two is the record itself (the model's default), the other the variant."""
    out = []
    for r in rows:
        if r["split"] != "minival":
            continue
        for name, variant in (r.get("variants") or {}).items():
            if not name.startswith(f"{switch}_") or variant.get(switch) is None:
                continue
            out.append((r, variant, r) if variant[switch] else (r, r, variant))
    return out


def _ap(numbers: dict[str, Any], task: str) -> float | None:
    return numbers.get(task, {}).get("AP")


def _difference(on: float | None, off: float | None) -> str:
    """on - off in percent points with its sign, from the unrounded APs; '–' where one is missing."""
    return "–" if on is None or off is None or on < 0 or off < 0 else f"{100 * (on - off):+.1f}"


def corner_snapping_table(rows: list[dict[str, Any]]) -> str:
    """Our minival box AP of each model evaluated with its head's corner snapping on and off
    (the same weights, two decodings; see :mod:`pipeline.evaluate`), or ``""`` when no model
    has that variant. The difference is on - off, from the unrounded APs."""
    lines = [
        "The same trained weights decoded twice: RepPoints V2's corner snapping (joint inference) on and off.",
        "",
        "| Our model (scale) | Ours: minival box AP, snapping on | Ours: minival box AP, snapping off "
        "| Difference (on - off) | Measured on |",
        "|---|:-:|:-:|:-:|---|",
    ]
    pairs = snapping_pairs(rows, "corner_snapping")
    for r, on_numbers, off_numbers in pairs:
        on, off = _ap(on_numbers, "bbox"), _ap(off_numbers, "bbox")
        lines.append(f"| {r['model']} ({r.get('scale')}) | {fmt(on)} | {fmt(off)} | {_difference(on, off)} "
                     f"| {r['dataset']} |")
    return "\n".join(lines) if pairs else ""


def contour_snapping_table(rows: list[dict[str, Any]]) -> str:
    """Our minival mask AP of each model evaluated with its head's contour snapping on and off
    (Dense RepPoints V2: the same weights, masks built with and without the snapped contour
    points; see :mod:`pipeline.evaluate`), or ``""`` when no model has that variant. The
    difference is on - off, from the unrounded APs. Boxes and scores do not depend on the
    switch, so the box AP is one number; should the two runs' box APs differ by more than
    :data:`TOLERANCE`, the cell shows both ("on / off")."""
    lines = [
        "The same trained weights, masks built with and without the snapped contour points "
        "(boxes and scores are the same both ways, so only mask AP can move).",
        "",
        "| Our model (scale) | Ours: minival mask AP, snapping on | Ours: minival mask AP, snapping off "
        "| Difference (on - off) | Ours: minival box AP (both) | Measured on |",
        "|---|:-:|:-:|:-:|:-:|---|",
    ]
    pairs = snapping_pairs(rows, "contour_snapping")
    for r, on_numbers, off_numbers in pairs:
        on, off = _ap(on_numbers, "segm"), _ap(off_numbers, "segm")
        box_on, box_off = _ap(on_numbers, "bbox"), _ap(off_numbers, "bbox")
        if box_on is not None and box_off is not None and abs(box_on - box_off) > TOLERANCE:
            box = f"{fmt(box_on)} / {fmt(box_off)}"
        else:
            box = fmt(box_on if box_on is not None else box_off)
        lines.append(f"| {r['model']} ({r.get('scale')}) | {fmt(on)} | {fmt(off)} | {_difference(on, off)} "
                     f"| {box} | {r['dataset']} |")
    return "\n".join(lines) if pairs else ""


NOTE = (
    "Our numbers are COCO AP (%) measured by `dvc repro` on the data named in *Measured on*; "
    "the published numbers are the papers' / model zoo's on real COCO 2017 at paper scale, "
    "shown for reference only. The two are not comparable unless *Measured on* says COCO."
)


def note_text(noise: float = 0.0) -> str:
    """:data:`NOTE`, plus, when params ``noise.box_ap`` is set (a fraction), how much a CPU-scale
    number moves between runs and machines."""
    if noise <= 0:
        return NOTE
    return (f"{NOTE} Numbers at CPU scale vary by about {100 * noise:.1f} AP between runs and machines "
            "(seed, CPU kernels, threads; params `noise.box_ap`, measured by `scripts/measure_spread.py`): "
            "read smaller differences as noise.")


def replace_between_markers(text: str, body: str, path: Path) -> str:
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ReportError(f"{path}: the markers {BEGIN} ... {END} are missing or out of order")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def write_figures(params: dict[str, Any], reports_dir: Path, metrics_root: Path, weights_root: Path | None,
                  manifest_file: Path | None) -> dict[str, dict[str, Path]]:
    """Per run (``models``, then ``ablations``): PR curves (minival), training curves and, where the trained model and the
    data are at hand, a grid of minival predictions. Returns ``{model: {kind: png path}}``."""
    figures_dir = reports_dir / "figures"
    out: dict[str, dict[str, Path]] = {}
    for model_name in runs(params):
        figs: dict[str, Path] = {}
        pr_csv = pr_curve_file(Path(metrics_root), model_name, "minival", "bbox")
        if pr_csv.exists():
            figs["pr"] = figures_dir / f"pr_{model_name}_minival.png"
            plot_pr_curves(read_curves_csv(pr_csv), figs["pr"], f"{model_name}: box precision-recall on minival")
        curve_csv = Path(metrics_root) / model_name / "train_curve.csv"
        if curve_csv.exists():
            figs["train"] = figures_dir / f"train_{model_name}.png"
            plot_training_curves(curve_csv, figs["train"], f"{model_name}: training losses and learning rate")
        final = weights_file(model_name, weights_root) if weights_root else None
        if final is not None and final.exists() and manifest_file is not None and Path(manifest_file).exists():
            figs["predictions"] = figures_dir / f"predictions_{model_name}.png"
            write_prediction_grid(final, Path(manifest_file), figs["predictions"])
        out[model_name] = figs
    return out


#: The overlays of ``dvc plots show`` (dvc.yaml's top-level ``plots``): file name -> (the per-run
#: source under ``metrics/<run>/``, its x column, its y column, the x and y names in the overlay).
OVERLAY_PLOTS = {
    "pr_minival_bbox.csv": ("pr/minival_bbox.csv", "recall", "mean", "recall", "precision"),
    "pr_minival_segm.csv": ("pr/minival_segm.csv", "recall", "mean", "recall", "precision"),
    "train_loss.csv": ("train_curve.csv", "iteration", "loss", "iteration", "loss"),
}


def write_overlay_plots(params: dict[str, Any], plots_dir: Path, metrics_root: Path) -> dict[str, Path]:
    """One CSV per :data:`OVERLAY_PLOTS` entry with a ``model`` column and the rows of every run
    that has the source file (models, then ablations), so that one figure overlays them all
    (the template ``.dvc/plots/by_model.json`` colours by ``model``). Returns {name: path}."""
    import csv
    import io

    out = {}
    for name, (source, x, y, x_name, y_name) in OVERLAY_PLOTS.items():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["model", x_name, y_name])
        rows = 0
        for model_name in runs(params):
            path = Path(metrics_root) / model_name / source
            if not path.exists():
                continue
            with open(path, newline="") as f:
                for rec in csv.DictReader(f):
                    if rec.get(x, "") != "" and rec.get(y, "") != "":
                        writer.writerow([model_name, rec[x], rec[y]])
                        rows += 1
        out[name] = plots_dir / name
        atomic_write_text(out[name], buf.getvalue())
    return out


def summary_metrics(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``reports/metrics.json``, the DVC metrics of the pipeline: per run the numbers a person
    compares (minival box AP / AP50 / AP75, mask AP where there are masks, test-dev box AP where
    it is scored), so that ``dvc exp show`` and ``dvc metrics diff`` stay a readable table. Every
    COCO number is in ``metrics/<run>/<split>.json`` and in MLflow."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        m = out.setdefault(r["model"], {})
        if r["split"] == "minival":
            for k in ("AP", "AP50", "AP75"):
                if k in r.get("bbox", {}):
                    m[f"box_{k}"] = round(r["bbox"][k], 6)
            if "segm" in r:
                m["mask_AP"] = round(r["segm"]["AP"], 6)
        elif r.get("scored") and "bbox" in r:
            m[f"{r['split']}_box_AP"] = round(r["bbox"]["AP"], 6)
    return out


def write_prediction_grid(checkpoint: Path, manifest_file: Path, path: Path, num_images: int = 8) -> None:
    """Draw the model's detections (score >= 0.3) and the ground truth on minival images."""
    import torch

    from pipeline.data import build_dataset, load_manifest
    from pipeline.evaluate import load_trained_model
    from pipeline.visualize import prediction_grid, save_png

    device = torch.device("cpu")
    model, state = load_trained_model(checkpoint, device)
    dataset = build_dataset(load_manifest(manifest_file).split("minival"), state["config"]["data"], train=False, seed=0)
    names = [c["name"] for c in state["categories"]]
    grid = prediction_grid(model, dataset, state["cat_ids"], names, device, num_images=num_images)
    save_png(grid, path)


def figures_markdown(figures: dict[str, dict[str, Path]], base: Path) -> str:
    """Markdown image links (relative to ``base``) for each model's figures."""
    captions = {"pr": "precision-recall on minival", "predictions": "minival predictions (white: ground truth)",
                "train": "training curves"}
    lines = []
    for model_name, figs in figures.items():
        for kind in ("pr", "predictions", "train"):
            if kind in figs:
                rel = figs[kind].resolve().relative_to(base.resolve())
                lines.append(f"![{model_name}: {captions[kind]}]({rel.as_posix()})")
    return "\n".join(lines)


def write_report(params: dict[str, Any], readme: Path = README_FILE, reports_dir: Path = REPORTS_DIR,
                 metrics_root: Path = METRICS_DIR, weights_root: Path | None = WEIGHTS_DIR,
                 manifest_file: Path | None = MANIFEST_FILE) -> str:
    rows = collect(params, metrics_root, weights_root)
    noise = float((params.get("noise") or {}).get("box_ap") or 0.0)
    table = results_table(rows)
    snapping = corner_snapping_table(rows)
    contour = contour_snapping_table(rows)
    reports_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(params, reports_dir, metrics_root, weights_root, manifest_file)
    write_overlay_plots(params, reports_dir / "plots", metrics_root)
    write_json(summary_metrics(rows), reports_dir / "metrics.json")
    md = "\n\n".join([
        "# Results",
        "Generated by `python -m pipeline.report` from the MLflow store; do not edit by hand.",
        note_text(noise),
        "## Detection (box AP)",
        table,
        "## The papers' tables",
        paper_tables(rows, noise),
        *([f"## {SNAPPING_TITLE}", snapping] if snapping else []),
        *([f"## {CONTOUR_SNAPPING_TITLE}", contour] if contour else []),
        "## All COCO numbers",
        full_table(rows),
        "## Figures",
        figures_markdown(figures, reports_dir),
    ]) + "\n"
    atomic_write_text(reports_dir / "results.md", md)
    readme = Path(readme)
    first = {name: {k: v for k, v in figs.items() if k in ("pr", "predictions")}
             for name, figs in list(figures.items())[:1]}
    body = f"{note_text(noise)}\n\n{table}\n\n{paper_tables(rows, noise)}"
    if snapping:
        body += f"\n\n**{SNAPPING_TITLE}**\n\n{snapping}"
    if contour:
        body += f"\n\n**{CONTOUR_SNAPPING_TITLE}**\n\n{contour}"
    if any(first.values()):
        body += "\n\n" + figures_markdown(first, readme.parent)
    atomic_write_text(readme, replace_between_markers(readme.read_text(), body, readme))
    return md


def only_entries(params: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A copy of ``params`` whose ``models`` and ``ablations`` hold only the entries ``names``.
    :class:`ReportError` for a name that is in neither section."""
    out = dict(params)
    known: set[str] = set()
    for section in ("models", "ablations"):
        entries = params.get(section) or {}
        known |= set(entries)
        out[section] = {k: v for k, v in entries.items() if k in names}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ReportError(f"--models: {', '.join(unknown)} not among the entries of 'models' or 'ablations' "
                          f"(have: {', '.join(sorted(known))})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--models", nargs="+", metavar="NAME", default=None,
                        help="report only these entries of 'models' / 'ablations' (default: every run)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if args.models:
            params = only_entries(params, args.models)
        md = write_report(params)
    except (ReportError, TrackingStoreError) as e:
        raise SystemExit(f"[report] {e}") from e
    print(md)


if __name__ == "__main__":
    main()
