"""AOTInductor backend: the packages `build` compiled (`engines/<model>/<gpu>-sm<cc>-torch<ver>/p<k>.pt2`,
engines/aoti.py), loaded with no compile at run time and run exactly like the torch backend: one CUDA
graph per batch, every graph in the pipeline's one pool (runtime/torch_graphs.py).

The manifest is checked before anything loads: GPU name and compute capability, torch version and,
when a checkpoint is given, its sha256 (engines/aoti.check_aoti_entry names the field that differs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts import MANIFEST_NAME
from ..engines.aoti import (
    aoti_dir,
    check_aoti_entry,
    load_aoti_engine,
    read_aoti_manifest,
    torch_target,
)
from .backend import Backend, RunError
from .pipeline import Pipeline, Selection
from .torch_graphs import GraphPool, TorchGraphBackend


class AotiBackend(TorchGraphBackend):
    name = "aoti"

    def __init__(self, runner, *, batch_min: int, path: Path, gelu_epilogue: bool = False, **kwargs):
        super().__init__(lambda x, t, y: _single(runner(x, t, y)), **kwargs)
        self.runner = runner
        self.batch_min = batch_min
        self.path = path
        self.gelu_epilogue = gelu_epilogue  # as the manifest records the package's build

    def covers(self, batch: int) -> bool:
        return self.batch_min <= batch <= self.max_batch

    def describe(self) -> dict:
        return {
            **super().describe(),
            "package": str(self.path),
            "batch_min": self.batch_min,
            "gelu_epilogue": self.gelu_epilogue,
        }


def _single(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def aoti_pipeline(
    workdir: Path,
    model_name: str,
    device: str,
    precision: str | None,
    max_batch: int,
    checkpoint_sha: str | None,
    reason: str,
) -> Pipeline:
    from .select import _spec_from_entry, build_command

    if device == "cpu":
        raise RunError(
            "the aoti backend runs CUDA packages: use --device cuda, or the torch backend on the CPU"
        )
    target = torch_target(device)
    folder = aoti_dir(workdir, model_name, target)
    if not (folder / MANIFEST_NAME).is_file():
        _explain_missing(workdir, model_name, target, build_command(model_name, "aoti"))
    manifest = read_aoti_manifest(folder)
    entries = {
        int(p): check_aoti_entry(manifest, int(p), target, checkpoint_sha256=checkpoint_sha)
        for p in manifest.get("engines", {})
    }
    if not entries:
        raise RunError(f"no AOTInductor engines in {folder}: run `{build_command(model_name, 'aoti')}`")
    for p, entry in entries.items():
        if precision is not None and entry["precision"] != precision:
            raise RunError(
                f"AOTInductor engine p{p} is {entry['precision']}, --precision {precision} asked for: precision "
                f"differs; run `{build_command(model_name, 'aoti', precision=precision)}`"
            )
    constants = _external_weights(entries, model_name)
    pool = GraphPool(device)
    engines: dict[int, Backend] = {}
    for p, entry in entries.items():
        path = folder / entry["file"]
        try:
            runner = load_aoti_engine(path, constants=constants.get(p))
        except Exception as err:  # a package that torch cannot load here: say which and why
            raise RunError(f"cannot load AOTInductor package {path}: {type(err).__name__}: {err}") from None
        engines[p] = AotiBackend(
            runner,
            batch_min=int(entry["batch_min"]),
            path=path,
            gelu_epilogue=bool(entry.get("gelu_epilogue", False)),
            patch_size=p,
            device=device,
            out_dtype="float32",  # the packages keep the exported graph's fp32 signature
            max_batch=int(entry["batch_max"]),
            pool=pool,
        )
    first = entries[min(entries)]
    spec = _spec_from_entry(first, entries, model_name)
    return Pipeline(
        spec,
        engines,
        device=device,
        selection=Selection("aoti", reason),
        precision=first["precision"],
        max_batch=min(max_batch, min(e["batch_max"] for e in entries.values()) // 2 or 1),
        owned=[pool],
    )


def _explain_missing(workdir: Path, model_name: str, target, command: str) -> None:
    """No engines for this GPU and torch: name the field when engines for another one exist."""
    for other in sorted((Path(workdir) / "engines" / model_name).glob(f"*-torch*/{MANIFEST_NAME}")):
        manifest = read_aoti_manifest(other.parent)
        for p in manifest.get("engines", {}):
            check_aoti_entry(manifest, int(p), target)  # raises RunError naming the field that differs
    raise RunError(f"no AOTInductor engines for {model_name} on {target.folder_name}: run `{command}`")


def _external_weights(entries: dict[int, dict], model_name: str) -> dict[int, dict]:
    """The weights of packages built without them (`weights_in_package` false), from the weights the
    manifest names, as the build's module had them."""
    need = [p for p, e in entries.items() if not e.get("weights_in_package", True)]
    if not need:
        return {}
    from ..export.onnx_export import graph_module
    from ..export.source import ModelSource

    ckpt = entries[need[0]]["checkpoint"]
    if ckpt.get("init") == "checkpoint":
        source = ModelSource(model_name, tuple(sorted(entries)), checkpoint=Path(ckpt["path"]))
    else:
        raise RunError(
            "AOTInductor packages without their weights need the checkpoint they were built from; "
            f"{model_name}'s were built from {ckpt.get('init')} weights: rebuild with the weights in the package"
        )
    model = source.load()
    out = {}
    for p in need:
        entry = entries[p]
        module = graph_module(model, p, entry["precision"], entry.get("fp32_residual", False)).to("cuda")
        out[p] = {k: v for k, v in module.state_dict().items()}
    torch.cuda.synchronize()
    return out
