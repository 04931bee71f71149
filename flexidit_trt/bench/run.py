"""`flexidit-trt bench` as a library call: every backend on one model, in one process, one results file
per backend (results.py), the reference loop beside them.

    run = run_bench(BenchOptions(model="dit_xl", batch_sizes=(1, 8), budgets=(1.0, 0.5)))
    run.paths        # benchmarks/results/<gpu>/<date>-<backend>.json, one per backend and the reference

Per backend (a `Pipeline` as `run` builds it), for each batch of images (ascending) and budget (1.0 first:
the static model is every backend's baseline):
- the trajectory (trajectories.py): one warm-up `generate` (captures the CUDA graphs, compiles), then
  `repeats` timed ones: wall time (the record's, from the call to the samples on the host), images/s,
  and from the last call's record the loop time, the sum of its forwards and the per-step latency by
  patch size;
- then each engine's forward alone (forwards.py) at the batch the trajectories ran it at (2 × images
  with CFG): `TimingOptions.runs` back-to-back calls after a warm-up, timed by CUDA events on the run's
  stream (perf_counter on the CPU), median and spread, against its floor (floors.py);
- device memory (memory.py) with the engines' graphs in one shared pool against one pool per engine (the
  torch backends: the same compiled engines re-captured both ways, torch's reserved memory measured);
- the time planner's choice (time_plans.py) for each budget taken as a time fraction, from the measured
  step latency;
- with `profile`, each engine's forward at the same batches under torch.profiler (profile.py), eager
  (no CUDA graph, so the kernels are visible): kernels per forward, device busy against wall time, time
  by kernel category, the top kernels and the limit in words. Torch callables only (torch, torch-eager,
  aoti); the others say why not.
Unavailable backends get a file that says why ("not run: TensorRT is not installed here"), never numbers.
A backend that fails mid-way gets a "failed" file with the error; the others still run.
The ort backend's graphs are exported first where the workdir has none (builds.py; its `build` field
says what and in how many seconds); the compiled engines (trt, aoti) are `flexidit-trt build`'s.
"""

from __future__ import annotations

import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date as _date
from pathlib import Path
from typing import Any

from ..artifacts import BuildError, ensure_writable_dir, folders_removed_on_failure, utc_now
from ..diffusion import plan
from ..engines.backend import RunError, RunOptionError
from ..engines.options import EngineOptions, resolve_precision
from ..runtime import Pipeline, pipeline_from_model, pipeline_from_workdir
from ..runtime.choose import installed, resolve_device
from ..runtime.options import GUIDANCE
from . import cost, hardware
from .backends import TORCH_VARIANTS, backend_label, config_difference, is_diffusers, unavailable
from .builds import build_missing
from .diffusers_peer import DiffusersPeer, peer_spec, peer_trajectories
from .forwards import profile_forwards, time_forwards
from .measure import noisy_note, time_wall
from .memory import pool_memory
from .options import BenchOptionError, BenchOptions
from .reference import ReferenceLoop
from .results import new_document, write_results
from .session import Session
from .time_plans import time_plans
from .trajectories import (
    add_diffusers_speedups,
    add_speedups,
    fastest_diffusers,
    trajectories,
    trajectory,
)

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
        with folders_removed_on_failure(self.options.out):  # an interrupted bench leaves no empty folders
            return self._run()

    def _run(self) -> BenchRun:
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
        self.say(cost.outline(opts, self.source.name, self.device))
        self.stream = None
        if self.device != "cpu":
            from ..engines import cuda

            self.stream = cuda.Stream(self.device)
            torch.cuda.set_device(self.device)
        measured = self._hardware()  # before the model loads: the cost line says what loading leads to
        backends = len(cost.runnable(opts, self.device))
        total = cost.trajectory_macs(opts, macs, backends)
        self.say(cost.estimate(total, measured["matmul_peak"]["per_s"], opts, self.source.name))
        self.say(f"model: {self.source.name} ({self.source.label()})")
        self.model = self.source.load()
        self.session = Session(
            opts,
            self.device,
            self.precision,
            self.model,
            peak=measured["matmul_peak"]["per_s"],
            bandwidth=measured["copy_bandwidth"]["per_s"],
            say=self.say,
        )
        self.machine = hardware.slug(self.device)
        created = utc_now()
        self.common = {
            "run_id": f"{created}-{platform.node() or 'host'}",
            "created": created,
            "date": _date.today().isoformat(),
            "machine": self.machine,
            "hardware": measured,
            "model": self._model_facts(),
            "options": opts.record(),
        }
        self.reference_wall: dict[int, float] = {}
        docs, paths = [], []
        try:
            for measure in [
                *([self._reference] if opts.reference else []),  # --no-reference: not even a file
                *(lambda name=name: self._backend(name) for name in opts.backends),
            ]:
                docs.append(measure())
                for doc in self._with_diffusers_speedups(docs):
                    path = write_results(doc, opts.out)
                    if path is None:
                        self.say(f"{doc['backend']}: kept today's earlier results file, which has numbers")
                    elif path not in paths:
                        paths.append(path)
                        self.say(f"wrote {path}")
        finally:
            if self.stream is not None:
                self.stream.close()
        return BenchRun(paths, docs)

    def _with_diffusers_speedups(self, docs: list[dict]) -> list[dict]:
        """The newest document, and every earlier one whose speedup_vs_diffusers the newest changed (the
        diffusers-compiled runs learn theirs once both precisions ran), with those speedups filled in."""
        fastest = fastest_diffusers(docs)
        changed = []
        for doc in docs[:-1]:
            runs = doc.get("trajectories", [])
            before = [t.get("speedup_vs_diffusers") for t in runs]
            add_diffusers_speedups(runs, fastest)
            if [t["speedup_vs_diffusers"] for t in runs] != before:
                changed.append(doc)
        add_diffusers_speedups(docs[-1].get("trajectories", []), fastest)
        return [*changed, docs[-1]]

    def _hardware(self) -> dict:
        facts = hardware.facts(self.device)
        peak = hardware.matmul_peak(self.device, self.precision, self.stream, self.options.timing)
        copy = hardware.copy_bandwidth(self.device, self.stream, self.options.timing)
        self.say(
            f"measured: {peak.what} {peak.per_s / 1e12:.1f} TFLOP/s; {copy.what} {copy.per_s / 1e9:.0f} GB/s"
        )
        return {**facts, "matmul_peak": peak.to_dict(), "copy_bandwidth": copy.to_dict()}

    def _model_facts(self) -> dict:
        import json

        session, config = self.session, self.session.config
        return {
            "name": self.source.name,
            "config": json.loads(config.to_json()),
            "weights": self.source.label(),
            "precision": self.precision,
            "patch_sizes": list(config.patch_sizes),
            "macs_by_patch": {str(p): m for p, m in session.macs.items()},
            "weight_bytes_by_patch": {str(p): b for p, b in session.weight_bytes.items()},
        }

    def _doc(self, backend: str, label: str, status: str, reason: str | None, **fields: Any) -> dict:
        return new_document(
            **self.common, backend=backend, label=label, status=status, reason=reason, **fields
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
            self.session.release()

    # -- the reference loop ----------------------------------------------------------------------------------
    def _reference(self) -> dict:
        label = "the reference DiT sampling loop (p_sample_loop + forward_with_cfg; fp32 weights, TF32)"
        return self._measured("reference", label, self._reference_trajectories)

    def _reference_trajectories(self) -> dict:
        opts = self.options
        if GUIDANCE[opts.guidance] != "cfg" or opts.sampler != "ddpm":
            raise _NotRun("the reference loop samples with DDPM and CFG only (as sample.py)")
        loop = ReferenceLoop.load(
            self.model, device=self.device, steps=opts.steps, cfg_scale=opts.cfg_scale, seed=opts.seed
        )
        trajectories = []
        try:
            for images in opts.batch_sizes:
                labels = self.session.labels(images)
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
        measure = self._diffusers_measurements if is_diffusers(name) else self._backend_measurements
        return self._measured(name, backend_label(name, self.device), lambda: measure(name))

    def _diffusers_measurements(self, name: str) -> dict:
        opts = self.options
        why_not = unavailable(name, self.device)
        if why_not:
            raise _NotRun(why_not)
        if GUIDANCE[opts.guidance] != "cfg" or opts.sampler != "ddpm":
            raise _NotRun("the diffusers DiTPipeline is benched with DDPM and CFG only")
        compiled, precision = peer_spec(name)
        start = time.perf_counter()
        peer = DiffusersPeer.build(
            self.model, device=self.device, precision=precision, compiled=compiled, steps=opts.steps
        )
        setup_s = time.perf_counter() - start
        try:
            runs = peer_trajectories(self.session, peer)
        finally:
            peer.close()
        for t in runs:
            ref = self.reference_wall.get(t["images"])
            t["speedup_vs_reference"] = ref / t["wall_s"] if ref else None
        return {"why": f"asked for ({precision})", "setup_s": setup_s, "trajectories": runs}

    def _backend_measurements(self, name: str) -> dict:
        session = self.session
        why_not = unavailable(name, self.device)
        if why_not:  # before building anything for it
            raise _NotRun(why_not)
        build = build_missing(name, session, self.source.name, self.source.label())
        start = time.perf_counter()
        pipe = self._pipeline(name)
        setup_s = time.perf_counter() - start
        try:
            runs, forwards = [], []
            for images in self.options.batch_sizes:
                runs += trajectories(session, name, pipe, images)
                forwards += time_forwards(session, pipe, images)
            add_speedups(runs, self.reference_wall)
            out = {
                "why": pipe.selection.reason,
                "setup_s": setup_s,
                "build": build,
                "engines": [b.describe() for b in pipe.backends.values()],
                "forwards": forwards,
                "trajectories": runs,
                "memory": pool_memory(session, pipe),
                "time_plans": time_plans(
                    runs, self.options, session.macs, lambda n, b: trajectory(session, pipe, n, b)
                ),
            }
            if self.options.profile:  # last: the timed numbers above are taken without the profiler
                out["profiles"] = profile_forwards(session, pipe)
            return out
        finally:
            pipe.close()

    def _pipeline(self, name: str) -> Pipeline:
        opts, device = self.options, self.device
        max_batch = max(opts.batch_sizes)
        if name in TORCH_VARIANTS:
            try:
                return pipeline_from_model(
                    self.model,
                    backend="torch",
                    device=device,
                    engine=EngineOptions(
                        precision=self.precision, max_batch=max_batch, **TORCH_VARIANTS[name]
                    ),
                    weights=self.source.label(),
                )
            except RunOptionError as err:  # an engine option this run cannot take (torch-fp8 in fp32)
                raise _NotRun(str(err)) from None
        try:
            pipe = pipeline_from_workdir(
                str(opts.workdir),
                self.source.name,
                backend=name,
                device=device,
                engine=EngineOptions(precision=self.precision, max_batch=max_batch),
                checkpoint=str(opts.checkpoint) if opts.checkpoint else None,
            )
        except (RunError, BuildError) as err:
            raise _NotRun(str(err)) from None
        differs = config_difference(pipe.spec.config, self.common["model"]["config"])
        if differs:
            pipe.close()
            raise _NotRun(
                f"the {name} engines under {opts.workdir} were built for another {self.source.name} config "
                f"({differs}); rebuild them with `flexidit-trt build` and the same options"
            )
        return pipe
