"""The time planner on the latency the bench measured: each budget taken as a fraction of the static
model's wall time."""

from __future__ import annotations

from collections.abc import Callable

from ..diffusion import plan
from ..diffusion.time_planner import TimeBudget, plan_for_time, predict_seconds
from ..runtime.options import GUIDANCE
from .options import BenchOptions
from .results import trajectory_step_seconds


def time_plans(
    trajectories: list[dict], options: BenchOptions, macs: dict[int, int], run: Callable[[int, float], dict]
) -> list[dict]:
    """Each budget below 1.0 taken as a fraction of the static model's wall time: the weak steps the time
    planner picks from the step latency measured in `trajectories`, its prediction, and that schedule run
    (`run(images, macs_budget)` times one trajectory) — beside the MACs planner's schedule at the same
    number, measured already."""
    kind, out = GUIDANCE[options.guidance], []
    for images in options.batch_sizes:
        runs = {t["budget"]: t for t in trajectories if t["images"] == images}
        step_s = trajectory_step_seconds(trajectories, images)
        if set(step_s) != set(macs):
            continue
        fixed_s = runs[1.0]["outside_loop_ms"] / 1e3
        static = runs[1.0]["wall_s"]
        static_predicted = predict_seconds(plan(1.0, options.steps, macs, kind), step_s, fixed_s)
        for budget in (b for b in options.budgets if b < 1.0):
            macs_plan = plan(budget, options.steps, macs, kind)
            entry = {
                "images": images,
                "fraction": budget,
                "macs_plan_weak_steps": macs_plan.weak_steps,
                "macs_plan_measured_fraction": runs[budget]["wall_s"] / static,
                "macs_plan_predicted_fraction": predict_seconds(macs_plan, step_s, fixed_s)
                / static_predicted,
                "step_ms_by_patch": {str(p): s * 1e3 for p, s in step_s.items()},
                "fixed_ms": fixed_s * 1e3,
            }
            try:
                chosen = plan_for_time(
                    TimeBudget(fraction=budget), options.steps, step_s, macs, kind, fixed_s
                )
            except ValueError as err:
                entry["unreachable"] = str(err)
                out.append(entry)
                continue
            same = [t for t in runs.values() if t["weak_steps"] == chosen.plan.weak_steps]
            # The MACs budget that gives exactly this schedule: plan() picks it back from its own fraction.
            ran = same[0] if same else run(images, chosen.plan.achieved_fraction)
            entry.update(
                weak_steps=chosen.plan.weak_steps,
                predicted_fraction=chosen.time_fraction,
                plan=chosen.plan.describe(),
                measured_fraction=ran["wall_s"] / static,
                measured_weak_steps=ran["weak_steps"],
            )
            out.append(entry)
    return out
