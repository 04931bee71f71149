"""The options of one `flexidit-trt bench` run, checked once where they enter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..diffusion import make_sampler
from ..errors import UsageError
from ..runtime.options import GUIDANCE
from .backends import DEFAULT_BACKENDS, expand_backends
from .measure import DEFAULT_TIMING, TimingOptions

DEFAULT_OUT = Path("benchmarks/results")


class BenchOptionError(UsageError, ValueError):
    """A bench option is unusable (the CLI maps it to exit code 2)."""


@dataclass(frozen=True)
class BenchOptions:
    model: str = "dit_xl"
    backends: tuple[str, ...] = DEFAULT_BACKENDS  # run in this order (backends.expand_backends)
    batch_sizes: tuple[int, ...] = (1, 8)  # images per batch (CFG runs twice as many rows)
    budgets: tuple[float, ...] = (1.0, 0.5)  # 1.0 (the static model) is always added
    steps: int = 250
    precision: str | None = None  # bf16 on a GPU, fp32 on the CPU
    sampler: str = "ddpm"
    guidance: str = "cfg"
    cfg_scale: float = 4.0
    seed: int = 0
    device: str | None = None
    workdir: Path = Path(".")  # where `build` put the engines (trt, aoti, ort; builds.py exports ort's)
    out: Path = DEFAULT_OUT
    checkpoint: Path | None = None
    image_size: int | None = None
    patch_sizes: tuple[int, ...] = (2, 4)
    overrides: dict = field(default_factory=dict)  # config fields for random weights (depth=2, ...)
    reference: bool = True
    repeats: int = 3  # timed trajectories per (images, budget)
    timing: TimingOptions = DEFAULT_TIMING
    profile: bool = False  # each engine's forward under torch.profiler too (profile.py)

    def __post_init__(self) -> None:
        try:
            backends = expand_backends(tuple(self.backends))
        except ValueError as err:
            raise BenchOptionError(str(err)) from None
        if not self.batch_sizes or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch_sizes
        ):
            raise BenchOptionError(f"batch sizes must be positive ints, got {self.batch_sizes!r}")
        if not self.budgets or any(isinstance(b, bool) or not 0.0 < b <= 1.0 for b in self.budgets):
            raise BenchOptionError(
                f"budgets are fractions of the static model's MACs in (0, 1], got {self.budgets!r}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise BenchOptionError(f"steps must be a positive int, got {self.steps!r}")
        if self.guidance not in GUIDANCE:
            raise BenchOptionError(f"unknown guidance {self.guidance!r}; allowed: cfg, weak-to-strong, none")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise BenchOptionError(f"repeats must be a positive int, got {self.repeats!r}")
        try:
            make_sampler(self.sampler, self.steps)
        except ValueError as err:
            raise BenchOptionError(str(err)) from None
        object.__setattr__(self, "backends", backends)
        object.__setattr__(self, "batch_sizes", tuple(sorted(set(self.batch_sizes))))
        object.__setattr__(self, "budgets", tuple(sorted(set(self.budgets) | {1.0}, reverse=True)))

    def record(self) -> dict:
        """The options as the results file keeps them."""
        out = asdict(self)
        out.update(
            workdir=str(self.workdir),
            out=str(self.out),
            checkpoint=str(self.checkpoint) if self.checkpoint else None,
            forward_runs=self.timing.runs,
            warmup=self.timing.warmup,
        )
        del out["timing"]
        return out
