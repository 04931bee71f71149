"""`flexidit-trt bench` as a library call: every backend on one model, in one process, one results file
per backend (results.py), the reference loop beside them.

    run = run_bench(BenchOptions(model="dit_xl", batch_sizes=(1, 8), budgets=(1.0, 0.5)))
    run.paths        # benchmarks/results/<gpu>/<date>-<backend>.json, one per backend and the reference

Per backend (a `Pipeline` as `run` builds it), for each batch of images (ascending) and budget (1.0 first:
the static model is every backend's baseline):
- the trajectory: one warm-up `generate` (captures the CUDA graphs, compiles), then `repeats` timed
  ones: wall time (the record's, from the call to the samples on the host), images/s, and from the last
  call's record the loop time, the sum of its forwards and the per-step latency by patch size;
- then each engine's forward alone at the batch the trajectories ran it at (2 × images with CFG):
  `TimingOptions.runs` back-to-back calls after a warm-up, timed by CUDA events on the run's stream
  (perf_counter on the CPU), median and spread, against its floor (floors.py);
- device memory with the engines' graphs in one shared pool against one pool per engine (the torch
  backends: the same compiled engines re-captured both ways, torch's reserved memory measured);
- the time planner's choice for each budget taken as a time fraction, from the measured step latency;
- with `profile`, each engine's forward at the same batches under torch.profiler (profile.py), eager
  (no CUDA graph, so the kernels are visible): kernels per forward, device busy against wall time, time
  by kernel category, the top kernels and the limit in words. Torch callables only (torch, torch-eager,
  aoti); the others say why not.
Unavailable backends get a file that says why ("not run: TensorRT is not installed here"), never numbers.
A backend that fails mid-way gets a "failed" file with the error; the others still run.
"""

from __future__ import annotations

import gc
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date as _date
from pathlib import Path
from typing import Any

from ..artifacts import BuildError, ensure_writable_dir, utc_now
from ..diffusion import plan
from ..runtime import Pipeline, RunError, Selection
from ..runtime.pipeline import GUIDANCE
from ..runtime.select import installed, resolve_device, resolve_precision
from . import hardware
from .backends import TORCH_VARIANTS, _config_difference, _label, unavailable
from .floors import against_floor, forward_floor, weight_bytes
from .forwards import _stream
from .measure import EventClock, HostClock, noisy_note, summarize, time_calls, time_wall
from .memory import graph_clone
from .options import BenchOptionError, BenchOptions
from .reference import ReferenceLoop
from .results import new_document, write_results
from .time_plans import time_plans

# torch.compile (dynamic=False) compiles each (patch, batch) shape of the one forward code object once;
# dynamo's default limit of 8 fails a fullgraph compile (FailOnRecompileLimitHit) past 4 batch sizes.
DYNAMO_RECOMPILE_LIMIT = 64


@dataclass
class BenchRun:
    paths: list[Path]
    docs: list[dict]

    @property
    def failed(self) -> list[dict]:
        return [d for d in self.docs if d["status"] == "failed"]


class _NotRun(Exception):
    """This backend cannot run here; the message says why."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_bench(options: BenchOptions, say: Callable[[str], None] = _stderr) -> BenchRun:
    """Measure every backend of `options` and write one results file each. RunError / BuildError for
    what the caller can fix before anything is measured (device, precision, model, output folder)."""
    return _Bench(options, say).run()


class _Bench:
    def __init__(self, options: BenchOptions, say: Callable[[str], None]):
        self.options = options
        self.say = say

    # -- set-up ----------------------------------------------------------------------------------------------
    def run(self) -> BenchRun:
        opts = self.options
        self.device = resolve_device(opts.device)
        self.precision = resolve_precision(opts.precision, self.device)
        if not installed("torch"):
            raise RunError("flexidit-trt bench needs torch (pip install 'flexidit-trt[export]')")
        import torch
        import torch._dynamo.config as dynamo_config

        from ..export.source import ModelSource
        from ..model.macs import forward_macs

        self.source = ModelSource(
            opts.model,
            opts.patch_sizes,
            checkpoint=opts.checkpoint,
            image_size=opts.image_size,
            overrides=dict(opts.overrides),
        )
        self.source.resolve()  # the config, without the weights where it can
        macs = {p: forward_macs(self.source.config, p) for p in self.source.config.patch_sizes}
        for b in opts.budgets:  # a budget below the reachable one is bad usage: say so before measuring
            try:
                plan(b, opts.steps, macs, GUIDANCE[opts.guidance])
            except ValueError as err:
                raise BenchOptionError(str(err)) from None
        ensure_writable_dir(opts.out)  # fail now, not after minutes of measuring
        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), DYNAMO_RECOMPILE_LIMIT))
        self.say(f"model: {self.source.name} ({self.source.label()})")
        self.model = self.source.load()
        self.config = self.model.config
        self.stream = None
        if self.device != "cpu":
            from ..runtime import cuda

            self.stream = cuda.Stream(self.device)
            torch.cuda.set_device(self.device)
        self.hardware = self._hardware()
        self.machine = hardware.slug(self.device)
        created = utc_now()
        self.common = {
            "run_id": f"{created}-{platform.node() or 'host'}",
            "created": created,
            "date": _date.today().isoformat(),
            "machine": self.machine,
            "hardware": self.hardware,
            "model": self._model_facts(),
            "options": opts.record(),
        }
        self.reference_wall: dict[int, float] = {}
        docs, paths = [], []
        try:
            for measure in [
                self._reference,
                *(lambda name=name: self._backend(name) for name in opts.backends),
            ]:
                docs.append(measure())
                path = write_results(docs[-1], opts.out)
                if path is None:
                    self.say(f"{docs[-1]['backend']}: kept today's earlier results file, which has numbers")
                else:
                    paths.append(path)
                    self.say(f"wrote {path}")
        finally:
            if self.stream is not None:
                self.stream.close()
        return BenchRun(paths, docs)

    def _hardware(self) -> dict:
        facts = hardware.facts(self.device)
        peak = hardware.matmul_peak(self.device, self.precision, self.stream, self.options.timing)
        copy = hardware.copy_bandwidth(self.device, self.stream, self.options.timing)
        self.peak, self.bandwidth = peak.per_s, copy.per_s
        self.say(
            f"measured: {peak.what} {peak.per_s / 1e12:.1f} TFLOP/s; {copy.what} {copy.per_s / 1e9:.0f} GB/s"
        )
        return {**facts, "matmul_peak": peak.to_dict(), "copy_bandwidth": copy.to_dict()}

    def _model_facts(self) -> dict:
        import json

        self.weight_bytes = {p: weight_bytes(self.config, p, self.precision) for p in self.config.patch_sizes}
        self.macs = {p: self.model.macs(p) for p in self.config.patch_sizes}
        return {
            "name": self.source.name,
            "config": json.loads(self.config.to_json()),
            "weights": self.source.label(),
            "precision": self.precision,
            "patch_sizes": list(self.config.patch_sizes),
            "macs_by_patch": {str(p): m for p, m in self.macs.items()},
            "weight_bytes_by_patch": {str(p): b for p, b in self.weight_bytes.items()},
        }

    def _doc(self, backend: str, label: str, status: str, reason: str | None, **fields: Any) -> dict:
        return new_document(
            **self.common, backend=backend, label=label, status=status, reason=reason, **fields
        )

    def _labels(self, images: int) -> list[int]:
        return [(17 * i) % self.config.num_classes for i in range(images)]  # spread over the classes

    def _generate(self, pipe: Pipeline, labels: list[int], budget: float) -> Any:
        """One trajectory of `labels` (one batch) at `budget` with the bench's sampling options."""
        opts = self.options
        return pipe.generate(
            labels,
            budget=budget,
            steps=opts.steps,
            sampler=opts.sampler,
            guidance=opts.guidance,
            cfg_scale=opts.cfg_scale,
            seed=opts.seed,
            batch_size=len(labels),
            progress=False,
        )

    def _measured(self, name: str, label: str, measure: Callable[[], dict]) -> dict:
        """The results document of one baseline or backend: its measurements, or why it did not run, or
        the error it failed with (one backend's failure must not lose the others' results)."""
        try:
            return self._doc(name, label, "ok", None, **measure())
        except _NotRun as err:
            self.say(f"{name}: not run: {err}")
            return self._doc(name, label, "not run", str(err))
        except Exception as err:
            self.say(f"{name}: failed:\n{traceback.format_exc()}")
            return self._doc(name, label, "failed", f"{type(err).__name__}: {err}".splitlines()[0])
        finally:
            self._release()

    # -- the reference loop ----------------------------------------------------------------------------------
    def _reference(self) -> dict:
        label = "the reference DiT sampling loop (p_sample_loop + forward_with_cfg; fp32 weights, TF32)"
        return self._measured("reference", label, self._reference_trajectories)

    def _reference_trajectories(self) -> dict:
        opts = self.options
        if not opts.reference:
            raise _NotRun("skipped (--no-reference)")
        if GUIDANCE[opts.guidance] != "cfg" or opts.sampler != "ddpm":
            raise _NotRun("the reference loop samples with DDPM and CFG only (as sample.py)")
        loop = ReferenceLoop.load(
            self.model, device=self.device, steps=opts.steps, cfg_scale=opts.cfg_scale, seed=opts.seed
        )
        trajectories = []
        try:
            for images in opts.batch_sizes:
                labels = self._labels(images)
                loop(labels, warmup=True)
                stats, _ = time_wall(lambda labels=labels: loop(labels), opts.repeats, warmup=0)
                wall_s = stats.median_ms / 1e3
                self.reference_wall[images] = wall_s
                trajectories.append(
                    {
                        "images": images,
                        "wall": stats.to_dict(),
                        "wall_s": wall_s,
                        "images_per_s": images / wall_s,
                    }
                )
                noisy = noisy_note(stats.to_dict())
                self.say(
                    f"reference: {images} images {wall_s:.3f} s"
                    + (f" ({noisy}: its × reference ratios are as uncertain)" if noisy else "")
                )
        finally:
            loop.close()
        return {"trajectories": trajectories}

    # -- one backend -----------------------------------------------------------------------------------------
    def _backend(self, name: str) -> dict:
        return self._measured(name, _label(name, self.device), lambda: self._backend_measurements(name))

    def _backend_measurements(self, name: str) -> dict:
        pipe = self._pipeline(name)
        try:
            trajectories, forwards = [], []
            for images in self.options.batch_sizes:
                trajectories += self._trajectories(name, pipe, images)
                forwards += self._forwards(pipe, images)
            _speedups(trajectories, self.reference_wall)
            out = {
                "why": pipe.selection.reason,
                "engines": [b.describe() for b in pipe.backends.values()],
                "forwards": forwards,
                "trajectories": trajectories,
                "memory": self._memory(pipe),
                "time_plans": time_plans(
                    trajectories, self.options, self.macs, lambda n, b: self._trajectory(pipe, n, b)
                ),
            }
            if self.options.profile:  # last: the timed numbers above are taken without the profiler
                out["profiles"] = self._profiles(pipe)
            return out
        finally:
            pipe.close()

    def _pipeline(self, name: str) -> Pipeline:
        opts, device = self.options, self.device
        why_not = unavailable(name, device)
        if why_not:
            raise _NotRun(why_not)
        max_batch = max(opts.batch_sizes)
        if name in TORCH_VARIANTS:
            return Pipeline.from_model(
                self.model,
                backend="torch",
                device=device,
                precision=self.precision,
                max_batch=max_batch,
                weights=self.source.label(),
                **TORCH_VARIANTS[name],
            )
        try:
            pipe = Pipeline.from_workdir(
                str(opts.workdir),
                self.source.name,
                backend=name,
                device=device,
                precision=self.precision,
                max_batch=max_batch,
                checkpoint=str(opts.checkpoint) if opts.checkpoint else None,
            )
        except (RunError, BuildError) as err:
            raise _NotRun(str(err)) from None
        differs = _config_difference(pipe.spec.config, self.common["model"]["config"])
        if differs:
            pipe.close()
            raise _NotRun(
                f"the {name} engines under {opts.workdir} were built for another {self.source.name} config "
                f"({differs}); rebuild them with `flexidit-trt build` and the same options"
            )
        return pipe

    def _trajectories(self, name: str, pipe: Pipeline, images: int) -> list[dict]:
        out = []
        for budget in self.options.budgets:
            out.append(self._trajectory(pipe, images, budget))
            self.say(
                f"{name}: {images} images, budget {budget}: {out[-1]['wall_s']:.3f} s ({out[-1]['plan']})"
            )
        return out

    def _trajectory(self, pipe: Pipeline, images: int, budget: float) -> dict:
        """One (images, budget): a warm-up call (captures the CUDA graphs, compiles), then `repeats` timed
        ones. Wall time is the record's, from the call to the samples on the host (the record's own
        bookkeeping after that, package versions and NVML, is not sampling); the whole call beside it."""
        opts, labels = self.options, self._labels(images)
        self._generate(pipe, labels, budget)
        calls, walls = [], []
        for _ in range(opts.repeats):
            start = time.perf_counter()
            result = self._generate(pipe, labels, budget)
            calls.append((time.perf_counter() - start) * 1e3)
            walls.append(result.record["timing"]["total_wall_s"] * 1e3)
        stats = summarize(walls)
        record = result.record
        timing = record["timing"]
        patches = record["plan"]["patch_per_step"]
        wall_s = stats.median_ms / 1e3
        return {
            "images": images,
            "budget": budget,
            "plan": record["plan"]["summary"],
            "weak_steps": sum(p != min(self.config.patch_sizes) for p in patches),
            "achieved_fraction": record["plan"]["achieved_fraction"],
            "wall": stats.to_dict(),
            "wall_s": wall_s,
            "call": summarize(calls).to_dict(),
            "images_per_s": images / wall_s,
            "loop_ms": timing["loop_ms"],
            "forward_ms_sum": timing["forward_ms_sum"],
            "loop_overhead_fraction": timing["loop_overhead_fraction"],
            "outside_loop_ms": timing["total_wall_s"] * 1e3 - timing["loop_ms"],
            "step_ms_by_patch": {p: v["step_ms_median"] for p, v in timing["by_patch"].items()},
            "steps_by_patch": {p: v["steps"] for p, v in timing["by_patch"].items()},
            "memory": record["memory"],
        }

    def _forward_rows(self, images: int) -> tuple[int, ...]:
        """The batches (rows) the trajectories run the engines at for `images` per batch."""
        kind = GUIDANCE[self.options.guidance]
        return {"cfg": (2 * images,), "none": (images,), "weak_to_strong": (images, 2 * images)}[kind]

    def _forwards(self, pipe: Pipeline, images: int) -> list[dict]:
        """Each engine alone at the batches the trajectories ran it at, against its floor."""
        clock = HostClock() if self.device == "cpu" else EventClock(_stream(pipe))
        out = []
        for p, backend in pipe.backends.items():
            for batch in self._forward_rows(images):
                if not backend.covers(batch):
                    continue
                backend.prepare([batch])
                # (torch-premod: t holds the last trajectory's last step, maybe not this engine's: the
                # lookup then reads another step's rows, which costs the same.)
                stats = time_calls(lambda b=backend, n=batch: b.forward(n), clock, self.options.timing)
                floor = forward_floor(self.config, p, batch, self.weight_bytes[p], self.peak, self.bandwidth)
                entry = {
                    "patch_size": p,
                    "batch": batch,
                    "images": images,
                    "stats": stats.to_dict(),
                    "floor": floor.to_dict(),
                    **against_floor(floor, stats.median_ms, self.peak),
                }
                out.append(entry)
                self.say(
                    f"  p{p} batch {batch}: {stats.median_ms:.3f} ms (IQR {stats.iqr_ms:.3f} ms), "
                    f"{entry['over_floor']:.2f}x its {floor.bound} floor {floor.floor_ms:.3f} ms"
                )
        return out

    # -- the profile: one engine's forward under torch.profiler ----------------------------------------------
    def _profiles(self, pipe: Pipeline) -> list[dict] | dict:
        """Each engine's callable at each batch the forwards were timed at, under torch.profiler, eagerly
        (profile.py). A profile that fails is recorded with its error: the timed numbers stay."""
        from ..runtime.torch_graphs import TorchGraphBackend
        from .profile import profile_forward

        engines = pipe.backends
        if not all(isinstance(b, TorchGraphBackend) for b in engines.values()):
            return {
                "not_profiled": f"the {pipe.selection.backend} engines are not torch callables; profile them "
                "with Nsight Systems (nsys profile flexidit-trt bench ...)"
            }
        self._release()
        out = []
        for images in self.options.batch_sizes:
            for p, backend in engines.items():
                for batch in self._forward_rows(images):
                    if not backend.covers(batch):
                        continue
                    entry: dict[str, Any] = {"patch_size": p, "batch": batch, "images": images}
                    try:
                        inputs = self._forward_inputs(pipe, batch)
                        backend.begin_chunk(inputs[1].cpu().numpy(), inputs[2].cpu().numpy())  # torch-premod
                        prof = profile_forward(backend.fn, inputs, device=self.device)
                    except Exception as err:
                        self.say(f"  profile p{p} batch {batch}: failed:\n{traceback.format_exc()}")
                        out.append({**entry, "failed": f"{type(err).__name__}: {err}".splitlines()[0]})
                        continue
                    out.append({**entry, **prof.to_dict()})
                    self.say(
                        f"  profile p{p} batch {batch} (eager, no CUDA graph): {prof.kernels_per_forward:.0f} "
                        f"kernels, device busy {prof.busy_us_per_forward:.0f} of {prof.wall_us_per_forward:.0f} "
                        f"µs per forward; {prof.limit}"
                    )
        self._release()
        return out

    def _forward_inputs(self, pipe: Pipeline, batch: int) -> tuple[Any, ...]:
        from ..runtime.torch_backend import engine_inputs

        return engine_inputs(pipe.spec, batch, self.device, seed=self.options.seed)

    # -- memory: one shared pool against one per engine ------------------------------------------------------
    def _memory(self, pipe: Pipeline) -> dict:
        opts = self.options
        images, budget = max(opts.batch_sizes), min(opts.budgets)
        if budget == 1.0:
            return {"not_measured": "every budget ran one engine: give a budget below 1.0 to compare pools"}
        if self.device == "cpu":
            return {"not_measured": "CPU run: memory pools are a GPU matter"}
        from ..runtime.torch_graphs import GraphPool, TorchGraphBackend, graph_pool_bytes

        engines = pipe.backends
        if all(not isinstance(b, TorchGraphBackend) for b in engines.values()):
            if pipe.selection.backend == "trt":
                rows = 2 * images
                sizes = [b.activation_bytes(rows) for b in engines.values()]
                return {
                    "images": images,
                    "budget": budget,
                    "shared_pool_bytes": max(sizes),
                    "pool_per_engine_bytes": sum(sizes),
                    "how": "the engines' activation sizes at the largest batch (max vs sum); not run",
                }
            return {"not_measured": f"{pipe.selection.backend} owns its device memory (one shared allocator)"}
        import torch

        peak, pooled = {}, {}
        for layout in ("shared", "per_engine"):
            shared = GraphPool(self.device)
            pools = {p: shared if layout == "shared" else GraphPool(self.device) for p in engines}
            clones = {p: graph_clone(b, pools[p]) for p, b in engines.items()}
            probe = Pipeline(
                pipe.spec,
                clones,
                device=self.device,
                selection=Selection(pipe.selection.backend, f"memory probe: {layout} graph pool"),
                precision=pipe.precision,
                max_batch=images,
                owned=list({id(v): v for v in pools.values()}.values()),
            )
            self._release()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_reserved(self.device)
            try:
                self._generate(probe, self._labels(images), budget)
                peak[layout] = torch.cuda.max_memory_reserved(self.device) - before
                # Before close(): the captured graphs still hold their pools' segments.
                pooled[layout] = graph_pool_bytes(list(pools.values()))  # a shared pool counts once
            finally:
                probe.close()
                del probe, clones, pools, shared
                self._release()
        self.say(
            f"  memory at {images} images, budget {budget}: graph pools reserve "
            f"{pooled['shared']['reserved_bytes'] / 2**20:.0f} MiB shared, "
            f"{pooled['per_engine']['reserved_bytes'] / 2**20:.0f} MiB one per engine (peak reserved "
            f"{peak['shared'] / 2**20:.0f} / {peak['per_engine'] / 2**20:.0f} MiB)"
        )
        return {
            "images": images,
            "budget": budget,
            "shared_pool_bytes": pooled["shared"]["reserved_bytes"],
            "pool_per_engine_bytes": pooled["per_engine"]["reserved_bytes"],
            "graph_pools": pooled,
            "peak_reserved_bytes": peak,
            "how": "the same engines re-captured in CUDA graphs either way; the graph pools' own segments "
            "after one trajectory (torch.cuda.memory_snapshot); peak_reserved_bytes: torch's peak reserved "
            "memory during it above what was reserved before (eager warm-up and cache included)",
        }

    # -- the time planner on the measured latency ------------------------------------------------------------
    def _release(self) -> None:
        gc.collect()
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


# -- helpers -------------------------------------------------------------------------------------------------
def _speedups(trajectories: list[dict], reference_wall: dict[int, float]) -> None:
    """Add each trajectory's speedup over the static model (budget 1.0, same backend and images) and over
    the reference loop (same images, same run)."""
    static = {t["images"]: t["wall_s"] for t in trajectories if t["budget"] == 1.0}
    for t in trajectories:
        t["speedup_vs_static"] = static[t["images"]] / t["wall_s"]
        ref = reference_wall.get(t["images"])
        t["speedup_vs_reference"] = ref / t["wall_s"] if ref else None
