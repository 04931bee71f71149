"""The sampling pipeline: the planner's schedule run on one engine per patch size, switched per step.

    pipe = Pipeline.from_model(model)                              # or Pipeline.from_workdir(".", "dit_xl")
    result = pipe.generate([207, 360], budget=0.5, steps=250, seed=0)
    result.samples                                                 # fp32 [N, C, H, W]
    result.record                                                  # the run record (plan, timing, memory, ...)
    pipe.generate([207], time_budget=2.0)   # weak steps chosen from the engines' measured step latency

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
batches, nor on the device. The initial noise is step INIT_NOISE_STEP of the same stream.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import kernels
from ..diffusion import Plan, Sampler, make_sampler, plan
from ..diffusion.time_planner import TimeBudget, TimePlan, plan_for_time
from .backend import DTYPE_BYTES, Backend, DeviceArray, IOBuffers, RunError, RunOptionError
from .spec import ModelSpec

if TYPE_CHECKING:
    from ..model import FlexiDiT

INIT_NOISE_STEP = 2**32 - 1  # the Philox step index of the initial noise (sampler steps are 0..steps-1)
GUIDANCE = {
    "cfg": "cfg",
    "none": "none",
    "weak-to-strong": "weak_to_strong",
    "weak_to_strong": "weak_to_strong",
}
DEFAULT_MAX_BATCH = 64
DEFAULT_BUDGET = 0.5  # the MACs budget when neither a budget nor a time budget is given
_host_clock = time.perf_counter  # the CPU loop's clock (a module attribute: tests simulate engine latency)
_TIMED_STEPS = 5  # loop steps timed per patch and batch size for a time budget, after one warm-up step


@dataclass
class GenerateResult:
    samples: (
        np.ndarray
    )  # fp32 [N, C, H, W]: the final x (latents for 4-channel models, pixels in [-1, 1] else)
    record: dict


@dataclass(frozen=True)
class Selection:
    """Which backend runs, and why (printed and recorded)."""

    backend: str
    reason: str


@dataclass(frozen=True)
class _StepCall:
    """One step of the loop for one batch size, fixed before the loop."""

    patch_size: int
    timestep: float  # what the loop copies into t for this step
    forwards: tuple[tuple[Backend, int], ...]
    cond: int  # address of the conditional output rows
    baseline: int  # address of the guidance baseline rows (0: no guidance)
    out_channels: int
    dtype: str
    coeffs: Any
    guidance_scale: float
    cfg_batch: bool  # this step runs [x; x]: x[b:2b] must hold a copy of x[:b]
    duplicate_after: bool  # copy x[:b] to x[b:2b] after the update: the next step runs the CFG batch


class Pipeline:
    """One engine per patch size of one model, buffers allocated once, the schedule run step by step.

    Build it with `from_model` or `from_workdir`; `generate` may be called any number of times: buffers
    grow to the largest batch asked for (then stay), CUDA graphs are captured once per batch and kept.
    """

    def __init__(
        self,
        spec: ModelSpec,
        backends: dict[int, Backend],
        *,
        device: str,
        selection: Selection,
        precision: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        owned: Sequence[Any] = (),
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
        self._owned = list(owned)  # graph pools and the like, kept as long as the pipeline
        self._capacity = 0  # images per batch the buffers hold
        self._arena: kernels.Arena | None = None
        self._io: dict[int, IOBuffers] = {}
        self._stream: Any = None
        self._t_tables: dict[tuple, tuple[Any, kernels.Arena | None]] = {}
        self._prepared: set[tuple[int, int]] = set()

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: FlexiDiT,
        backend: str = "auto",
        device: str | None = None,
        precision: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        compile: bool = False,
        cuda_graphs: bool = True,
        shared_pool: bool = True,
        weights: str | None = None,
        precompute_modulation: bool = False,
        gelu_epilogue: bool | None = None,
        flash_attention: bool | None = None,
        autotune: bool = False,
    ) -> Pipeline:
        """A pipeline over a FlexiDiT in memory: the torch backend (auto picks it; engines need a workdir).
        cuda_graphs / shared_pool (GPU): replay each engine from CUDA graphs, all in one memory pool
        (False: eager launches / one pool per engine, for comparisons). weights: how the record describes
        the weights (default: "random weights (given in memory)"). precompute_modulation: the adaLN
        modulation of every step computed before each chunk's loop in one batched pass (memory: steps ×
        rows × (depth·6 + 2)·hidden values; DiT-XL at 8 images: 1.6 GB per patch size in bf16).
        gelu_epilogue: each MLP's fc1 and GELU as one cuBLASLt GEMM with a GELU epilogue (CUDA only; None:
        on for bf16/fp16, `model.gelu_epilogue_default`). flash_attention: flash attention first in the
        engines of ≤ 64 tokens (CUDA; None: on in bf16/fp16, False refuses it); autotune: those engines
        compiled with inductor's max-autotune (CUDA, with compile; minutes of tuning, measured slower)."""
        from .select import torch_pipeline

        return torch_pipeline(
            model,
            backend=backend,
            device=device,
            precision=precision,
            max_batch=max_batch,
            compile=compile,
            cuda_graphs=cuda_graphs,
            shared_pool=shared_pool,
            weights=weights,
            precompute_modulation=precompute_modulation,
            gelu_epilogue=gelu_epilogue,
            flash_attention=flash_attention,
            autotune=autotune,
        )

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        model_name: str,
        backend: str = "auto",
        device: str | None = None,
        precision: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        compile: bool = False,
        checkpoint: str | None = None,
        precompute_modulation: bool = False,
    ) -> Pipeline:
        """A pipeline over what `flexidit-trt build` made under `workdir` for `model_name`: TensorRT
        engines, AOTInductor packages or ONNX graphs, or the torch backend on the weights they were built
        from. `checkpoint`: refuse engines built from other weights (their sha256 must match). compile and
        precompute_modulation: the torch backend's options (`from_model`)."""
        from .select import workdir_pipeline

        return workdir_pipeline(
            workdir,
            model_name,
            backend=backend,
            device=device,
            precision=precision,
            max_batch=max_batch,
            compile=compile,
            checkpoint=checkpoint,
            precompute_modulation=precompute_modulation,
        )

    # -- the public call -------------------------------------------------------------------------------------
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
        """Sample one image per label. Raises RunError with one line for anything the caller can fix.

        budget: the fraction of the static model's MACs (default 0.5); time_budget: seconds for the
        sampling loop instead, the weak steps chosen from step latency measured now (not both)."""
        wall0 = time.perf_counter()
        labels = self._check_labels(labels)
        guidance_kind = GUIDANCE.get(guidance)
        if guidance_kind is None:
            raise RunOptionError(f"unknown guidance {guidance!r}; allowed: cfg, weak-to-strong, none")
        if guidance_kind != "none" and self.spec.null_label is None:
            raise RunOptionError(
                f"{self.spec.name} has no null class (trained without label dropout): use guidance none"
            )
        if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2**64:
            raise RunOptionError(f"seed must be an int in [0, 2**64), got {seed!r}")
        macs_budget = resolve_budget(budget, time_budget)
        try:
            smp = make_sampler(sampler, steps)
            # A time budget's schedule is chosen below, once the engines' step latency is measured.
            # (budget 1.0 checks the patch sizes and guidance against the planner the same way).
            schedule = plan(
                1.0 if macs_budget is None else macs_budget, len(smp), self.spec.macs_by_patch, guidance_kind
            )
        except ValueError as err:
            raise RunOptionError(str(err)) from None
        n = len(labels)
        batch = self._check_batch(batch_size, n)
        chunks = [(i0, min(batch, n - i0)) for i0 in range(0, n, batch)]
        sizes = sorted({b for _, b in chunks})
        self._ensure_capacity(batch)
        t_table = self._t_table(smp)
        timed = None
        if time_budget is not None:
            timed, by_batch = self._plan_for_time(time_budget, smp, guidance_kind, cfg_scale, chunks, t_table)
            schedule = timed.plan
        self._prepare(schedule, sizes)
        programs = {b: self._program(schedule, smp, b, cfg_scale) for b in sizes}

        samples = np.empty((n, *self.spec.latent_shape), dtype=np.float32)
        timer = _Timer(self.device, self._stream, len(smp))
        bar = _progress_bar(len(smp) * len(chunks), progress)
        try:
            for i0, b in chunks:
                self._run_chunk(programs[b], labels[i0 : i0 + b], i0, seed, t_table, timer, bar)
                self._read_samples(samples[i0 : i0 + b], b)
                timer.collect()
        finally:
            bar.close()
            timer.close()
        from .record import run_record

        record = run_record(
            self,
            schedule=schedule,
            sampler=smp,
            options={
                "num_images": n,
                "labels": labels.tolist(),
                "budget": macs_budget,
                "time_budget": time_budget,
                "steps": steps,
                "sampler": sampler,
                "guidance": guidance_kind,
                "cfg_scale": cfg_scale,
                "seed": seed,
                "batch_size": batch,
            },
            timing=timer.summary(schedule, time.perf_counter() - wall0, len(chunks)),
        )
        if timed is not None:
            record["plan"]["time_budget"] = _time_record(timed, by_batch, len(smp), record["timing"]["clock"])
            record["plan"]["time_budget"]["achieved_s"] = float(timer.loop_ms) / 1e3  # the loops, as budgeted
        return GenerateResult(samples, record)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self._release_buffers()
        if self._stream is not None and hasattr(self._stream, "close"):
            self._stream.close()
        self._stream = None

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

    # -- the time budget ---------------------------------------------------------------------------------------
    def _plan_for_time(
        self,
        seconds: float,
        smp: Sampler,
        guidance: str,
        cfg_scale: float,
        chunks: list[tuple[int, int]],
        t_table: Any,
    ) -> tuple[TimePlan, dict[int, dict[int, float]]]:
        """The schedule with the most base-patch steps whose predicted loop time fits `seconds`, and the
        step latency measured for it (seconds, by batch size and patch size)."""
        by_batch = self._measure_steps(smp, guidance, cfg_scale, sorted({b for _, b in chunks}), t_table)
        # Every batch runs every step of the schedule: a step of the run costs its latency summed over them.
        step_s = {p: sum(by_batch[b][p] for _, b in chunks) for p in self.spec.macs_by_patch}
        try:
            return plan_for_time(
                TimeBudget(seconds=seconds), len(smp), step_s, self.spec.macs_by_patch, guidance
            ), by_batch
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
        warm, timed_steps = _measure_counts(len(smp))
        labels = np.zeros(max(sizes), dtype=np.int64)
        out: dict[int, dict[int, float]] = {b: {} for b in sizes}
        for p in sorted(self.spec.macs_by_patch):
            static = plan(None, len(smp), self.spec.macs_by_patch, guidance, schedule=(p,) * len(smp))
            self._prepare(static, sizes)
            for b in sizes:
                timer = _Timer(self.device, self._stream, warm + timed_steps)
                try:
                    program = self._program(static, smp, b, cfg_scale)[: warm + timed_steps]
                    self._run_chunk(program, labels[:b], 0, 0, t_table, timer, _Bar(None))
                    if self._stream is not None:
                        self._stream.synchronize()  # the events are read below
                    timer.collect()
                finally:
                    timer.close()
                out[b][p] = float(np.median(timer.step_ms[warm:])) / 1e3
        return out

    # -- buffers -------------------------------------------------------------------------------------------------
    def _engine_batches(self, schedule: Plan, b: int) -> dict[int, set[int]]:
        """The batch each engine runs at in a schedule, for b images."""
        need: dict[int, set[int]] = {p: set() for p in self.backends}
        base = schedule.base_patch
        for p in set(schedule.patch_per_step):
            if schedule.guidance == "none":
                need[p].add(b)
            elif schedule.guidance == "weak_to_strong" and p == base:
                need[base].add(b)
                need[_w2s_patch(self.spec)].add(b)
            else:
                need[p].add(2 * b)
        return need

    def _ensure_capacity(self, images: int) -> None:
        """Buffers for `images` per batch (x and t for 2·images rows, one out per engine); reallocated
        (and every engine rebound, every graph recaptured) only when a larger batch is asked for."""
        if images <= self._capacity:
            return
        self._release_buffers()
        rows = 2 * images
        c, h, w = self.spec.latent_shape
        shapes = {"x": ((rows, c, h, w), "float32"), "t": ((rows,), "float32"), "y": ((rows,), "int64")}
        for p, backend in self.backends.items():
            shapes[f"out{p}"] = ((rows, self.spec.out_channels, h, w), backend.out_dtype)
        if self.device == "cpu":
            bufs = {k: np.zeros(shape, dtype=_np_dtype(dt)) for k, (shape, dt) in shapes.items()}
            activations = None
        else:
            bufs, activations = self._device_buffers(shapes, rows)
        for p, backend in self.backends.items():
            io = IOBuffers(bufs["x"], bufs["t"], bufs["y"], bufs[f"out{p}"])
            backend.bind(io, activations, self._stream_handle())
            self._io[p] = io
        self._capacity = images
        self._prepared.clear()

    def _device_buffers(self, shapes: dict, rows: int) -> tuple[dict, int | None]:
        from . import cuda

        if self._stream is None:
            self._stream = cuda.Stream(self.device)
        sizes = {k: math.prod(shape) * DTYPE_BYTES[dt] for k, (shape, dt) in shapes.items()}
        engine_bytes = [b.activation_bytes(rows) for b in self.backends.values()]
        total = kernels.arena_size(engine_bytes, list(sizes.values()))
        try:
            self._arena = kernels.Arena(total, self.device)
        except (MemoryError, kernels.CudaError) as err:
            raise RunError(
                f"{self.device} out of memory: the run's buffers need {total / 2**20:.1f} MiB "
                f"(batch {rows // 2} images; activations {max(engine_bytes, default=0) / 2**20:.1f} MiB): {err}"
            ) from None
        activations = self._arena.block(max(engine_bytes)) if max(engine_bytes, default=0) > 0 else None
        bufs = {
            k: DeviceArray(self._arena.block(sizes[k]), shape, dt, self.device)
            for k, (shape, dt) in shapes.items()
        }
        # Zeroed once: engines warm up and capture before the first batch writes its inputs, and a
        # garbage label would index outside the class table.
        zeros = np.zeros(max(sizes.values()), dtype=np.uint8)
        for k, buf in bufs.items():
            kernels.memcpy(buf.ptr, zeros.ctypes.data, sizes[k], self._stream.handle)
        return bufs, activations

    def _release_buffers(self) -> None:
        if self._arena is not None and self._stream is not None:
            self._stream.synchronize()  # nothing queued may still use the memory
        self._io.clear()
        for _, arena in self._t_tables.values():
            if arena is not None:
                arena.close()
        self._t_tables.clear()
        if self._arena is not None:
            self._arena.close()
            self._arena = None
        self._capacity = 0

    def _stream_handle(self) -> int:
        return 0 if self._stream is None else self._stream.handle

    def _prepare(self, schedule: Plan, sizes: list[int]) -> None:
        """Check every engine covers its batches, then let each warm up / capture them (before any loop)."""
        for b in sizes:
            for p, batches in self._engine_batches(schedule, b).items():
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

    def _t_table(self, smp: Sampler) -> Any:
        """Every step's timestep, one row of 2·capacity values per step, on the device (made once per
        sampler and capacity): the loop copies row i into t with one async copy."""
        key = (smp.kind, tuple(np.asarray(smp.timesteps, dtype=np.float64).tolist()))
        if key in self._t_tables:
            return self._t_tables[key][0]
        rows = 2 * self._capacity
        host = np.repeat(np.asarray(smp.timesteps, dtype=np.float32)[:, None], rows, axis=1)
        arena = None
        if self.device == "cpu":
            table = np.ascontiguousarray(host)
        else:
            arena = kernels.Arena(max(host.nbytes, 1), self.device)
            # On the run's stream, so the loop's reads are ordered after it; pageable, so it returns
            # once the host memory has been read.
            kernels.memcpy(arena.ptr, host.ctypes.data, host.nbytes, self._stream_handle())
            table = DeviceArray(arena.ptr, host.shape, "float32", self.device)
        self._t_tables[key] = (table, arena)
        return table

    # -- the loop --------------------------------------------------------------------------------------------------
    def _program(self, schedule: Plan, smp: Sampler, b: int, cfg_scale: float) -> list[_StepCall]:
        """The loop's steps for b images, every address and scalar fixed before it runs."""
        base, calls = schedule.base_patch, []
        out_rows = lambda p, r: _address(self._io[p].out) + r * _row_bytes(self._io[p].out)  # noqa: E731
        patches = schedule.patch_per_step
        cfg_batch = [_uses_cfg_batch(schedule, p) for p in patches]
        for i, p in enumerate(patches):
            if schedule.guidance == "none":
                forwards, cond, baseline = ((self.backends[p], b),), out_rows(p, 0), 0
            elif schedule.guidance == "weak_to_strong" and p == base:
                weak = _w2s_patch(self.spec)
                forwards = ((self.backends[base], b), (self.backends[weak], b))
                cond, baseline = out_rows(base, 0), out_rows(weak, 0)
            else:
                forwards, cond, baseline = ((self.backends[p], 2 * b),), out_rows(p, 0), out_rows(p, b)
            calls.append(
                _StepCall(
                    patch_size=p,
                    timestep=float(np.float32(smp.timesteps[i])),
                    forwards=forwards,
                    cond=cond,
                    baseline=baseline,
                    out_channels=self.spec.out_channels,
                    dtype=self.backends[p].out_dtype,
                    coeffs=smp.coeffs(i),
                    guidance_scale=float(cfg_scale),
                    cfg_batch=cfg_batch[i],
                    duplicate_after=i + 1 < len(patches) and cfg_batch[i + 1],
                )
            )
        return calls

    def _run_chunk(
        self, program: list[_StepCall], labels: np.ndarray, i0: int, seed: int, t_table: Any, timer, bar
    ) -> None:
        """Sample b = len(labels) images, starting at image i0 of the run; the result stays in x[:b]."""
        b = len(labels)
        io = next(iter(self._io.values()))
        c, h, w = self.spec.latent_shape
        chw = c * h * w
        dev, stream = self.device, self._stream_handle()
        x = _address(io.x)
        x_bytes = b * chw * 4
        t_addr, t_row = _address(io.t), _row_bytes(t_table)
        t_base = _address(t_table)
        # Labels [y; null] (the null half is read by CFG steps only); a pageable copy: `y` may go after it.
        y = np.concatenate(
            [labels, np.full(b, self.spec.null_label if self.spec.null_label is not None else 0)]
        )
        _copy(dev, _address(io.y), y.ctypes.data, y.nbytes, stream)
        steps_of: dict[int, tuple[Backend, list[float]]] = {}
        for call in program:
            for backend, _ in call.forwards:
                steps_of.setdefault(id(backend), (backend, []))[1].append(call.timestep)
        for backend, timesteps in steps_of.values():
            backend.begin_chunk(np.asarray(timesteps, dtype=np.float32), y)
        kernels.philox_normal_ptr(dev, x, b * chw, seed, INIT_NOISE_STEP, stream, offset=i0 * chw)
        if program[0].cfg_batch:
            _copy(dev, x + x_bytes, x, x_bytes, stream)
        shape = (b, c, h, w)
        timer.start_chunk()
        for i, call in enumerate(program):
            _copy(dev, t_addr, t_base + i * t_row, t_row, stream)
            timer.step_start(i)
            for backend, batch in call.forwards:
                backend.forward(batch)
            timer.forward_end(i)
            kernels.fused_step_ptr(
                dev,
                x,
                call.cond,
                x,
                shape,
                call.out_channels,
                call.dtype,
                call.coeffs,
                baseline=call.baseline,
                guidance_scale=call.guidance_scale,
                noise=kernels.PhiloxNoise(seed, i, i0 * chw) if call.coeffs.add_noise else None,
                stream=stream,
            )
            if call.duplicate_after:
                _copy(dev, x + x_bytes, x, x_bytes, stream)
            bar.advance(timer, i)
        timer.end_chunk()

    def _read_samples(self, dst: np.ndarray, b: int) -> None:
        io = next(iter(self._io.values()))
        if self.device == "cpu":
            dst[...] = io.x[:b]
        else:
            self._stream.synchronize()  # the end of a batch: the one place the host waits
            kernels.memcpy(dst.ctypes.data, io.x.ptr, dst.nbytes, self._stream.handle)
            self._stream.synchronize()


def resolve_budget(budget: float | None, time_budget: float | None) -> float | None:
    """The MACs budget a run plans with (None: the time budget plans); one of the two at most."""
    if budget is not None and time_budget is not None:
        raise RunOptionError(
            f"give a MACs budget ({budget}) or a time budget ({time_budget} s), not both: the time budget "
            "chooses the weak steps itself"
        )
    if time_budget is None:
        return DEFAULT_BUDGET if budget is None else budget
    try:
        if isinstance(time_budget, bool) or not isinstance(time_budget, (int, float)):
            raise TypeError
        TimeBudget(seconds=time_budget)
    except (TypeError, ValueError):
        raise RunOptionError(f"a time budget must be positive seconds, got {time_budget!r}") from None
    return None


def _time_record(timed: TimePlan, by_batch: dict[int, dict[int, float]], steps: int, clock: str) -> dict:
    """The record's account of a time budget (its achieved time is added after the loop)."""
    warm, timed_steps = _measure_counts(steps)
    return {
        "limit_s": timed.limit_s,
        "clock": clock,
        "measured": f"median of {timed_steps} loop steps per patch and batch size, after {warm} warm-up",
        # A step of the run: its latency summed over the run's batches (every batch runs every step).
        "step_ms_by_patch": {str(p): 1e3 * s for p, s in sorted(timed.step_seconds.items())},
        "step_ms_by_batch": {str(b): {str(p): 1e3 * s for p, s in ps.items()} for b, ps in by_batch.items()},
        "weak_steps": timed.plan.weak_steps,
        "predicted_s": timed.predicted_s,
        "static_predicted_s": timed.static_s,
    }


def _measure_counts(steps: int) -> tuple[int, int]:
    """(warm-up, timed) loop steps per patch and batch size when a time budget is measured."""
    return (1, min(_TIMED_STEPS, steps - 1)) if steps > 1 else (0, 1)


def _uses_cfg_batch(schedule: Plan, p: int) -> bool:
    if schedule.guidance == "none":
        return False
    return not (schedule.guidance == "weak_to_strong" and p == schedule.base_patch)


def _w2s_patch(spec: ModelSpec) -> int:
    """The weak engine of weak-to-strong guidance: the next patch size above the base (as the planner)."""
    base = min(spec.patch_sizes)
    return min(p for p in spec.patch_sizes if p != base)


def _np_dtype(name: str) -> Any:
    return np.uint16 if name == "bfloat16" else np.dtype(name)


def _address(buf: Any) -> int:
    return int(buf.ctypes.data) if isinstance(buf, np.ndarray) else int(buf.ptr)


def _row_bytes(buf: Any) -> int:
    return int(buf.nbytes // buf.shape[0])


def _copy(device: str, dst: int, src: int, nbytes: int, stream: int) -> None:
    if device == "cpu":
        import ctypes

        ctypes.memmove(dst, src, nbytes)
    else:
        kernels.memcpy(dst, src, nbytes, stream)


# -- timing and progress ------------------------------------------------------------------------------------------
class _Timer:
    """Per-step latency and forward time. GPU: CUDA events recorded in the loop, read after each batch's
    end; CPU: perf_counter (the CPU runs synchronously anyway)."""

    def __init__(self, device: str, stream: Any, steps: int):
        self.gpu = device != "cpu"
        self.stream = stream
        self.steps = steps
        self.step_ms = np.zeros(steps)  # summed over batches
        self.forward_ms = np.zeros(steps)
        self.loop_ms = 0.0
        if self.gpu:
            from . import cuda

            self._starts = [cuda.Event() for _ in range(steps + 1)]  # start of step i; [steps]: the end
            self._fwd_ends = [cuda.Event() for _ in range(steps)]
        else:
            self._t_start = np.zeros(steps + 1)
            self._t_fwd = np.zeros(steps)

    def start_chunk(self) -> None:
        self.done = 0  # steps the device has finished in this batch (progress)

    def step_start(self, i: int) -> None:
        if self.gpu:
            self._starts[i].record(self.stream)
        else:
            self._t_start[i] = _host_clock()

    def forward_end(self, i: int) -> None:
        if self.gpu:
            self._fwd_ends[i].record(self.stream)
        else:
            self._t_fwd[i] = _host_clock()

    def end_chunk(self) -> None:
        if self.gpu:
            self._starts[self.steps].record(self.stream)
        else:
            self._t_start[self.steps] = _host_clock()

    def finished(self, i: int) -> bool:
        """Whether step i of this batch has finished on the device (never waits); only for steps whose
        successor has started (its start event is recorded in this batch)."""
        return True if not self.gpu else self._starts[i + 1].query()

    def close(self) -> None:
        if self.gpu:
            for event in [*self._starts, *self._fwd_ends]:
                event.close()

    def collect(self) -> None:
        """After a batch's synchronisation: add its event times."""
        if self.gpu:
            starts = [self._starts[i].elapsed_ms(self._starts[i + 1]) for i in range(self.steps)]
            fwds = [self._starts[i].elapsed_ms(self._fwd_ends[i]) for i in range(self.steps)]
            loop = self._starts[0].elapsed_ms(self._starts[self.steps])
        else:
            starts = list(np.diff(self._t_start) * 1e3)
            fwds = list((self._t_fwd - self._t_start[:-1]) * 1e3)
            loop = (self._t_start[-1] - self._t_start[0]) * 1e3
        self.step_ms += starts
        self.forward_ms += fwds
        self.loop_ms += loop

    def summary(self, schedule: Plan, wall_s: float, chunks: int) -> dict:
        by_patch: dict[str, dict] = {}
        patches = np.asarray(schedule.patch_per_step)
        for p in sorted(set(schedule.patch_per_step)):
            sel = patches == p
            step, fwd = self.step_ms[sel] / chunks, self.forward_ms[sel] / chunks
            by_patch[str(p)] = {
                "steps": int(sel.sum()),
                "step_ms_median": float(np.median(step)),
                "step_ms_mean": float(np.mean(step)),
                "forward_ms_median": float(np.median(fwd)),
                "forward_ms_mean": float(np.mean(fwd)),
            }
        forward_total = float(self.forward_ms.sum())
        return {
            "clock": "cuda events" if self.gpu else "perf_counter",
            "total_wall_s": wall_s,
            "loop_ms": self.loop_ms,
            "forward_ms_sum": forward_total,
            "loop_overhead_ms": self.loop_ms - forward_total,
            "loop_overhead_fraction": (self.loop_ms - forward_total) / forward_total
            if forward_total
            else None,
            "batches": chunks,
            "per_step_ms": [round(float(v) / chunks, 4) for v in self.step_ms],
            "by_patch": by_patch,
        }


class _Bar:
    def __init__(self, bar: Any):
        self.bar = bar
        self.shown = 0
        self.base = 0

    def advance(self, timer: _Timer, i: int) -> None:
        """Move the bar to the steps the device has finished: reads events, never waits."""
        if self.bar is None:
            return
        while timer.done < i and timer.finished(timer.done):  # step j ends where step j + 1 starts
            timer.done += 1
        self._show(self.base + timer.done)
        if i == timer.steps - 1:  # the batch's end: its steps are done once the caller synchronises
            self.base += timer.steps

    def _show(self, n: int) -> None:
        if n > self.shown:
            self.bar.update(n - self.shown)
            self.shown = n

    def close(self) -> None:
        if self.bar is not None:
            self._show(self.base)
            self.bar.close()


def _progress_bar(total: int, enabled: bool | None) -> _Bar:
    if enabled is False:
        return _Bar(None)
    from tqdm.auto import tqdm

    return _Bar(
        tqdm(total=total, unit="step", file=sys.stderr, disable=None if enabled is None else not enabled)
    )
