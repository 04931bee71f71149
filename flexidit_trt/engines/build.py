"""The engine root: `engines/<model>/<gpu>-sm<cc>-trt<version>/p<k>.plan` per patch size, with
`p<k>.layers.json` (the engine inspector's listing), a shared `timing.cache` and `manifest.json`.

Plans run only on the TensorRT version and GPU architecture that built them, so both name the folder
and are recorded in the manifest. A plan is reused when its entry has the same settings (the ONNX
graph's hashes, the profiles, the optimization level, TensorRT version and GPU) and the plan file
still hashes to the recorded value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..artifacts import (
    MANIFEST_NAME,
    BuildError,
    OptionError,
    Progress,
    Step,
    commit_entry,
    ensure_writable_dir,
    export_dir,
    load_export_manifest,
    locked_manifest,
    no_progress,
    settings_changed,
    sha256_file,
    utc_now,
    write_bytes_atomic,
    write_json_atomic,
)
from .profiles import BatchProfile, batch_profiles
from .trt import GpuInfo, PlanBuild, TrtStatus, build_plan, trt_status

ENGINE_KIND = "flexidit-trt/tensorrt-engines"
ENGINE_SCHEMA = 1
ENGINE_FORMAT = 1  # bump when the build recipe changes: older plans rebuild
TIMING_CACHE_NAME = "timing.cache"

PlanBuilder = Callable[..., PlanBuild]


@dataclass
class EngineRecord:
    patch_size: int
    path: Path
    entry: dict
    rebuilt: bool
    reason: str


@dataclass
class EngineBuildResult:
    """Engines of one build, or why none were built (`skipped`)."""

    folder: Path | None
    records: list[EngineRecord] = field(default_factory=list)
    skipped: str | None = None
    status: TrtStatus | None = None


def engine_folder_name(gpu: GpuInfo, trt_version: str) -> str:
    return f"{gpu.slug}-{gpu.sm}-trt{trt_version}"


def engine_dir(workdir: str | Path, model_name: str, gpu: GpuInfo, trt_version: str) -> Path:
    return Path(workdir) / "engines" / model_name / engine_folder_name(gpu, trt_version)


def engine_profiles(
    batch_sizes: tuple[int, ...], *, guidance: bool = True, profile_mode: str = "ranges", opt_level: int = 3
) -> list[BatchProfile]:
    """The optimization profiles for `batch_sizes`, after checking the engine options (batch sizes,
    profile mode, optimization level); OptionError saying which is wrong. build_artifacts calls it before
    the export, so a bad option fails in a second rather than after minutes of exporting."""
    if not 0 <= opt_level <= 5:
        raise OptionError(f"builder optimization level must be 0-5, got {opt_level}")
    try:
        return batch_profiles(batch_sizes, guidance=guidance, mode=profile_mode)
    except ValueError as err:
        raise OptionError(str(err)) from None


def resolve_trt(status: TrtStatus | None, require_trt: bool) -> TrtStatus:
    """The TensorRT probe result (probed now unless given); BuildError when `require_trt` and engines
    cannot be built."""
    status = status or trt_status()
    if require_trt and not status.available:
        raise BuildError(f"--require-trt: cannot build TensorRT engines: {status.reason}")
    return status


def build_engines(
    workdir: str | Path,
    model_name: str,
    patch_sizes: tuple[int, ...],
    batch_sizes: tuple[int, ...],
    *,
    guidance: bool = True,
    profile_mode: str = "ranges",
    opt_level: int = 3,
    timing_cache: str | Path | None = None,
    force: bool = False,
    require_trt: bool = False,
    progress: Progress | None = None,
    status: TrtStatus | None = None,
    builder: PlanBuilder = build_plan,
) -> EngineBuildResult:
    """Build (or reuse) one TensorRT engine per exported patch size of `model_name` under `workdir`.

    Without TensorRT (or polygraphy, or a GPU) it returns a result whose `skipped` says why, or raises
    BuildError when `require_trt`. `status` and `builder` default to the real TensorRT probe and build;
    they are parameters so the bookkeeping around TensorRT can be tested where TensorRT is absent.
    """
    profiles = engine_profiles(batch_sizes, guidance=guidance, profile_mode=profile_mode, opt_level=opt_level)
    status = resolve_trt(status, require_trt)
    if not status.available:
        return EngineBuildResult(None, skipped=status.reason, status=status)

    say = progress or no_progress
    graphs = load_export_manifest(workdir, model_name)["graphs"]
    missing = [p for p in patch_sizes if str(p) not in graphs]
    if missing:
        raise BuildError(f"no exported graph for patch size(s) {missing} of {model_name}: export them first")
    folder = ensure_writable_dir(engine_dir(workdir, model_name, status.gpu, status.version))
    cache_path = Path(timing_cache) if timing_cache else folder / TIMING_CACHE_NAME
    result = EngineBuildResult(folder, status=status)
    gpu = {"name": status.gpu.name, "compute_capability": status.gpu.compute_capability}
    with locked_manifest(
        folder, ENGINE_KIND, ENGINE_SCHEMA, model_name, gpu=gpu, tensorrt=status.version
    ) as manifest:
        for p in patch_sizes:
            graph = graphs[str(p)]
            settings = {
                "onnx_files": graph["files"],
                "profiles": [pr.to_dict() for pr in profiles],
                "builder_optimization_level": opt_level,
                "tensorrt": status.version,
                "gpu": status.gpu.name,
                "compute_capability": status.gpu.compute_capability,
                "engine_format": ENGINE_FORMAT,
            }
            plan_path = folder / f"p{p}.plan"
            entry = manifest["engines"].get(str(p))
            if not force and entry and entry.get("settings") == settings and _plan_intact(plan_path, entry):
                say(Step(p, "reuse", f"reusing {plan_path.name}"))
                if entry["checkpoint"] != graph["checkpoint"]:
                    # Same graph bytes from another checkpoint file with the same weights: record the new one.
                    entry = manifest["engines"][str(p)] = {**entry, "checkpoint": graph["checkpoint"]}
                    write_json_atomic(folder / MANIFEST_NAME, manifest)
                result.records.append(
                    EngineRecord(p, plan_path, entry, rebuilt=False, reason="same graph and settings")
                )
                continue
            reason = _why(entry, settings, force)
            say(
                Step(
                    p,
                    "build",
                    f"building {plan_path.name} with TensorRT {status.version} ({len(profiles)} profiles; {reason})",
                )
            )
            onnx_path = export_dir(workdir, model_name) / graph["file"]
            try:
                built = builder(
                    onnx_path,
                    profiles,
                    in_channels=graph["config"]["in_channels"],
                    latent_size=graph["latent_size"],
                    opt_level=opt_level,
                    timing_cache=cache_path.read_bytes() if cache_path.exists() else None,
                )
            except BuildError:
                raise
            except Exception as err:  # parser or builder failure: name the graph and TensorRT's message
                raise BuildError(f"TensorRT could not build {onnx_path}: {err}") from err
            write_bytes_atomic(plan_path, built.plan)
            write_bytes_atomic(cache_path, built.timing_cache)
            layers_name = None
            if built.layers is not None:
                layers_name = f"p{p}.layers.json"
                write_json_atomic(folder / layers_name, built.layers)
            entry = _entry(p, graph, settings, profiles, built, plan_path, cache_path, layers_name, status)
            commit_entry(folder, manifest, p, entry)
            result.records.append(EngineRecord(p, plan_path, entry, rebuilt=True, reason=reason))
    return result


def _entry(
    p,
    graph,
    settings,
    profiles: list[BatchProfile],
    built: PlanBuild,
    plan_path,
    cache_path,
    layers_name,
    status: TrtStatus,
) -> dict:
    return {
        "settings": settings,
        "file": plan_path.name,
        "sha256": sha256_file(plan_path),
        "bytes": plan_path.stat().st_size,
        "patch_size": p,
        "tokens": graph["tokens"],
        "precision": graph["precision"],
        "fp32_residual": graph["fp32_residual"],
        "onnx": {"file": graph["file"], "files": graph["files"]},
        "checkpoint": graph["checkpoint"],
        "weights_sha256": graph["weights_sha256"],
        "config": graph["config"],
        "inputs": graph["inputs"],
        "outputs": graph["outputs"],
        "profiles": [
            {**pr.to_dict(), "device_memory_bytes": mem}
            for pr, mem in zip(profiles, built.device_memory, strict=True)
        ],
        "max_batch": max(pr.max for pr in profiles),
        "max_device_memory_bytes": max(built.device_memory, default=0),
        "builder_optimization_level": settings["builder_optimization_level"],
        "timing_cache": str(cache_path),
        "layers": layers_name,
        "gpu": {"name": status.gpu.name, "compute_capability": status.gpu.compute_capability},
        "tensorrt": status.version,
        "versions": {
            "flexidit_trt": __version__,
            "tensorrt": status.version,
            "polygraphy": built.polygraphy_version,
        },
        "build_seconds": round(built.seconds, 3),
        "created": utc_now(),
    }


def _plan_intact(path: Path, entry: dict) -> bool:
    return path.is_file() and sha256_file(path) == entry.get("sha256")


def _why(entry, settings, force) -> str:
    return settings_changed(entry, settings, force) or "plan missing or modified"
