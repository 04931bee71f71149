"""The export root: `export/<model>/p<k>.onnx` per patch size and `export/<model>/manifest.json`.

A graph is reused when its manifest entry has the same export settings (precision, fp32 residual,
opset, exporter and torch/onnx versions), its files still hash to the recorded values, and the same
weights: the same checkpoint file (checked without loading it) or, failing that, the same weights
after loading (the hash of the static model's state, so a checkpoint re-saved, or one whose other
patch sizes changed, still reuses this one). Anything else re-exports that patch size only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import onnx
import torch

from .. import __version__
from ..artifacts import (
    EXPORT_KIND,
    EXPORT_SCHEMA,
    MANIFEST_NAME,
    ensure_writable_dir,
    export_dir,
    folder_lock,
    read_manifest,
    remove_orphans,
    settings_changed,
    sha256_file,
    sha256_state_dict,
    write_json_atomic,
)
from .onnx_export import (
    EXPORTER_VERSION,
    ExportedGraph,
    check_opset,
    export_onnx,
    graph_module,
    precision_dtype,
)
from .source import ModelSource
from .validate import DEFAULT_BATCHES, ValidationReport, validate_onnx

Progress = Callable[[str], None]


@dataclass
class GraphRecord:
    """One graph of the export root after a build: its manifest entry and whether this run made it."""

    patch_size: int
    path: Path
    entry: dict
    rebuilt: bool
    reason: str  # why it was (re)built or reused

    @property
    def validation(self) -> dict:
        return self.entry["validation"]


def export_settings(patch_size: int, precision: str, fp32_residual: bool, opset: int) -> dict:
    """Everything besides the weights that changes a graph's bytes (the reuse key)."""
    return {
        "patch_size": patch_size,
        "precision": precision,
        "fp32_residual": bool(fp32_residual and precision != "fp32"),
        "opset": opset,
        "exporter": EXPORTER_VERSION,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }


def export_graphs(
    source: ModelSource,
    workdir: str | Path,
    *,
    precision: str = "fp16",
    fp32_residual: bool = False,
    opset: int = 17,
    force: bool = False,
    revalidate: bool = False,
    validation_batches: tuple[int, ...] = DEFAULT_BATCHES,
    progress: Progress | None = None,
) -> list[GraphRecord]:
    """Export, validate and record one graph per patch size of `source`, reusing current ones.

    Each graph is validated on its staged copy before it replaces the old one, and the manifest entry is
    written after the graph: an interrupted or failed build leaves every earlier graph and entry intact.
    Reused graphs get the structural checks again (checker, shape inference, operator table); the ONNX
    Runtime comparison recorded when they were exported stands unless `revalidate`.
    """
    precision_dtype(precision)
    check_opset(opset)
    say = progress or (lambda _msg: None)
    if source.name is None:  # a checkpoint without --model: its config names the folder
        say("loading the checkpoint to read its config")
        source.load()
    folder = ensure_writable_dir(export_dir(workdir, source.name))
    records = []
    with folder_lock(folder):
        manifest = read_manifest(folder / MANIFEST_NAME, EXPORT_KIND, EXPORT_SCHEMA) or _new_manifest(
            source.name
        )
        # Leftovers of an interrupted build; a data file no entry names belongs to no committed graph.
        referenced = {name for entry in manifest["graphs"].values() for name in entry.get("files", {})}
        remove_orphans(folder, keep=referenced, pattern="*.onnx.data")
        for p in source.patch_sizes:
            settings = export_settings(p, precision, fp32_residual, opset)
            record = _one_graph(
                source, folder, manifest, settings, force, revalidate, validation_batches, say
            )
            manifest["graphs"][str(p)] = record.entry
            manifest["updated"] = _now()
            write_json_atomic(folder / MANIFEST_NAME, manifest)  # the commit point for this graph
            records.append(record)
    return records


def _one_graph(source, folder, manifest, settings, force, revalidate, batches, say) -> GraphRecord:
    p = settings["patch_size"]
    path = folder / f"p{p}.onnx"
    entry = manifest["graphs"].get(str(p))
    usable = (
        (not force)
        and entry is not None
        and entry.get("settings") == settings
        and _files_intact(folder, entry)
    )
    if usable and source.image_size is not None and entry["config"]["input_size"] * 8 != source.image_size:
        usable = False
    # Fast path: the same checkpoint file, not even loaded.
    if usable and not source.is_random and entry["checkpoint"].get("sha256") == source.checkpoint_sha256():
        say(f"p{p}: reusing {path.name} (same checkpoint)")
        entry = {**entry, "checkpoint": source.describe()}  # the same bytes may sit at another path now
        return _reuse(source, path, entry, "same checkpoint", revalidate, batches, settings, say)

    model = source.load()
    say(f"p{p}: preparing the static model ({settings['precision']})")
    module = graph_module(model, p, settings["precision"], settings["fp32_residual"], settings["opset"])
    weights_sha = sha256_state_dict(module.state_dict())
    static_config = json_config(module.config)
    if usable and entry.get("weights_sha256") == weights_sha and entry.get("static_config") == static_config:
        entry = {**entry, "checkpoint": source.describe()}
        say(f"p{p}: reusing {path.name} (same weights)")
        return _reuse(source, path, entry, "same weights", revalidate, batches, settings, say, module)

    reason = _why_rebuild(entry, settings, force, folder)
    say(f"p{p}: exporting {path.name} ({reason})")
    reports: dict[str, ValidationReport] = {}

    def check(staged: Path, mod) -> None:
        say(f"p{p}: validating (checker, TensorRT operator table, ONNX Runtime vs PyTorch)")
        reports["validation"] = validate_onnx(staged, mod, precision=settings["precision"], batches=batches)

    graph = export_onnx(
        model,
        p,
        path,
        precision=settings["precision"],
        fp32_residual=settings["fp32_residual"],
        opset=settings["opset"],
        module=module,
        check=check,
    )
    entry = _entry(source, model, graph, settings, weights_sha, static_config, reports["validation"])
    return GraphRecord(p, path, entry, rebuilt=True, reason=reason)


def _reuse(source, path, entry, why, revalidate, batches, settings, say, module=None) -> GraphRecord:
    p = settings["patch_size"]
    if revalidate:
        module = module or graph_module(
            source.load(), p, settings["precision"], settings["fp32_residual"], settings["opset"]
        )
        say(f"p{p}: revalidating {path.name}")
        report = validate_onnx(path, module, precision=settings["precision"], batches=batches)
        entry = {**entry, "validation": report.to_dict()}
    else:
        # Structure and operator support again (cheap; the operator table may have changed).
        validate_onnx(path, None, precision=settings["precision"])
    return GraphRecord(p, path, entry, rebuilt=False, reason=why)


def _why_rebuild(entry, settings, force, folder) -> str:
    reason = settings_changed(entry, settings, force)
    if reason:
        return reason
    if not _files_intact(folder, entry):
        return "files missing or modified"
    return "weights changed"


def _files_intact(folder: Path, entry: dict) -> bool:
    files = entry.get("files") or {}
    return bool(files) and all(
        (folder / n).is_file() and sha256_file(folder / n) == h for n, h in files.items()
    )


def _entry(source, model, graph: ExportedGraph, settings, weights_sha, static_config, report) -> dict:
    cfg = model.config
    return {
        "settings": settings,
        "file": graph.path.name,
        "external_data": graph.data_path.name if graph.data_path else None,
        "files": {f.name: sha256_file(f) for f in graph.files},
        "bytes": graph.nbytes,
        "model": source.name,
        "config": json_config(cfg),
        "static_config": static_config,
        "checkpoint": source.describe(),
        "weights_sha256": weights_sha,
        "patch_size": graph.patch_size,
        "tokens": graph.tokens,
        "latent_size": cfg.input_size,
        "image_size": cfg.input_size * 8,
        "precision": graph.precision,
        "fp32_residual": graph.fp32_residual,
        "opset": graph.opset,
        "ir_version": graph.ir_version,
        **graph.io_dict(),
        "macs": int(model.macs(graph.patch_size)),
        "versions": versions(),
        "export_seconds": round(graph.seconds, 3),
        "created": _now(),
        "validation": report.to_dict(),
    }


def json_config(config) -> dict:
    import json

    return json.loads(config.to_json())


def versions() -> dict:
    import onnxruntime

    return {
        "flexidit_trt": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _new_manifest(name: str) -> dict:
    return {"kind": EXPORT_KIND, "schema": EXPORT_SCHEMA, "model": name, "graphs": {}, "updated": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
