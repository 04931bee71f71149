"""`flexidit-trt run` as one library call: choose the model and backend, sample, write the outputs.

    summary = run(RunOptions(budget=0.5, out=Path("samples/x")))
    summary = run(RunOptions(time_budget=2.0))   # seconds of sampling loop: weak steps from measured latency

Everything the user can get wrong is checked before sampling starts (labels, budget, steps, --out), so a
bad input costs a second, prints one line and writes nothing.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..engines.backend import RunError, RunOptionError
from ..engines.options import EngineOptions
from .choose import BACKENDS, installed
from .load import pipeline_from_workdir
from .options import SamplingOptions
from .outputs import (
    available_memory,
    check_out_dir,
    decode_latents,
    latents_as_images,
    output_bytes,
    staged_output,
    to_images,
    unique_out,
    write_outputs,
)
from .pipeline import GenerateResult, Pipeline
from .record import PngRecord, RunRecord

DEFAULT_NUM_IMAGES = 10


@dataclass
class RunOptions:
    budget: float | None = None  # fraction of the static MACs; None: 0.5, or the time budget's choice
    time_budget: float | None = None  # seconds of sampling loop (instead of budget)
    model: str | None = None
    checkpoint: Path | None = None
    workdir: Path = Path(".")
    backend: str = "auto"
    precision: str | None = None
    steps: int | str = 250
    sampler: str = "ddpm"
    cfg_scale: float = 4.0
    guidance: str = "cfg"
    class_labels: tuple[int, ...] | None = None
    num_images: int | None = None
    batch_size: int | None = None
    seed: int = 0
    out: Path | None = None
    vae: Path | None = None
    device: str | None = None
    compile: bool = False
    precompute_modulation: bool = False
    progress: bool | None = None

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def sampling(self) -> SamplingOptions:
        """The sampling options these name, not yet checked."""
        return SamplingOptions(
            self.budget, self.time_budget, self.steps, self.sampler, self.guidance, self.cfg_scale, self.seed
        )

    def engine(self) -> EngineOptions:
        """The engine options these name (the torch backend's; precision for every backend)."""
        return EngineOptions(
            precision=self.precision, compile=self.compile, precompute_modulation=self.precompute_modulation
        )


@dataclass
class RunSummary:
    out: Path
    result: GenerateResult
    lines: list[str] = field(default_factory=list)  # what `run` prints


def default_out(now: float | None = None) -> Path:
    """samples/<timestamp>, or <timestamp>-2, -3, ... where a run of the same second has it already (the
    rename at the end moves on again if another run takes it meanwhile)."""
    stamp = Path("samples") / time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return next(p for p in unique_out(stamp) if not p.exists() or (p.is_dir() and not any(p.iterdir())))


def run(options: RunOptions, say: Callable[[str], None] = lambda _line: None) -> RunSummary:
    """Sample and write samples.png, samples.npy and record.json into options.out (atomically)."""
    start = time.perf_counter()
    sampling = _check_options(options)
    out = Path(options.out) if options.out is not None else default_out()
    check_out_dir(out)  # before loading anything (leaves nothing); its free space once the sizes are known
    with open_pipeline(options) as pipe:
        # What needs the model is checked before anything is said, so a refused run prints its error alone.
        if options.vae is not None and not pipe.spec.is_latent:
            raise RunOptionError(
                f"--vae: {pipe.spec.name} samples pixels, not latents, so there is nothing to decode: drop --vae"
            )
        labels = resolve_labels(options.class_labels, options.num_images, pipe.spec.num_classes)
        outline = pipe.outline(labels, sampling, options.batch_size)  # a bad label or budget fails here
        _check_outputs_fit(out, np.asarray(labels), pipe, options, sampling)
        say(f"model: {pipe.spec.name}, {pipe.spec.weights}")
        say(f"backend: {pipe.selection.backend} ({pipe.selection.reason})")
        say(outline)
        result = pipe.sample(labels, sampling, batch_size=options.batch_size, progress=options.progress)
    _check_finite(result.samples)
    record = result.run_record
    record.options.cli = options.to_dict()
    image, shows = _png_content(result.samples, pipe, options)
    title = _title(pipe, record)
    record.png = PngRecord(shows, title)
    staged = staged_output(out, unique=options.out is None)
    try:
        with staged as stage:
            record.timing.run_wall_s = time.perf_counter() - start
            write_outputs(stage, result.samples, record.to_dict(), np.asarray(labels), title, image)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        if err.errno == errno.EBUSY:
            reason += " (a mount point or a folder in use cannot be renamed onto)"
        raise RunError(f"the samples were lost, nothing was written to {staged.out}: {reason}") from None
    out = staged.out
    timing = record.timing
    lines = [
        record.plan.summary,
        *_time_budget_lines(record),
        f"{len(labels)} image{'s' if len(labels) != 1 else ''} in {timing.total_wall_s:.2f} s sampling ({timing.run_wall_s:.2f} s in all); "
        + ", ".join(
            f"p{p} step {v['step_ms_median']:.2f} ms"
            for p, v in sorted(timing.by_patch.items(), key=lambda kv: int(kv[0]))
        ),
        f"png: {shows}",
        f"wrote {out}/samples.png, samples.npy, record.json",
    ]
    if pipe.spec.random_weights:
        lines.insert(0, "random weights: these samples show the pipeline, not a trained model")
    return RunSummary(out, result, lines)


def _check_outputs_fit(
    out: Path, labels: np.ndarray, pipe: Pipeline, options: RunOptions, sampling: SamplingOptions
) -> None:
    """Before sampling: the outputs' free space on --out's file system, and host memory for them (sampling
    itself goes by batches of --batch-size, so what grows with --num-images is the samples and the PNG)."""
    shape = pipe.spec.latent_shape
    image_hw = shape[1:] if not (pipe.spec.is_latent and options.vae) else (8 * shape[1], 8 * shape[2])
    need = output_bytes(labels, shape, image_hw, len(sampling.make_sampler()))
    check_out_dir(out, need["disk"])
    free = available_memory()
    if free is not None and need["memory"] > free:
        raise RunOptionError(
            f"--num-images {len(labels)} needs about {need['memory'] / 2**30:.1f} GiB of host memory for the "
            f"samples and the PNG grid, {free / 2**30:.1f} GiB is available: ask for fewer images per run"
        )


def _check_finite(samples: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise RunError(
            f"the samples are not finite ({bad} of {samples.size} values NaN or Inf: the weights, the "
            "engines or the guidance scale overflow); nothing was written"
        )


def _check_options(options: RunOptions) -> SamplingOptions:
    """Everything about the options that needs no model, checked before anything loads; the sampling
    options resolved."""
    if options.backend not in BACKENDS:
        raise RunOptionError(f"backend must be one of {', '.join(BACKENDS)}, got {options.backend!r}")
    if options.num_images is not None and options.num_images < 1:
        raise RunOptionError(f"--num-images must be at least 1, got {options.num_images}")
    sampling = options.sampling().checked()
    if options.vae is not None and not Path(options.vae).is_dir():
        raise RunOptionError(f"--vae {options.vae} is not a folder (a local diffusers AutoencoderKL)")
    return sampling


def resolve_labels(labels: tuple[int, ...] | None, num_images: int | None, num_classes: int) -> list[int]:
    """--class-labels repeated to --num-images; without labels, classes 0, 1, 2, ... in turn."""
    n = num_images if num_images is not None else (len(labels) if labels else DEFAULT_NUM_IMAGES)
    if n < 1:
        raise RunOptionError(f"--num-images must be at least 1, got {n}")
    if labels:
        return [labels[i % len(labels)] for i in range(n)]
    return [i % num_classes for i in range(n)]


def open_pipeline(options: RunOptions) -> Pipeline:
    """The pipeline `run` samples with: the default model, a named model's built artifacts, or a checkpoint."""
    if options.model is None and options.checkpoint is None:
        return _default_pipeline(options)
    if options.model is not None:
        name = _folder_name(options.workdir, options.model)
    else:  # the checkpoint's config names the artifact folders, as `build` names them
        name = _checkpoint_model_name(Path(options.checkpoint))
    return _workdir_pipeline(options, name, options.checkpoint)


def _workdir_pipeline(options: RunOptions, name: str, checkpoint: Path | None) -> Pipeline:
    return pipeline_from_workdir(
        str(options.workdir),
        name,
        backend=options.backend,
        device=options.device,
        engine=options.engine(),
        checkpoint=None if checkpoint is None else str(checkpoint),
    )


def _default_pipeline(options: RunOptions) -> Pipeline:
    from ..default_model import DEFAULT_MODEL, default_checkpoint, default_model

    try:
        path = default_checkpoint()
    except FileNotFoundError as err:
        raise RunError(str(err)) from None
    if not installed("torch") or options.backend not in ("auto", "torch"):
        # Engines of the default model, built like any other (`build --model dit_fmnist`).
        return _workdir_pipeline(options, DEFAULT_MODEL, path)
    from .load_model import pipeline_from_model

    try:
        model, weights = default_model()
    except FileNotFoundError as err:
        raise RunError(str(err)) from None
    return pipeline_from_model(
        model,
        backend="torch",
        device=options.device,
        engine=options.engine(),
        weights=weights,
        random_weights=False,
        reason=(
            "no model named: the embedded default model on the torch backend"
            + (" (requested)" if options.backend == "torch" else "")
        ),
    )


def _checkpoint_model_name(path: Path) -> str:
    from ..artifacts import BuildError
    from ..export.source import ModelSource

    if not path.exists():
        raise RunError(f"checkpoint not found: {path}")
    source = ModelSource(None, (2, 4), checkpoint=path)
    try:
        source.resolve()
    except BuildError as err:
        raise RunError(str(err)) from None
    return source.name


def _folder_name(workdir: Path, name: str) -> str:
    """The artifact folder of `name`: as given when it exists, else the canonical config name ("DiT-S/2"
    → "dit_s"), spelled without torch where torch is absent."""
    if (Path(workdir) / "export" / name).is_dir() or (Path(workdir) / "engines" / name).is_dir():
        return name
    if installed("torch"):
        from ..export.source import canonical_name

        try:
            return canonical_name(name)
        except Exception as err:  # an unknown name: the option to change
            raise RunOptionError(str(err)) from None
    return name.lower().replace("-", "_").replace("/", "_")


def _png_content(samples: np.ndarray, pipe: Pipeline, options: RunOptions) -> tuple[np.ndarray, str]:
    if not pipe.spec.is_latent:
        return to_images(samples), "images (pixel space, x in [-1, 1])"
    if options.vae is not None:
        return to_images(
            decode_latents(samples, options.vae, pipe.device)
        ), f"images decoded by the VAE {options.vae}"
    return latents_as_images(
        samples
    ), "latents, not images (no --vae given): channels 0-2 as RGB, min-max scaled"


def _time_budget_lines(record: RunRecord) -> list[str]:
    """What a time budget chose and measured (nothing for a MACs budget)."""
    timed = record.plan.time_budget
    if timed is None:
        return []
    measured = ", ".join(
        f"p{p} {ms:.3g} ms" for p, ms in sorted(timed.step_ms_by_patch.items(), key=lambda kv: int(kv[0]))
    )
    return [
        f"time budget {timed.limit_s:g} s: predicted {timed.predicted_s:.3g} s, achieved "
        f"{timed.achieved_s:.3g} s of sampling loop (static: {timed.static_predicted_s:.3g} s); "
        f"measured per step of the run (all {len(timed.step_ms_by_batch)} batch size(s) together): {measured}"
    ]


def _title(pipe: Pipeline, record: RunRecord) -> str:
    plan = record.plan
    weights = "RANDOM WEIGHTS" if pipe.spec.random_weights else os.path.basename(pipe.spec.weights)
    timed = plan.time_budget
    budget = f"budget {record.options.budget}" if timed is None else f"time {timed.limit_s:g} s"
    return (
        f"{pipe.spec.name} ({weights}) | {budget} -> "
        f"{100 * plan.achieved_fraction:.1f}% | {pipe.selection.backend} | seed {record.seed}"
    )
