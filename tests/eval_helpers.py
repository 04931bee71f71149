"""A RunResult with made-up metrics, for tests of the report and the targets (no sampling)."""

from __future__ import annotations

from flexidit_trt.evaluation.results import RunResult


def run_result(
    series: str = "flexify",
    cfg_scale: float = 1.5,
    budget: float = 1.0,
    seed: int = 0,
    fid: float = 10.0,
    classifier_fd: float | None = None,
    class_accuracy: float = 0.9,
) -> RunResult:
    """classifier_fd None: fid / 10."""
    return RunResult(
        **dict(series=series, guidance="cfg", cfg_scale=cfg_scale, budget=budget, seed=seed),
        **dict(achieved_fraction=budget, plan="plan", steps=4, num_samples=4),
        **dict(fid=fid, classifier_fd=fid / 10 if classifier_fd is None else classifier_fd),
        **dict(kid=1e-3, kid_std=1e-4, precision=0.5, recall=0.5, class_accuracy=class_accuracy),
        **dict(generate_seconds=1.0, images_per_second=4.0),
    )
