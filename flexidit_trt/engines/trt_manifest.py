"""TensorRT engine folders on load: the manifest read and checked against this GPU, TensorRT and
checkpoint (the field that differs named), the optimization profile covering a batch, and the shared
activation block's size. No TensorRT call here besides importing it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..artifacts import MANIFEST_NAME, ManifestError
from . import cuda
from .backend import RunError, RunOptionError
from .build import ENGINE_KIND, ENGINE_SCHEMA, engine_dir
from .manifest import build_command, check_built_for, read_engines_manifest
from .trt import GpuInfo, gpu_info


def read_engine_manifest(folder: str | Path) -> dict:
    """The manifest of a TensorRT engine folder; RunError when it is missing, unreadable or foreign."""
    return read_engines_manifest(folder, ENGINE_KIND, ENGINE_SCHEMA, "TensorRT")


def check_engine_entry(
    manifest: Mapping,
    patch_size: int,
    *,
    gpu: GpuInfo,
    trt_version: str,
    checkpoint_sha256: str | None = None,
    weights_sha256: str | None = None,
) -> dict:
    """The engine entry of `patch_size`, checked against the present GPU, TensorRT and (when given) the
    checkpoint's and the static weights' hashes; RunError naming the field that differs."""
    entry = manifest.get("engines", {}).get(str(patch_size))
    if entry is None:
        built = ", ".join(f"p{p}" for p in sorted(manifest.get("engines", {}), key=int)) or "none"
        raise RunError(f"no TensorRT engine for patch size {patch_size} in the manifest (built: {built})")
    built_gpu = entry.get("gpu", {})
    checks = [
        ("gpu.compute_capability", built_gpu.get("compute_capability"), gpu.compute_capability),
        ("gpu.name", built_gpu.get("name"), gpu.name),
        ("tensorrt", entry.get("tensorrt"), trt_version),
    ]
    check_built_for(
        entry,
        checks,
        engine=f"TensorRT engine p{patch_size}",
        rebuild="flexidit-trt build",
        checkpoint_sha256=checkpoint_sha256,
        weights_sha256=weights_sha256,
    )
    return entry


def profile_index(entry: Mapping, batch: int) -> int:
    """The optimization profile covering `batch` (the narrowest, if several do); RunError if none."""
    covering = [
        (p["max"] - p["min"], i) for i, p in enumerate(entry["profiles"]) if p["min"] <= batch <= p["max"]
    ]
    if not covering:
        ranges = ", ".join(f"{p['min']}-{p['max']}" for p in entry["profiles"])
        raise RunError(
            f"no optimization profile of TensorRT engine p{entry['patch_size']} covers batch {batch} "
            f"(profiles: {ranges}); rebuild with `flexidit-trt build --batch-sizes ...` including it"
        )
    return min(covering)[1]


def engine_activation_bytes(entry: Mapping, max_batch: int) -> int:
    """Activation bytes one engine needs for any batch up to `max_batch`: the largest `device_memory_bytes`
    over the profiles such a batch can select (the context switches profiles within one block)."""
    needs = [int(p["device_memory_bytes"]) for p in entry["profiles"] if p["min"] <= max_batch]
    return max(needs, default=0)


def shared_activation_bytes(entries: Iterable[Mapping], max_batch: int) -> int:
    """The one activation block all engines of a run share: the largest single engine's need at batches
    up to `max_batch` — the max, not the sum, since the engines never run at the same time (one stream).
    Carve it with `Arena.block(size)`; `native.arena_size([size], buffers)` (runtime) sizes the arena around it."""
    return max((engine_activation_bytes(e, max_batch) for e in entries), default=0)


@dataclass(frozen=True)
class TrtTarget:
    """What TensorRT engines load against: the CUDA device, the checkpoint hash their manifests must
    record (None: not checked), the tensorrt module and the GPU facts (None: the real ones, which
    `resolved()` finds; fields so the logic can be tested without them)."""

    device: str = "cuda:0"
    checkpoint_sha256: str | None = None
    trt: Any = None
    gpu: GpuInfo | None = None

    def resolved(self) -> TrtTarget:
        """This target with the tensorrt module imported and the device's GPU facts read, where not given."""
        trt = self.trt if self.trt is not None else import_tensorrt()
        return replace(self, trt=trt, gpu=self.gpu or device_gpu(self.device))

    def check(self, manifest: Mapping, patch_size: int) -> dict:
        """The entry of `patch_size`, checked against this resolved target (check_engine_entry)."""
        return check_engine_entry(
            manifest,
            patch_size,
            gpu=self.gpu,
            trt_version=str(self.trt.__version__),
            checkpoint_sha256=self.checkpoint_sha256,
        )


DEFAULT_TARGET = TrtTarget()  # the first GPU, the real TensorRT, no checkpoint check


def find_trt_engines(
    workdir: str | Path,
    model_name: str,
    patch_sizes: Sequence[int] | None = None,
    target: TrtTarget = DEFAULT_TARGET,
) -> tuple[Path, dict[int, dict]]:
    """The engine folder for this GPU and TensorRT and its checked entry per patch size (default: every
    one built). RunError when TensorRT or a GPU is missing, when no engines were built (with the exact
    `build` command), or naming the field that differs when they were built for another GPU, TensorRT or
    checkpoint. Each entry gets the graph's `macs` from the export manifest when it has one (so the run
    record needs no model code)."""
    target = target.resolved()
    trt_version = str(target.trt.__version__)
    folder = engine_dir(workdir, model_name, target.gpu, trt_version)
    if not (folder / MANIFEST_NAME).is_file():
        parent = folder.parent
        others = sorted(p.name for p in parent.glob("*-trt*") if p.is_dir()) if parent.is_dir() else []
        seen = f" (engines there are for: {', '.join(others)})" if others else ""
        raise RunError(
            f"no TensorRT engines for {model_name} at {folder}{seen}: run `{build_command(model_name, 'trt')}`"
        )
    manifest = read_engine_manifest(folder)
    sizes = sorted(int(p) for p in (patch_sizes or manifest.get("engines", {})))
    if not sizes:
        raise RunError(f"no TensorRT engines in {folder}: run `{build_command(model_name, 'trt')}`")
    graphs = _export_graphs(workdir, model_name)
    entries = {}
    for p in sizes:
        entry = target.check(manifest, p)
        macs = graphs.get(str(p), {}).get("macs")
        entries[p] = {**entry, "macs": macs} if macs is not None else entry
    return folder, entries


def _export_graphs(workdir: str | Path, model_name: str) -> dict:
    from ..artifacts import load_export_manifest

    try:
        return load_export_manifest(workdir, model_name).get("graphs", {})
    except ManifestError:
        return {}


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise RunError(
            "the trt backend needs TensorRT (pip install flexidit-trt[trt]); use --backend aoti, torch or ort"
        ) from None
    return tensorrt


def device_gpu(device: str) -> GpuInfo:
    gpu = gpu_info(cuda.device_index(device))
    if gpu is None:
        raise RunOptionError(f"no CUDA GPU {device} is visible: the trt backend runs on a GPU")
    return gpu
