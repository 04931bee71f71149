"""The export root: `export/<model>/p<k>.onnx` per patch size and `export/<model>/manifest.json`.

A graph is reused when its manifest entry has the same export settings (precision, fp32 residual,
opset, exporter and torch/onnx versions), its files still hash to the recorded values, and the same
weights: the same checkpoint file or the same seeded random weights (same seed and config; the settings
pin torch), both checked without building the model, or, failing that, the same weights after loading
(the hash of the static model's state, so a checkpoint re-saved, or one whose other patch sizes
changed, still reuses this one). Anything else re-exports that patch size only.

A reused graph is checked again (ONNX checker, strict shape inference, TensorRT operator table) only
when the operator table changed since it was last checked (`ops_table` in its entry): its bytes are
the ones checked (they hash to `files`) and the onnx version is part of the settings.

One manifest holds the graphs of one build's settings: committing a graph removes every entry made
with other settings (precision, fp32 residual, opset, exporter, torch/onnx), another model config or
other weights. Graphs of patch sizes this build did not ask for are deleted with their entries (the
report lists them); those it did ask for keep their files until their own turn, so an unchanged one
can still be reused. An interrupt in between leaves fewer graphs, never mixed ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from .. import __version__
from ..artifacts import (
    EXPORT_KIND,
    EXPORT_SCHEMA,
    MANIFEST_NAME,
    Progress,
    Step,
    ensure_writable_dir,
    export_dir,
    folder_lock,
    new_manifest,
    no_progress,
    read_manifest,
    remove_orphans,
    remove_quietly,
    settings_changed,
    sha256_file,
    sha256_state_dict,
    signature_mismatch,
    utc_now,
    write_json_atomic,
)
from .onnx_export import (
    EXPORTER_VERSION,
    ExportedGraph,
    export_onnx,
    export_options,
    file_signature,
    graph_module,
    graph_signature,
)
from .ops import load_op_table
from .source import ModelSource
from .validate import DEFAULT_BATCHES, ValidationReport, validate_onnx


@dataclass
class GraphRecord:
    """One graph of the export root after a build: its manifest entry and whether this run made it."""

    patch_size: int
    path: Path
    entry: dict
    rebuilt: bool
    reason: str  # why it was (re)built or reused
    # Which checks ran in this build: "now" (all of them), "operators" (structure and TensorRT operators
    # now; the ONNX Runtime comparison is the manifest's), "manifest" (none: every result is recorded).
    validated: str = "now"

    @property
    def validation(self) -> dict:
        return self.entry["validation"]


@dataclass
class StaleGraph:
    """A graph removed from the export folder because it was made with other settings or weights."""

    patch_size: int
    path: Path
    files: list[str]
    reason: str


@dataclass
class ExportResult:
    graphs: list[GraphRecord]  # one per patch size of the build
    removed: list[StaleGraph]  # graphs of other patch sizes deleted as inconsistent with this build


def export_settings(patch_size: int, precision: str, fp32_residual: bool, opset: int) -> dict:
    """Everything besides the weights that changes a graph's bytes (the reuse key); `fp32_residual` as
    normalised by export_options."""
    return {
        "patch_size": patch_size,
        "precision": precision,
        "fp32_residual": fp32_residual,
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
) -> ExportResult:
    """Export, validate and record one graph per patch size of `source`, reusing current ones.

    Each graph is validated on its staged copy before it replaces the old one, and the manifest entry is
    written after the graph: an interrupted or failed build leaves every earlier graph and entry of its
    settings intact. Reused graphs get the structural checks again (checker, shape inference, operator
    table) when the operator table changed since their last check; the ONNX Runtime comparison recorded
    when they were exported stands unless `revalidate`. Graphs of other settings or weights are removed
    (see the module docstring).
    """
    precision, fp32_residual, opset = export_options(precision, fp32_residual, opset)
    say = progress or no_progress
    if source.config is None:  # a checkpoint: its config names the folder (read cheaply where possible)
        say(Step(None, "resolve", f"reading the config of {source.checkpoint}"))
        source.resolve()
    folder = ensure_writable_dir(export_dir(workdir, source.name))
    records, removed = [], []
    with folder_lock(folder):
        manifest = read_manifest(folder / MANIFEST_NAME, EXPORT_KIND, EXPORT_SCHEMA) or new_manifest(
            EXPORT_KIND, EXPORT_SCHEMA, source.name, "graphs"
        )
        # Leftovers of an interrupted build: a graph or data file no entry names belongs to no committed graph.
        referenced = {name for entry in manifest["graphs"].values() for name in entry.get("files", {})}
        remove_orphans(folder, keep=referenced, pattern="p*.onnx*")
        previous = dict(manifest["graphs"])  # the entries as found: what this build may reuse
        for p in source.patch_sizes:
            settings = export_settings(p, precision, fp32_residual, opset)
            record = _one_graph(
                source, folder, previous.get(str(p)), settings, force, revalidate, validation_batches, say
            )
            manifest["graphs"][str(p)] = record.entry
            stale = _drop_other_builds(manifest["graphs"], record.entry, folder)
            manifest["updated"] = utc_now()
            write_json_atomic(folder / MANIFEST_NAME, manifest)  # the commit point for this graph
            for graph in (g for g in stale if g.patch_size not in source.patch_sizes):
                remove_quietly(*(folder / name for name in graph.files))
                say(Step(None, "remove", f"removed {graph.path.name} ({graph.reason})"))
                removed.append(graph)
            records.append(record)
    return ExportResult(records, removed)


def _drop_other_builds(graphs: dict[str, dict], committed: dict, folder: Path) -> list[StaleGraph]:
    """Remove from `graphs` the entries made with other settings, config or weights than `committed`."""
    mine = _build_identity(committed)
    stale = []
    for key, entry in list(graphs.items()):
        reason = settings_changed({"settings": _build_identity(entry)}, mine, force=False)
        if reason is not None:
            del graphs[key]
            path = folder / entry.get("file", f"p{key}.onnx")
            stale.append(StaleGraph(int(key), path, list(entry.get("files", {})), reason))
    return stale


def _build_identity(entry: dict) -> dict:
    """What every graph under one manifest shares: the settings but the patch size, the weights (the
    checkpoint's hash, or the seed of random weights) and the model config."""
    weights = entry.get("checkpoint", {})
    same = {k: v for k, v in entry.get("settings", {}).items() if k != "patch_size"}
    seeded = weights.get("init") != "checkpoint"
    same["weights"] = (
        f"seed {weights.get('seed')}" if seeded else f"checkpoint {str(weights.get('sha256'))[:12]}"
    )
    same.update({f"config.{k}": v for k, v in entry.get("config", {}).items()})
    return same


def _one_graph(source, folder, entry, settings, force, revalidate, batches, say) -> GraphRecord:
    p = settings["patch_size"]
    path = folder / f"p{p}.onnx"
    reason = settings_changed(entry, settings, force)
    if reason is None and not _files_intact(folder, entry):  # hashed once per run
        reason = "files missing or modified"
    if reason is None and (field := _signature_changed(folder, entry)) is not None:
        reason = f"{field} differs from what the export writes"
    usable = reason is None and (source.image_size is None or entry_image_size(entry) == source.image_size)
    # Fast paths: the same weights, known without building the model (not even loading a checkpoint).
    same = _same_source(source, entry) if usable else None
    if same is not None:
        return _reuse(source, path, entry, same, revalidate, batches, settings, say)

    model = source.load()
    say(Step(p, "prepare", f"preparing the static model ({settings['precision']})"))
    module = graph_module(model, p, settings["precision"], settings["fp32_residual"], settings["opset"])
    weights_sha = sha256_state_dict(module.state_dict())
    static_config = json_config(module.config)
    if usable and entry.get("weights_sha256") == weights_sha and entry.get("static_config") == static_config:
        return _reuse(source, path, entry, "same weights", revalidate, batches, settings, say, module)

    reason = reason or "weights changed"
    say(Step(p, "export", f"exporting {path.name} ({reason})"))
    reports: dict[str, ValidationReport] = {}

    def check(staged: Path, mod) -> None:
        say(Step(p, "validate", "validating (checker, TensorRT operator table, ONNX Runtime vs PyTorch)"))
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


def _same_source(source: ModelSource, entry: dict) -> str | None:
    """Why `entry`'s graph has the weights `source` would give, judged from their descriptions alone, or
    None when only the weights themselves can tell."""
    if not source.is_random:
        same = entry["checkpoint"].get("sha256") == source.checkpoint_sha256()
        return "same checkpoint" if same else None
    # Seeded random weights are fixed by config, seed and init (and torch, which the settings pin).
    same = entry["checkpoint"] == source.describe() and entry["config"] == json_config(source.config)
    return "same weights" if same else None


def _reuse(source, path, entry, why, revalidate, batches, settings, say, module=None) -> GraphRecord:
    p = settings["patch_size"]
    say(Step(p, "reuse", f"reusing {path.name} ({why})"))
    # The same bytes may sit at another path now, or come from a config that differs only where this
    # graph does not look (another patch set, same static weights): record this build's source.
    entry = {**entry, "checkpoint": source.describe(), "config": json_config(source.config)}
    table = load_op_table()
    validated = "manifest"
    if revalidate:
        module = module or graph_module(
            source.load(), p, settings["precision"], settings["fp32_residual"], settings["opset"]
        )
        say(Step(p, "validate", f"revalidating {path.name}"))
        report = validate_onnx(path, module, precision=settings["precision"], batches=batches)
        entry = {**entry, "validation": report.to_dict(), "ops_table": table.version, "validated": utc_now()}
        validated = "now"
    elif entry.get("ops_table") != table.version:
        # Checked against another operator table (or before tables were recorded): structure and
        # operator support again. The bytes are the ones checked before, so nothing else is needed.
        say(Step(p, "validate", f"checking {path.name} against the {table.describe()}"))
        report = validate_onnx(path, None, precision=settings["precision"])
        validation = {**entry["validation"], "ops": report.ops.to_dict()}
        entry = {**entry, "validation": validation, "ops_table": table.version}
        validated = "operators"
    return GraphRecord(p, path, entry, rebuilt=False, reason=why, validated=validated)


def _signature_changed(folder: Path, entry: dict) -> str | None:
    """The first input/output field, of the manifest's record ("manifest field inputs[0].shape") or of the
    file itself ("p2.onnx inputs[1].name"), that differs from what the export of the entry's config writes;
    None when both match. A hand-edited record or graph is not reused, even with its hash edited to match."""
    inputs, outputs = graph_signature(_entry_config(entry))
    want = {"inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs]}
    try:
        in_file = file_signature(folder / entry["file"])
    except Exception:  # unreadable as ONNX: not reusable
        return f"{entry.get('file')} (unreadable as ONNX)"
    for label, have in (("manifest field", entry), (entry["file"], in_file)):
        field = signature_mismatch(have, want)
        if field is not None:
            return f"{label} {field}"
    return None


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
        "image_size": cfg.image_size,
        "precision": graph.precision,
        "fp32_residual": graph.fp32_residual,
        "opset": graph.opset,
        "ir_version": graph.ir_version,
        **graph.io_dict(),
        "macs": int(model.macs(graph.patch_size)),
        "versions": versions(),
        "export_seconds": round(graph.seconds, 3),
        "created": utc_now(),
        "validated": utc_now(),  # when `validation` ran (again with --revalidate)
        "validation": report.to_dict(),
        "ops_table": load_op_table().version,  # the operator table `validation.ops` was checked against
    }


def entry_image_size(entry: dict) -> int:
    """The image side in pixels of a manifest entry's graph, from its config (not its `image_size` field,
    which older builds wrote as input_size x 8 for pixel-space models too)."""
    return _entry_config(entry).image_size


def _entry_config(entry: dict):
    from ..model.config import DiTConfig

    return DiTConfig.from_json(json.dumps(entry["config"]))


def json_config(config) -> dict:
    return json.loads(config.to_json())


def versions() -> dict:
    import onnxruntime

    return {
        "flexidit_trt": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
