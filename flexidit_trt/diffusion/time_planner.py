"""Time-budget planner: how many weak steps to run, chosen from MEASURED engine latency.

`plan` spends a budget of MACs. What a user waits for is wall time, and the two part at small batches:
there the weak (large-patch) engine is launch-bound, so its 4× fewer MACs buy little time (GPU.md: a
DiT-XL/2 forward at batch 2 takes 1.7 ms at patch 4 against 2.2 ms at patch 2, compiled). A MACs budget
of 0.5 then gives 0.8× the time, not 0.5×. `plan_for_time` takes a time budget instead — seconds, or a
fraction of the static schedule's predicted time — and the measured latency of one step at each patch
size, and returns the schedule with the most MACs whose predicted time fits.

The schedules it chooses among are exactly `plan`'s (one per MACs budget, in `plan`'s own order: a
coarser patch only where the finer ones cannot reach the budget), so a time budget never produces a
schedule that a MACs budget could not; only the number of weak steps is chosen from the clock.

Latency in: `step_seconds[p]` is one whole step at patch p as the run executes it — its forward(s) at the
batch the guidance makes (CFG: one forward of 2·images; weak-to-strong base steps: the strong and the weak
engine on the images) plus the sampler update. A run record's per-step latency by patch size is exactly
that (`flexidit_trt.bench.results.step_seconds` reads it from a bench results file). Predicted time of a
schedule = Σ over its steps of step_seconds[p] + `fixed_s` (the per-trajectory work outside the steps).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .planner import _REL_TOL, Plan, _validate, plan

_BISECTIONS = 64  # the budget interval shrinks below float resolution well before this


@dataclass(frozen=True)
class TimeBudget:
    """A wall-time budget: `seconds`, or `fraction` of the static schedule's predicted time."""

    seconds: float | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.fraction is None):
            raise ValueError("a time budget is either seconds or a fraction of the static model's time")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"a time budget in seconds must be positive, got {self.seconds!r}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"a time budget fraction must be in (0, 1], got {self.fraction!r}")

    @classmethod
    def parse(cls, text: str) -> TimeBudget:
        """ "2.5s" (seconds), "60%" or "0.6" (a fraction of the static schedule's time)."""
        value = str(text).strip().lower()
        match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(s|%)?", value)
        if match is None:
            raise ValueError(
                f"time budget {text!r}: write seconds as 2.5s, or a fraction of the static model's time as 0.5 or 50%"
            )
        number, unit = float(match.group(1)), match.group(2)
        if unit == "s":
            return cls(seconds=number)
        if unit == "%":
            return cls(fraction=number / 100.0)
        if number > 1.0:
            raise ValueError(
                f"time budget {text!r}: a bare number is a fraction in (0, 1] of the static model's time; "
                f"write {text}s for seconds"
            )
        return cls(fraction=number)

    def describe(self) -> str:
        return (
            f"{self.seconds:g} s"
            if self.seconds is not None
            else f"{100 * self.fraction:g}% of the static time"
        )


@dataclass(frozen=True)
class TimePlan:
    """The chosen schedule and what the measured latency predicts for it."""

    plan: Plan  # the schedule, costed in MACs as `plan` costs it
    predicted_s: float  # its predicted wall time
    static_s: float  # the static schedule's (every step at the base patch) predicted wall time
    limit_s: float  # the time budget in seconds
    step_seconds: Mapping[int, float]

    @property
    def time_fraction(self) -> float:
        return self.predicted_s / self.static_s

    def describe(self) -> str:
        return (
            f"{self.plan.weak_steps} weak steps: predicted {self.predicted_s:.3g} s "
            f"({100 * self.time_fraction:.1f}% of the static {self.static_s:.3g} s) within {self.limit_s:.3g} s; "
            f"{self.plan.describe()}"
        )


def predict_seconds(schedule: Plan, step_seconds: Mapping[int, float], fixed_s: float = 0.0) -> float:
    """Predicted wall time of a schedule: its steps' measured latency plus the fixed per-run cost."""
    return fixed_s + sum(step_seconds[p] for p in schedule.patch_per_step)


def plan_for_time(
    budget: TimeBudget | str,
    steps: int,
    step_seconds: Mapping[int, float],
    macs_by_patch: Mapping[int, float],
    guidance: str = "cfg",
    fixed_s: float = 0.0,
) -> TimePlan:
    """The schedule with the most MACs (the fewest weak steps) among `plan`'s whose predicted time fits
    `budget`. Raises ValueError with one line when none fits or the inputs are unusable."""
    if isinstance(budget, str):
        budget = TimeBudget.parse(budget)
    _validate(steps, macs_by_patch, guidance)
    _check_latency(step_seconds, macs_by_patch, fixed_s)

    def seconds(b: float) -> float:
        return predict_seconds(plan(b, steps, macs_by_patch, guidance), step_seconds, fixed_s)

    static_s = seconds(1.0)
    limit = budget.seconds if budget.seconds is not None else budget.fraction * static_s
    fits = limit * (1 + _REL_TOL)  # float slack, as plan's: a schedule exactly at the budget fits
    if static_s <= fits:  # the static schedule fits: nothing to give up
        return _result(plan(1.0, steps, macs_by_patch, guidance), step_seconds, fixed_s, static_s, limit)

    # The lowest MACs budget: every step at the coarsest patch, costed by plan itself.
    coarsest = max(macs_by_patch)
    lowest = plan(None, steps, macs_by_patch, guidance, schedule=(coarsest,) * steps).achieved_fraction
    fastest = seconds(lowest)
    sizes = sorted(macs_by_patch)
    slower = [(a, b) for a, b in zip(sizes, sizes[1:], strict=False) if step_seconds[b] > step_seconds[a]]
    if fastest > fits or slower:
        why, in_seconds = "", "" if budget.seconds is not None else f" ({limit:.3g} s)"
        if slower:
            a, b = slower[0]
            why = (
                f"; weak steps save no time here: a p{b} step takes {1e3 * step_seconds[b]:.3g} ms, "
                f"a p{a} step {1e3 * step_seconds[a]:.3g} ms"
            )
        raise ValueError(
            f"time budget {budget.describe()}{in_seconds} is below the fastest schedule's predicted "
            f"{min(fastest, static_s):.3g} s (static: {static_s:.3g} s){why}"
        )
    # Predicted time grows with the MACs budget (every finer step costs at least the coarser one it
    # replaces, checked above), so bisect the MACs budget for the largest one whose schedule fits.
    lo, hi = lowest, 1.0
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if seconds(mid) <= fits else (lo, mid)
    return _result(plan(lo, steps, macs_by_patch, guidance), step_seconds, fixed_s, static_s, limit)


def _result(schedule: Plan, step_seconds, fixed_s: float, static_s: float, limit: float) -> TimePlan:
    return TimePlan(
        schedule, predict_seconds(schedule, step_seconds, fixed_s), static_s, limit, dict(step_seconds)
    )


def _check_latency(
    step_seconds: Mapping[int, float], macs_by_patch: Mapping[int, float], fixed_s: float
) -> None:
    missing = sorted(set(macs_by_patch) - set(step_seconds))
    if missing:
        raise ValueError(
            f"no measured step latency for patch size(s) {missing}; measure every engine first "
            "(`flexidit-trt bench` with a budget below 1.0 runs them all)"
        )
    for p, s in step_seconds.items():
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise ValueError(f"step latency of patch {p} must be positive seconds, got {s!r}")
    if not (math.isfinite(fixed_s) and fixed_s >= 0):
        raise ValueError(f"fixed_s must be non-negative seconds, got {fixed_s!r}")
