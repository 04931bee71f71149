"""What an evaluation depends on besides the model (EvalOptions), and the errors it raises."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import FlexiditError, UsageError

DEFAULT_BUDGETS = (1.0, 0.75, 0.6, 0.5, 0.4, 0.3)
GUIDANCE = ("cfg", "weak_to_strong", "none")


class EvalError(FlexiditError):
    """The evaluation cannot run for a reason the user can fix (missing data, weights, Inception file)."""


class OptionsError(UsageError, ValueError):
    """Options that cannot be evaluated (a budget outside (0, 1] or below the reachable, no samples…)."""


def parse_scales(text: str) -> tuple[float, ...]:
    """ "1.0,1.5,4.0" → (1.0, 1.5, 4.0): distinct finite numbers (OptionsError otherwise)."""
    try:
        scales = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        scales = ()
    if not scales or not all(math.isfinite(c) for c in scales) or len(set(scales)) != len(scales):
        raise OptionsError(f"expected distinct comma-separated finite numbers like 1.0,1.5,4.0, got {text!r}")
    return scales


@dataclass(frozen=True)
class EvalOptions:
    """Everything an evaluation depends on besides the model; checked when made (OptionsError says what
    is wrong), so whatever holds one holds valid options."""

    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    num_samples: int = 10_000
    guidance: str = "cfg"  # the planner's names: cfg | weak_to_strong | none
    # The guidance scales: every budget runs at each (a guidance sweep when more than one). 1.5: DiT's FID
    # setting. Weak-to-strong guidance uses the scale too; guidance "none" ignores it.
    cfg_scales: tuple[float, ...] = (1.5,)
    steps: int = 250
    sampler: str = "ddpm"
    seed: int = 0
    repeat_seeds: int = 1  # > 1: budget 1.0 (first CFG scale) again with seeds seed+1, …: the seed spread
    batch_size: int = 250
    patch_sizes: tuple[int, ...] = (2, 4)
    backend: str = "auto"
    precision: str | None = None  # None: the Pipeline's default
    fp8: bool = False  # the torch engines' block GEMMs in FP8 where the rows allow (EngineOptions.fp8)
    # torch.compile the engines (EngineOptions.compile): fewer, fused kernels for eval's large batches,
    # at a compile per patch size first; other samples in the last bits, so their chunks are kept apart
    compile: bool = False
    device: str | None = None  # None: cuda (this rank's GPU) when there is one, else cpu
    label: str | None = None  # the series name in tables and plots (default: the guidance)
    data_dir: Path | None = None
    cache_dir: Path | None = None  # reference features (default ~/.cache/flexidit-trt)
    resume_dir: Path | None = None  # finished chunks; None: nothing kept between calls
    inception: Path | None = None  # a copy of default_1.pt (default: the installed package's)
    classifier: Path | None = None  # default: the committed weights
    reference_count: int | None = None  # test images in the reference (None: all 10,000)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    grid_per_class: int = 8
    progress: bool = True
    deadline: float | None = None  # time.monotonic() after which no new chunk starts

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        problems = []
        if not self.budgets:
            problems.append("give at least one budget")
        bad = [b for b in self.budgets if not 0.0 < b <= 1.0]
        if bad:
            problems.append(f"budgets must be fractions of the static compute in (0, 1], got {list(bad)}")
        if self.num_samples < 1:
            problems.append(f"num_samples must be >= 1, got {self.num_samples}")
        elif self.num_samples <= self.pr_k:
            problems.append(
                f"num_samples must be > {self.pr_k} (the k of k-NN precision/recall), got {self.num_samples}"
            )
        if self.reference_count is not None and self.reference_count <= self.pr_k:
            problems.append(
                f"reference_count must be > {self.pr_k} (k-NN precision/recall), got {self.reference_count}"
            )
        if not self.cfg_scales:
            problems.append("give at least one CFG scale")
        elif not all(isinstance(c, (int, float)) and math.isfinite(c) for c in self.cfg_scales):
            problems.append(f"CFG scales must be finite numbers, got {list(self.cfg_scales)}")
        elif len(set(self.cfg_scales)) != len(self.cfg_scales):
            problems.append(f"CFG scales repeat: {list(self.cfg_scales)}")
        elif self.guidance == "none" and len(self.cfg_scales) > 1:
            problems.append("guidance none ignores the CFG scale: give one scale")
        if self.guidance not in GUIDANCE:
            problems.append(f"guidance must be one of {', '.join(GUIDANCE)}, got {self.guidance!r}")
        for name in ("steps", "batch_size", "repeat_seeds", "kid_subsets", "kid_subset_size", "pr_k"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fp8 and self.precision == "fp32":
            problems.append("--fp8: FP8 GEMMs need a bf16 or fp16 engine, not fp32")
        if self.repeat_seeds > 1 and 1.0 not in self.budgets:
            problems.append("repeat_seeds > 1 repeats budget 1.0: add 1.0 to the budgets")
        if problems:
            raise OptionsError("; ".join(problems))

    @property
    def series(self) -> str:
        return self.label or self.guidance

    def runs(self) -> list[tuple[float, float, int]]:
        """(cfg_scale, budget, seed) of every run, in order: each scale with every budget at `seed`, then
        the seed repeats of budget 1.0 at the first scale (one scale shows the seed noise)."""
        runs = [(c, b, self.seed) for c in self.cfg_scales for b in self.budgets]
        runs += [(self.cfg_scales[0], 1.0, self.seed + i) for i in range(1, self.repeat_seeds)]
        return runs
