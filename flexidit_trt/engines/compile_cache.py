"""The AOTInductor fallback: torch.compile's portable cache artifacts, saved per GPU and torch version
(`build_compile_cache` after a warm-up that compiles every shape, into `compile_cache.bin` beside the
packages) and hot-loaded by `load_compile_cache` before the torch engines compile, so a run starts warm
instead of compiling each shape for 25-35 s."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import (
    MANIFEST_NAME,
    BuildError,
    ensure_writable_dir,
    folder_lock,
    read_manifest,
    sha256_file,
    utc_now,
    write_bytes_atomic,
    write_json_atomic,
)
from ..device import Device
from .aoti import (
    AOTI_KIND,
    AOTI_SCHEMA,
    COMPILE_CACHE_NAME,
    TorchTarget,
    aoti_dir,
    read_or_new_manifest,
    torch_target,
)

if TYPE_CHECKING:
    from ..model import FlexiDiT


def build_compile_cache(
    warm: Callable[[], None],
    folder: str | Path,
    model_name: str,
    target: TorchTarget,
    description: dict,
) -> dict:
    """Run `warm()` (which torch.compiles and runs every module and batch the runtime will use, exactly as
    the torch backend compiles them), then write torch's portable cache artifacts to
    `<folder>/compile_cache.bin` and record them in the manifest's `compile_cache` entry (with
    `description`: patch sizes, batches, precision, compile options). Returns the entry."""
    import torch

    folder = ensure_writable_dir(folder)
    start = time.perf_counter()
    warm()
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        raise BuildError("torch.compile produced no cache artifacts (is the compile cache disabled?)")
    blob, info = saved
    with folder_lock(folder):
        manifest = read_or_new_manifest(folder, model_name, target)
        path = write_bytes_atomic(folder / COMPILE_CACHE_NAME, blob)
        entry = {
            **description,
            "file": path.name,
            "sha256": sha256_file(path),
            "bytes": len(blob),
            "artifacts": _cache_info(info),
            **target.to_dict(),
            "build_seconds": round(time.perf_counter() - start, 3),
            "created": utc_now(),
        }
        manifest["compile_cache"] = entry
        manifest["updated"] = utc_now()
        write_json_atomic(folder / MANIFEST_NAME, manifest)
    return entry


@dataclass
class CompileCacheResult:
    """`build --compile-cache`: the manifest entry written, or why nothing was (no GPU here)."""

    entry: dict | None
    folder: Path | None = None
    skipped: str | None = None


COMPILE_CACHE_WHAT = "torch.compile caches"  # what torch_target's errors name for this artifact


def build_torch_compile_cache(
    model: FlexiDiT,
    workdir: str | Path,
    model_name: str,
    rows: Sequence[int],
    precision: str,
    target: TorchTarget | None = None,
) -> CompileCacheResult:
    """The torch backend's compiled engines, warmed at every engine batch in `rows` and patch size exactly
    as `run --compile` compiles them (engines/torch_backend.py), saved as the portable cache beside the
    AOTInductor packages. `target`: default this process's GPU; none visible → skipped, with the reason."""
    import torch

    from .options import EngineOptions
    from .spec import spec_from_model
    from .torch_backend import COMPILE_OPTIONS, engine_inputs, torch_engines

    if target is None:
        try:
            target = torch_target("cuda", COMPILE_CACHE_WHAT)
        except BuildError as err:
            return CompileCacheResult(None, skipped=str(err))
    rows = sorted({int(b) for b in rows})
    device = str(Device.parse(target.device))  # the target's "cuda" is the first GPU
    options = EngineOptions(precision=precision, max_batch=max(rows), compile=True).resolved(device)
    engines, _pools = torch_engines(model, device, options)
    spec = spec_from_model(model)

    @torch.no_grad()  # as the pipeline runs its engines: a compiled graph guards on grad mode
    def warm() -> None:
        for engine in engines.values():
            for b in rows:
                engine.fn(*engine_inputs(spec, b, engine.device))
        if device != "cpu":
            torch.cuda.synchronize()

    folder = aoti_dir(workdir, model_name, target)
    try:
        description = {
            "patch_sizes": sorted(engines),
            "batches": rows,
            "precision": precision,
            "compile": dict(COMPILE_OPTIONS),
        }
        entry = build_compile_cache(warm, folder, model_name, target, description)
    finally:
        for engine in engines.values():
            engine.close()
    return CompileCacheResult(entry, folder)


def load_compile_cache(folder: str | Path, target: TorchTarget | None = None) -> dict | None:
    """Hot-load the portable torch.compile cache of an engine folder (call before compiling), so the
    compiles that follow hit it instead of starting cold. Returns its manifest entry, or None when the
    folder has none or it was made for another GPU or torch (then compiling simply starts cold)."""
    import torch

    folder = Path(folder)
    manifest = read_manifest(folder / MANIFEST_NAME, AOTI_KIND, AOTI_SCHEMA) if folder.is_dir() else None
    entry = (manifest or {}).get("compile_cache")
    if entry is None:
        return None
    target = target or torch_target(entry.get("device", "cuda"))
    if {k: entry.get(k) for k in ("device", "gpu", "torch")} != target.to_dict():
        return None
    path = folder / entry["file"]
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        return None
    torch.compiler.load_cache_artifacts(path.read_bytes())
    return entry


def _cache_info(info: Any) -> dict:
    """How many artifacts of each kind torch saved (CacheInfo.artifacts: kind -> keys), for the manifest."""
    artifacts = getattr(info, "artifacts", None) or {}
    return {str(kind): len(keys) for kind, keys in dict(artifacts).items()}
