"""The loop's program: for one batch size, every step's engines, addresses and scalars, fixed before the
loop runs (the per-step call table), and the batches each engine runs at under a schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..diffusion import Plan, Sampler
from ..engines.backend import Backend, IOBuffers
from ..engines.spec import ModelSpec


@dataclass(frozen=True)
class StepCall:
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


def build_program(
    schedule: Plan,
    smp: Sampler,
    b: int,
    cfg_scale: float,
    spec: ModelSpec,
    backends: dict[int, Backend],
    io: dict[int, IOBuffers],
) -> list[StepCall]:
    """The loop's steps for b images, every address and scalar fixed before it runs."""
    base, calls = schedule.base_patch, []
    out_rows = lambda p, r: address(io[p].out) + r * row_bytes(io[p].out)  # noqa: E731
    patches = schedule.patch_per_step
    cfg_batch = [uses_cfg_batch(schedule, p) for p in patches]
    for i, p in enumerate(patches):
        if schedule.guidance == "none":
            forwards, cond, baseline = ((backends[p], b),), out_rows(p, 0), 0
        elif schedule.guidance == "weak_to_strong" and p == base:
            weak = w2s_patch(spec)
            forwards = ((backends[base], b), (backends[weak], b))
            cond, baseline = out_rows(base, 0), out_rows(weak, 0)
        else:
            forwards, cond, baseline = ((backends[p], 2 * b),), out_rows(p, 0), out_rows(p, b)
        calls.append(
            StepCall(
                patch_size=p,
                timestep=float(np.float32(smp.timesteps[i])),
                forwards=forwards,
                cond=cond,
                baseline=baseline,
                out_channels=spec.out_channels,
                dtype=backends[p].out_dtype,
                coeffs=smp.coeffs(i),
                guidance_scale=float(cfg_scale),
                cfg_batch=cfg_batch[i],
                duplicate_after=i + 1 < len(patches) and cfg_batch[i + 1],
            )
        )
    return calls


def engine_batches(schedule: Plan, b: int, spec: ModelSpec, patch_sizes: list[int]) -> dict[int, set[int]]:
    """The batch each engine runs at in a schedule, for b images."""
    need: dict[int, set[int]] = {p: set() for p in patch_sizes}
    base = schedule.base_patch
    for p in set(schedule.patch_per_step):
        if schedule.guidance == "none":
            need[p].add(b)
        elif schedule.guidance == "weak_to_strong" and p == base:
            need[base].add(b)
            need[w2s_patch(spec)].add(b)
        else:
            need[p].add(2 * b)
    return need


def uses_cfg_batch(schedule: Plan, p: int) -> bool:
    if schedule.guidance == "none":
        return False
    return not (schedule.guidance == "weak_to_strong" and p == schedule.base_patch)


def w2s_patch(spec: ModelSpec) -> int:
    """The weak engine of weak-to-strong guidance: the next patch size above the base (as the planner)."""
    base = min(spec.patch_sizes)
    return min(p for p in spec.patch_sizes if p != base)


def address(buf: Any) -> int:
    return int(buf.ctypes.data) if isinstance(buf, np.ndarray) else int(buf.ptr)


def row_bytes(buf: Any) -> int:
    return int(buf.nbytes // buf.shape[0])
