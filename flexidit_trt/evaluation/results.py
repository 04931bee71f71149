"""What an evaluation finds: one RunResult per (series, CFG scale, budget, seed), and the EvalReport that
holds them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunResult:
    """One (series, CFG scale, budget, seed): the plan's compute and every metric, JSON-ready."""

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
    classifier_fd: float  # Fréchet distance on the classifier's penultimate features
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
    # (series, cfg_scale, budget, seed) → (uint8 images [n, 32, 32], labels [n])
    grids: dict[tuple[str, float, float, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    complete: bool = True
