"""AOTInductor backend: the packages `build` compiled (`engines/<model>/<gpu>-sm<cc>-torch<ver>/p<k>.pt2`,
engines/aoti.py), loaded with no compile at run time and run exactly like the torch backend: one CUDA
graph per batch, every graph in the pipeline's one pool (engines/torch_graphs.py).

The manifest is checked before anything loads: GPU name and compute capability, torch version and,
when a checkpoint is given, its sha256 (engines/aoti.check_aoti_entry names the field that differs).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

import torch

from ..artifacts import MANIFEST_NAME
from .aoti import AOTI_KIND, AOTI_SCHEMA, TorchTarget, aoti_dir, torch_target
from .backend import Backend, RunError, RunOptionError
from .manifest import build_command, check_built_for, read_engines_manifest
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


def load_aoti_backends(
    workdir: Path, model_name: str, device: str, precision: str | None, checkpoint_sha: str | None
) -> tuple[dict[int, Backend], dict[int, dict], GraphPool]:
    """The AOTInductor engines `build` compiled for this GPU and torch, their manifest entries (checked)
    and the one CUDA-graph pool they share."""
    if device == "cpu":
        raise RunOptionError(
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
    return engines, entries, pool


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


# -- loading a package ---------------------------------------------------------------------------------------------
def read_aoti_manifest(folder: str | Path) -> dict:
    """The manifest of an AOTInductor engine folder; RunError when it is missing or foreign."""
    return read_engines_manifest(folder, AOTI_KIND, AOTI_SCHEMA, "AOTInductor")


def check_aoti_entry(
    manifest: dict,
    patch_size: int,
    target: TorchTarget,
    *,
    batch: int | None = None,
    checkpoint_sha256: str | None = None,
    weights_sha256: str | None = None,
) -> dict:
    """The entry of `patch_size`, checked against this GPU, torch and (when given) the checkpoint, the
    static weights' hash and a batch; RunError naming the field that differs."""
    entry = manifest.get("engines", {}).get(str(patch_size))
    if entry is None:
        raise RunError(
            f"no AOTInductor engine for patch size {patch_size} (built: {sorted(manifest.get('engines', {}))})"
        )
    have = target.to_dict()
    built_gpu = entry.get("gpu") or {}
    here_gpu = have["gpu"] or {}
    checks = [
        ("device", entry.get("device"), have["device"]),
        ("gpu.compute_capability", built_gpu.get("compute_capability"), here_gpu.get("compute_capability")),
        ("gpu.name", built_gpu.get("name"), here_gpu.get("name")),
        ("torch", entry.get("torch"), have["torch"]),
    ]
    check_built_for(
        entry,
        checks,
        engine=f"AOTInductor engine p{patch_size}",
        rebuild=f"flexidit-trt build --model {manifest.get('model')} --aoti",
        checkpoint_sha256=checkpoint_sha256,
        weights_sha256=weights_sha256,
    )
    if batch is not None and not entry["batch_min"] <= batch <= entry["batch_max"]:
        raise RunError(
            f"batch {batch} is outside AOTInductor engine p{patch_size}'s range "
            f"{entry['batch_min']}..{entry['batch_max']}: rebuild with larger --batch-sizes"
        )
    return entry


def load_aoti_engine(path: str | Path, *, constants: dict | None = None, run_single_threaded: bool = True):
    """The package's callable: `run(x, t, y) -> out` on torch tensors of the device it was built for.

    run_single_threaded: skip the package's thread synchronisation, which CUDA-graph capture needs.
    constants: the weights by name (`module.state_dict()`), for packages built without them; they are
    used in place (user-managed), so tensors shared by several engines stay one copy.
    """
    _make_libstdcxx_global()
    runner = torch._inductor.aoti_load_package(str(path), run_single_threaded=run_single_threaded)
    if constants is not None:
        runner.load_constants(constants, check_full_update=True, user_managed=True)
    return runner


def _make_libstdcxx_global() -> None:
    """Put the process's libstdc++ into the global symbol scope before a package's wrapper.so is opened.

    The wrapper does not list libstdc++ among its NEEDED libraries; Python opened the copy that torch
    brought in with RTLD_LOCAL, so the wrapper's std::regex/locale code bound to the wrong symbols and
    crashed inside `aoti_load_package` on the GPU machine (benchmarks/NOTES.md, "why aoti_load_package
    crashes": dlopen with RTLD_GLOBAL made the same package load). RTLD_NOLOAD promotes the copy already
    mapped instead of loading another; where none is mapped (or on other platforms) nothing changes."""
    if not hasattr(os, "RTLD_NOLOAD"):
        return
    with contextlib.suppress(OSError):
        ctypes.CDLL("libstdc++.so.6", mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL | os.RTLD_LAZY)
