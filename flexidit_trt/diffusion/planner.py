"""Compute-budget planner: which patch size runs each denoising step.

FlexiDiT runs weak (large-patch) models on the first, noisiest steps and the base (smallest) patch after.
`plan` picks the per-step patch sizes so that the trajectory's MACs are at most `budget` × the static
model's, where the static model runs every step at the base patch.

Cost of one step with patch p, in forwards of one image (macs_by_patch[p] each):
    "none":            m[p]
    "cfg":             2·m[p]                 conditional + unconditional pass at patch p
    "weak_to_strong":  base step:  m[base] + m[w2s]  strong conditional + weak conditional (the baseline)
                       weak step:  2·m[p]             ordinary CFG with the weak model: it has no weaker
                                                      model below it to use as a baseline
The static reference is all steps at the base patch with the guidance's normal cost: m[base] for "none",
2·m[base] for "cfg" and for "weak_to_strong" (whose static counterpart is the static model with CFG,
so W2S's own saving counts toward the budget). w2s = the next patch size above the base.

Choosing the schedule (steps are ordered coarsest first, then finer, the base last): the fewest steps at
the coarsest size that can still reach the budget (the remaining steps all at the next size), then the
same for each finer weak size in turn; the finest weak size's count is the smallest that fits, which
maximises the MACs used under the budget. Why not maximise MACs over all mixes: with three sizes that
trades p4 steps for p8 steps (much worse samples) to fill the last fraction of a step's MACs; here a
coarser size is used only when the finer ones cannot reach the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral

GUIDANCE_KINDS = ("cfg", "none", "weak_to_strong")
_REL_TOL = 1e-12  # float slack so that budget 1.0 admits the static schedule itself


@dataclass(frozen=True)
class Plan:
    """Patch size per step (noisiest first) and what it costs, in the units of macs_by_patch, per image."""

    patch_per_step: tuple[int, ...]
    achieved_fraction: float
    macs: float
    static_macs: float
    guidance: str
    base_patch: int  # the smallest patch of macs_by_patch: the static model's

    @property
    def weak_steps(self) -> int:
        """Steps not run at the base patch."""
        return sum(p != self.base_patch for p in self.patch_per_step)

    def describe(self) -> str:
        """One line. DiT-XL/2 at 256 px (forward_macs: 118.6 GMACs at patch 2, 29.0 at patch 4), 250 steps,
        budget 0.5: "250 steps: p4×166 → p2×84, cfg, 49.9% of static (2.96e+13 of 5.93e+13 MACs)"."""
        runs: list[list[int]] = []
        for p in self.patch_per_step:
            if runs and runs[-1][0] == p:
                runs[-1][1] += 1
            else:
                runs.append([p, 1])
        order = " → ".join(f"p{p}×{n}" for p, n in runs)
        return (
            f"{len(self.patch_per_step)} steps: {order}, {self.guidance}, "
            f"{100 * self.achieved_fraction:.1f}% of static ({self.macs:.3g} of {self.static_macs:.3g} MACs)"
        )


def _step_costs(macs_by_patch: Mapping[int, float], guidance: str) -> dict[int, float]:
    base = min(macs_by_patch)
    if guidance == "none":
        return dict(macs_by_patch)
    costs = {p: 2.0 * m for p, m in macs_by_patch.items()}
    if guidance == "weak_to_strong":
        w2s = min(p for p in macs_by_patch if p != base)
        costs[base] = macs_by_patch[base] + macs_by_patch[w2s]
    return costs


def _validate(steps: int, macs_by_patch: Mapping[int, float], guidance: str) -> None:
    if guidance not in GUIDANCE_KINDS:
        raise ValueError(f"unknown guidance {guidance!r}; allowed: {', '.join(GUIDANCE_KINDS)}")
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not macs_by_patch:
        raise ValueError("macs_by_patch is empty; give {patch size: MACs of one forward}, e.g. {2: 118.6e9}")
    for p, m in macs_by_patch.items():
        if isinstance(p, bool) or not isinstance(p, Integral) or p < 1 or not m > 0:
            raise ValueError(f"macs_by_patch needs positive int patch sizes and MACs > 0, got {p!r}: {m!r}")
    sizes = sorted(macs_by_patch)
    if any(macs_by_patch[a] <= macs_by_patch[b] for a, b in zip(sizes, sizes[1:], strict=False)):
        raise ValueError(f"MACs must decrease as the patch grows, got {dict(sorted(macs_by_patch.items()))}")
    if guidance == "weak_to_strong" and len(sizes) < 2:
        raise ValueError("weak_to_strong guidance needs a weak patch size besides the base in macs_by_patch")


def _explicit(
    steps: int, macs_by_patch: Mapping[int, float], weak_steps: int | None, schedule: Sequence[int] | None
) -> tuple[int, ...]:
    if weak_steps is not None and schedule is not None:
        raise ValueError("give either weak_steps or schedule, not both")
    if schedule is not None:
        entries = list(schedule)
        if len(entries) != steps:
            raise ValueError(f"schedule has {len(entries)} entries; it needs one per step ({steps})")
        bad = sorted({repr(p) for p in entries if isinstance(p, bool) or p not in macs_by_patch})
        if bad:
            raise ValueError(
                f"schedule uses patch sizes [{', '.join(bad)}]; allowed: {sorted(macs_by_patch)}"
            )
        return tuple(int(p) for p in entries)
    if isinstance(weak_steps, bool) or not isinstance(weak_steps, Integral) or not 0 <= weak_steps <= steps:
        raise ValueError(f"weak_steps must be an int in 0..{steps}, got {weak_steps!r}")
    if weak_steps and len(macs_by_patch) < 2:
        raise ValueError("weak_steps > 0 needs a weak patch size besides the base in macs_by_patch")
    k = int(weak_steps)
    return (max(macs_by_patch),) * k + (min(macs_by_patch),) * (steps - k)


def _total(counts: Mapping[int, int], costs: Mapping[int, float]) -> float:
    return sum(n * costs[p] for p, n in sorted(counts.items()))


def plan(
    budget: float | None,
    steps: int,
    macs_by_patch: Mapping[int, float],
    guidance: str = "cfg",
    weak_steps: int | None = None,
    schedule: Sequence[int] | None = None,
) -> Plan:
    """Per-step patch sizes within `budget` × the static model's MACs (see the module docstring).

    budget: in (0, 1]; may be None with an explicit `weak_steps` (the first K steps at the largest
    patch, then the base) or `schedule` (one patch size per step, any order), which is then only
    costed; with both a budget and an explicit schedule, the schedule must fit the budget.
    """
    _validate(steps, macs_by_patch, guidance)
    costs = _step_costs(macs_by_patch, guidance)
    base = min(macs_by_patch)
    static = steps * 2.0 * macs_by_patch[base] if guidance != "none" else steps * macs_by_patch[base]
    if budget is not None and (isinstance(budget, bool) or not 0.0 < budget <= 1.0):
        raise ValueError(f"budget must be a fraction of the static model's MACs in (0, 1], got {budget!r}")

    def make(patches: tuple[int, ...]) -> Plan:
        counts = {p: patches.count(p) for p in set(patches)}
        macs = _total(counts, costs)
        return Plan(patches, macs / static, macs, static, guidance, base)

    if weak_steps is not None or schedule is not None:
        result = make(_explicit(steps, macs_by_patch, weak_steps, schedule))
        if budget is not None and result.macs > budget * static * (1 + _REL_TOL):
            raise ValueError(
                f"the explicit schedule needs {result.achieved_fraction:.4f} of the static MACs, "
                f"above the budget {budget}"
            )
        return result
    if budget is None:
        raise ValueError("give a budget in (0, 1], or an explicit weak_steps or schedule")

    limit = budget * static * (1 + _REL_TOL)
    sizes = sorted(macs_by_patch, reverse=True)  # coarsest first; cost per step grows along it
    lowest = steps * costs[sizes[0]] / static
    if steps * costs[sizes[0]] > limit:
        raise ValueError(
            f"budget {budget} is below the lowest reachable budget {lowest:.4f} "
            f"(all {steps} steps at patch {sizes[0]} with {guidance} guidance); allowed: [{lowest:.4f}, 1]"
        )
    counts = {p: 0 for p in sizes}
    remaining = steps
    for p, finer in zip(sizes, sizes[1:], strict=False):
        # Fewest steps at p such that the rest, all at the next finer size, fits the budget.
        for k in range(remaining + 1):
            trial = {**counts, p: k, finer: remaining - k}
            if _total(trial, costs) <= limit:
                break
        counts[p] = k
        remaining -= k
    counts[sizes[-1]] = remaining
    patches = tuple(p for p in sizes for _ in range(counts[p]))
    return make(patches)
