"""What one run samples: the sampling options, resolved and checked once where they enter (the `run`
command or `Pipeline.generate`), then handed to the pipeline as one value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

from ..diffusion import Sampler, make_sampler
from ..diffusion.time_planner import TimeBudget
from ..engines.backend import RunOptionError

DEFAULT_BUDGET = 0.5  # the MACs budget when neither a budget nor a time budget is given
GUIDANCE = {
    "cfg": "cfg",
    "none": "none",
    "weak-to-strong": "weak_to_strong",
    "weak_to_strong": "weak_to_strong",
}


@dataclass(frozen=True)
class SamplingOptions:
    """budget: the fraction of the static model's MACs (None: 0.5, or the time budget's choice);
    time_budget: seconds of sampling loop instead, the weak steps chosen from step latency measured at
    run time (not both). steps and sampler as `make_sampler` takes them; guidance: cfg, weak-to-strong
    or none. Make it with `checked`, which resolves the budget and refuses what no run can take."""

    budget: float | None = None
    time_budget: float | None = None
    steps: int | str = 250
    sampler: str = "ddpm"
    guidance: str = "cfg"
    cfg_scale: float = 4.0
    seed: int = 0

    def checked(self) -> SamplingOptions:
        """These options with the budget resolved and the guidance named as the planner names it;
        RunOptionError naming the first bad one."""
        guidance = GUIDANCE.get(self.guidance)
        if guidance is None:
            raise RunOptionError(f"unknown guidance {self.guidance!r}; allowed: cfg, weak-to-strong, none")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2**64:
            raise RunOptionError(f"seed must be an int in [0, 2**64), got {seed!r}")
        cfg = self.cfg_scale
        if isinstance(cfg, bool) or not isinstance(cfg, Real) or not math.isfinite(cfg):
            raise RunOptionError(f"the guidance scale must be a finite number, got {cfg!r}")
        budget = resolve_budget(self.budget, self.time_budget)
        if budget is not None and (isinstance(budget, bool) or not 0.0 < float(budget) <= 1.0):
            raise RunOptionError(
                f"budget must be a fraction of the static model's compute in (0, 1], got {budget}"
            )
        self.make_sampler()
        return SamplingOptions(
            budget, self.time_budget, self.steps, self.sampler, guidance, self.cfg_scale, self.seed
        )

    def make_sampler(self) -> Sampler:
        """The sampler these options name; RunOptionError for an unknown one or a bad step count."""
        try:
            return make_sampler(self.sampler, self.steps)
        except ValueError as err:
            raise RunOptionError(str(err)) from None


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


@dataclass(frozen=True)
class NoiseStream:
    """`count` consecutive images of a sampling call that draw the noise of images first..first+count-1 of
    `seed`'s stream: what a call for those images alone with that seed gives them. A call given several
    (in label order) samples independent requests in one batch, each as if it ran alone."""

    seed: int
    count: int
    first: int = 0

    def __post_init__(self) -> None:
        for name in ("seed", "count", "first"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise RunOptionError(f"noise stream {name} must be an int, got {value!r}")
        if not 0 <= self.seed < 2**64:
            raise RunOptionError(f"seed must be an int in [0, 2**64), got {self.seed!r}")
        if self.count < 1 or self.first < 0:
            raise RunOptionError(f"a noise stream covers >= 1 images from image >= 0, got {self}")


def chunk_streams(streams: list[NoiseStream], i0: int, b: int) -> list[tuple[int, int, int, int]]:
    """The pieces of `streams` (laid end to end) that images i0..i0+b-1 of a call cover, as
    (first image in the chunk, count, seed, image index in the seed's stream)."""
    out, start = [], 0
    for s in streams:
        lo, hi = max(start, i0), min(start + s.count, i0 + b)
        if lo < hi:
            out.append((lo - i0, hi - lo, s.seed, s.first + lo - start))
        start += s.count
    return out
