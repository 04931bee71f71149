"""`flexidit-trt build` as a library call: export and validate one ONNX graph per patch size, then
build one TensorRT engine per patch size where TensorRT is present.

    report = build_artifacts("dit_xl", patch_sizes=(2, 4), batch_sizes=(1, 2, 4, 8, 16), precision="fp16")
    report.graphs     # GraphRecord per patch size (path, manifest entry, rebuilt or reused)
    report.removed    # StaleGraph: graphs of other patch sizes and settings this build deleted
    report.engines    # EngineBuildResult (records, or `skipped` with the reason)
    report.aoti       # AotiBuildResult with engines=("trt", "aoti") (None when not asked for)
    report.compile_cache  # CompileCacheResult with "compile-cache" among the engines (else None)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .artifacts import BuildError, OptionError, Step, ensure_writable_dir
from .build_cost import build_cost, check_disk
from .engines.build import EngineBuildResult, PlanBuilder, build_engines, engine_profiles, resolve_trt
from .engines.profiles import engine_batches
from .engines.trt import TrtStatus, build_plan

if TYPE_CHECKING:
    from .engines.aoti import AotiBuildResult, PackageCompiler
    from .engines.compile_cache import CompileCacheResult
    from .export.graphs import GraphRecord, StaleGraph

_log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)
# TensorRT plans; AOTInductor packages; torch.compile's portable cache for `run --compile` (engines/aoti.py,
# engines/compile_cache.py)
ENGINE_KINDS = ("trt", "aoti", "compile-cache")


@dataclass
class BuildReport:
    model: str
    weights: str  # where the weights came from, in words
    workdir: Path
    graphs: list[GraphRecord]
    engines: EngineBuildResult
    aoti: AotiBuildResult | None = None
    removed: list[StaleGraph] = field(default_factory=list)  # graphs deleted as made by other settings
    compile_cache: CompileCacheResult | None = None


class _Progress:
    """A tqdm bar over the build's steps (one per graph, one per engine) whose text is the current stage.

    A step is one patch size within a phase (export, then engines): it ends when an event names another
    patch size or the phase ends; events naming no patch size only change the text."""

    def __init__(self, total: int, enabled: bool | None):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            unit="step",
            file=sys.stderr,
            disable=not enabled if enabled is not None else None,
            leave=False,
            dynamic_ncols=True,
        )
        self._current: int | None = None

    def __call__(self, step: Step) -> None:
        if step.patch_size is not None:
            if self._current is not None and step.patch_size != self._current:
                self.bar.update(1)
            self._current = step.patch_size
        self.bar.set_description_str(str(step)[:100])

    def finish_phase(self) -> None:
        if self._current is not None:
            self.bar.update(1)
        self._current = None

    def close(self) -> None:
        self.bar.close()


def build_artifacts(
    model: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    patch_sizes: tuple[int, ...] = (2, 4),
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    precision: str = "fp16",
    fp32_residual: bool = False,
    image_size: int | None = None,
    opset: int = 17,
    workdir: str | os.PathLike = ".",
    require_trt: bool = False,
    guidance: bool = True,
    profile_mode: str = "ranges",
    opt_level: int = 3,
    timing_cache: str | os.PathLike | None = None,
    force: bool = False,
    revalidate: bool = False,
    seed: int = 0,
    overrides: dict | None = None,
    progress: bool | None = None,
    trt: TrtStatus | None = None,
    plan_builder: PlanBuilder = build_plan,
    engines: tuple[str, ...] = ("trt",),
    aoti_variant: str | None = None,
    aoti_gelu_epilogue: bool | None = None,
    aoti_compiler: PackageCompiler | None = None,
    say: Callable[[str], None] | None = None,
) -> BuildReport:
    """Export (and validate) the graphs, then build the engines; reuse whatever is current.

    model: a config name (dit_s/b/l/xl, dit_fmnist); None with a checkpoint takes the checkpoint's.
    checkpoint: anything load_checkpoint reads; None means seeded random weights, except for dit_fmnist
    without overrides: the embedded default weights (default_model.py says why). overrides: config fields for
    random weights (depth=2, ...). progress: None shows a bar on a terminal only. trt/plan_builder:
    the TensorRT probe and build (parameters for tests of the bookkeeping where TensorRT is absent).
    engines: the compiled engines that follow the graphs, some of ENGINE_KINDS, or none for the graphs
    alone (what the ort backend runs; `bench` exports them so when they are missing) ("aoti": one AOTInductor
    package per patch size for this GPU, compile variant `aoti_variant`, with `aoti_gelu_epilogue` each
    MLP's fc1 + GELU as one GEMM (None: on for bf16/fp16); "compile-cache": the torch
    backend compiled at every engine batch and its portable torch.compile cache saved; both skipped
    without a GPU);
    aoti_compiler: the package compile (a parameter for tests). say: gets the build's plan and cost in one
    line (build_cost.py) before any work starts; the build refuses (BuildError) when the free disk under
    the workdir is below what the graphs will take. Raises BuildError with a one-line reason
    for anything the caller can fix: OptionError where the options themselves are wrong or contradict
    the checkpoint (the CLI's exit code 2), another BuildError where the work failed (exit code 1).
    """
    from .export.graphs import export_graphs
    from .export.onnx_export import export_options
    from .export.source import ModelSource

    # Every option is checked here, before anything is read or written (the layers below check theirs
    # with the same functions at their own entries).
    if not patch_sizes or any(int(p) <= 0 for p in patch_sizes):
        raise OptionError(f"patch sizes must be positive integers, got {list(patch_sizes)}")
    unknown = [e for e in engines if e not in ENGINE_KINDS]
    if unknown:
        raise OptionError(f"engines must be some of {', '.join(ENGINE_KINDS)}, got {list(engines)}")
    if require_trt and "trt" not in engines:
        raise OptionError("--require-trt needs trt among the engines")
    batch_sizes = tuple(int(b) for b in batch_sizes)
    engine_profiles(batch_sizes, guidance=guidance, profile_mode=profile_mode, opt_level=opt_level)
    precision, fp32_residual, opset = export_options(precision, fp32_residual, opset)
    patch_sizes = tuple(sorted({int(p) for p in patch_sizes}))
    checkpoint = _embedded_default(model, checkpoint, overrides) or checkpoint
    source = ModelSource(
        model,
        patch_sizes,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        image_size=image_size,
        seed=seed,
        overrides=dict(overrides or {}),
    )
    workdir = ensure_writable_dir(workdir)  # before any weights are read: fail in a second, not a minute
    if require_trt:  # before the export, which can take minutes
        trt = resolve_trt(trt, require_trt)
    aoti_options = None
    if "aoti" in engines:  # checked here: a bad variant fails before the export
        from .engines.aoti import AotiOptions

        batch_max = max(engine_batches(batch_sizes, guidance))
        aoti_options = AotiOptions(
            precision,
            1,
            batch_max,
            variant=aoti_variant,
            fp32_residual=fp32_residual,
            gelu_epilogue=aoti_gelu_epilogue,
        )
        aoti_options = aoti_options.resolved()
    graph_settings = {"precision": precision, "fp32_residual": fp32_residual, "opset": opset, "force": force}
    cost = build_cost(source, workdir, engines=engines, **graph_settings)
    (say or _log.info)(cost.line())
    check_disk(cost)
    bar = _Progress(total=len(patch_sizes) * (1 + len(engines)), enabled=progress)
    try:
        exported = export_graphs(source, workdir, revalidate=revalidate, progress=bar, **graph_settings)
        bar.finish_phase()
        plans = EngineBuildResult(None)
        if "trt" in engines:
            plans = build_engines(
                workdir,
                source.name,
                patch_sizes,
                batch_sizes,
                guidance=guidance,
                profile_mode=profile_mode,
                opt_level=opt_level,
                timing_cache=timing_cache,
                force=force,
                require_trt=require_trt,
                progress=bar,
                status=trt,
                builder=plan_builder,
            )
            bar.finish_phase()
        aoti = None
        if aoti_options is not None:
            aoti = _build_aoti(source, workdir, patch_sizes, aoti_options, force, bar, aoti_compiler)
            bar.finish_phase()
        cache = None
        if "compile-cache" in engines:
            from .engines.compile_cache import build_torch_compile_cache

            bar(Step(None, "build", "compile cache: torch.compile of every patch size at every batch"))
            rows = engine_batches(batch_sizes, guidance)
            cache = build_torch_compile_cache(source.load(), workdir, source.name, rows, precision)
            bar.bar.update(len(patch_sizes))  # one step per patch size, as the other phases count
    finally:
        bar.close()
    return BuildReport(
        source.name, source.label(), workdir, exported.graphs, plans, aoti, exported.removed, cache
    )


def _embedded_default(model, checkpoint, overrides) -> Path | None:
    from .default_model import embedded_weights_for

    try:
        return embedded_weights_for(model, checkpoint, overrides)
    except FileNotFoundError as err:  # a broken install, said in one line
        raise BuildError(str(err)) from None


def _build_aoti(source, workdir, patch_sizes, options, force, bar, compiler) -> AotiBuildResult:
    """The AOTInductor packages, or a result whose `skipped` says why not (no GPU here)."""
    from .engines.aoti import AotiBuildResult, build_aoti_engines, torch_target

    try:
        target = torch_target(options.device)
    except BuildError as err:
        return AotiBuildResult(None, skipped=str(err))
    return build_aoti_engines(
        source, workdir, patch_sizes, options, force=force, progress=bar, target=target, compiler=compiler
    )


def report_lines(report: BuildReport) -> list[str]:
    """What `flexidit-trt build` prints: one line per graph and engine, or the line saying why not."""
    lines = [f"{report.model}: weights from {report.weights}"]
    for g in report.graphs:
        e = g.entry
        verb = f"exported in {e['export_seconds']:.1f} s" if g.rebuilt else "reused"
        lines.append(
            f"p{g.patch_size}  {g.path}  {e['precision']}{'+fp32-residual' if e['fp32_residual'] else ''}  "
            f"{e['tokens']} tokens  {e['bytes'] / 1e6:.1f} MB  {verb} ({g.reason})  {_validation_text(g)}"
        )
    for r in report.removed:
        lines.append(
            f"p{r.patch_size}  removed {r.path} (made with other settings than this build: {r.reason})"
        )
    eng = report.engines
    if eng.skipped:
        lines.append(
            f"engines: skipped ({eng.skipped}); the ONNX graphs are ready, pass --require-trt to make this an error"
        )
    for r in eng.records:
        e = r.entry
        verb = f"built in {e['build_seconds']:.1f} s" if r.rebuilt else "reused"
        lines.append(
            f"p{r.patch_size}  {r.path}  {len(e['profiles'])} profiles (batch 1-{e['max_batch']})  "
            f"activations <= {e['max_device_memory_bytes'] / 1e6:.1f} MB  {verb} ({r.reason})"
        )
    if report.aoti is not None and report.aoti.skipped:
        lines.append(f"aoti engines: skipped ({report.aoti.skipped})")
    for r in report.aoti.records if report.aoti is not None else ():
        e = r.entry
        verb = f"compiled in {e['build_seconds']:.1f} s" if r.rebuilt else "reused"
        lines.append(
            f"p{r.patch_size}  {r.path}  AOTInductor {e['precision']} batch {e['batch_min']}-{e['batch_max']}  "
            f"{e['bytes'] / 1e6:.1f} MB  {verb} ({r.reason})"
        )
    cache = report.compile_cache
    if cache is not None and cache.skipped:
        lines.append(f"compile cache: skipped ({cache.skipped})")
    elif cache is not None:
        e = cache.entry
        lines.append(
            f"compile cache  {cache.folder / e['file']}  {e['precision']} patch {e['patch_sizes']} batch "
            f"{e['batches']}  {e['bytes'] / 1e6:.1f} MB  compiled in {e['build_seconds']:.1f} s (`run --compile` "
            "loads it)"
        )
    return lines


def _validation_text(g: GraphRecord) -> str:
    """The graph's validation results, saying whether they were measured by this build or recorded."""
    v = g.validation
    errors = (
        f"ORT vs PyTorch max abs {v['max_abs_error']:.2e}, rel {v['max_rel_error']:.2e} "
        f"(tol {v['tolerance_rel']:g}; {v['route']}; {v['provider']})"
    )
    when = g.entry.get("validated", g.entry.get("created"))  # manifests before `validated`: the export's
    if g.validated == "now":
        return f"{'validated' if g.rebuilt else 'revalidated'} now: {errors}"
    if g.validated == "operators":
        return f"operators checked now, the rest from the manifest ({when}): {errors}"
    return f"validation from the manifest ({when}): {errors}"
