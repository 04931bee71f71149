"""benchmarks/runtime_gpu.py's plumbing on the CPU with a tiny model (reference loop and torch eager, a few
steps), so the GPU run is known to write its JSON and table before it starts. The GPU-only stages
(AOTInductor subprocesses, torch.compile, the pool memory) ran once here by hand with --tiny on the CPU
up to the point where the aoti pipeline needs a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexidit_trt.bench.reference import load_module

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "runtime_gpu.py"


@pytest.mark.slow
def test_tiny_cpu_run_writes_rows_ratios_and_table(tmp_path, capsys, monkeypatch):
    """10 s measured here (a shared, busy 2-core machine)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # the script sets its own
    script = load_module(SCRIPT)
    argv = [str(tmp_path / "out"), "--device", "cpu", "--tiny", "--model", "dit_s", "--steps", "4"]
    argv += [
        "--reps",
        "1",
        "--stages",
        "eager,reference",
        "--precision",
        "fp32",
        "--scratch",
        str(tmp_path / "s"),
    ]
    assert script.main(argv) == 0
    results = json.loads((tmp_path / "out" / "runtime_gpu.json").read_text())
    assert results["errors"] == {}
    rows = {(r["backend"], r["budget"], r["images"]): r for r in results["rows"]}
    assert set(rows) == {
        ("reference", 1.0, 8),
        ("reference", 1.0, 1),
        *(("torch-eager", b, n) for b in (1.0, 0.5) for n in (8, 1)),
    }
    eager = rows[("torch-eager", 0.5, 8)]
    assert eager["speedup_vs_reference"] == rows[("reference", 1.0, 8)]["wall_s"] / eager["wall_s"]
    assert eager["loop_ms"] >= eager["forward_ms_sum"] > 0
    assert 0 < eager["achieved_fraction"] <= 0.5
    targets = results["summary"]["targets"]
    assert targets["fastest_budget_0.5_8_images_vs_reference"]["backend"] == "torch-eager"
    assert targets["torch-eager_budget_0.5_over_1.0_8_images"]["ratio"] == round(
        eager["wall_s"] / rows[("torch-eager", 1.0, 8)]["wall_s"], 3
    )
    table = (tmp_path / "out" / "runtime_gpu.md").read_text()
    assert "| torch-eager | 0.5 | 8 |" in table and "| reference | - | 1 |" in table
    assert capsys.readouterr().out.rstrip().endswith(table.rstrip())  # the table is printed last
