"""The sampling pipeline: the planner's schedule run on one engine per patch size, switched per step.

    pipe = pipeline_from_model(model)                  # runtime/load.py; or pipeline_from_workdir(".", "dit_xl")
    result = pipe.generate([207, 360], budget=0.5, steps=250, seed=0)
    result.samples                                                 # fp32 [N, C, H, W]
    result.record                                                  # the run record (plan, timing, memory, ...)
    pipe.generate([207], time_budget=2.0)   # weak steps chosen from the engines' measured step latency
    pipe.sample([207], SamplingOptions(budget=0.5).checked())     # the same, options as one value

Time budget: before the loop, a few steps of the loop itself run at every patch size and each batch
size of the run (forwards, update, copies, timed as the loop times them: CUDA events / perf_counter; the
median step), and `plan_for_time` picks, among the MACs planner's schedules, the one with the most
base-patch steps whose predicted loop time (the sum of its steps' latency over the run's batches) fits.

The hot loop, per step i (everything on one stream, nothing allocated, no host synchronisation):

    t[:] = t_table[i]                          async copy of the step's timestep (prepared before the loop)
    engine[p_i].forward(batch)                 one or two forwards (weak-to-strong: strong and weak)
    fused_step(x, out, coeffs_i, guidance, PhiloxNoise(seed, i, offset))   x updated in place
    x[b:2b] = x[:b]                            only before a CFG step: its batch is [x; x]

Batch layouts: CFG runs [x; x] with labels [y; null] as one batch of 2b (cond = out[:b], baseline =
out[b:]). Weak-to-strong guidance runs, at base-patch steps, the strong and the weak engine each on the
b conditional inputs (cond = strong out, baseline = weak out: the planner's cost); its weak-patch steps
are ordinary CFG with the weak engine.

Noise: counter-based Philox, a pure function of (seed, step, element of the flat stream of all N
images). Image k of a run takes elements [k·CHW, (k+1)·CHW) of every step's stream, so a batch starting
at image i0 draws with element offset i0·CHW: the samples do not depend on how N images are split into
batches, nor on the device. The initial noise is step INIT_NOISE_STEP of the same stream. `noise=` gives
consecutive images their own (seed, first image) streams: requests batched together (the server) each
get the samples they get alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from numbers import Integral
from typing import Any

import numpy as np

from ..diffusion import Plan, Sampler, plan
from ..diffusion.time_planner import TimeBudget, TimePlan, plan_for_time
from ..engines.backend import Backend, IOBuffers, RunError, RunOptionError
from ..engines.options import DEFAULT_MAX_BATCH
from ..engines.spec import ModelSpec
from . import native, timing
from .buffers import RunBuffers
from .options import NoiseStream, SamplingOptions, chunk_streams
from .program import StepCall, address, build_program, engine_batches, row_bytes
from .record import (
    BackendRecord,
    OptionsRecord,
    PlanRecord,
    RunRecord,
    SamplerRecord,
    TimingRecord,
    gpu_facts,
    memory,
)

INIT_NOISE_STEP = 2**32 - 1  # the Philox step index of the initial noise (sampler steps are 0..steps-1)


@dataclass
class GenerateResult:
    samples: (
        np.ndarray
    )  # fp32 [N, C, H, W]: the final x (latents for 4-channel models, pixels in [-1, 1] else)
    run_record: RunRecord

    @property
    def record(self) -> dict:
        """The run record as the JSON `run` writes."""
        return self.run_record.to_dict()


@dataclass(frozen=True)
class Selection:
    """Which backend runs, and why (printed and recorded)."""

    backend: str
    reason: str


class Pipeline:
    """One engine per patch size of one model, buffers allocated once, the schedule run step by step.

    The loaders in runtime/load.py make it from a model or a workdir; `generate` / `sample` may be called
    any number of times: buffers grow to the largest batch asked for (then stay), CUDA graphs are
    captured once per batch and kept. `stream`: the run's CUDA stream when the engines were loaded on
    one (made on first use otherwise); `owned`: what must live as long as the pipeline (graph pools).
    """

    def __init__(
        self,
        spec: ModelSpec,
        backends: Mapping[int, Backend],
        *,
        device: str,
        selection: Selection,
        precision: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        owned: Sequence[Any] = (),
        stream: Any = None,
    ):
        missing = [p for p in spec.patch_sizes if p not in backends]
        if missing:
            raise RunError(f"no engine for patch size(s) {missing} of {spec.name}")
        self.spec = spec
        self.backends = dict(sorted(backends.items()))
        self.device = device
        self.selection = selection
        self.precision = precision
        self.max_batch = int(max_batch)
        self._owned = list(owned)
        self._buffers = RunBuffers(spec, self.backends, device, stream)
        self._prepared: set[tuple[int, int]] = set()

    # -- read-only faces -------------------------------------------------------------------------------------
    @property
    def stream(self) -> Any:
        """The run's CUDA stream (an engines.cuda.Stream; None on the CPU or before the first run)."""
        return self._buffers.stream

    @property
    def capacity(self) -> int:
        """Images per batch the buffers hold now."""
        return self._buffers.capacity

    @property
    def io(self) -> Mapping[int, IOBuffers]:
        """Each engine's fixed buffers, by patch size."""
        return self._buffers.io

    @property
    def arena_bytes(self) -> int:
        """Device memory the pipeline's buffers hold (0 on the CPU)."""
        return self._buffers.arena_bytes

    # -- the public calls ------------------------------------------------------------------------------------
    def generate(
        self,
        labels: Sequence[int] | np.ndarray,
        budget: float | None = None,
        steps: int | str = 250,
        sampler: str = "ddpm",
        guidance: str = "cfg",
        cfg_scale: float = 4.0,
        seed: int = 0,
        batch_size: int | None = None,
        progress: bool | None = False,
        time_budget: float | None = None,
    ) -> GenerateResult:
        """Sample one image per label (`sample` with these options, checked). Raises RunError with one
        line for anything the caller can fix.

        budget: the fraction of the static model's MACs (default 0.5); time_budget: seconds for the
        sampling loop instead, the weak steps chosen from step latency measured now (not both)."""
        options = SamplingOptions(budget, time_budget, steps, sampler, guidance, cfg_scale, seed)
        return self.sample(labels, options.checked(), batch_size=batch_size, progress=progress)

    def sample(
        self,
        labels: Sequence[int] | np.ndarray,
        options: SamplingOptions,
        *,
        batch_size: int | None = None,
        progress: bool | None = False,
        noise: Sequence[NoiseStream] | None = None,
    ) -> GenerateResult:
        """Sample one image per label with options already checked (`SamplingOptions.checked`).

        noise: the images' noise streams end to end (default: one stream of options.seed from image 0),
        so requests with their own seeds can share a batch and still get what each gets alone."""
        wall0 = time.perf_counter()
        labels = self._check_labels(labels)
        streams = [NoiseStream(options.seed, len(labels))] if noise is None else list(noise)
        if sum(s.count for s in streams) != len(labels):
            raise RunOptionError(
                f"the noise streams cover {sum(s.count for s in streams)} images, the labels {len(labels)}"
            )
        if options.guidance != "none" and self.spec.null_label is None:
            raise RunOptionError(
                f"{self.spec.name} has no null class (trained without label dropout): use guidance none"
            )
        smp = options.make_sampler()
        schedule = self._schedule(options, len(smp))
        n = len(labels)
        batch = self._check_batch(batch_size, n)
        chunks = [(i0, min(batch, n - i0)) for i0 in range(0, n, batch)]
        sizes = sorted({b for _, b in chunks})
        if self._buffers.ensure_capacity(batch):
            self._prepared.clear()
        t_table = self._buffers.t_table(smp)
        timed = None
        if options.time_budget is not None:
            timed, by_batch = self._plan_for_time(options, smp, chunks, t_table)
            schedule = timed.plan
        self._prepare(schedule, sizes)
        programs = {b: self._program(schedule, smp, b, options.cfg_scale) for b in sizes}

        samples = np.empty((n, *self.spec.latent_shape), dtype=np.float32)
        timer = timing.Timer(self.device, self.stream, len(smp))
        bar = timing.progress_bar(len(smp) * len(chunks), progress)
        try:
            for i0, b in chunks:
                pieces = chunk_streams(streams, i0, b)
                self._run_chunk(programs[b], labels[i0 : i0 + b], pieces, t_table, timer, bar)
                self._read_samples(samples[i0 : i0 + b], b)
                timer.collect()
        finally:
            bar.close()
            timer.close()
        summary = timer.summary(schedule, time.perf_counter() - wall0, len(chunks))
        record = self._record(schedule, smp, options, labels, batch, summary)
        if timed is not None:
            record.plan.time_budget = timing.time_record(timed, by_batch, len(smp), record.timing.clock)
            record.plan.time_budget.achieved_s = float(timer.loop_ms) / 1e3  # the loops, as budgeted
        return GenerateResult(samples, record)

    def outline(self, labels: Sequence[int], options: SamplingOptions, batch_size: int | None = None) -> str:
        """What `sample` will run for these labels, said before it runs (and refused as `sample` would
        refuse it): the schedule (a time budget's is chosen once the engines' steps are timed) and the
        work, steps × batches."""
        n = len(self._check_labels(labels))
        steps = len(options.make_sampler())
        schedule = self._schedule(options, steps)
        batch = self._check_batch(batch_size, n)
        batches = -(-n // batch)
        what = (
            schedule.describe()
            if options.time_budget is None
            else f"time budget {options.time_budget:g} s: the schedule is chosen once each engine's steps are timed"
        )
        images = "1 image" if batch == 1 else f"up to {batch} images"
        return f"plan: {what}; {steps} steps x {batches} batch(es) of {images} = {steps * batches} loop steps"

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self._buffers.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks ------------------------------------------------------------------------------------------------
    def _check_labels(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        values = list(np.asarray(labels).reshape(-1).tolist()) if not isinstance(labels, list) else labels
        if not values:
            raise RunOptionError("no images to generate (0 labels): give at least one class label")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, Integral)]
        if bad:
            raise RunOptionError(f"class labels must be integers, got {bad[0]!r}")
        out_of_range = [v for v in values if not 0 <= v < self.spec.num_classes]
        if out_of_range:
            raise RunOptionError(
                f"class label {out_of_range[0]} is outside {self.spec.name}'s classes 0..{self.spec.num_classes - 1}"
            )
        return np.asarray(values, dtype=np.int64)

    def _check_batch(self, batch_size: int | None, n: int) -> int:
        if batch_size is None:
            return min(n, self.max_batch)
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise RunOptionError(f"batch size must be a positive int, got {batch_size!r}")
        return min(int(batch_size), n)

    def _schedule(self, options: SamplingOptions, steps: int) -> Plan:
        try:
            # A time budget's schedule is chosen once the engines' step latency is measured (budget 1.0
            # checks the patch sizes and guidance against the planner the same way).
            budget = 1.0 if options.budget is None else options.budget
            return plan(budget, steps, self.spec.macs_by_patch, options.guidance)
        except ValueError as err:
            raise RunOptionError(str(err)) from None

    # -- the time budget ---------------------------------------------------------------------------------------
    def _plan_for_time(
        self, options: SamplingOptions, smp: Sampler, chunks: list[tuple[int, int]], t_table: Any
    ) -> tuple[TimePlan, dict[int, dict[int, float]]]:
        """The schedule with the most base-patch steps whose predicted loop time fits the time budget,
        and the step latency measured for it (seconds, by batch size and patch size)."""
        sizes = sorted({b for _, b in chunks})
        by_batch = self._measure_steps(smp, options.guidance, options.cfg_scale, sizes, t_table)
        # Every batch runs every step of the schedule: a step of the run costs its latency summed over them.
        step_s = {p: sum(by_batch[b][p] for _, b in chunks) for p in self.spec.macs_by_patch}
        try:
            limit = TimeBudget(seconds=options.time_budget)
            return plan_for_time(limit, len(smp), step_s, self.spec.macs_by_patch, options.guidance), by_batch
        except ValueError as err:
            measured = ", ".join(f"p{p} {1e3 * s:.3g} ms" for p, s in sorted(step_s.items()))
            raise RunOptionError(
                f"{err}; measured step latency ({len(chunks)} batch(es) of up to {chunks[0][1]} images): {measured}"
            ) from None

    def _measure_steps(
        self, smp: Sampler, guidance: str, cfg_scale: float, sizes: list[int], t_table: Any
    ) -> dict[int, dict[int, float]]:
        """Seconds of one loop step, by batch size and patch size: the loop's own first steps (forwards,
        update, copies) of the static schedule at each patch size, timed as the loop times them; the
        median after one warm-up step. Leaves nothing behind: each batch's loop starts from its noise."""
        warm, timed_steps = timing.measure_counts(len(smp))
        labels = np.zeros(max(sizes), dtype=np.int64)
        out: dict[int, dict[int, float]] = {b: {} for b in sizes}
        for p in sorted(self.spec.macs_by_patch):
            static = plan(None, len(smp), self.spec.macs_by_patch, guidance, schedule=(p,) * len(smp))
            self._prepare(static, sizes)
            for b in sizes:
                timer = timing.Timer(self.device, self.stream, warm + timed_steps)
                try:
                    program = self._program(static, smp, b, cfg_scale)[: warm + timed_steps]
                    pieces = [(0, b, 0, 0)]
                    self._run_chunk(program, labels[:b], pieces, t_table, timer, timing.ProgressBar(None))
                    if self.stream is not None:
                        self.stream.synchronize()  # the events are read below
                    timer.collect()
                finally:
                    timer.close()
                out[b][p] = float(np.median(timer.step_ms[warm:])) / 1e3
        return out

    # -- the loop --------------------------------------------------------------------------------------------------
    def _prepare(self, schedule: Plan, sizes: list[int]) -> None:
        """Check every engine covers its batches, then let each warm up / capture them (before any loop)."""
        for b in sizes:
            for p, batches in engine_batches(schedule, b, self.spec, list(self.backends)).items():
                backend = self.backends[p]
                for eb in sorted(batches):
                    if not backend.covers(eb):
                        raise RunOptionError(
                            f"batch size {b} needs the p{p} {backend.name} engine at batch {eb}, which it does "
                            f"not cover (it serves batches up to {backend.max_batch}): pass a smaller "
                            "--batch-size or rebuild the engines with --batch-sizes including it"
                        )
                todo = [eb for eb in sorted(batches) if (p, eb) not in self._prepared]
                if todo:
                    backend.prepare(todo)
                    self._prepared.update((p, eb) for eb in todo)

    def _program(self, schedule: Plan, smp: Sampler, b: int, cfg_scale: float) -> list[StepCall]:
        return build_program(schedule, smp, b, cfg_scale, self.spec, self.backends, self.io)

    def _run_chunk(
        self,
        program: list[StepCall],
        labels: np.ndarray,
        pieces: list[tuple[int, int, int, int]],
        t_table: Any,
        timer: timing.Timer,
        bar: timing.ProgressBar,
    ) -> None:
        """Sample b = len(labels) images; the result stays in x[:b]. pieces: (first image, count, seed,
        image index in the seed's stream) covering the b images (`chunk_streams`)."""
        b = len(labels)
        io = next(iter(self.io.values()))
        c, h, w = self.spec.latent_shape
        chw = c * h * w
        dev, stream = self.device, self._buffers.stream_handle()
        x = address(io.x)
        x_bytes = b * chw * 4
        t_addr, t_row = address(io.t), row_bytes(t_table)
        t_base = address(t_table)
        # Labels [y; null] (the null half is read by CFG steps only); a pageable copy: `y` may go after it.
        y = np.concatenate(
            [labels, np.full(b, self.spec.null_label if self.spec.null_label is not None else 0)]
        )
        _copy(dev, address(io.y), y.ctypes.data, y.nbytes, stream)
        steps_of: dict[int, tuple[Backend, list[float]]] = {}
        for call in program:
            for backend, _ in call.forwards:
                steps_of.setdefault(id(backend), (backend, []))[1].append(call.timestep)
        for backend, timesteps in steps_of.values():
            backend.begin_chunk(np.asarray(timesteps, dtype=np.float32), y)
        for j0, n, seed, k in pieces:
            native.philox_normal_ptr(
                dev, x + j0 * chw * 4, n * chw, seed, INIT_NOISE_STEP, stream, offset=k * chw
            )
        if program[0].cfg_batch:
            _copy(dev, x + x_bytes, x, x_bytes, stream)
        timer.start_chunk()
        for i, call in enumerate(program):
            _copy(dev, t_addr, t_base + i * t_row, t_row, stream)
            timer.step_start(i)
            for backend, batch in call.forwards:
                backend.forward(batch)
            timer.forward_end(i)
            # One update per noise stream (one in a plain run): the step is elementwise per image.
            rows = pieces if call.coeffs.add_noise else [(0, b, 0, 0)]
            out_row = call.out_channels * h * w * native.ITEMSIZE[call.dtype]
            for j0, n, seed, k in rows:
                native.fused_step_ptr(
                    dev,
                    x + j0 * chw * 4,
                    call.cond + j0 * out_row,
                    x + j0 * chw * 4,
                    (n, c, h, w),
                    call.out_channels,
                    call.dtype,
                    call.coeffs,
                    baseline=call.baseline + j0 * out_row if call.baseline else 0,
                    guidance_scale=call.guidance_scale,
                    noise=native.PhiloxNoise(seed, i, k * chw) if call.coeffs.add_noise else None,
                    stream=stream,
                )
            if call.duplicate_after:
                _copy(dev, x + x_bytes, x, x_bytes, stream)
            bar.advance(timer, i)
        timer.end_chunk()

    def _read_samples(self, dst: np.ndarray, b: int) -> None:
        io = next(iter(self.io.values()))
        if self.device == "cpu":
            dst[...] = io.x[:b]
        else:
            self.stream.synchronize()  # the end of a batch: the one place the host waits
            native.memcpy(dst.ctypes.data, io.x.ptr, dst.nbytes, self.stream.handle)
            self.stream.synchronize()

    def _record(
        self,
        schedule: Plan,
        smp: Sampler,
        options: SamplingOptions,
        labels: np.ndarray,
        batch: int,
        timing: TimingRecord,
    ) -> RunRecord:
        """The run record of a sampling call that has run."""
        spec = self.spec
        return RunRecord(
            model=spec.to_dict(),
            weights=spec.weights,
            random_weights=spec.random_weights,
            backend=BackendRecord(
                name=self.selection.backend,
                why=self.selection.reason,
                device=self.device,
                precision=self.precision,
                engines=[b.describe() for b in self.backends.values()],
            ),
            plan=PlanRecord.of(schedule),
            sampler=SamplerRecord.of(smp),
            options=OptionsRecord(
                num_images=len(labels), labels=labels.tolist(), batch_size=batch, **asdict(options)
            ),
            seed=options.seed,
            timing=timing,
            memory=memory(self.device, self.arena_bytes),
            gpu=gpu_facts(self.device),
        )


def _copy(device: str, dst: int, src: int, nbytes: int, stream: int) -> None:
    if device == "cpu":
        import ctypes

        ctypes.memmove(dst, src, nbytes)
    else:
        native.memcpy(dst, src, nbytes, stream)
