"""What an evaluation finds: one RunResult per (series, budget, seed), and the EvalReport that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunResult:
    """One (series, budget, seed): the plan's compute and every metric, JSON-ready."""

    series: str
    guidance: str
    cfg_scale: float
    budget: float
    seed: int
    achieved_fraction: float
    plan: str
    steps: int
    num_samples: int
    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    class_accuracy: float
    generate_seconds: float  # sampling time summed over chunks (and GPUs)
    images_per_second: float  # per GPU: num_samples / generate_seconds


@dataclass
class EvalReport:
    """What rank 0 writes: the runs, the provenance, and the samples for the grids (not in the JSON)."""

    runs: list[RunResult] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    grids: dict[tuple[str, float, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    complete: bool = True
