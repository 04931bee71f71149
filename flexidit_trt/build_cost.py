"""What a `build` is about to do and roughly what it costs, from the config alone, said before the work
starts; and the refusal when the disk under the workdir cannot hold what it will write.

    cost = build_cost(source, workdir, precision="fp16", fp32_residual=False, opset=17, force=False)
    cost.line()          # "dit_xl: export and validate 2 ONNX graphs (p2, p4) ... about 2.70 GB to write ..."
    check_disk(cost)     # BuildError when the free space is below cost.bytes_to_write
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .artifacts import EXPORT_KIND, EXPORT_SCHEMA, MANIFEST_NAME, BuildError, export_dir, read_manifest
from .export.source import ModelSource

# Bytes per weight in a graph: fp32 for fp32 graphs, and counted as fp32 for --fp32-residual too (an upper
# bound: embedders, modulation and gates stay fp32 there), so the disk check never under-counts.
_WEIGHT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


@dataclass(frozen=True)
class BuildCost:
    model: str
    weights: str  # in words
    parameters: int  # of one graph's static model (the reference layout, as `info` counts it)
    to_export: tuple[int, ...]  # patch sizes whose graphs this build (re)writes
    reused: tuple[int, ...]  # patch sizes whose graphs look current (reused after their hash check)
    bytes_to_write: int
    folder: Path
    free_bytes: int
    engines: tuple[str, ...]

    def line(self) -> str:
        """The build's plan in one line, for people."""
        parts = []
        if self.to_export:
            sizes = ", ".join(f"p{p}" for p in self.to_export)
            parts.append(
                f"export and validate {len(self.to_export)} ONNX graph(s) ({sizes}) of {self.parameters / 1e6:.1f} M "
                f"parameters each: about {_size(self.bytes_to_write)} to write under {self.folder} "
                f"({_size(self.free_bytes)} free)"
            )
        if self.reused:
            parts.append(
                f"reuse {', '.join(f'p{p}' for p in self.reused)} (current, once their hashes check)"
            )
        parts += [_ENGINE_WORDS[e] for e in self.engines]
        return f"{self.model} ({self.weights}): " + "; then ".join(parts)


_ENGINE_WORDS = {
    "trt": "build TensorRT engines where TensorRT is present",
    "aoti": "compile AOTInductor packages on a GPU",
    "compile-cache": "compile and save the torch.compile cache on a GPU",
}


def build_cost(
    source: ModelSource,
    workdir: str | Path,
    *,
    precision: str,
    fp32_residual: bool,
    opset: int,
    force: bool,
    engines: tuple[str, ...] = (),
) -> BuildCost:
    """The plan and cost of exporting `source`'s graphs under `workdir` with these (checked) settings. A
    graph counts as reused when its manifest entry has this build's settings and its files are present
    (the build itself then checks their hashes and signatures)."""
    from .export.graphs import export_settings
    from .info import model_info

    if source.config is None:
        source.resolve()  # a checkpoint's config: from its header where possible
    folder = export_dir(workdir, source.name)
    graphs = _current_graphs(folder)
    reused = tuple(
        p
        for p in source.patch_sizes
        if not force
        and (entry := graphs.get(str(p))) is not None
        and entry.get("settings") == export_settings(p, precision, fp32_residual, opset)
        and _files_present(folder, entry)
    )
    to_export = tuple(p for p in source.patch_sizes if p not in reused)
    parameters = model_info(source.config).base_parameters
    per_weight = 4 if fp32_residual else _WEIGHT_BYTES[precision]
    probe = next(p for p in (folder, *folder.parents) if p.exists())  # the file system it will land on
    return BuildCost(
        model=source.name,
        weights=source.label(),
        parameters=parameters,
        to_export=to_export,
        reused=reused,
        bytes_to_write=parameters * per_weight * len(to_export),
        folder=folder,
        free_bytes=shutil.disk_usage(probe).free,
        engines=tuple(e for e in engines if e in _ENGINE_WORDS),
    )


def check_disk(cost: BuildCost) -> None:
    """BuildError when the disk under the workdir has less free space than the graphs will take."""
    if cost.bytes_to_write > cost.free_bytes:
        raise BuildError(
            f"not enough disk space under {cost.folder}: this build writes about "
            f"{_size(cost.bytes_to_write)} of ONNX ({len(cost.to_export)} graph(s) of "
            f"{cost.parameters / 1e6:.1f} M parameters), {_size(cost.free_bytes)} are free; free some "
            "space or pass another --workdir"
        )


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def _current_graphs(folder: Path) -> dict:
    try:
        manifest = read_manifest(folder / MANIFEST_NAME, EXPORT_KIND, EXPORT_SCHEMA)
    except BuildError:  # unreadable: the build says so itself; nothing counts as reusable here
        return {}
    return (manifest or {}).get("graphs", {})


def _files_present(folder: Path, entry: dict) -> bool:
    files = entry.get("files") or {}
    return bool(files) and all((folder / name).is_file() for name in files)
