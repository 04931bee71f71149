"""The results file: one JSON document per (machine, date, backend), written by `bench`, read by
`bench report` and the time planner.

    benchmarks/results/<gpu-slug>/<date>-<backend>.json      e.g. nvidia-h100-80gb-hbm3/2026-11-22-torch.json

A later run of the same backend on the same machine and day replaces the file (atomically). Every file
of one `bench` invocation carries the same `run_id`, so ratios across backends (speedups over the
reference loop) are taken within one run.

Document (schema 1):
    kind, schema, run_id, created, date, machine (the slug), backend, label (in words),
    status ("ok" | "not run" | "failed"), reason (why not, or None),
    hardware {device, gpu (NVML facts and clocks), cuda, host, versions, torch, matmul_peak, copy_bandwidth},
    model {name, config, weights, precision, patch_sizes, macs_by_patch, weight_bytes_by_patch},
    options (every bench option, forward_runs and warmup included);
  with status "ok", a backend's document adds
    why (the pipeline's selection reason), setup_s (building the pipeline), build (what the bench built
    itself before that, here the ort backend's missing ONNX graphs: {what, folder, precision, weights,
    seconds, graphs [{patch_size, file, rebuilt, reason, export_seconds}]}; None when it built nothing),
    engines (each engine's description),
    forwards [{patch_size, batch (rows), images, stats, floor, tflops, peak_fraction, over_floor}],
    trajectories [{images, budget, plan, cold_s (the first call), weak_steps, achieved_fraction,
                   wall (stats of the record's total_wall_s), wall_s (its median), call (stats of the whole generate call), images_per_s,
                   loop_ms, forward_ms_sum, loop_overhead_fraction, outside_loop_ms, step_ms_by_patch,
                   steps_by_patch, memory (the record's), speedup_vs_static, speedup_vs_reference,
                   speedup_vs_diffusers, diffusers {backend, wall_s, cold_s} (the faster diffusers-compiled
                   run at the same image count in the same run; None when none ran)}],
    memory {images, budget, shared_pool_bytes, pool_per_engine_bytes, [graph_pools, peak_reserved_bytes,] how}
           | {not_measured},
    time_plans [{images, fraction, weak_steps, predicted_fraction, plan | unreachable,
                 macs_plan_weak_steps, macs_plan_measured_fraction, macs_plan_predicted_fraction, ...}],
    with --profile (options.profile) also
    profiles [{patch_size, batch (rows), images, device, activities, runs, rows (what they are), note,
               kernels_per_forward, device_us_per_forward, busy_us_per_forward, wall_us_per_forward,
               profiled_wall_us_per_forward, busy_fraction, by_category {gemm, attention,
               norm_elementwise, copies, other: {us_per_forward, share}},
               top [{name, category, count, per_forward, total_us, mean_us}], limit}
              | {patch_size, batch, images, failed}]   (each engine's forward, eager: profile.py)
             | {not_profiled} (engines that are not torch callables);
  the reference loop's adds trajectories [{images, wall, wall_s, images_per_s}];
  a diffusers backend's (diffusers[-compiled]-<fp16|bf16>) adds why, setup_s and trajectories [{images,
    budget None, cold_s, wall, wall_s, images_per_s, speedup_vs_reference, speedup_vs_diffusers, diffusers}].
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..artifacts import ManifestError, read_manifest, write_json_atomic

RESULTS_KIND = "flexidit-trt/bench-results"
RESULTS_SCHEMA = 1
RESULTS_NAME = re.compile(r"\d{4}-\d{2}-\d{2}-[a-z][a-z0-9-]*\.json")  # results_path's names
STATUSES = ("ok", "not run", "failed")
REQUIRED = (
    "run_id",
    "created",
    "date",
    "machine",
    "backend",
    "label",
    "status",
    "reason",
    "hardware",
    "options",
)


def results_path(out: str | Path, machine: str, date: str, backend: str) -> Path:
    return Path(out) / machine / f"{date}-{backend}.json"


def new_document(**fields: Any) -> dict[str, Any]:
    """A results document with the kind and schema set; `fields` fill it."""
    return {"kind": RESULTS_KIND, "schema": RESULTS_SCHEMA, **fields}


def read_results(path: str | Path) -> dict[str, Any]:
    """One results file; ManifestError (one line, naming the file) for another kind, schema or shape."""
    doc = read_manifest(path, RESULTS_KIND, RESULTS_SCHEMA)
    if doc is None:
        raise ManifestError(f"results file {path} does not exist")
    _check(doc, f"results file {path}")
    return doc


def find_results(root: str | Path) -> list[Path]:
    """Every `<machine>/<date>-<backend>.json` under `root`, sorted. Other JSON beside them (a run record,
    the eval's results.json, both under benchmarks/results too) is not a bench result and is skipped."""
    root = Path(root)
    return sorted(p for p in root.glob("*/*.json") if RESULTS_NAME.fullmatch(p.name))


def latest(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (machine, backend), the newest document that ran ("ok"), else the newest: a later run that
    could not run a backend (its engines were not built that time) does not hide earlier numbers."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in docs:
        key = (doc["machine"], doc["backend"])
        rank = (doc["status"] == "ok", doc["created"], doc["run_id"])
        old = best.get(key)
        if old is None or rank > (old["status"] == "ok", old["created"], old["run_id"]):
            best[key] = doc
    return [best[k] for k in sorted(best)]


def write_results(doc: dict[str, Any], out: str | Path) -> Path | None:
    """Check the document's shape, then write it atomically to its place under `out`. A document that did
    not run does not replace one of the same day that did: returns None and keeps that file."""
    _check(doc, "the document to write")
    path = results_path(out, doc["machine"], doc["date"], doc["backend"])
    if doc["status"] != "ok" and path.exists():
        try:
            if read_results(path)["status"] == "ok":
                return None
        except ManifestError:
            pass  # not a results file of ours: replace it
    return write_json_atomic(path, doc)


def step_seconds(doc: dict[str, Any], images: int) -> dict[int, float]:
    """Measured seconds of one step per patch size at `images` per batch in a results document (the time
    planner's input, diffusion/time_planner.py)."""
    out = trajectory_step_seconds(doc.get("trajectories", []), images)
    if not out:
        raise ValueError(f"{doc['backend']} on {doc['machine']} has no trajectories at {images} images")
    return out


def trajectory_step_seconds(trajectories: Iterable[dict[str, Any]], images: int) -> dict[int, float]:
    """Per patch size, the median step latency of the trajectory at `images` that ran that patch size
    most often (the static run for the base patch, the lowest budget for the weak ones)."""
    best: dict[int, tuple[int, float]] = {}
    for t in trajectories:
        if t["images"] != images or "step_ms_by_patch" not in t:
            continue
        for p, ms in t["step_ms_by_patch"].items():
            steps = t["steps_by_patch"][p]
            if int(p) not in best or steps > best[int(p)][0]:
                best[int(p)] = (steps, ms / 1e3)
    return {p: s for p, (_, s) in sorted(best.items())}


def _check(doc: Any, what: str) -> None:
    if not isinstance(doc, dict):
        raise ManifestError(f"{what} is not a JSON object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ManifestError(f"{what} lacks field(s) {', '.join(missing)}")
    if doc["status"] not in STATUSES:
        raise ManifestError(f"{what}: status {doc['status']!r} is not one of {', '.join(STATUSES)}")
    if doc["status"] != "ok" and not doc["reason"]:
        raise ManifestError(f"{what}: status {doc['status']!r} needs a reason")
    try:
        json.dumps(doc, allow_nan=False)  # the file must be plain JSON: no NaN or infinity
    except ValueError as err:
        raise ManifestError(f"{what}: {err}") from None
