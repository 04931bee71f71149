"""The time-budget planner: weak steps chosen from measured step latency (diffusion/time_planner.py)."""

from __future__ import annotations

import numpy as np
import pytest

from flexidit_trt.diffusion import plan
from flexidit_trt.diffusion.time_planner import TimeBudget, plan_for_time, predict_seconds

XL = {2: 118.6e9, 4: 29.0e9}  # DiT-XL/2 at 256 px, MACs per forward
XL3 = {2: 118.6e9, 4: 29.0e9, 8: 7.6e9}
# GPU.md, H100, compiled forwards in CUDA graphs: ms at batch 2 (1 image with CFG) and 16 (8 images).
LAUNCH_BOUND = {2: 2.2e-3, 4: 1.7e-3}
BATCH16 = {2: 8.7e-3, 4: 3.2e-3}


def fewest_weak_steps(steps: int, step_s: dict[int, float], limit: float) -> int:
    """Brute force over the two-size schedules: the fewest weak steps whose time fits."""
    for k in range(steps + 1):
        if k * step_s[4] + (steps - k) * step_s[2] <= limit:
            return k
    raise AssertionError("nothing fits")


def test_latency_proportional_to_macs_gives_the_macs_plan() -> None:
    # With step time ∝ step MACs (CFG: 2 forwards' worth), a time fraction is a MACs fraction.
    step_s = {p: 2 * m * 1e-15 for p, m in XL.items()}
    for fraction in (0.9, 0.75, 0.5, 0.3):
        chosen = plan_for_time(TimeBudget(fraction=fraction), 250, step_s, XL)
        assert chosen.plan.patch_per_step == plan(fraction, 250, XL).patch_per_step
        assert chosen.time_fraction == pytest.approx(chosen.plan.achieved_fraction, rel=1e-12)


def test_launch_bound_small_batch_needs_more_weak_steps() -> None:
    # A p4 step costs 77% of a p2 step: 0.9 of the static time needs 110 weak steps (brute force),
    # far more than the MACs planner at budget 0.9 (ceil(25 / (1 − 29.0/118.6)) = 34).
    chosen = plan_for_time("0.9", 250, LAUNCH_BOUND, XL)
    static_s = 250 * LAUNCH_BOUND[2]
    assert chosen.static_s == pytest.approx(static_s)
    assert chosen.plan.weak_steps == fewest_weak_steps(250, LAUNCH_BOUND, 0.9 * static_s) == 110
    assert plan(0.9, 250, XL).weak_steps == 34
    assert chosen.predicted_s <= 0.9 * static_s
    assert chosen.plan.patch_per_step == (4,) * 110 + (2,) * 140  # weak first, as plan orders them


def test_unreachable_time_budget_names_the_fastest_schedule() -> None:
    # All 250 steps at p4 still take 0.77 of the static time.
    with pytest.raises(
        ValueError, match=r"below the fastest schedule's predicted 0\.425 s \(static: 0\.55 s\)"
    ):
        plan_for_time("50%", 250, LAUNCH_BOUND, XL)


def test_seconds_budget_at_batch_16() -> None:
    for seconds in (2.0, 1.5, 1.0):
        chosen = plan_for_time(TimeBudget(seconds=seconds), 250, BATCH16, XL)
        assert chosen.limit_s == seconds
        assert chosen.plan.weak_steps == fewest_weak_steps(250, BATCH16, seconds)
        assert chosen.predicted_s == pytest.approx(predict_seconds(chosen.plan, BATCH16))


def test_fixed_cost_counts_against_the_budget() -> None:
    plain = plan_for_time("1.5s", 250, BATCH16, XL)
    with_fixed = plan_for_time("1.5s", 250, BATCH16, XL, fixed_s=0.1)
    assert with_fixed.plan.weak_steps == fewest_weak_steps(250, BATCH16, 1.4) > plain.plan.weak_steps
    assert with_fixed.predicted_s <= 1.5


def test_static_schedule_when_it_fits() -> None:
    chosen = plan_for_time("3s", 250, BATCH16, XL)  # static: 250 × 8.7 ms = 2.175 s
    assert chosen.plan.weak_steps == 0 and chosen.predicted_s == pytest.approx(2.175)
    assert plan_for_time("100%", 250, BATCH16, XL).plan.weak_steps == 0


def test_three_patch_sizes_pick_the_most_macs_that_fit() -> None:
    step_s = {2: 8.7e-3, 4: 3.2e-3, 8: 2.0e-3}
    limit = 0.7  # below what p4 alone reaches (250 × 3.2 ms = 0.8 s): needs p8 steps
    chosen = plan_for_time(TimeBudget(seconds=limit), 250, step_s, XL3)
    assert chosen.predicted_s <= limit and 8 in chosen.plan.patch_per_step
    # Against plan()'s schedules on a fine budget grid: none that fits has more MACs.
    lowest = plan(None, 250, XL3, schedule=(8,) * 250).achieved_fraction
    fitting = [
        s
        for b in np.linspace(lowest, 1.0, 1001)
        if predict_seconds(s := plan(float(b), 250, XL3), step_s) <= limit
    ]
    assert fitting and max(s.macs for s in fitting) <= chosen.plan.macs
    # And the chosen one is one of plan()'s schedules.
    assert plan(chosen.plan.achieved_fraction, 250, XL3).patch_per_step == chosen.plan.patch_per_step


def test_weak_to_strong_guidance() -> None:
    # W2S base steps run the strong and the weak engine on the images: their measured step latency.
    step_s = {2: 5.0e-3, 4: 3.2e-3}
    chosen = plan_for_time("0.8", 100, step_s, XL, guidance="weak_to_strong")
    limit = 0.8 * 100 * step_s[2]
    assert chosen.plan.guidance == "weak_to_strong"
    assert chosen.plan.weak_steps == fewest_weak_steps(100, step_s, limit)


def test_weak_steps_that_save_no_time() -> None:
    with pytest.raises(
        ValueError, match="weak steps save no time here: a p4 step takes 3 ms, a p2 step 2 ms"
    ):
        plan_for_time("0.9", 50, {2: 2e-3, 4: 3e-3}, XL)
    # ... unless the static schedule fits anyway.
    assert plan_for_time("1.0", 50, {2: 2e-3, 4: 3e-3}, XL).plan.weak_steps == 0


@pytest.mark.parametrize(
    ("step_s", "match"),
    [
        ({2: 2e-3}, r"no measured step latency for patch size\(s\) \[4\]"),
        ({2: 2e-3, 4: 0.0}, "step latency of patch 4 must be positive"),
        ({2: 2e-3, 4: float("nan")}, "step latency of patch 4 must be positive"),
    ],
)
def test_bad_latency(step_s: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_for_time("0.9", 50, step_s, XL)


def test_bad_plan_inputs_come_from_the_planner() -> None:
    with pytest.raises(ValueError, match="steps must be a positive int"):
        plan_for_time("0.9", 0, LAUNCH_BOUND, XL)
    with pytest.raises(ValueError, match="unknown guidance"):
        plan_for_time("0.9", 10, LAUNCH_BOUND, XL, guidance="cfgg")


@pytest.mark.parametrize(
    ("text", "seconds", "fraction"),
    [("2.5s", 2.5, None), ("2.5 s", 2.5, None), ("60%", None, 0.6), ("0.6", None, 0.6), ("1", None, 1.0)],
)
def test_parse_time_budget(text: str, seconds: float | None, fraction: float | None) -> None:
    budget = TimeBudget.parse(text)
    assert budget.seconds == seconds
    assert budget.fraction == pytest.approx(fraction) if fraction is not None else budget.fraction is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("3", "a bare number is a fraction in \\(0, 1\\] .*write 3s for seconds"),
        ("fast", "write seconds as 2.5s"),
        ("0", "fraction must be in \\(0, 1\\]"),
        ("0s", "seconds must be positive"),
        ("150%", "fraction must be in \\(0, 1\\]"),
        ("-1s", "write seconds as 2.5s"),
    ],
)
def test_parse_bad_time_budget(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TimeBudget.parse(text)
