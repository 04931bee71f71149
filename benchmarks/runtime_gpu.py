"""Issue 7's GPU numbers in one run (about 7 minutes on an H100): DiT-XL/2 with random weights, bf16,
250 DDPM steps, CFG 4.0, budgets 1.0 and 0.5, 1 and 8 images, for the aoti, torch compiled and torch
eager backends and the reference DiT sampling loop.

    python3 -m pip install --no-build-isolation --no-deps -e .      # first: the extension with CUDA
    PYTHONUNBUFFERED=1 python3 benchmarks/runtime_gpu.py $OUT

Writes $OUT/runtime_gpu.json, $OUT/runtime_gpu.md and $OUT/logs/*.log (one per subprocess) and prints
the table last. Stages, each guarded so a failure still leaves the others' numbers:

1. AOTInductor load trials (subprocesses): a tiny DiT (depth 1, width 64, p4) compiled with each variant
   of engines/aoti.AOTI_VARIANTS in parallel, then each package loaded in fresh processes, plain and
   with the toolchain's libstdc++ preloaded (LD_PRELOAD). A crash (SIGSEGV), a hang at exit and the
   error against eager are recorded per (variant, load); the first that loads and exits cleanly wins
   (else the first that loads at all).
2. With a winner: DiT-XL p2 and p4 packages (batch 1..16) compiled in two background processes.
3. Meanwhile: the torch compiled pipeline warms up (torch.compile per shape, timed: cold), its portable
   cache is saved (engines/aoti.build_compile_cache), and a background process reloads it
   (load_compile_cache) in a fresh inductor cache and compiles again (timed: warm) — the fallback's
   evidence. Then the eager pipeline (static modules in CUDA graphs) warms up, and the memory of CUDA
   graphs sharing one pool is compared with one pool per engine.
4. Timed runs on a quiet machine (the background compiles finished): the reference loop
   (benchmarks/reference_sample.py: fp32 weights, TF32, as DiT's sample.py), torch eager, torch
   compiled; then the aoti pipeline in a subprocess (a package that crashes cannot take this script down).

Timing: wall time of `Pipeline.generate` (the record's total_wall_s: sampling, the end-of-batch sync
and the copy out), after a warm-up that compiles and captures; the median of --reps runs. Loop overhead
is the record's loop_ms against forward_ms_sum (CUDA events around each step's forwards).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:
    import flexidit_trt  # noqa: F401
except ImportError:  # a checkout without the package installed
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_sample, reference_iddpm

T0 = time.perf_counter()
LABELS = {8: [207, 360, 387, 974, 88, 979, 417, 279], 1: [207]}  # sample.py's classes
CONFIGS = [(1.0, 8), (0.5, 8), (1.0, 1), (0.5, 1)]  # (budget, images)
VARIANTS = ("default", "no-pch", "static-libstdcxx")
RESULT = "RESULT "  # the line a subprocess reports on
LOG = None


def log(msg: str) -> None:
    line = f"[{time.perf_counter() - T0:7.1f}s] {msg}"
    print(line, flush=True)
    if LOG is not None:
        with open(LOG, "a") as f:
            f.write(line + "\n")


def elapsed() -> float:
    return time.perf_counter() - T0


# -- subprocesses -------------------------------------------------------------------------------------------
class Child:
    """A subprocess of this script (`--child NAME ...`) writing to logs/<name>.log; reports one RESULT line."""

    def __init__(self, name: str, args: list[str], out: Path, env: dict | None = None):
        self.name = name
        self.log = out / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--child", *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,  # its compile workers go with it when it is killed
            )

    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, timeout: float) -> dict:
        """Outcome: status ok | crashed (signal) | failed (exit code) | timeout | hung (reported, then did
        not exit), with the reported result and the seconds it ran."""
        try:
            self.proc.wait(timeout=max(timeout, 1.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        seconds = time.perf_counter() - self.start
        result = None
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        for line in text.splitlines():
            if line.startswith(RESULT):
                result = json.loads(line[len(RESULT) :])
        code = self.proc.returncode
        if timed_out:
            status = "hung" if result is not None else "timeout"
        elif code == 0:
            status = "ok" if result is not None else "failed"
        elif code < 0:
            status = f"crashed ({signal.Signals(-code).name})"
        else:
            status = f"failed (exit {code})"
        tail = [ln for ln in text.splitlines() if ln.strip()][-3:]
        return {
            "name": self.name,
            "status": status,
            "result": result,
            "seconds": round(seconds, 1),
            "tail": tail,
        }


def report(result: dict) -> None:
    print(RESULT + json.dumps(result), flush=True)


# -- child processes ------------------------------------------------------------------------------------------
def child_trial_compile(args) -> None:
    from flexidit_trt.engines.aoti import AotiOptions, build_aoti_engines

    options = AotiOptions(precision=args.precision, batch_max=16, variant=args.variant, device=_kind(args))
    source = trial_source(args)
    result = build_aoti_engines(source, args.work, (4,), options)
    record = result.records[0]
    report(
        {"package": str(record.path), "build_seconds": record.entry["build_seconds"], "variant": args.variant}
    )


def child_trial_load(args) -> None:
    import torch

    from flexidit_trt.engines.aoti import load_aoti_engine
    from flexidit_trt.export.onnx_export import example_inputs, graph_module

    maps = Path("/proc/self/maps").read_text().splitlines()
    libs = sorted({ln.split()[-1] for ln in maps if "libstdc++" in ln})
    print(f"libstdc++ mapped before load: {libs}", flush=True)
    t0 = time.perf_counter()
    run = load_aoti_engine(args.package)
    load_s = time.perf_counter() - t0
    print(f"loaded in {load_s:.2f} s", flush=True)
    module = graph_module(trial_source(args).load(), 4, args.precision).to(args.device)
    errors = {}
    for batch in (2, 16):
        x, t, y = (a.to(args.device) for a in example_inputs(module.config, batch, seed=batch))
        with torch.no_grad():
            ref = module(x, t, y)
        out = run(x, t, y)
        out = out[0] if isinstance(out, (list, tuple)) else out
        _sync(args.device)
        errors[str(batch)] = float((out - ref).abs().max() / ref.abs().max())
    report({"load_seconds": round(load_s, 2), "rel_err_vs_eager": errors, "libstdcxx_mapped": libs})
    # a normal exit: whether it hangs is part of the trial


def child_xl_build(args) -> None:
    from flexidit_trt.engines.aoti import AotiOptions, build_aoti_engines
    from flexidit_trt.export.source import ModelSource

    source = ModelSource(args.model, (2, 4), seed=0, **_source_kwargs(args))
    options = AotiOptions(precision=args.precision, batch_max=16, variant=args.variant, device=_kind(args))
    t0 = time.perf_counter()
    result = build_aoti_engines(source, args.work, (args.patch,), options)
    record = result.records[0]
    report(
        {
            "patch_size": args.patch,
            "package": str(record.path),
            "build_seconds": record.entry["build_seconds"],
            "process_seconds": round(time.perf_counter() - t0, 1),
            "bytes": record.entry["bytes"],
        }
    )


def child_aoti_time(args) -> None:
    from flexidit_trt.runtime import Pipeline

    t0 = time.perf_counter()
    pipe = Pipeline.from_workdir(
        str(args.work), args.model, backend="aoti", device=args.device, precision=args.precision
    )
    load_s = time.perf_counter() - t0
    rows, warm = time_backend(pipe, "aoti", args)
    report({"load_seconds": round(load_s, 1), "warmup": warm, "rows": rows})
    sys.stdout.flush()
    os._exit(0)  # a package that hangs at exit (seen with LD_PRELOAD) must not hold the run


def child_cache_warm(args) -> None:
    """A fresh process with an empty inductor cache: hot-load the portable artifacts, then compile."""
    import torch

    from flexidit_trt.engines.aoti import load_compile_cache
    from flexidit_trt.model import FlexiDiT
    from flexidit_trt.runtime import Pipeline

    model = FlexiDiT.from_config(args.model, init="random", seed=0, **_model_kwargs(args))
    t0 = time.perf_counter()
    entry = load_compile_cache(args.work)
    load_s = time.perf_counter() - t0
    pipe = Pipeline.from_model(
        model, backend="torch", device=args.device, precision=args.precision, compile=True
    )
    warm = warm_up(pipe, args)
    from torch._dynamo.utils import counters

    report(
        {
            "cache_loaded": entry is not None,
            "cache_load_seconds": round(load_s, 2),
            "warmup": warm,
            "inductor_counters": {k: int(v) for k, v in counters["inductor"].items() if "cache" in k},
            "torch": torch.__version__,
        }
    )
    sys.stdout.flush()
    os._exit(0)


# -- timing --------------------------------------------------------------------------------------------------
def generate(pipe, budget: float, images: int, args):
    return pipe.generate(
        LABELS[images] if images in LABELS else list(range(images)),
        budget=budget,
        steps=args.steps,
        sampler="ddpm",
        guidance="cfg",
        cfg_scale=4.0,
        seed=0,
        progress=False,
    )


def warm_up(pipe, args) -> dict:
    """One generate per (budget 0.5, images): compiles and captures every engine at every batch the timed
    runs use (budget 1.0 runs p2 only, at the same batches)."""
    out = {}
    for images in (8, 1):
        t0 = time.perf_counter()
        generate(pipe, 0.5, images, args)
        out[f"{images}_images_s"] = round(time.perf_counter() - t0, 2)
    return out


def time_backend(pipe, name: str, args) -> tuple[list[dict], dict]:
    warm = warm_up(pipe, args)
    log(f"{name}: warm-up (compile/capture) {warm}")
    return time_backend_timed(pipe, name, args), warm


def time_backend_timed(pipe, name: str, args) -> list[dict]:
    """The timed runs of a warmed-up pipeline: --reps generate calls per configuration, the median wall."""
    rows = []
    for budget, images in CONFIGS:
        records = [generate(pipe, budget, images, args).record for _ in range(args.reps)]
        walls = [r["timing"]["total_wall_s"] for r in records]
        overheads = [
            r["timing"]["loop_overhead_fraction"]
            for r in records
            if r["timing"]["loop_overhead_fraction"] is not None
        ]
        timing = records[-1]["timing"]
        row = {
            "backend": name,
            "budget": budget,
            "images": images,
            "wall_s": statistics.median(walls),
            "walls_s": walls,
            "loop_ms": timing["loop_ms"],
            "forward_ms_sum": timing["forward_ms_sum"],
            "loop_overhead_fraction": statistics.median(overheads) if overheads else None,
            "by_patch": timing["by_patch"],
            "achieved_fraction": records[-1]["plan"]["achieved_fraction"],
            "plan": records[-1]["plan"]["summary"],
            "memory": records[-1]["memory"],
        }
        rows.append(row)
        runs = ", ".join(f"{w:.3f}" for w in walls)
        log(
            f"{name} budget {budget} x{images}: {row['wall_s']:.3f} s (runs {runs}); "
            f"loop overhead {_pct(row['loop_overhead_fraction'])}"
        )
    return rows


def time_reference(model, args) -> list[dict]:
    import torch
    from reference_sample import ReferenceDiffusion, reference_precision, reference_sample

    rows = []
    device = args.device
    with reference_precision(), torch.no_grad():
        model = model.float().to(device).eval()
        diffusion = ReferenceDiffusion(args.steps)
        reference_sample(model, LABELS[8], steps=10, device=device)  # warm-up: cuBLAS, allocator
        _sync(device)
        for images in (8, 1):
            walls = []
            for _ in range(args.ref_reps):
                _sync(device)
                t0 = time.perf_counter()
                reference_sample(
                    model,
                    LABELS[images],
                    cfg_scale=4.0,
                    steps=args.steps,
                    seed=0,
                    device=device,
                    diffusion=diffusion,
                )
                _sync(device)
                walls.append(time.perf_counter() - t0)
            rows.append(
                {
                    "backend": "reference",
                    "budget": 1.0,
                    "images": images,
                    "wall_s": statistics.median(walls),
                    "walls_s": walls,
                }
            )
            log(f"reference x{images}: {rows[-1]['wall_s']:.3f} s")
    return rows


def pool_memory(model, args) -> dict:
    """Memory that the eager pipeline's CUDA graphs reserve: one pool shared by both engines vs one pool
    per engine, 8 images at budget 0.5 (p4 and p2 engines both at batch 16). Two measures: the graph
    pools' own segments after the trajectory (graph_pool_bytes: the allocator's snapshot, per pool), and
    the older peak of memory_reserved above the start, which also counts the general pool (the eager
    warm-up, cached blocks), so it does not isolate the graphs."""
    import torch

    from flexidit_trt.runtime import Pipeline
    from flexidit_trt.runtime.pipeline import Selection
    from flexidit_trt.runtime.select import model_spec
    from flexidit_trt.runtime.torch_backend import TorchBackend
    from flexidit_trt.runtime.torch_graphs import GraphPool, graph_pool_bytes

    out = {}
    for mode in ("shared", "per_engine"):
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
        before = torch.cuda.memory_reserved()
        shared = GraphPool(args.device)
        pools = {p: shared if mode == "shared" else GraphPool(args.device) for p in model.patch_sizes}
        engines = {
            p: TorchBackend.from_model(model, p, device=args.device, precision=args.precision, pool=pools[p])
            for p in model.patch_sizes
        }
        pipe = Pipeline(
            model_spec(model),
            engines,
            device=args.device,
            selection=Selection("torch", f"eager, CUDA graphs, {mode} pool"),
            precision=args.precision,
            owned=list({id(p): p for p in pools.values()}.values()),
        )
        weights = torch.cuda.memory_reserved() - before
        record = generate(pipe, 0.5, 8, args).record
        torch.cuda.synchronize()
        # The graphs are alive until pipe.close(): their pools' segments are still reserved here.
        graphs = graph_pool_bytes(list(pools.values()))
        # The peak, not the reserve at the end: capture may hand cached blocks back before it finishes.
        total = torch.cuda.max_memory_reserved() - before
        out[mode] = {
            "graph_pools": graphs,
            "peak_reserved_bytes": total,
            "weights_reserved_bytes": weights,
            "peak_graphs_and_buffers_bytes": total - weights,
            "record_memory": record["memory"],
        }
        log(
            f"memory, {mode} pool: graph pools reserve {_pools_mib(graphs)}, "
            f"{graphs['allocated_bytes'] / 2**20:.1f} MiB of it allocated; peak reserved "
            f"{(total - weights) / 2**20:.1f} MiB for graphs + buffers + warm-up"
        )
        pipe.close()
        del pipe, engines, pools, shared
    return out


# -- the parent ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    global LOG
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG = out / "runtime_gpu.log"
    LOG.write_text("")
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor-main")  # cold: compile times are honest
    results: dict = {
        "args": {k: v for k, v in vars(args).items() if k != "child"},
        "stages": {},
        "errors": {},
    }

    import torch

    from flexidit_trt.engines.aoti import aoti_dir, torch_target

    results["env"] = env_facts(torch)
    log(f"env: {json.dumps(results['env'])}")
    target = torch_target(args.device)
    stages = set(args.stages.split(","))

    # 1. AOTInductor trials: compile the variants in parallel, in the background.
    trials = {}
    if "aoti" in stages and target is not None:
        for v in VARIANTS:
            env = {"TORCHINDUCTOR_CACHE_DIR": str(scratch / f"inductor-trial-{v}")}
            work = scratch / f"trial-{v}"
            trials[v] = Child(
                f"trial-compile-{v}",
                ["trial-compile", "--variant", v, "--work", str(work), *_model_args(args)],
                out,
                env,
            )
        log(f"AOTI trials: compiling a tiny model with variants {', '.join(VARIANTS)} (subprocesses)")

    log(f"building {args.model} with random weights on the CPU")
    from flexidit_trt.model import FlexiDiT

    model = FlexiDiT.from_config(args.model, init="random", seed=0, **_model_kwargs(args)).eval()
    if args.device != "cpu":
        model = model.to(args.device)  # fp32: the reference runs it; static() copies from it
    log(f"model ready: {model.num_parameters() / 1e6:.1f} M parameters (reference layout)")

    winner = None
    if trials:
        trial_result = guarded(results, "aoti_trials", lambda: aoti_trials(trials, out, scratch, args))
        results["stages"]["aoti_trials"] = trial_result
        winner = (trial_result or {}).get("winner")
    builds = {}
    if winner is not None:
        variant = winner["variant"]
        for p in (2, 4):
            work = scratch / f"xl-p{p}"
            env = {"TORCHINDUCTOR_CACHE_DIR": str(scratch / f"inductor-xl-p{p}")}
            builds[p] = Child(
                f"xl-build-p{p}",
                [
                    "xl-build",
                    "--variant",
                    variant,
                    "--patch",
                    str(p),
                    "--work",
                    str(work),
                    *_model_args(args),
                ],
                out,
                env,
            )
        log(f"AOTI: compiling {args.model} p2 and p4 with variant {variant} in the background")

    # 3. torch compiled (cold compile), its portable cache, eager, the pools.
    from flexidit_trt.runtime import Pipeline

    pipes = {}
    cache_child = None

    def compiled_warmup():
        pipe = Pipeline.from_model(
            model, backend="torch", device=args.device, precision=args.precision, compile=True
        )
        t0 = time.perf_counter()
        warm = warm_up(pipe, args)
        pipes["torch-compiled"] = (pipe, warm)
        results["stages"]["torch_compiled_cold_warmup"] = {
            **warm,
            "total_s": round(time.perf_counter() - t0, 1),
        }
        log(f"torch compiled: cold warm-up (torch.compile of 4 shapes + capture) {warm}")

    if "compiled" in stages:
        guarded(results, "torch_compiled_warmup", compiled_warmup)
    if "compiled" in stages and "cache" in stages and target is not None and "torch-compiled" in pipes:

        def save_cache():
            from flexidit_trt.engines.aoti import build_compile_cache

            folder = aoti_dir(scratch / "cache-work", args.model, target)
            entry = build_compile_cache(
                lambda: None,  # the compiled pipeline above has just compiled every shape
                folder,
                args.model,
                target,
                {
                    "patch_sizes": [2, 4],
                    "batches": [2, 16],
                    "precision": args.precision,
                    "compile": "torch backend: fullgraph, dynamic=False",
                },
            )
            results["stages"]["compile_cache"] = {k: entry[k] for k in ("bytes", "artifacts", "sha256")}
            log(f"compile cache saved: {entry['bytes'] / 1e6:.1f} MB, artifacts {entry['artifacts']}")
            return folder

        folder = guarded(results, "compile_cache_save", save_cache)
        if folder is not None:
            env = {
                "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor-cache-warm")
            }  # empty: only the artifacts
            cache_child = Child(
                "cache-warm", ["cache-warm", "--work", str(folder), *_model_args(args)], out, env
            )

    def eager_warmup():
        pipe = Pipeline.from_model(model, backend="torch", device=args.device, precision=args.precision)
        pipes["torch-eager"] = (pipe, warm_up(pipe, args))
        log(f"torch eager: warm-up (capture) {pipes['torch-eager'][1]}")

    if "eager" in stages:
        guarded(results, "torch_eager_warmup", eager_warmup)
    if "memory" in stages and args.device != "cpu":
        results["stages"]["pool_memory"] = guarded(results, "pool_memory", lambda: pool_memory(model, args))

    # Background work must end before the timed runs (a quiet machine), within the time budget.
    deadline = args.budget_s - args.reserve_s
    for name, child in [*((f"xl-build-p{p}", c) for p, c in builds.items()), ("cache-warm", cache_child)]:
        if child is None:
            continue
        outcome = child.wait(deadline - elapsed())
        results["stages"][name] = outcome
        log(
            f"{name}: {outcome['status']} after {outcome['seconds']} s {outcome['result'] or outcome['tail']}"
        )

    # 4. Timed runs.
    rows = []
    if "reference" in stages:
        rows += guarded(results, "reference", lambda: time_reference(model, args)) or []
        if args.device != "cpu":
            model.to("cpu")  # the fp32 copy is done with; free the device for the rest
            torch.cuda.empty_cache()
    for name in ("torch-eager", "torch-compiled"):
        if name in pipes:
            pipe, warm = pipes.pop(name)
            timed = guarded(
                results, f"{name}_timed", lambda pipe=pipe, name=name: time_backend_timed(pipe, name, args)
            )
            rows += timed or []
            results["stages"][f"{name}_warmup"] = warm
            pipe.close()
    gc.collect()
    if builds and all(results["stages"].get(f"xl-build-p{p}", {}).get("status") == "ok" for p in builds):
        rows += guarded(results, "aoti_timed", lambda: aoti_timed(winner, out, scratch, args, target)) or []

    results["rows"] = rows
    results["summary"] = summarize(rows)
    results["total_seconds"] = round(elapsed(), 1)
    (out / "runtime_gpu.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown(results)
    (out / "runtime_gpu.md").write_text(table + "\n")
    log(f"done in {elapsed():.0f} s; wrote {out / 'runtime_gpu.json'} and runtime_gpu.md")
    print(table, flush=True)
    return 0


def aoti_trials(trials: dict, out: Path, scratch: Path, args) -> dict | None:
    """Wait for the trial compiles, load each package in fresh processes (plain / LD_PRELOAD), pick."""
    compiled = {}
    for v, child in trials.items():
        outcome = child.wait(args.trial_timeout_s - (time.perf_counter() - child.start))
        log(f"trial compile {v}: {outcome['status']} after {outcome['seconds']} s")
        compiled[v] = outcome
    preload = libstdcxx_path()
    loads = {}
    for v, outcome in compiled.items():
        if outcome["status"] != "ok":
            continue
        package = outcome["result"]["package"]
        modes = {"plain": {}}
        if preload:
            modes["ld_preload"] = {"LD_PRELOAD": preload}
        for mode, env in modes.items():
            env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(scratch / f"inductor-load-{v}-{mode}")}
            argv = ["trial-load", "--package", package, *_model_args(args)]
            loads[(v, mode)] = Child(f"trial-load-{v}-{mode}", argv, out, env)
    outcomes = {}
    for (v, mode), child in loads.items():
        outcomes[(v, mode)] = child.wait(args.load_timeout_s - (time.perf_counter() - child.start))
        o = outcomes[(v, mode)]
        log(f"trial load {v} / {mode}: {o['status']} after {o['seconds']} s {o['result'] or o['tail']}")
    table = {f"{v}/{mode}": o for (v, mode), o in outcomes.items()}
    winner = None
    for status in ("ok", "hung"):  # a clean exit first; a package that loads but hangs at exit second
        for mode in ("plain", "ld_preload"):
            for v in VARIANTS:
                o = outcomes.get((v, mode))
                if winner is None and o is not None and o["status"] == status:
                    env = {"LD_PRELOAD": preload} if mode == "ld_preload" else {}
                    winner = {"variant": v, "mode": mode, "env": env, "exit": status}
    if winner:
        log(f"AOTI trials: winner {winner}")
    else:
        log("AOTI trials: no variant loads; the aoti stage is skipped (the fallback: the compile cache)")
    return {"compiles": compiled, "loads": table, "winner": winner, "libstdcxx": preload}


def aoti_timed(winner: dict, out: Path, scratch: Path, args, target) -> list[dict]:
    """Put both packages in one engine folder (each was compiled in its own, in parallel: a folder is
    locked while a build writes it), then time the aoti pipeline in a subprocess."""
    from flexidit_trt.artifacts import MANIFEST_NAME, write_json_atomic
    from flexidit_trt.engines.aoti import aoti_dir

    folders = {p: aoti_dir(scratch / f"xl-p{p}", args.model, target) for p in (2, 4)}
    merged = folders[2]
    manifest = json.loads((merged / MANIFEST_NAME).read_text())
    other = json.loads((folders[4] / MANIFEST_NAME).read_text())
    os.replace(folders[4] / "p4.pt2", merged / "p4.pt2")  # one file system: a rename
    manifest["engines"]["4"] = other["engines"]["4"]
    write_json_atomic(merged / MANIFEST_NAME, manifest)
    env = {**winner["env"], "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor-aoti-time")}
    child = Child("aoti-time", ["aoti-time", "--work", str(scratch / "xl-p2"), *_model_args(args)], out, env)
    outcome = child.wait(args.budget_s - elapsed() - 5)
    log(f"aoti timing: {outcome['status']} after {outcome['seconds']} s")
    if outcome["result"] is None:
        raise RuntimeError(f"the aoti timing process ended {outcome['status']}: {outcome['tail']}")
    result = outcome["result"]
    for row in result["rows"]:
        log(f"aoti budget {row['budget']} x{row['images']}: {row['wall_s']:.3f} s")
    return [
        {**row, "load_seconds": result["load_seconds"], "warmup": result["warmup"]} for row in result["rows"]
    ]


def guarded(results: dict, name: str, fn):
    """Run one stage; on failure record the error and go on."""
    t0 = time.perf_counter()
    try:
        value = fn()
        log(f"stage {name}: done in {time.perf_counter() - t0:.1f} s")
        return value
    except Exception as err:
        results["errors"][name] = f"{type(err).__name__}: {err}"
        log(f"stage {name} FAILED: {type(err).__name__}: {err}")
        traceback.print_exc()
        return None


# -- summary -------------------------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> dict:
    """Ratios against the reference loop of the same run, and the targets of issue 7."""
    ref = {r["images"]: r["wall_s"] for r in rows if r["backend"] == "reference"}
    ours = [r for r in rows if r["backend"] != "reference"]
    for r in ours:
        r["speedup_vs_reference"] = ref[r["images"]] / r["wall_s"] if r["images"] in ref else None
    out: dict = {"targets": {}}
    for images, target in ((8, 5.5), (1, 6.5)):
        at_half = [r for r in ours if r["images"] == images and r["budget"] == 0.5]
        if at_half and images in ref:
            best = min(at_half, key=lambda r: r["wall_s"])
            speedup = ref[images] / best["wall_s"]
            out["targets"][f"fastest_budget_0.5_{images}_images_vs_reference"] = {
                "backend": best["backend"],
                "speedup": round(speedup, 2),
                "target": target,
                "met": bool(speedup >= target),
            }
    for backend in sorted({r["backend"] for r in ours}):
        by = {(r["budget"], r["images"]): r for r in ours if r["backend"] == backend}
        if (0.5, 8) in by and (1.0, 8) in by:
            ratio = by[(0.5, 8)]["wall_s"] / by[(1.0, 8)]["wall_s"]
            out["targets"][f"{backend}_budget_0.5_over_1.0_8_images"] = {
                "ratio": round(ratio, 3),
                "target": 0.6,
                "met": bool(ratio <= 0.6),
            }
        worst = max(
            (r["loop_overhead_fraction"] for r in by.values() if r.get("loop_overhead_fraction") is not None),
            default=None,
        )
        if worst is not None:
            out["targets"][f"{backend}_loop_overhead_worst"] = {
                "fraction": round(worst, 4),
                "target": 0.05,
                "met": bool(worst <= 0.05),
            }
    return out


def markdown(results: dict) -> str:
    rows = results.get("rows", [])
    env = results.get("env", {})
    lines = [
        f"{results['args']['model']}, random weights, {results['args']['precision']} (reference: fp32 + TF32), "
        f"{results['args']['steps']} DDPM steps, CFG 4.0 — {env.get('gpu', '?')}, torch {env.get('torch', '?')}",
        "",
        "| backend | budget | images | wall s | vs reference | loop overhead | forwards ms | plan |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {"reference": 0, "torch-eager": 1, "torch-compiled": 2, "aoti": 3}
    for r in sorted(rows, key=lambda r: (order.get(r["backend"], 9), -r["images"], -r["budget"])):
        if r["backend"] == "reference":
            lines.append(
                f"| reference | - | {r['images']} | {r['wall_s']:.3f} | 1.00x | - | - | sample.py's loop |"
            )
            continue
        speed = r.get("speedup_vs_reference")
        lines.append(
            f"| {r['backend']} | {r['budget']} | {r['images']} | {r['wall_s']:.3f} | "
            f"{f'{speed:.2f}x' if speed else '-'} | {_pct(r.get('loop_overhead_fraction'))} | "
            f"{r['forward_ms_sum']:.0f} | {r.get('plan', '-')} |"
        )
    lines.append("")
    for name, t in results.get("summary", {}).get("targets", {}).items():
        lines.append(f"- {name}: {json.dumps(t, default=str)}")
    trials = results["stages"].get("aoti_trials")
    if trials:
        lines.append(f"- AOTI load trials (tiny model): winner {trials.get('winner')}")
        for key, o in trials.get("loads", {}).items():
            lines.append(f"  - {key}: {o['status']} ({o['seconds']} s) {o['result'] or o['tail']}")
        for key, o in trials.get("compiles", {}).items():
            if o["status"] != "ok":
                lines.append(f"  - compile {key}: {o['status']}: {o['tail']}")
    mem = results["stages"].get("pool_memory")
    if mem:
        lines.append(
            f"- CUDA-graph pools' reserved memory (eager, 8 images, budget 0.5; allocator snapshot): shared "
            f"pool {_pools_mib(mem['shared']['graph_pools'])}, one pool per engine "
            f"{_pools_mib(mem['per_engine']['graph_pools'])}"
        )
        shared, per = (mem[k]["peak_graphs_and_buffers_bytes"] for k in ("shared", "per_engine"))
        lines.append(
            f"- peak reserved above the weights (graphs, buffers and the eager warm-up together): shared "
            f"pool {shared / 2**20:.0f} MiB, one pool per engine {per / 2**20:.0f} MiB"
        )
    cold = results["stages"].get("torch_compiled_cold_warmup")
    warm = results["stages"].get("cache-warm")
    if cold:
        warm_txt = (
            f"; after load_compile_cache in a fresh process: {warm['result']}"
            if warm and warm.get("result")
            else ""
        )
        lines.append(f"- torch.compile warm-up, cold: {cold}{warm_txt}")
    for name, err in results.get("errors", {}).items():
        lines.append(f"- stage {name} failed: {err}")
    lines.append(f"- total {results.get('total_seconds')} s")
    return "\n".join(lines)


# -- helpers -------------------------------------------------------------------------------------------------
def env_facts(torch) -> dict:
    facts = {"torch": torch.__version__, "python": sys.version.split()[0], "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
    gxx = shutil.which("g++")
    if gxx:
        facts["gxx"] = subprocess.run([gxx, "--version"], capture_output=True, text=True).stdout.splitlines()[
            0
        ]
    facts["libstdcxx"] = libstdcxx_path()
    return facts


def libstdcxx_path() -> str | None:
    """The toolchain's libstdc++ (what GPU.md's LD_PRELOAD experiment used)."""
    gxx = shutil.which("g++")
    if not gxx:
        return None
    name = subprocess.run(
        [gxx, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True
    ).stdout.strip()
    path = os.path.realpath(name)
    return path if os.path.isfile(path) else None


def trial_source(args):
    """The load trials' model: a tiny DiT (the crash GPU.md describes is in creating the package's model
    container, for dit_s and dit_xl alike; a tiny net compiles in a fraction of the time)."""
    from flexidit_trt.export.source import ModelSource

    return ModelSource("dit_s", (2, 4), seed=0, image_size=64, overrides=dict(TINY))


TINY = {"depth": 1, "hidden_size": 64, "num_heads": 2}  # --tiny: a plumbing check on any machine


def _source_kwargs(args) -> dict:
    if args.tiny:
        return {"image_size": 64, "overrides": dict(TINY)}
    return {"overrides": {"depth": args.depth}} if args.depth else {}


def _model_kwargs(args) -> dict:
    if args.tiny:
        return {"input_size": 8, **TINY}
    return {"depth": args.depth} if args.depth else {}


def _model_args(args) -> list[str]:
    out = ["--model", args.model, "--steps", str(args.steps), "--reps", str(args.reps)]
    out += ["--device", args.device, "--precision", args.precision]
    return out + (["--depth", str(args.depth)] if args.depth else []) + (["--tiny"] if args.tiny else [])


def _kind(args) -> str:
    return "cpu" if args.device == "cpu" else "cuda"


def _sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def _pools_mib(graphs: dict) -> str:
    """graph_pool_bytes' answer in words: the total reserved and, for several pools, each one's share."""
    parts = [f"{r['reserved_bytes'] / 2**20:.1f}" for r in graphs["pools"]]
    each = f" ({' + '.join(parts)})" if len(parts) > 1 else ""
    return f"{graphs['reserved_bytes'] / 2**20:.1f} MiB{each}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def run_child(args) -> int:
    kinds = {
        "trial-compile": child_trial_compile,
        "trial-load": child_trial_load,
        "xl-build": child_xl_build,
        "aoti-time": child_aoti_time,
        "cache-warm": child_cache_warm,
    }
    kinds[args.child](args)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=None, help="output folder (JSON, markdown, logs)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--patch", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--package", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="dit_xl")
    parser.add_argument("--depth", type=int, default=None, help="override the depth")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny model everywhere: checks the plumbing (CPU)"
    )
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--reps", type=int, default=2, help="timed runs per configuration (median)")
    parser.add_argument("--ref-reps", type=int, default=1, help="timed reference runs per image count")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument(
        "--precision", default="bf16", help="of our backends (the reference runs fp32 + TF32)"
    )
    parser.add_argument(
        "--stages", default="aoti,compiled,cache,eager,memory,reference", help="comma-separated stages to run"
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-time budget of the whole run")
    parser.add_argument("--reserve-s", type=float, default=130.0, help="kept for the timed runs at the end")
    parser.add_argument("--trial-timeout-s", type=float, default=150.0)
    parser.add_argument("--load-timeout-s", type=float, default=200.0)  # import torch alone took ~50 s there
    parser.add_argument("--scratch", default=os.environ.get("FLEXIDIT_BENCH_SCRATCH", "/tmp/flexidit-bench"))
    args = parser.parse_args(argv)
    if args.child is None and args.out is None:
        parser.error("the output folder is required")
    return args


if __name__ == "__main__":
    sys.exit(main())
