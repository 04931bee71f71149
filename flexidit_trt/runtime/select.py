"""Which backend runs, and building the pipeline around it.

`auto` takes the first of trt → aoti → torch (GPU) → ort that is installed and built, and says why it
took it and why not the ones before (printed by `run` and recorded). Torch is imported only on the
paths that use it: the ort and trt paths stay torch-free.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import kernels
from ..artifacts import MANIFEST_NAME, BuildError, ManifestError, export_dir, load_export_manifest
from .backend import Backend, RunError, RunOptionError
from .pipeline import DEFAULT_MAX_BATCH, Pipeline, Selection
from .spec import ModelSpec

if TYPE_CHECKING:
    from ..model import FlexiDiT

BACKENDS = ("auto", "trt", "aoti", "torch", "ort")
PRECISIONS = ("fp32", "bf16", "fp16")


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_device(device: str | None) -> str:
    """'cpu', 'cuda' (= 'cuda:0') or 'cuda:N'; None: the first GPU the extension sees, else the CPU."""
    if device is None:
        return "cuda:0" if kernels.has_cuda() and kernels.cuda_device_count() > 0 else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise RunOptionError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if device != "cpu":
        count = kernels.cuda_device_count() if kernels.has_cuda() else 0
        if int(device[5:]) >= count:
            raise RunOptionError(f"device {device} is not available ({count} CUDA device(s) visible)")
    return device


def resolve_precision(precision: str | None, device: str) -> str:
    if precision is None:
        return "fp32" if device == "cpu" else "bf16"
    if precision not in PRECISIONS:
        raise RunOptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def build_command(
    model_name: str, kind: str, checkpoint: str | None = None, precision: str | None = None
) -> str:
    """The exact command that builds what a backend needs."""
    parts = ["flexidit-trt", "build", "--model", model_name]
    if checkpoint:
        parts += ["--checkpoint", str(checkpoint)]
    if precision:
        parts += ["--precision", precision]
    if kind == "trt":
        parts.append("--require-trt")
    elif kind == "aoti":
        parts.append("--aoti")
    elif kind == "compile-cache":
        parts.append("--compile-cache")
    return " ".join(parts)


# -- from a model in memory -------------------------------------------------------------------------------------
def torch_pipeline(
    model: FlexiDiT,
    *,
    backend: str = "auto",
    device: str | None = None,
    precision: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    compile: bool = False,
    cuda_graphs: bool = True,
    shared_pool: bool = True,
    weights: str | None = None,
    random_weights: bool | None = None,
    checkpoint_sha256: str | None = None,
    reason: str | None = None,
    precompute_modulation: bool = False,
    gelu_epilogue: bool | None = None,
    flash_attention: bool | None = None,
    autotune: bool = False,
) -> Pipeline:
    """The torch backend over `model` (the only backend a model in memory has: engines need a workdir).
    shared_pool=False gives every engine its own CUDA-graph pool (to measure what sharing saves).
    precompute_modulation: each chunk's adaLN modulation computed ahead in one batched pass
    (runtime/torch_backend.py). gelu_epilogue: each MLP's fc1 + GELU as one GEMM on CUDA (model.Mlp; None:
    on for bf16/fp16 on CUDA, `gelu_epilogue_default`). flash_attention: flash attention first in the
    engines of ≤ 64 tokens (CUDA; None: on in bf16/fp16, False refuses it). autotune: those engines
    compiled with inductor's max-autotune (CUDA, with compile; measured slower)."""
    if backend not in ("auto", "torch"):
        raise RunError(
            f"backend {backend!r} runs built engines: use Pipeline.from_workdir (or `run --model NAME`) after "
            "`flexidit-trt build`"
        )
    from .torch_backend import TorchBackend
    from .torch_graphs import GraphPool

    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    pool = GraphPool(device) if device != "cpu" else None
    engines: dict[int, Backend] = {
        p: TorchBackend.from_model(
            model,
            p,
            device=device,
            precision=precision,
            compile=compile,
            pool=pool if shared_pool or pool is None else GraphPool(device),
            cuda_graphs=cuda_graphs,
            precompute_modulation=precompute_modulation,
            gelu_epilogue=gelu_epilogue,
            flash_attention=flash_attention,
            autotune=autotune,
        )
        for p in model.patch_sizes
    }
    spec = model_spec(
        model, weights=weights, random_weights=random_weights, checkpoint_sha256=checkpoint_sha256
    )
    if reason is None:
        mode = "compiled (torch.compile)" if compile else "eager"
        graphs = " in CUDA graphs" + (" sharing one pool" if shared_pool else ", one pool per engine")
        graphs = graphs if device != "cpu" and cuda_graphs else ""
        premod = ", adaLN modulation precomputed per chunk" if precompute_modulation else ""
        fused = ""  # the levers as each engine settled them (CUDA only, flash only where tokens are few)
        for text, attr in (
            ("fc1 + GELU in one GEMM", "gelu_epilogue"),
            ("flash attention", "flash_attention"),
            ("max-autotune", "autotune"),
        ):
            sizes = [str(p) for p, e in engines.items() if getattr(e, attr, False)]
            fused += f", {text} at patch {'/'.join(sizes)}" if sizes else ""
        reason = f"model given in memory: torch backend, {mode}{graphs}{premod}{fused}, on {device}"
        if backend == "torch":
            reason = "requested; " + reason
    return Pipeline(
        spec,
        engines,
        device=device,
        selection=Selection("torch", reason),
        precision=precision,
        max_batch=max_batch,
        owned=[pool] if pool else [],
    )


def model_spec(
    model: FlexiDiT,
    *,
    weights: str | None = None,
    random_weights: bool | None = None,
    checkpoint_sha256: str | None = None,
) -> ModelSpec:
    config = json.loads(model.config.to_json())
    macs = {p: model.macs(p) for p in model.patch_sizes}
    random = random_weights if random_weights is not None else weights is None
    return ModelSpec.from_config(
        config,
        macs,
        weights=weights or "random weights (given in memory)",
        random_weights=random,
        checkpoint_sha256=checkpoint_sha256,
    )


# -- from a workdir of built artifacts ---------------------------------------------------------------------------
def workdir_pipeline(
    workdir: str | os.PathLike,
    model_name: str,
    *,
    backend: str = "auto",
    device: str | None = None,
    precision: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    compile: bool = False,
    checkpoint: str | os.PathLike | None = None,
    precompute_modulation: bool = False,
) -> Pipeline:
    """compile and precompute_modulation: the torch backend's options (`torch_pipeline`), unused by the
    engines `build` made."""
    torch_options = {"compile": compile, "precompute_modulation": precompute_modulation}
    if backend not in BACKENDS:
        raise RunOptionError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device = resolve_device(device)
    workdir = Path(workdir)
    passed_over: list[str] = []
    while True:
        name, reason = choose_backend(backend, device, workdir, model_name, checkpoint, exclude=passed_over)
        try:
            return _open(
                name, reason, workdir, model_name, device, precision, max_batch, torch_options, checkpoint
            )
        except RunError as err:
            # auto: compiled engines that exist but cannot run here (another GPU, TensorRT or torch,
            # other weights, a package torch cannot load) pass the turn to the next backend, saying why.
            if backend != "auto" or name not in ("trt", "aoti"):
                raise
            passed_over.append(f"{name}: {err}")


def _open(
    name, reason, workdir, model_name, device, precision, max_batch, torch_options, checkpoint
) -> Pipeline:
    from ..artifacts import sha256_path

    checkpoint_sha = sha256_path(checkpoint) if checkpoint is not None else None
    if name == "ort":
        return _ort_pipeline(workdir, model_name, device, precision, max_batch, checkpoint_sha, reason)
    if name == "trt":
        return _trt_pipeline(workdir, model_name, device, precision, max_batch, checkpoint_sha, reason)
    if name == "aoti":
        from .aoti_backend import aoti_pipeline

        return aoti_pipeline(workdir, model_name, device, precision, max_batch, checkpoint_sha, reason)
    return _torch_from_workdir(
        workdir, model_name, device, precision, max_batch, torch_options, checkpoint, reason
    )


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
    from .ort_backend import provider_missing

    missing = provider_missing(device)
    if missing:
        return False, missing
    return True, f"exported ONNX graphs under {path.parent} (ONNX Runtime)"


def check_checkpoint(recorded: dict | None, checkpoint_sha: str | None, what: str) -> None:
    """Refuse artifacts built from other weights than `checkpoint` (when one is given), naming the field."""
    if checkpoint_sha is None:
        return
    have = (recorded or {}).get("sha256")
    if have != checkpoint_sha:
        built = "seeded random weights" if (recorded or {}).get("init") == "random" else f"sha256 {have}"
        raise RunError(
            f"{what} were built from other weights: checkpoint sha256 differs (built from {built}, "
            f"--checkpoint has {checkpoint_sha}); rebuild them from this checkpoint"
        )


def _ort_pipeline(workdir, model_name, device, precision, max_batch, checkpoint_sha, reason) -> Pipeline:
    from .ort_backend import OrtBackend

    try:
        manifest = load_export_manifest(workdir, model_name)
    except ManifestError as err:
        raise RunError(f"{err} (`{build_command(model_name, 'ort')}`)") from None
    graphs = {int(p): g for p, g in manifest["graphs"].items()}
    if not graphs:
        raise RunError(f"no exported graphs for {model_name}: run `{build_command(model_name, 'ort')}`")
    first = graphs[min(graphs)]
    for p, g in graphs.items():
        check_checkpoint(g.get("checkpoint"), checkpoint_sha, f"the exported graph p{p}")
        if precision is not None and g["precision"] != precision:
            raise RunError(
                f"the exported graph p{p} is {g['precision']}, --precision {precision} asked for: precision "
                f"differs; run `{build_command(model_name, 'ort', precision=precision)}`"
            )
    folder = export_dir(workdir, model_name)
    stream = None
    if device != "cpu":
        from . import cuda

        stream = cuda.Stream(device)
    engines: dict[int, Backend] = {
        p: OrtBackend.load(folder / g["file"], p, device, stream=stream.handle if stream else 0)
        for p, g in graphs.items()
    }
    spec = _spec_from_entry(first, graphs, model_name)
    pipe = Pipeline(
        spec,
        engines,
        device=device,
        selection=Selection("ort", reason),
        precision=first["precision"],
        max_batch=max_batch,
    )
    pipe._stream = stream
    return pipe


def _spec_from_entry(entry: dict, entries: dict[int, dict], model_name: str) -> ModelSpec:
    """A ModelSpec from manifest entries (config, MACs per patch size, checkpoint description)."""
    ckpt = entry.get("checkpoint") or {}
    random = ckpt.get("init") == "random"
    weights = f"random weights (seed {ckpt.get('seed')})" if random else f"checkpoint {ckpt.get('path')}"
    config = {**entry["config"], "name": model_name}
    return ModelSpec.from_config(
        config,
        {p: int(e["macs"]) if "macs" in e else _macs_from_config(config, p) for p, e in entries.items()},
        weights=weights,
        random_weights=random,
        checkpoint_sha256=ckpt.get("sha256"),
        patch_sizes=tuple(sorted(entries)),
    )


def _macs_from_config(config: dict, patch_size: int) -> int:
    # model/macs.py needs only the config, but importing it loads the model package (torch); engine
    # manifests without a "macs" field reach this only where torch is installed.
    from ..model.config import DiTConfig
    from ..model.macs import forward_macs

    return forward_macs(DiTConfig.from_json(json.dumps(config)), patch_size)


def _trt_pipeline(workdir, model_name, device, precision, max_batch, checkpoint_sha, reason) -> Pipeline:
    if device == "cpu":
        raise RunError("the trt backend needs a CUDA GPU")
    try:
        from .trt_backend import load_trt_engines
    except ImportError as err:
        raise RunError(f"the trt backend is not available: {err}") from None
    from . import cuda

    stream = cuda.Stream(device)
    try:
        engines, entries = load_trt_engines(
            workdir, model_name, device=device, checkpoint_sha256=checkpoint_sha
        )
    except (BuildError, ManifestError) as err:
        raise RunError(str(err)) from None
    spec = _spec_from_entry(entries[min(entries)], entries, model_name)
    pipe = Pipeline(
        spec,
        engines,
        device=device,
        selection=Selection("trt", reason),
        precision=entries[min(entries)].get("precision", precision or "fp16"),
        max_batch=min(max_batch, max(min(e.max_batch for e in engines.values()) // 2, 1)),
    )
    pipe._stream = stream
    return pipe


def _torch_from_workdir(
    workdir, model_name, device, precision, max_batch, torch_options, checkpoint, reason
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
        else:
            source = ModelSource(model_name, (2, 4))
        model = source.load()
    except OptionError as err:
        raise RunOptionError(str(err)) from None
    except BuildError as err:
        raise RunError(str(err)) from None
    if torch_options["compile"]:
        reason = f"{reason}; {_hot_load_compile_cache(workdir, model_name, device, precision)}"
    return torch_pipeline(
        model,
        backend="torch",
        device=device,
        precision=precision,
        max_batch=max_batch,
        **torch_options,
        weights=source.label(),
        random_weights=source.is_random,
        checkpoint_sha256=source.checkpoint_sha256(),
        reason=reason,
    )


def _hot_load_compile_cache(workdir: Path, model_name: str, device: str, precision: str | None) -> str:
    """Load the torch.compile cache `build --compile-cache` saved for this GPU and torch, before anything
    compiles (the compiles then hit it); the words for the selection reason either way."""
    from ..engines.aoti import aoti_dir, load_compile_cache, torch_target

    try:
        target = torch_target(device)
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
