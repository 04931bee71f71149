"""`bench report`'s projections onto GPUs not measured (bench/projection.py, bench/report_projected.py):
a synthetic profile projected by hand, the measured GPU onto itself, profiles refused, and the report's
labels and check on the committed H200 aoti run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from flexidit_trt.artifacts import ManifestError
from flexidit_trt.bench.projection import (
    SKUS,
    Sku,
    project_document,
    project_trajectory,
    read_measured,
    split_step,
)
from flexidit_trt.bench.report import build_report

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
H200_AOTI = RESULTS / "nvidia-h200" / "2026-12-01-aoti.json"
H200_FLASH = RESULTS / "nvidia-h200" / "2026-12-01-torch-flash.json"
SOURCE = Sku("src", "Source", "GPU S", matrix_tflops=1000.0, bandwidth_tbs=4.0)
SLOW = Sku("slow", "Slow", "GPU L", matrix_tflops=500.0, bandwidth_tbs=2.0)
FAST = Sku("fast", "Fast", "GPU F", matrix_tflops=2000.0, bandwidth_tbs=8.0)


def profile(patch: int, images: int, busy_us: float, **us: float) -> dict:
    by = {
        c: {"us_per_forward": us.get(c, 0.0)}
        for c in ("gemm", "attention", "norm_elementwise", "copies", "other")
    }
    return {
        "patch_size": patch,
        "images": images,
        "batch": 2 * images,
        "busy_us_per_forward": busy_us,
        "by_category": by,
    }


# p2: 8,000 µs of device time, 6,000 of it matrix (GEMM 5,000 + attention 1,000), busy 8 ms of a 9 ms step.
# p4: 3,000 µs of kernels, 2,000 matrix, overlapping into 2.7 ms busy of a 3 ms step.
P2 = profile(2, 8, 8000.0, gemm=5000.0, attention=1000.0, norm_elementwise=1500.0, copies=400.0, other=100.0)
P4 = profile(4, 8, 2700.0, gemm=1500.0, attention=500.0, norm_elementwise=1000.0)
TRAJECTORY = {
    "images": 8,
    "budget": 0.5,
    "steps_by_patch": {"2": 84, "4": 166},
    "step_ms_by_patch": {"2": 9.0, "4": 3.0},
    "wall_s": 84 * 9e-3 + 166 * 3e-3 + 0.05,  # 50 ms outside the steps
}


def test_a_synthetic_profile_projects_to_the_hand_computed_times() -> None:
    p2, p4 = split_step(9.0, P2), split_step(3.0, P4)
    assert (p2.matrix_ms, p2.memory_ms, p2.rest_ms) == pytest.approx((6.0, 2.0, 1.0))
    assert (p4.matrix_ms, p4.memory_ms, p4.rest_ms) == pytest.approx((1.8, 0.9, 0.3))
    # Half the peak and half the bandwidth: matrix and memory-bound time double, the rest stays.
    assert p2.on(SOURCE, SLOW).total_ms == pytest.approx(12.0 + 4.0 + 1.0)
    assert p4.on(SOURCE, FAST).total_ms == pytest.approx(0.9 + 0.45 + 0.3)
    out = project_trajectory(TRAJECTORY, {(2, 8): P2, (4, 8): P4}, SOURCE, [SLOW, FAST])
    # 84 × 17 ms + 166 × 5.7 ms + 50 ms; 84 × 5 ms + 166 × 1.65 ms + 50 ms.
    assert out["projected_s"] == pytest.approx({"slow": 2.4242, "fast": 0.7439})
    assert out["measured_s"] == TRAJECTORY["wall_s"]
    assert out["steps"]["4"]["projected_ms"]["slow"] == pytest.approx(5.7)


@pytest.mark.parametrize("path", [H200_AOTI, H200_FLASH], ids=["aoti", "torch-flash"])
def test_projecting_onto_the_measured_gpu_returns_the_measurement(path: Path) -> None:
    doc = json.loads(path.read_text())
    proj = project_document(doc, targets=(SKUS["h200-sxm"],))
    assert proj["source"] == "h200-sxm" and len(proj["trajectories"]) == len(doc["trajectories"]) == 4
    for t, measured in zip(proj["trajectories"], doc["trajectories"], strict=True):
        assert t["projected_s"]["h200-sxm"] == pytest.approx(measured["wall_s"], rel=1e-12)
        for p, step in t["steps"].items():
            assert step["projected_ms"]["h200-sxm"] == pytest.approx(
                measured["step_ms_by_patch"][p], rel=1e-12
            )
    # Onto a slower GPU every trajectory takes longer, onto a faster one less.
    proj = project_document(doc)
    for t in proj["trajectories"]:
        assert t["projected_s"]["a100-80gb-sxm"] > t["measured_s"] > t["projected_s"]["b200"]


def test_runs_that_cannot_be_projected_say_why() -> None:
    doc = json.loads(H200_AOTI.read_text())
    # A profile whose busy time explains only 70% of the step lost kernels: refused, not held constant.
    short = profile(2, 8, 7000.0, gemm=7000.0)
    with pytest.raises(Exception, match="covers 70% of the measured step"):
        split_step(10.0, short)
    for change, reason in [
        (lambda d: d.pop("profiles"), "no per-kernel profile"),
        (lambda d: d["hardware"]["gpu"].update(name="NVIDIA GeForce GT 710"), "not in the SKU table"),
        (lambda d: d["hardware"].pop("gpu"), "measured on the CPU"),
        (lambda d: d["profiles"].pop(0), "no profile of patch 2 at 1 image(s)"),
    ]:
        d = json.loads(json.dumps(doc))
        change(d)
        assert reason in project_document(d)["not_projected"]


def write_check(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"env": {"gpu": "NVIDIA H100 80GB HBM3"}, "rows": rows}))


def test_the_report_labels_every_projected_number_and_checks_a_measured_run(tmp_path) -> None:
    results = tmp_path / "results"
    (results / "nvidia-h200").mkdir(parents=True)
    shutil.copy(H200_AOTI, results / "nvidia-h200")
    steps = {"2": {"steps": 84, "step_ms_median": 9.0}, "4": {"steps": 166, "step_ms_median": 3.0}}
    row = {"backend": "aoti", "budget": 0.5, "images": 8, "wall_s": 1.3, "by_patch": steps}
    write_check(
        results / "runtime" / "runtime_gpu.json", [row, {**row, "backend": "reference", "by_patch": {}}]
    )
    report = build_report(results, tmp_path / "out")
    text, data = report.markdown, json.loads(report.json_path.read_text())
    projected = data["projected"]
    section = text[text.index("## Projected") : text.index("## Plots")]
    assert "projected" in section.splitlines()[0].lower()
    assert "projected" not in text[: text.index("## Projected")].lower()  # nothing projected before it

    # The check: the projection onto the H100 against the 1.3 s written above.
    proj = next(t for t in project_document(json.loads(H200_AOTI.read_text()))["trajectories"]
                if (t["images"], t["budget"]) == (8, 0.5))  # fmt: skip
    expected = proj["projected_s"]["h100-sxm"] / 1.3 - 1
    aoti, ref = projected["check"]["rows"]
    assert aoti["error"] == pytest.approx(expected) and "not_projected" in ref
    assert aoti["step_error"]["2"] == pytest.approx(proj["steps"]["2"]["projected_ms"]["h100-sxm"] / 9.0 - 1)
    assert f"{proj['projected_s']['h100-sxm']:.3f} s projected" in section
    assert f"error {100 * expected:+.1f}%" in section

    # Every projected number in the section sits in a column whose header says "projected".
    values = {f"{t['projected_s'][k]:.3f}" for r in projected["runs"] if "trajectories" in r
              for t in r["trajectories"] for k in t["projected_s"]}  # fmt: skip
    seen, header = set(), None
    for line in section.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
            continue
        for name, cell in zip(header, cells, strict=True):
            if cell in values:
                seen.add(cell)
                assert "projected" in name, (name, cell)
    assert seen == values
    # In the JSON every projected number is under "projected" and named so.
    assert set(data) == {"kind", "schema", "projected"}
    keys = re.findall(r'"(\w*projected\w*)"', report.json_path.read_text())
    assert set(keys) <= {"projected", "projected_s", "projected_ms", "not_projected"}


def test_a_measurement_of_another_shape_is_refused(tmp_path) -> None:
    bad = tmp_path / "runtime_gpu.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ManifestError, match="not a runtime measurement"):
        read_measured(bad)
