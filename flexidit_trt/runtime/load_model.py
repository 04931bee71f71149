"""Torch engines as a pipeline: over a FlexiDiT in memory, or over the weights `build` recorded for a
workdir's model (or a checkpoint), hot-loading the torch.compile cache `build --compile-cache` saved."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import BuildError, ManifestError, load_export_manifest
from ..engines.backend import RunError, RunOptionError
from ..engines.manifest import build_command
from ..engines.options import DEFAULT_ENGINE, EngineOptions, resolve_precision
from ..engines.spec import spec_from_model
from .choose import resolve_device
from .pipeline import Pipeline, Selection

if TYPE_CHECKING:
    from ..model import FlexiDiT


def pipeline_from_model(
    model: FlexiDiT,
    *,
    backend: str = "auto",
    device: str | None = None,
    engine: EngineOptions = DEFAULT_ENGINE,
    weights: str | None = None,
    random_weights: bool | None = None,
    checkpoint_sha256: str | None = None,
    reason: str | None = None,
) -> Pipeline:
    """The torch backend over `model` (the only backend a model in memory has: engines need a workdir),
    its engines made as `engine` asks. weights: how the record describes the weights (default: "random
    weights (given in memory)"); random_weights, checkpoint_sha256: what the record says of them;
    reason: the selection's words (default: the engines as made)."""
    if backend not in ("auto", "torch"):
        raise RunOptionError(
            f"backend {backend!r} runs built engines: use pipeline_from_workdir (or `run --model NAME`) after "
            "`flexidit-trt build`"
        )
    from ..engines.torch_backend import torch_engines

    device = resolve_device(device)
    engine = engine.resolved(device)
    engines, pools = torch_engines(model, device, engine)
    spec = spec_from_model(
        model, weights=weights, random_weights=random_weights, checkpoint_sha256=checkpoint_sha256
    )
    if reason is None:
        reason = _torch_reason(engines, device, engine)
        if backend == "torch":
            reason = "requested; " + reason
    return Pipeline(
        spec,
        engines,
        device=device,
        selection=Selection("torch", reason),
        precision=engine.precision,
        max_batch=engine.max_batch,
        owned=pools,
    )


def _torch_reason(engines: dict[int, Any], device: str, engine: EngineOptions) -> str:
    """How the torch engines were made, for the selection reason."""
    mode = "compiled (torch.compile)" if engine.compile else "eager"
    graphs = " in CUDA graphs" + (" sharing one pool" if engine.shared_pool else ", one pool per engine")
    graphs = graphs if device != "cpu" and engine.cuda_graphs else ""
    premod = ", adaLN modulation precomputed per chunk" if engine.precompute_modulation else ""
    fused = ""  # the levers as each engine settled them (CUDA only, flash only where tokens are few)
    for text, attr in (
        ("fc1 + GELU in one GEMM", "gelu_epilogue"),
        ("flash attention", "flash_attention"),
        ("max-autotune", "autotune"),
    ):
        sizes = [str(p) for p, e in engines.items() if e.describe().get(attr)]
        fused += f", {text} at patch {'/'.join(sizes)}" if sizes else ""
    return f"model given in memory: torch backend, {mode}{graphs}{premod}{fused}, on {device}"


def torch_pipeline_from_workdir(
    workdir: Path,
    model_name: str,
    device: str,
    engine: EngineOptions,
    checkpoint: str | os.PathLike | None,
    reason: str,
) -> Pipeline:
    """The torch backend on the weights `build` used for `model_name` (its export manifest says which),
    or on `checkpoint`, or on the seeded random weights `build` would use."""
    from ..artifacts import OptionError
    from ..export.source import ModelSource

    recorded = _recorded_source(workdir, model_name)
    try:
        if checkpoint is not None:
            source = ModelSource(None, (2, 4), checkpoint=Path(checkpoint))
        elif recorded is not None and recorded.get("init") == "checkpoint":
            source = ModelSource(None, tuple(recorded["patch_sizes"]), checkpoint=Path(recorded["path"]))
            if source.checkpoint_sha256() != recorded.get("sha256"):
                raise RunError(
                    f"checkpoint {recorded['path']} changed since `build` (checkpoint sha256 differs): "
                    f"run `{build_command(model_name, 'ort', recorded['path'])}` again or pass --checkpoint"
                )
        elif recorded is not None:
            source = ModelSource(
                model_name,
                tuple(recorded["patch_sizes"]),
                image_size=recorded["image_size"],
                seed=recorded["seed"],
                overrides=recorded["overrides"],
            )
        elif (embedded := _embedded(model_name)) is not None:  # dit_fmnist: the trained weights, not random
            source = ModelSource(None, (2, 4), checkpoint=embedded)
        else:
            source = ModelSource(model_name, (2, 4))
        model = source.load()
    except OptionError as err:
        raise RunOptionError(str(err)) from None
    except BuildError as err:
        raise RunError(str(err)) from None
    if engine.compile:
        reason = f"{reason}; {_hot_load_compile_cache(workdir, model_name, device, engine.precision)}"
    return pipeline_from_model(
        model,
        backend="torch",
        device=device,
        engine=engine,
        weights=source.label(),
        random_weights=source.is_random,
        checkpoint_sha256=source.checkpoint_sha256(),
        reason=reason,
    )


def _embedded(model_name: str) -> Path | None:
    from ..default_model import embedded_weights_for

    try:
        return embedded_weights_for(model_name, None)
    except FileNotFoundError as err:
        raise RunError(str(err)) from None


def _hot_load_compile_cache(workdir: Path, model_name: str, device: str, precision: str | None) -> str:
    """Load the torch.compile cache `build --compile-cache` saved for this GPU and torch, before anything
    compiles (the compiles then hit it); the words for the selection reason either way."""
    from ..engines.aoti import aoti_dir, torch_target
    from ..engines.compile_cache import COMPILE_CACHE_WHAT, load_compile_cache

    try:
        target = torch_target(device, COMPILE_CACHE_WHAT)
    except BuildError as err:
        return f"no torch.compile cache ({err})"
    folder = aoti_dir(workdir, model_name, target)
    entry = load_compile_cache(folder, target)
    run_precision = resolve_precision(precision, device)
    if entry is None:
        return (
            f"no torch.compile cache for this {target.folder_name} under {folder}: compiling cold "
            f"(`{build_command(model_name, 'compile-cache', precision=run_precision)}`)"
        )
    note = (
        ""
        if entry.get("precision") == run_precision
        else f"; it was built for {entry.get('precision')}, this run is {run_precision}: its compiles will miss"
    )
    return (
        f"torch.compile cache loaded from {folder / entry['file']} ({entry['bytes'] / 2**20:.1f} MiB){note}"
    )


def _recorded_source(workdir: Path, model_name: str) -> dict[str, Any] | None:
    """How `build` made `model_name`'s weights, from its export manifest (None if nothing was built)."""
    try:
        manifest = load_export_manifest(workdir, model_name)
    except ManifestError:
        return None
    graphs = manifest.get("graphs") or {}
    if not graphs:
        return None
    entry = graphs[min(graphs, key=int)]
    ckpt = dict(entry.get("checkpoint") or {})
    config = entry["config"]
    ckpt["patch_sizes"] = [int(p) for p in graphs]
    ckpt["image_size"] = entry.get("image_size")
    if ckpt.get("init") != "random":
        return ckpt
    from ..model.config import get_config

    # Config fields that differ from the named config's defaults were build-time overrides (depth=2, ...).
    base = get_config(model_name, input_size=config["input_size"], patch_sizes=tuple(ckpt["patch_sizes"]))
    base_fields = json.loads(base.to_json())
    ckpt["overrides"] = {
        k: v
        for k, v in config.items()
        if k not in ("name", "patch_sizes", "input_size") and base_fields.get(k) != v
    }
    return ckpt
