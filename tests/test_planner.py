"""Budget planner arithmetic."""

from __future__ import annotations

import math

import pytest

from flexidit_trt.diffusion import plan

XL = {2: 118.6e9, 4: 29.0e9}  # DiT-XL/2 at 256 px, MACs per forward
XL3 = {2: 118.6e9, 4: 29.0e9, 8: 7.6e9}


def brute_cost(patches: tuple[int, ...], macs: dict[int, float], guidance: str) -> float:
    base, w2s = min(macs), sorted(macs)[1] if len(macs) > 1 else None
    total = 0.0
    for p in patches:
        if guidance == "none":
            total += macs[p]
        elif guidance == "weak_to_strong" and p == base:
            total += macs[base] + macs[w2s]
        else:
            total += 2 * macs[p]
    return total


def test_dit_xl_half_budget_with_cfg() -> None:
    result = plan(0.5, 250, XL)
    assert result.weak_steps == 166  # ceil(125 / (1 − 29.0/118.6)) = ceil(165.46)
    assert result.patch_per_step == (4,) * 166 + (2,) * 84  # weak first
    assert 0.49 <= result.achieved_fraction <= 0.50
    assert result.static_macs == pytest.approx(250 * 2 * 118.6e9)
    assert result.macs == pytest.approx(brute_cost(result.patch_per_step, XL, "cfg"))
    # One weak step fewer would be over the budget: it is the largest schedule that fits.
    one_fewer = (4,) * 165 + (2,) * 85
    assert brute_cost(one_fewer, XL, "cfg") > 0.5 * result.static_macs
    assert "p4×166 → p2×84" in result.describe()


def test_full_budget_is_the_static_model() -> None:
    result = plan(1.0, 250, XL)
    assert result.weak_steps == 0 and result.achieved_fraction == 1.0
    assert plan(1.0, 50, XL, guidance="none").patch_per_step == (2,) * 50


def test_fraction_matches_the_paper_formula() -> None:
    # compute = 1 − (1 − c)·f with c the weak/strong cost ratio and f the weak share (no guidance change).
    for budget in (0.3, 0.6, 0.8):
        r = plan(budget, 100, XL, guidance="none")
        f = r.weak_steps / 100
        assert r.achieved_fraction == pytest.approx(1 - (1 - 29.0 / 118.6) * f)
        assert budget - (1 - 29.0 / 118.6) / 100 < r.achieved_fraction <= budget


def test_too_low_budget_names_the_lowest_reachable() -> None:
    lowest = 29.0 / 118.6
    with pytest.raises(ValueError, match=rf"lowest reachable budget {lowest:.4f}"):
        plan(0.2, 250, XL)
    assert plan(lowest + 1e-9, 250, XL).weak_steps == 250


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.01, math.nan])
def test_budget_out_of_range(budget: float) -> None:
    with pytest.raises(ValueError, match=r"budget must be .* in \(0, 1\]"):
        plan(budget, 250, XL)


def test_weak_to_strong_costs() -> None:
    # Strong step: strong-cond + weak-cond; weak step: CFG with the weak model; static: the CFG model.
    r = plan(1.0, 250, XL, guidance="weak_to_strong")
    assert r.weak_steps == 0
    assert r.achieved_fraction == pytest.approx((118.6 + 29.0) / (2 * 118.6))
    r = plan(0.5, 250, XL, guidance="weak_to_strong")
    assert r.macs == pytest.approx(brute_cost(r.patch_per_step, XL, "weak_to_strong"))
    assert r.macs <= 0.5 * r.static_macs
    k = r.weak_steps
    assert brute_cost((4,) * (k - 1) + (2,) * (251 - k), XL, "weak_to_strong") > 0.5 * r.static_macs
    assert k < plan(0.5, 250, XL).weak_steps  # the cheaper strong steps need fewer weak ones


def test_explicit_weak_steps_and_schedule() -> None:
    r = plan(None, 250, XL, weak_steps=166)
    assert r.patch_per_step == plan(0.5, 250, XL).patch_per_step
    s = plan(None, 4, XL3, schedule=[8, 4, 4, 2])
    assert s.patch_per_step == (8, 4, 4, 2)
    assert s.macs == pytest.approx(2 * (7.6e9 + 2 * 29.0e9 + 118.6e9))
    assert plan(0.9, 4, XL3, schedule=(2, 4, 4, 2)).patch_per_step == (2, 4, 4, 2)  # any order is allowed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": [4, 2]}, r"2 entries; it needs one per step \(4\)"),
        ({"schedule": [4, 3, 2, 2]}, r"patch sizes \[3\]; allowed: \[2, 4\]"),
        ({"weak_steps": 5}, r"weak_steps must be an int in 0\.\.4"),
        ({"weak_steps": 1, "schedule": [4, 2, 2, 2]}, "not both"),
        ({"guidance": "pag"}, "allowed: cfg, none, weak_to_strong"),
    ],
)
def test_explicit_schedule_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(None if "guidance" not in kwargs else 0.5, 4, XL, **kwargs)


def test_explicit_schedule_over_budget_raises() -> None:
    with pytest.raises(ValueError, match="above the budget 0.5"):
        plan(0.5, 250, XL, weak_steps=10)


def test_bad_macs_tables() -> None:
    with pytest.raises(ValueError, match="decrease as the patch grows"):
        plan(0.5, 10, {2: 1.0, 4: 2.0})
    with pytest.raises(ValueError, match="positive int patch sizes"):
        plan(0.5, 10, {2: 1.0, 4: 0.0})
    with pytest.raises(ValueError, match="steps must be a positive int"):
        plan(0.5, 0, XL)


def test_three_sizes_use_the_coarsest_only_when_needed() -> None:
    # Above all-p4's 24.5 % the p4/p2 answer is kept (no p8 steps to squeeze the last MACs).
    assert plan(0.5, 250, XL3).patch_per_step == plan(0.5, 250, XL).patch_per_step
    # Below it: the fewest p8 steps that reach the budget, the rest p4, coarsest first.
    r = plan(0.2, 250, XL3)
    k8, k4 = r.patch_per_step.count(8), r.patch_per_step.count(4)
    assert r.patch_per_step == (8,) * k8 + (4,) * k4 and k8 + k4 == 250
    assert r.achieved_fraction <= 0.2
    assert brute_cost((8,) * (k8 - 1) + (4,) * (k4 + 1), XL3, "cfg") > 0.2 * r.static_macs
    with pytest.raises(ValueError, match=rf"lowest reachable budget {7.6 / 118.6:.4f}"):
        plan(0.05, 250, XL3)


def test_three_sizes_against_brute_force() -> None:
    """Every (k8, k4) mix of a short run: the plan is the lexicographic best (fewest k8, then max MACs)."""
    steps, macs = 12, {2: 10.0, 4: 3.0, 8: 1.0}
    for budget in (0.12, 0.2, 0.31, 0.45, 0.7, 1.0):
        feasible = [
            (k8, k4, brute_cost((8,) * k8 + (4,) * k4 + (2,) * (steps - k8 - k4), macs, "cfg"))
            for k8 in range(steps + 1)
            for k4 in range(steps + 1 - k8)
        ]
        feasible = [f for f in feasible if f[2] <= budget * steps * 20.0 + 1e-9]
        best = min(feasible, key=lambda f: (f[0], -f[2]))
        r = plan(budget, steps, macs)
        assert (r.patch_per_step.count(8), r.patch_per_step.count(4)) == best[:2], budget
        assert r.macs == pytest.approx(best[2])
