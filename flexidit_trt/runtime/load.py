"""Loading: a workdir of what `flexidit-trt build` made (manifests checked) turned into engines of the
chosen backend, and a `Pipeline` over them. Torch is imported only on the paths that use it: the ort and
trt paths stay torch-free.

    pipe = pipeline_from_workdir(".", "dit_xl", engine=EngineOptions(precision="bf16"))
    pipe = pipeline_from_model(model)          # runtime/load_model.py: a FlexiDiT in memory
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import (
    MANIFEST_NAME,
    BuildError,
    ManifestError,
    export_dir,
    load_export_manifest,
    sha256_path,
)
from ..engines.backend import Backend, RunError, RunOptionError
from ..engines.manifest import build_command, check_checkpoint, check_files, check_signature
from ..engines.options import DEFAULT_ENGINE, EngineOptions
from ..engines.spec import spec_from_entries
from .choose import BACKENDS, choose_backend, resolve_device
from .load_model import torch_pipeline_from_workdir
from .pipeline import Pipeline, Selection


def pipeline_from_workdir(
    workdir: str | os.PathLike,
    model_name: str,
    *,
    backend: str = "auto",
    device: str | None = None,
    engine: EngineOptions = DEFAULT_ENGINE,
    checkpoint: str | os.PathLike | None = None,
) -> Pipeline:
    """A pipeline over what `flexidit-trt build` made under `workdir` for `model_name`: TensorRT
    engines, AOTInductor packages or ONNX graphs, or the torch backend on the weights they were built
    from. `checkpoint`: refuse engines built from other weights (their sha256 must match). `engine`: its
    precision and max_batch apply to every backend, cuda_graphs to torch and ort (ORT's own CUDA
    graphs), the rest to the torch backend only."""
    if backend not in BACKENDS:
        raise RunOptionError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device = resolve_device(device)
    workdir = Path(workdir)
    passed_over: list[str] = []
    while True:
        name, reason = choose_backend(backend, device, workdir, model_name, checkpoint, exclude=passed_over)
        try:
            return _open(name, reason, workdir, model_name, device, engine, checkpoint)
        except RunError as err:
            # auto: compiled engines that exist but cannot run here (another GPU, TensorRT or torch,
            # other weights, a package torch cannot load) pass the turn to the next backend, saying why.
            if backend != "auto" or name not in ("trt", "aoti"):
                raise
            passed_over.append(f"{name}: {err}")


def _open(
    name: str,
    reason: str,
    workdir: Path,
    model_name: str,
    device: str,
    engine: EngineOptions,
    checkpoint: str | os.PathLike | None,
) -> Pipeline:
    checkpoint_sha = sha256_path(checkpoint) if checkpoint is not None else None
    if name == "torch":
        return torch_pipeline_from_workdir(workdir, model_name, device, engine, checkpoint, reason)
    opener = {"ort": _ort_pipeline, "trt": _trt_pipeline, "aoti": _aoti_pipeline}[name]
    return opener(_Opening(name, workdir, model_name, device, engine, checkpoint_sha, reason))


@dataclass(frozen=True)
class _Opening:
    """Opening one backend's built engines: which, where, for which model, on which device, as `engine`
    asks, refusing other weights than `checkpoint_sha` (when given); `reason`: why this backend."""

    backend: str
    workdir: Path
    model_name: str
    device: str
    engine: EngineOptions
    checkpoint_sha: str | None
    reason: str


def _ort_pipeline(op: _Opening) -> Pipeline:
    workdir, model_name, device, engine = op.workdir, op.model_name, op.device, op.engine
    from ..engines.ort_backend import OrtBackend

    precision = engine.precision
    build = build_command(model_name, "ort", precision=precision)
    folder = export_dir(workdir, model_name)
    if not (folder / MANIFEST_NAME).is_file():
        raise RunError(f"no exported graphs for {model_name} under {folder}: run `{build}`")
    try:
        manifest = load_export_manifest(workdir, model_name)
    except ManifestError as err:
        raise RunError(f"{err}; rebuild with `{build}`") from None
    graphs = {int(p): g for p, g in manifest["graphs"].items()}
    if not graphs:
        raise RunError(f"no exported graphs for {model_name}: run `{build}`")
    first = graphs[min(graphs)]
    for p, g in graphs.items():
        check_checkpoint(g.get("checkpoint"), op.checkpoint_sha, f"the exported graph p{p}")
        if precision is not None and g["precision"] != precision:
            raise RunError(
                f"the exported graph p{p} is {g['precision']}, --precision {precision} asked for: precision "
                f"differs; run `{build}`"
            )
    # The files against their manifest before anything loads them: a damaged or edited graph (or record)
    # is named with the field and the command that rebuilds it from the weights it was built from.
    rebuild = _rebuild_command(model_name, first)
    for p, g in graphs.items():
        check_files(folder, g.get("files") or {}, f"the exported graph p{p}", rebuild)
    stream = None
    if device != "cpu":
        from ..engines import cuda

        stream = cuda.Stream(device)
    engines: dict[int, Backend] = {}
    for p, g in graphs.items():
        try:
            engines[p] = OrtBackend.load(
                folder / g["file"],
                p,
                device,
                stream=stream.handle if stream else 0,
                cuda_graphs=engine.cuda_graphs,
            )
        except RunError as err:
            raise RunError(f"{err}: rebuild it with `{rebuild}`") from None
        check_signature(g, engines[p].signature(), f"the exported graph p{p} ({folder / g['file']})", rebuild)
    return _over_engines(
        op,
        engines,
        graphs,
        first["precision"],
        engine.max_batch,
        stream=stream,
    )


def _rebuild_command(model_name: str, entry: dict) -> str:
    """`build` for the weights and precision a manifest entry records (the embedded default's weights are
    what `--model dit_fmnist` builds, so they need no --checkpoint)."""
    from ..default_model import DEFAULT_WEIGHTS

    weights = entry.get("checkpoint") or {}
    path = weights.get("path") if weights.get("init") == "checkpoint" else None
    if path is not None and Path(path).resolve() == DEFAULT_WEIGHTS:
        path = None
    return build_command(model_name, "ort", checkpoint=path, precision=entry.get("precision"))


def _trt_pipeline(op: _Opening) -> Pipeline:
    workdir, model_name, device, engine = op.workdir, op.model_name, op.device, op.engine
    if device == "cpu":
        raise RunOptionError(
            "the trt backend needs a CUDA GPU: use --device cuda, or --backend ort on the CPU"
        )
    try:
        from ..engines.trt_backend import TrtTarget, load_trt_engines
    except ImportError as err:
        raise RunError(f"the trt backend is not available: {err}") from None
    from ..engines import cuda

    stream = cuda.Stream(device)
    try:
        engines, entries = load_trt_engines(workdir, model_name, target=TrtTarget(device, op.checkpoint_sha))
    except (BuildError, ManifestError) as err:
        raise RunError(str(err)) from None
    precision = entries[min(entries)].get("precision", engine.precision or "fp16")
    max_batch = min(engine.max_batch, max(min(e.max_batch for e in engines.values()) // 2, 1))
    return _over_engines(op, engines, entries, precision, max_batch, stream=stream)


def _aoti_pipeline(op: _Opening) -> Pipeline:
    workdir, model_name, device, engine = op.workdir, op.model_name, op.device, op.engine
    if device == "cpu":
        raise RunOptionError(
            "the aoti backend runs CUDA packages: use --device cuda, or the torch backend on the CPU"
        )
    from ..engines.aoti_backend import load_aoti_backends

    engines, entries, pool = load_aoti_backends(
        workdir, model_name, device, engine.precision, op.checkpoint_sha
    )
    precision = entries[min(entries)]["precision"]
    max_batch = min(engine.max_batch, min(e["batch_max"] for e in entries.values()) // 2 or 1)
    return _over_engines(op, engines, entries, precision, max_batch, owned=[pool])


def _over_engines(
    op: _Opening,
    engines: dict[int, Backend],
    entries: dict[int, dict],
    precision: str,
    max_batch: int,
    **held: Any,
) -> Pipeline:
    """The pipeline over engines loaded from a workdir, its spec from their manifest entries; `held`:
    the stream they were loaded on, or what must live as long as they do (a graph pool)."""
    selection = Selection(op.backend, op.reason)
    spec = spec_from_entries(entries, op.model_name)
    return Pipeline(
        spec, engines, device=op.device, selection=selection, precision=precision, max_batch=max_batch, **held
    )
