"""AOTInductor engines: `engines/<model>/<gpu>-sm<cc>-torch<version>/p<k>.pt2` per patch size, plus the
portable torch.compile cache (`compile_cache.bin`) as the fallback, under one `manifest.json`.

    result = build_aoti_engines(source, workdir, (2, 4), AotiOptions(precision="bf16", batch_max=16))
    run = load_aoti_engine(result.records[0].path)        # engines/aoti_backend.py: run(x, t, y) -> out

Each package is `model.static(p)` in the graph signature of export/onnx_export.py (x fp32, t fp32, y int64
-> out fp32; the precision lives inside), exported with `torch.export` with a dynamic batch
(`Dim("batch", min=batch_min, max=batch_max)`) and compiled by `torch._inductor.aoti_compile_and_package`.
Packages run only on the torch version and GPU architecture that compiled them, so both name the folder
and are recorded in the manifest; the runtime refuses a mismatch by the field's name. A package is
reused when its entry has the same settings, its file hashes to the recorded value and the weights are
the same (judged as export/graphs.py judges them: the same checkpoint or seeded random weights, else
the hash of the static module's state).

Loading a package (torch 2.11 + CUDA 13) could crash in `std::regex` inside the package's wrapper.so
(benchmarks/NOTES.md, "why aoti_load_package crashes"): wrapper.so does not list libstdc++ among its
NEEDED libraries, and the copy already in the process was opened RTLD_LOCAL, so the wrapper's
regex/locale code bound to the wrong symbols. `load_aoti_engine` promotes that copy to the global scope
first. The compile variants (`AOTI_VARIANTS`, option `variant` or env FLEXIDIT_AOTI_VARIANT) stay
available:
- "default": torch's settings;
- "no-pch": `aot_inductor.precompile_headers=False`;
- "static-libstdcxx": wrapper.so linked with `-static-libstdc++ -static-libgcc -Wl,--exclude-libs,ALL`.
The fallback, for a machine where no package loads, is torch.compile's portable cache
(engines/compile_cache.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..artifacts import (
    MANIFEST_NAME,
    BuildError,
    Progress,
    Step,
    commit_entry,
    ensure_writable_dir,
    fsync_replace,
    locked_manifest,
    new_manifest,
    no_progress,
    read_manifest,
    settings_changed,
    sha256_file,
    sha256_state_dict,
    staging_dir,
    utc_now,
)
from ..device import Device
from .build import EngineRecord
from .trt import GpuInfo, gpu_info

if TYPE_CHECKING:
    from ..export.source import ModelSource
    from ..model import FlexiDiT

AOTI_KIND = "flexidit-trt/aoti-engines"
AOTI_SCHEMA = 1
AOTI_FORMAT = 1  # bump when the package recipe changes: older packages rebuild
COMPILE_CACHE_NAME = "compile_cache.bin"
VARIANT_ENV = "FLEXIDIT_AOTI_VARIANT"
AOTI_VARIANTS = {
    "default": "torch's AOTInductor settings",
    "no-pch": "without the precompiled AOTI header (aot_inductor.precompile_headers=False)",
    "static-libstdcxx": "wrapper.so with its own hidden libstdc++ (-static-libstdc++ -static-libgcc "
    "-Wl,--exclude-libs,ALL)",
}
# Example batch for torch.export: 2, because export specialises a dimension whose example is 0 or 1.
EXPORT_BATCH = 2


# -- where the engines live ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TorchTarget:
    """What a compiled package is tied to: the device kind, the GPU (None on the CPU) and torch."""

    device: str  # "cuda" or "cpu"
    gpu: GpuInfo | None
    torch_version: str

    @property
    def folder_name(self) -> str:
        where = f"{self.gpu.slug}-{self.gpu.sm}" if self.gpu is not None else "cpu"
        return f"{where}-torch{self.torch_version}"

    def to_dict(self) -> dict:
        gpu = (
            None
            if self.gpu is None
            else {"name": self.gpu.name, "compute_capability": self.gpu.compute_capability}
        )
        return {"device": self.device, "gpu": gpu, "torch": self.torch_version}


def torch_target(device: str = "cuda", what: str = "AOTInductor engines") -> TorchTarget:
    """The target of this process: the GPU that `device` names (BuildError without one) or the CPU. `what`:
    the artifact the errors name (the torch.compile cache shares the folder and the rule)."""
    import torch

    try:
        parsed = Device.parse(device)
    except ValueError:
        raise BuildError(f"{what} are built for 'cuda' or 'cpu', not {device!r}") from None
    if parsed.is_cpu:
        return TorchTarget("cpu", None, torch.__version__)
    gpu = gpu_info(parsed.index) if torch.cuda.is_available() else None
    if gpu is None:
        raise BuildError(f"no CUDA GPU is visible: {what} are compiled on the GPU they run on")
    return TorchTarget("cuda", gpu, torch.__version__)


def aoti_dir(workdir: str | Path, model_name: str, target: TorchTarget) -> Path:
    return Path(workdir) / "engines" / model_name / target.folder_name


# -- options and results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AotiOptions:
    """How the packages are built. batch_min/batch_max: the dynamic batch range (with guidance the
    engine batch is twice the image batch: engines.profiles.engine_batches). variant: one of
    AOTI_VARIANTS (None: env FLEXIDIT_AOTI_VARIANT, else "default"). weights_in_package: False keeps the
    weights out of the package (`aot_inductor.package_constants_in_so=False`); the runtime then hands
    them over with `load_aoti_engine(path, constants=...)`, so engines that share weights hold one copy."""

    precision: str = "bf16"
    batch_min: int = 1
    batch_max: int = 32
    device: str = "cuda"
    variant: str | None = None
    weights_in_package: bool = True
    fp32_residual: bool = False
    # each MLP's fc1 + GELU as one cuBLASLt GEMM (model.Mlp; CUDA only); None: model.gelu_epilogue_default
    gelu_epilogue: bool | None = None

    def resolved(self) -> AotiOptions:
        """These options checked, with the variant and the GELU epilogue settled; BuildError naming the bad one."""
        from ..export.onnx_export import export_options
        from ..model.levers import use_gelu_epilogue

        precision, fp32_residual, _ = export_options(self.precision, self.fp32_residual, None)
        if not 1 <= self.batch_min <= self.batch_max:
            raise BuildError(
                f"batch range must satisfy 1 <= min <= max, got {self.batch_min}..{self.batch_max}"
            )
        variant = self.variant or os.environ.get(VARIANT_ENV) or "default"
        if variant not in AOTI_VARIANTS:
            raise BuildError(
                f"unknown AOTInductor variant {variant!r}; choose one of {', '.join(AOTI_VARIANTS)}"
            )
        return AotiOptions(
            precision,
            self.batch_min,
            self.batch_max,
            self.device,
            variant,
            self.weights_in_package,
            fp32_residual,
            use_gelu_epilogue(self.device, precision, self.gelu_epilogue),
        )


@dataclass
class AotiBuildResult:
    folder: Path | None
    records: list[EngineRecord] = field(default_factory=list)  # one per package, the TensorRT build's record
    skipped: str | None = None


PackageCompiler = Callable[..., None]
"""compile(module, package_path, options, device): write one .pt2 for `device` from a CPU module (the
real one is `compile_package`; a parameter so the bookkeeping can be tested without minutes of
compiling)."""


# -- building --------------------------------------------------------------------------------------------
def build_aoti_engines(
    model_or_source: ModelSource | FlexiDiT,
    workdir: str | Path,
    patch_sizes: tuple[int, ...],
    options: AotiOptions = AotiOptions(),
    *,
    force: bool = False,
    progress: Progress | None = None,
    target: TorchTarget | None = None,
    compiler: PackageCompiler | None = None,
) -> AotiBuildResult:
    """Compile (or reuse) one AOTInductor package per patch size under `workdir`.

    model_or_source: a ModelSource (weights described as the export manifest does) or a FlexiDiT in
    memory (then only the weights' hash can tell a reusable package). target: defaults to this process's
    GPU (or CPU with options.device="cpu"). Raises BuildError with a one-line reason.
    """
    options = options.resolved()
    say = progress or no_progress
    source = _as_source(model_or_source, patch_sizes)
    target = target or torch_target(options.device)
    compiler = compiler or compile_package
    if source.config is None:
        source.resolve()
    folder = ensure_writable_dir(aoti_dir(workdir, source.name, target))
    result = AotiBuildResult(folder)
    with locked_manifest(folder, AOTI_KIND, AOTI_SCHEMA, source.name, **target.to_dict()) as manifest:
        for p in sorted({int(q) for q in patch_sizes}):
            record = _one_package(source, folder, manifest, p, options, target, force, compiler, say)
            commit_entry(folder, manifest, p, record.entry)
            result.records.append(record)
    return result


def _one_package(source, folder, manifest, p, options, target, force, compiler, say) -> EngineRecord:
    from ..export.graphs import _same_source, json_config  # the export's rule for "the same weights"
    from ..model.macs import forward_macs

    settings = package_settings(p, options, target)
    path = folder / f"p{p}.pt2"
    entry = manifest["engines"].get(str(p))
    reason = settings_changed(entry, settings, force)
    if reason is None and not _intact(path, entry):
        reason = "package missing or modified"
    if reason is None and not isinstance(source, _InMemorySource) and _same_source(source, entry):
        say(Step(p, "reuse", f"reusing {path.name} (same weights)"))
        return EngineRecord(p, path, {**entry, "checkpoint": source.describe()}, False, "same weights")

    module = aoti_module(source.load(), p, options)
    weights_sha = sha256_state_dict(module.state_dict())
    if reason is None and entry.get("weights_sha256") == weights_sha:
        say(Step(p, "reuse", f"reusing {path.name} (same weights)"))
        return EngineRecord(p, path, {**entry, "checkpoint": source.describe()}, False, "same weights")
    reason = reason or "weights changed"
    say(Step(p, "build", f"compiling {path.name} with AOTInductor ({options.variant}; {reason})"))
    start = time.perf_counter()
    with staging_dir(folder) as stage:
        staged = stage / path.name  # aoti_compile_and_package wants a name ending in .pt2
        try:
            compiler(module, staged, options, target.device)
        except BuildError:
            raise
        except Exception as err:  # export or compile failure: name the package and torch's message
            raise BuildError(
                f"AOTInductor could not compile {path.name}: {type(err).__name__}: {err}"
            ) from err
        seconds = time.perf_counter() - start
        fsync_replace(staged, path)
    entry = {
        "settings": settings,
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "patch_size": p,
        "tokens": module.config.tokens(p),
        "macs": forward_macs(source.config, p),
        "batch_min": options.batch_min,
        "batch_max": options.batch_max,
        "precision": options.precision,
        "fp32_residual": options.fp32_residual,
        "gelu_epilogue": options.gelu_epilogue,
        "variant": options.variant,
        "weights_in_package": options.weights_in_package,
        "checkpoint": source.describe(),
        "weights_sha256": weights_sha,
        "config": json_config(source.config),
        "gpu": target.to_dict()["gpu"],
        "device": target.device,
        "torch": target.torch_version,
        "versions": {"flexidit_trt": __version__, "torch": target.torch_version},
        "build_seconds": round(seconds, 3),
        "created": utc_now(),
    }
    return EngineRecord(p, path, entry, True, reason)


def package_settings(p: int, options: AotiOptions, target: TorchTarget) -> dict:
    """Everything besides the weights that changes a package (the reuse key)."""
    return {
        "patch_size": p,
        "precision": options.precision,
        "fp32_residual": options.fp32_residual,
        "gelu_epilogue": options.gelu_epilogue,
        "batch_min": options.batch_min,
        "batch_max": options.batch_max,
        "variant": options.variant,
        "weights_in_package": options.weights_in_package,
        **target.to_dict(),
        "format": AOTI_FORMAT,
    }


def aoti_module(model: FlexiDiT, patch_size: int, options: AotiOptions):
    """`model.static(p)` in the exported graph signature (fp32 in and out, the precision inside): the
    same module the ONNX export traces, so its weights hash as the export manifest records them."""
    from ..export.onnx_export import graph_module

    return graph_module(
        model, patch_size, options.precision, options.fp32_residual, gelu_epilogue=options.gelu_epilogue
    )


def compile_package(module, package_path: Path, options: AotiOptions, device: str) -> None:
    """torch.export on `device` with a dynamic batch, then aoti_compile_and_package into `package_path`."""
    import torch

    from ..export.onnx_export import example_inputs

    module = module.to(device)
    example = tuple(a.to(device) for a in example_inputs(module.config, EXPORT_BATCH))
    batch = torch.export.Dim("batch", min=options.batch_min, max=options.batch_max)
    with torch.no_grad():
        program = torch.export.export(
            module, example, dynamic_shapes={"x": {0: batch}, "t": {0: batch}, "y": {0: batch}}
        )
    with variant_configs(options.variant) as configs:
        if not options.weights_in_package:
            configs["aot_inductor.package_constants_in_so"] = False
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(package_path), inductor_configs=configs
        )


@contextlib.contextmanager
def variant_configs(variant: str) -> Iterator[dict[str, Any]]:
    """The inductor configs of a compile variant (AOTI_VARIANTS); a context, since "static-libstdcxx"
    needs a compiler wrapper script for the duration of the compile."""
    if variant == "default":
        yield {}
    elif variant == "no-pch":
        yield {"aot_inductor.precompile_headers": False}
    elif variant == "static-libstdcxx":
        with _static_libstdcxx_compiler() as cxx:
            yield {"cpp.cxx": (None, cxx)}
    else:
        raise BuildError(f"unknown AOTInductor variant {variant!r}; choose one of {', '.join(AOTI_VARIANTS)}")


@contextlib.contextmanager
def _static_libstdcxx_compiler() -> Iterator[str]:
    """A script standing in for the C++ compiler inductor uses: it runs that compiler and, on shared-object
    links only, adds the static C++ runtime and hides its symbols. Compiles (and the precompiled header)
    go through unchanged, so they stay compatible with each other."""
    import torch._inductor.config as inductor_config

    real = next((c for c in inductor_config.cpp.cxx if c), None) or "g++"
    real_path = shutil.which(real)
    if real_path is None:
        raise BuildError(f"C++ compiler {real!r} not found (set CXX)")
    folder = Path(tempfile.mkdtemp(prefix="flexidit-cxx-"))
    script = folder / "g++"  # a name inductor recognises as gcc
    script.write_text(
        "#!/bin/sh\n"
        "# flexidit-trt: link AOTInductor's wrapper.so with its own hidden C++ runtime\n"
        'case " $* " in\n'
        f'  *" -shared "*) exec "{real_path}" "$@" -static-libstdc++ -static-libgcc -Wl,--exclude-libs,ALL ;;\n'
        "esac\n"
        f'exec "{real_path}" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    try:
        yield str(script)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------------------
def read_or_new_manifest(folder: Path, model_name: str, target: TorchTarget) -> dict:
    return read_manifest(folder / MANIFEST_NAME, AOTI_KIND, AOTI_SCHEMA) or new_manifest(
        AOTI_KIND, AOTI_SCHEMA, model_name, "engines", **target.to_dict()
    )


def _intact(path: Path, entry: dict | None) -> bool:
    return entry is not None and path.is_file() and sha256_file(path) == entry.get("sha256")


@dataclass
class _InMemorySource:
    """A FlexiDiT handed over in memory: named by its config; only its weights' hash identifies it."""

    model: Any
    patch_sizes: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.model.config.name

    @property
    def config(self):
        return self.model.config

    def load(self):
        return self.model

    def describe(self) -> dict:
        return {"init": "in-memory", "seed": None, "path": None, "sha256": None}


def _as_source(model_or_source, patch_sizes: tuple[int, ...]):
    from ..export.source import ModelSource

    if isinstance(model_or_source, ModelSource):
        missing = [p for p in patch_sizes if p not in model_or_source.patch_sizes]
        if missing:
            raise BuildError(
                f"patch size(s) {missing} are not among the source's {list(model_or_source.patch_sizes)}"
            )
        return model_or_source
    config = getattr(model_or_source, "config", None)
    if config is None:
        raise BuildError(f"expected a ModelSource or a FlexiDiT, got {type(model_or_source).__name__}")
    missing = [p for p in patch_sizes if p not in config.patch_sizes]
    if missing:
        raise BuildError(f"patch size(s) {missing} are not among the model's {list(config.patch_sizes)}")
    return _InMemorySource(model_or_source, tuple(patch_sizes))
