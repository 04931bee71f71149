"""End-to-end trajectories of one backend: each (images, budget) timed, and its speedups over the static
model and the reference loop."""

from __future__ import annotations

import time

from ..runtime import Pipeline
from .measure import summarize
from .session import Session


def trajectories(session: Session, name: str, pipe: Pipeline, images: int) -> list[dict]:
    out = []
    for budget in session.options.budgets:
        out.append(trajectory(session, pipe, images, budget))
        session.say(
            f"{name}: {images} images, budget {budget}: {out[-1]['wall_s']:.3f} s ({out[-1]['plan']})"
        )
    return out


def trajectory(session: Session, pipe: Pipeline, images: int, budget: float) -> dict:
    """One (images, budget): a warm-up call (captures the CUDA graphs, compiles), then `repeats` timed
    ones (the first call's seconds kept as `cold_s`). Wall time is the record's, from the call to the samples on the host (the record's own
    bookkeeping after that, package versions and NVML, is not sampling); the whole call beside it."""
    opts, labels = session.options, session.labels(images)
    start = time.perf_counter()
    session.generate(pipe, labels, budget)
    cold_s = time.perf_counter() - start  # the first call: compiles and captures what this shape needs
    calls, walls = [], []
    for _ in range(opts.repeats):
        start = time.perf_counter()
        result = session.generate(pipe, labels, budget)
        calls.append((time.perf_counter() - start) * 1e3)
        walls.append(result.record["timing"]["total_wall_s"] * 1e3)
    stats = summarize(walls)
    record = result.record
    timing = record["timing"]
    patches = record["plan"]["patch_per_step"]
    wall_s = stats.median_ms / 1e3
    return {
        "images": images,
        "budget": budget,
        "plan": record["plan"]["summary"],
        "cold_s": cold_s,
        "weak_steps": sum(p != min(session.config.patch_sizes) for p in patches),
        "achieved_fraction": record["plan"]["achieved_fraction"],
        "wall": stats.to_dict(),
        "wall_s": wall_s,
        "call": summarize(calls).to_dict(),
        "images_per_s": images / wall_s,
        "loop_ms": timing["loop_ms"],
        "forward_ms_sum": timing["forward_ms_sum"],
        "loop_overhead_fraction": timing["loop_overhead_fraction"],
        "outside_loop_ms": timing["total_wall_s"] * 1e3 - timing["loop_ms"],
        "step_ms_by_patch": {p: v["step_ms_median"] for p, v in timing["by_patch"].items()},
        "steps_by_patch": {p: v["steps"] for p, v in timing["by_patch"].items()},
        "memory": record["memory"],
    }


def add_speedups(trajectories: list[dict], reference_wall: dict[int, float]) -> None:
    """Add each trajectory's speedup over the static model (budget 1.0, same backend and images) and over
    the reference loop (same images, same run)."""
    static = {t["images"]: t["wall_s"] for t in trajectories if t["budget"] == 1.0}
    for t in trajectories:
        t["speedup_vs_static"] = static[t["images"]] / t["wall_s"]
        ref = reference_wall.get(t["images"])
        t["speedup_vs_reference"] = ref / t["wall_s"] if ref else None


def fastest_diffusers(docs: list[dict]) -> dict[int, dict]:
    """Per image count, the faster of this run's diffusers-compiled results (fp16 or bf16; the median):
    {images: {backend, wall_s, cold_s}}."""
    best: dict[int, dict] = {}
    for doc in docs:
        if doc["status"] != "ok" or not doc["backend"].startswith("diffusers-compiled-"):
            continue
        for t in doc["trajectories"]:
            if t["images"] not in best or t["wall_s"] < best[t["images"]]["wall_s"]:
                best[t["images"]] = {"backend": doc["backend"], "wall_s": t["wall_s"], "cold_s": t["cold_s"]}
    return best


def add_diffusers_speedups(trajectories: list[dict], fastest: dict[int, dict]) -> None:
    """Each trajectory's speedup over the fastest diffusers-compiled run at the same image count (None when
    none ran), with that run's name, median and first-call seconds beside it."""
    for t in trajectories:
        peer = fastest.get(t["images"])
        t["speedup_vs_diffusers"] = peer["wall_s"] / t["wall_s"] if peer else None
        t["diffusers"] = peer
