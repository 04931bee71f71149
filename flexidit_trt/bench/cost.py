"""What a `bench` run will do and its rough cost, said before any of it runs (a bare `bench` on a CPU
runs DiT-XL's 250-step reference loop: hours).

The cost is the compute of the timed trajectories (one warm-up and `repeats` timed per batch and budget,
per backend that can run here, and the reference loop's at the static model in fp32) at the measured
matmul peak: a floor, as no forward reaches the peak; the forwards timed alone and the time plans add
to it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..diffusion import plan
from ..runtime.options import GUIDANCE
from .backends import unavailable
from .options import BenchOptions


def runnable(options: BenchOptions, device: str) -> list[str]:
    """The backends of `options` this installation can run on `device` (engines are found later)."""
    return [name for name in options.backends if unavailable(name, device) is None]


def trajectory_macs(options: BenchOptions, macs: Mapping[int, float], backends: int) -> float:
    """MACs of every trajectory the run samples (the reference loop's included)."""
    guidance = GUIDANCE[options.guidance]
    calls = 1 + options.repeats  # a warm-up, then the timed ones
    per_image = sum(plan(b, options.steps, macs, guidance).macs for b in options.budgets)
    total = backends * calls * per_image * sum(options.batch_sizes)
    if options.reference:
        static = plan(1.0, options.steps, macs, "cfg").macs
        total += calls * static * sum(options.batch_sizes)
    return total


def outline(options: BenchOptions, name: str, device: str) -> str:
    """One line: the model, the backends, the grid of runs."""
    backends = runnable(options, device)
    skipped = [b for b in options.backends if b not in backends]
    return (
        f"bench: {name} on {device}; backends {', '.join(backends) or '(none)'}"
        + (f" (not here: {', '.join(skipped)})" if skipped else "")
        + f"; {'+'.join(map(str, options.batch_sizes))} images x budgets "
        f"{', '.join(f'{b:g}' for b in options.budgets)} x {options.steps} steps, 1 + {options.repeats} "
        "trajectories each"
        + ("; the reference loop too (--no-reference skips it)" if options.reference else "")
    )


def estimate(total_macs: float, peak_flops: float, options: BenchOptions, name: str) -> str:
    """One line: the compute, the time it takes at the measured peak (a floor), and the options that would
    make it less which this run does not use yet."""
    seconds = 2 * total_macs / peak_flops
    levers = [
        *(["--model dit_fmnist"] if name != "dit_fmnist" and options.checkpoint is None else []),
        "--steps",
        *(["--no-reference"] if options.reference else []),
    ]
    return (
        f"cost: {total_macs:.3g} MACs of trajectories: at least {_duration(seconds)} at the measured matmul "
        f"peak ({peak_flops / 1e12:.2f} TFLOP/s); fewer with {', '.join(levers)}"
    )


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
