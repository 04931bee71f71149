"""Trajectory times projected onto GPUs that were not measured, from the per-kernel profile measured with
them; every number made here is *projected*, never measured, and is labelled so wherever it is shown.

    proj = project_document(doc)           # a results file's trajectories on every SKU of TARGETS
    proj["trajectories"][0]["projected_s"] # {"a100-80gb-sxm": ..., "h100-sxm": ..., "l40s": ..., "b200": ...}
    check_projection([proj], read_measured(path))   # the method against a run measured on another GPU

Method, per sampling step (one patch size at one image count, the trajectory's `step_ms_by_patch`):
- the profile at that patch size and image count (`profiles`, eager, profile.py) splits the device's busy
  time by kernel category: GEMM and attention kernels are matrix time, the rest (normalisation and
  elementwise, copies, other) memory-bound. profile.py puts every recorded kernel in a category, so the
  categories cover all of the device time and nothing is apportioned from a top-kernel list; the names
  decide the category (its patterns: gemm/cutlass/xmma/nvjet → GEMM, flash/fmha/sdpa → attention);
- matrix time × source peak / target peak (dense bf16 tensor-core peaks: the efficiency seen on the
  measured GPU is kept), memory-bound time × source bandwidth / target bandwidth, and the rest of the
  measured step (step − device busy: the gaps between the graph's kernels, the sampler's host work) as is;
- a trajectory: its measured wall time less, per patch size, steps × (measured − projected step), so what
  runs outside the steps stays as measured.

Limits (the report repeats them): kernel efficiency is assumed equal across GPUs, while other
architectures run other kernels (no wgmma on the A100 and L40S, Blackwell's own GEMMs on the B200); small
kernels (1 image: ~5 µs each) are latency-bound and scale by neither ratio; memory-bound kernels whose
data stays in L2 do not scale with HBM bandwidth; the unchanged remainder assumes the same host and
launch costs. A profile whose busy time covers less than MIN_COVERAGE of the step is refused (see there).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import ManifestError
from ..errors import FlexiditError


@dataclass(frozen=True)
class Sku:
    key: str
    label: str
    gpu_name: str  # as NVML and torch name the device: how a measured machine finds its entry
    matrix_tflops: float  # dense bf16 tensor-core peak (without 2:4 sparsity)
    bandwidth_tbs: float  # device memory bandwidth (HBM, or GDDR6 on the L40S)


# The one SKU table. Values from the vendor's datasheets (NVIDIA's A100, H100, H200 and L40S datasheets and
# its DGX/HGX B200 datasheets), dense bf16 without sparsity; the B200 is the 1,000 W HGX part.
SKUS = {
    s.key: s
    for s in (
        Sku("a100-80gb-sxm", "A100 80GB SXM", "NVIDIA A100-SXM4-80GB", 312.0, 2.039),
        Sku("h100-sxm", "H100 SXM", "NVIDIA H100 80GB HBM3", 989.0, 3.35),
        Sku("h200-sxm", "H200 SXM", "NVIDIA H200", 989.0, 4.8),
        Sku("l40s", "L40S", "NVIDIA L40S", 362.0, 0.864),
        Sku("b200", "B200", "NVIDIA B200", 2250.0, 8.0),
    )
}
TARGETS = tuple(SKUS[k] for k in ("a100-80gb-sxm", "h100-sxm", "l40s", "b200"))
MATRIX = ("gemm", "attention")
# A step replayed from a CUDA graph leaves ~1 µs between kernels: a few percent of the step. A profile
# whose device busy covers less of the measured step lost kernels (torch 2.11's profiler dropped
# inductor's Triton kernels until profile.py was fixed), and holding that remainder fixed would hide them.
MIN_COVERAGE = 0.85
# Names another measurement gave the same backend (the H100 runtime run called torch.compile so).
BACKEND_ALIASES = {"torch-compiled": "torch"}


class ProjectionError(FlexiditError):
    """A step or run that cannot be projected: the reason, in one line."""


@dataclass(frozen=True)
class StepParts:
    """One measured step split into matrix, memory-bound and remaining milliseconds."""

    matrix_ms: float
    memory_ms: float
    rest_ms: float

    @property
    def total_ms(self) -> float:
        return self.matrix_ms + self.memory_ms + self.rest_ms

    def on(self, source: Sku, target: Sku) -> StepParts:
        """The same step projected from `source` onto `target`."""
        return StepParts(
            self.matrix_ms * source.matrix_tflops / target.matrix_tflops,
            self.memory_ms * source.bandwidth_tbs / target.bandwidth_tbs,
            self.rest_ms,
        )


def sku_of(gpu_name: str | None) -> Sku:
    """The table's entry for a measured device; ProjectionError for one it lacks (or the CPU)."""
    if not gpu_name:
        raise ProjectionError("measured on the CPU: no GPU to project from")
    for sku in SKUS.values():
        if sku.gpu_name == gpu_name:
            return sku
    raise ProjectionError(f"{gpu_name} is not in the SKU table (bench/projection.py)")


def split_step(step_ms: float, profile: dict[str, Any]) -> StepParts:
    """A measured step split by its profile's shares of device time: the device busy (capped at the step:
    graph replays may run the kernels a little faster than eager launches) into matrix and memory-bound,
    the rest of the step unchanged. ProjectionError if the profile does not explain the step."""
    by = {c: v["us_per_forward"] for c, v in profile["by_category"].items()}
    total = sum(by.values())
    if total <= 0 or step_ms <= 0:
        raise ProjectionError("the profile recorded no device time")
    busy_ms = profile["busy_us_per_forward"] / 1e3
    if busy_ms < MIN_COVERAGE * step_ms:
        raise ProjectionError(
            f"the profile's device busy covers {busy_ms / step_ms:.0%} of the measured step at patch "
            f"{profile['patch_size']}, {profile['images']} image(s) (< {MIN_COVERAGE:.0%}): kernels missing from it"
        )
    device_ms = min(busy_ms, step_ms)
    matrix_ms = device_ms * sum(by.get(c, 0.0) for c in MATRIX) / total
    return StepParts(matrix_ms, device_ms - matrix_ms, step_ms - device_ms)


def project_trajectory(
    trajectory: dict[str, Any], profiles: dict[tuple[int, int], dict], source: Sku, targets: Sequence[Sku]
) -> dict[str, Any]:
    """One trajectory's wall time on every target, with each step's parts (ms)."""
    images = trajectory["images"]
    parts = {}
    for p, ms in trajectory.get("step_ms_by_patch", {}).items():
        profile = profiles.get((int(p), images))
        if profile is None:
            raise ProjectionError(f"no profile of patch {p} at {images} image(s)")
        parts[p] = split_step(ms, profile)
    if not parts:
        raise ProjectionError("no per-step times in the trajectory")
    projected, steps = {}, {}
    for target in targets:
        saved_ms = sum(
            trajectory["steps_by_patch"][p] * (s.total_ms - s.on(source, target).total_ms)
            for p, s in parts.items()
        )
        projected[target.key] = trajectory["wall_s"] - saved_ms / 1e3
    for p, s in parts.items():
        steps[p] = {
            "measured_ms": s.total_ms,
            "matrix_ms": s.matrix_ms,
            "memory_ms": s.memory_ms,
            "rest_ms": s.rest_ms,
            "projected_ms": {t.key: s.on(source, t).total_ms for t in targets},
        }
    return {
        "images": images,
        "budget": trajectory.get("budget"),
        "measured_s": trajectory["wall_s"],
        "projected_s": projected,
        "steps": steps,
    }


def project_document(doc: dict[str, Any], targets: Sequence[Sku] = TARGETS) -> dict[str, Any]:
    """A results document's trajectories projected onto `targets`, or the reason it cannot be."""
    head = {"machine": doc["machine"], "backend": doc["backend"]}
    try:
        if doc["status"] != "ok":
            raise ProjectionError(f"{doc['status']}: {doc['reason']}")
        gpu = doc["hardware"].get("gpu")
        source = sku_of(gpu.get("name") if isinstance(gpu, dict) else None)
        profiles = doc.get("profiles")
        if not isinstance(profiles, list) or not profiles:
            raise ProjectionError("no per-kernel profile in its results file")
        by_shape = {(f["patch_size"], f["images"]): f for f in profiles if "failed" not in f}
        runs = [project_trajectory(t, by_shape, source, targets) for t in doc.get("trajectories", [])]
    except ProjectionError as err:
        return {**head, "not_projected": str(err)}
    return {**head, "source": source.key, "trajectories": runs}


@dataclass(frozen=True)
class Measured:
    """Trajectories measured on another GPU, to check projections against."""

    path: str
    sku: Sku
    # {backend, measured_as (its name there), images, budget, wall_s, step_ms_by_patch} per row
    rows: list[dict[str, Any]]


def read_measured(path: str | Path) -> Measured:
    """The runtime run's file (`results/runtime/runtime_gpu.json`: env.gpu and rows of backend, images,
    budget, wall_s, by_patch step medians). ManifestError for another shape; ProjectionError for a GPU the
    table lacks."""
    try:
        data = json.loads(Path(path).read_text())
        gpu, rows = data["env"]["gpu"], data["rows"]
        out = [
            {
                "backend": BACKEND_ALIASES.get(r["backend"], r["backend"]),
                "measured_as": r["backend"],
                "images": r["images"],
                "budget": r["budget"],
                "wall_s": r["wall_s"],
                "step_ms_by_patch": {p: v["step_ms_median"] for p, v in r.get("by_patch", {}).items()},
            }
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"{path} is not a runtime measurement (env.gpu, rows): {err}") from None
    return Measured(str(path), sku_of(gpu), out)


def check_projection(projections: Iterable[dict[str, Any]], measured: Measured) -> dict[str, Any]:
    """Every measured row with a projection of the same backend, image count and budget onto its GPU:
    projected against measured, the error (projected / measured − 1), and each step's error."""
    runs: dict[tuple, tuple | None] = {}
    for p in projections:
        for t in p.get("trajectories", []):
            key = (p["backend"], t["images"], t["budget"])
            runs[key] = None if key in runs else (p, t)  # None: runs of several machines, none is the one
    not_projected = {p["backend"]: p["not_projected"] for p in projections if "not_projected" in p}
    rows = []
    for m in measured.rows:
        row = {k: m[k] for k in ("backend", "measured_as", "images", "budget")} | {"measured_s": m["wall_s"]}
        key = (m["backend"], m["images"], m["budget"])
        found = runs.get(key)
        if key in runs and found is None:
            row["not_projected"] = "several machines' runs of this backend: pass one machine's results"
        elif found is None:
            row["not_projected"] = not_projected.get(m["backend"], "no run of this backend to project from")
        else:
            p, t = found
            projected = t["projected_s"].get(measured.sku.key)
            if projected is None:
                raise ProjectionError(f"{measured.sku.label} is not among the projection's targets")
            row |= {
                "from": {"machine": p["machine"], "source": p["source"], "measured_s": t["measured_s"]},
                "projected_s": projected,
                "error": projected / m["wall_s"] - 1,
                "step_error": {
                    q: s["projected_ms"][measured.sku.key] / m["step_ms_by_patch"][q] - 1
                    for q, s in t["steps"].items()
                    if q in m["step_ms_by_patch"]
                },
            }
        rows.append(row)
    return {"against": measured.path, "sku": measured.sku.key, "rows": rows}


def sku_table(skus: Iterable[Sku]) -> list[dict[str, Any]]:
    """The SKU table as plain data (for the report's JSON)."""
    return [
        {"key": s.key, "label": s.label, "matrix_tflops": s.matrix_tflops, "bandwidth_tbs": s.bandwidth_tbs}
        for s in skus
    ]
