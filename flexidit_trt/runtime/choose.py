"""Which backend runs: `auto` takes the first of trt → aoti → torch (GPU) → ort that is installed and
built, and says why it took it and why not the ones before (printed by `run` and recorded). Nothing here
imports torch, TensorRT or ONNX Runtime."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..artifacts import MANIFEST_NAME, export_dir
from ..device import Device
from ..engines.backend import RunError, RunOptionError
from ..engines.manifest import build_command
from . import native

BACKENDS = ("auto", "trt", "aoti", "torch", "ort")


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_device(device: str | None) -> str:
    """'cpu', 'cuda' (= 'cuda:0') or 'cuda:N', checked against the GPUs the extension sees; None: the
    first GPU, else the CPU."""
    if device is None:
        return "cuda:0" if native.has_cuda() and native.cuda_device_count() > 0 else "cpu"
    try:
        parsed = Device.parse(device)
    except ValueError:
        raise RunOptionError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if not parsed.is_cpu:
        count = native.cuda_device_count() if native.has_cuda() else 0
        if parsed.index >= count:
            raise RunOptionError(f"device {parsed} is not available ({count} CUDA device(s) visible)")
    return str(parsed)


def choose_backend(
    requested: str,
    device: str,
    workdir: Path,
    model_name: str,
    checkpoint: str | os.PathLike | None = None,
    exclude: list[str] | None = None,
) -> tuple[str, str]:
    """(backend, why) for a workdir: the requested one, or auto's first usable one with the reasons the
    earlier ones were passed over. `exclude`: "name: why" of backends that were tried and failed."""
    if requested != "auto":
        return requested, "requested"
    skipped = list(exclude or [])
    tried = {entry.split(":")[0] for entry in skipped}
    if device != "cpu":
        for name, probe in (("trt", _trt_built), ("aoti", _aoti_built)):
            if name in tried:
                continue
            ok, why = probe(workdir, model_name, device)
            if ok:
                return name, "; ".join([why, *skipped])
            skipped.append(f"{name}: {why}")
    if installed("torch"):
        where = "GPU" if device != "cpu" else "CPU"
        why = f"torch is installed: torch backend on the {where}, weights from "
        why += (
            f"{checkpoint}" if checkpoint else "what `build` recorded (or the seeded random weights it uses)"
        )
        return "torch", "; ".join([why, *skipped])
    skipped.append("torch: not installed")
    ok, why = _ort_built(workdir, model_name, device)
    if ok:
        return "ort", "; ".join([why, *skipped])
    skipped.append(f"ort: {why}")
    raise RunError(
        f"no backend can run {model_name} on {device} ({'; '.join(skipped)}): run "
        f"`{build_command(model_name, 'ort', checkpoint)}` first"
    )


def _engines_built(
    workdir: Path, model_name: str, *, package: str, pattern: str, kind: str, backend: str
) -> tuple[bool, str]:
    """Whether `build` left engines of one kind (their manifest under a `<gpu>-<pattern>` folder)."""
    if not installed(package):
        return False, f"{package} not installed"
    folder = workdir / "engines" / model_name
    manifests = list(folder.glob(f"*-{pattern}*/{MANIFEST_NAME}")) if folder.is_dir() else []
    if not manifests:
        return False, f"no {kind} engines under {folder} (`{build_command(model_name, backend)}`)"
    return True, f"{kind} engines under {folder}"


def _trt_built(workdir: Path, model_name: str, device: str) -> tuple[bool, str]:
    return _engines_built(
        workdir, model_name, package="tensorrt", pattern="trt", kind="TensorRT", backend="trt"
    )


def _aoti_built(workdir: Path, model_name: str, device: str) -> tuple[bool, str]:
    return _engines_built(
        workdir, model_name, package="torch", pattern="torch", kind="AOTInductor", backend="aoti"
    )


def _ort_built(workdir: Path, model_name: str, device: str) -> tuple[bool, str]:
    path = export_dir(workdir, model_name) / MANIFEST_NAME
    if not path.exists():
        return False, f"no exported graphs at {path.parent}"
    from ..engines.ort_backend import provider_missing

    missing = provider_missing(device)
    if missing:
        return False, missing
    return True, f"exported ONNX graphs under {path.parent} (ONNX Runtime)"
