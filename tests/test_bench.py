"""`flexidit-trt bench` on the CPU: statistics, floors, the results format, the report merge, the CLI's
bad inputs, and one real tiny run through the CLI (ort and torch-eager backends, the reference loop)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from flexidit_trt.artifacts import ManifestError
from flexidit_trt.bench.floors import against_floor, forward_floor, forward_flops, weight_bytes
from flexidit_trt.bench.measure import TimingOptions, summarize, time_calls
from flexidit_trt.bench.options import BenchOptions
from flexidit_trt.bench.report import build_report
from flexidit_trt.bench.results import find_results, read_results, step_seconds, write_results
from flexidit_trt.bench.time_plans import time_plans
from flexidit_trt.cli import main
from flexidit_trt.diffusion import plan
from flexidit_trt.diffusion.time_planner import plan_for_time
from flexidit_trt.model import FlexiDiT, get_config
from flexidit_trt.model.macs import forward_macs
from flexidit_trt.runtime import pipeline_from_model

TINY = {"depth": 2, "hidden_size": 64, "num_heads": 2}
TINY_ARGS = [
    "--model",
    "dit_s",
    "--image-size",
    "64",
    *[a for k, v in TINY.items() for a in ("--override", f"{k}={v}")],
]
# A config small enough to count by hand: 1 block, d = 8, 2 heads, latent 4x4, 4 channels, 10 classes.
HAND = get_config("dit_s", depth=1, hidden_size=8, num_heads=2, input_size=4, num_classes=10)


# -- statistics ----------------------------------------------------------------------------------------------
def test_summary_statistics() -> None:
    stats = summarize([float(v) for v in range(20, 0, -1)])  # 20 .. 1, unsorted on purpose
    assert stats.runs == 20 and stats.median_ms == 10.5 and stats.mean_ms == 10.5
    assert (stats.min_ms, stats.max_ms) == (1.0, 20.0)
    # numpy's linear interpolation: position 0.25·19 = 4.75 between the 5th and 6th values.
    assert stats.p25_ms == pytest.approx(5.75) and stats.p75_ms == pytest.approx(15.25)
    assert stats.iqr_ms == pytest.approx(9.5) and stats.spread == pytest.approx(9.5 / 10.5)
    assert summarize([3.0]).median_ms == 3.0
    for bad in ([], [1.0, float("nan")], [1.0, -2.0]):
        with pytest.raises(ValueError):
            summarize(bad)


class StepClock:
    """A clock on simulated time: each call of the timed function advances it by the next duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def mark(self) -> float:
        return self.now

    def elapsed_ms(self, start: float, end: float) -> float:
        return end - start

    def wait(self) -> None:
        pass

    def release(self, mark: float) -> None:
        pass


def test_time_calls_times_each_call_after_the_warmup() -> None:
    clock, durations = StepClock(), iter([100.0, 100.0] + [float(v) for v in range(1, 21)])

    def call() -> None:
        clock.now += next(durations)

    stats = time_calls(call, clock, TimingOptions(runs=20, warmup=2))
    assert stats.runs == 20 and stats.max_ms == 20.0 and stats.min_ms == 1.0  # the 100 ms warm-ups excluded
    assert stats.median_ms == 10.5


def test_timing_options_need_twenty_runs() -> None:
    with pytest.raises(ValueError, match="timed runs must be an int >= 20"):
        TimingOptions(runs=19)
    with pytest.raises(ValueError, match="warm-up runs"):
        TimingOptions(warmup=0)


# -- floors --------------------------------------------------------------------------------------------------
def test_floor_arithmetic_by_hand() -> None:
    # MACs of one image at patch 2 (4 tokens, d = 8, MLP 32, out 8 channels):
    #   embed 4·(4·2·2)·8 = 512; timestep 256·8 + 8·8 = 2112;
    #   block 4·4·8·8 + 2·4·4·8 + 4·2·8·32 + 8·6·8 = 1024 + 256 + 2048 + 384 = 3712;
    #   final 8·2·8 + 4·8·(2·2·8) = 128 + 1024 = 1152;  total 7488.
    assert forward_macs(HAND, 2) == 7488
    assert forward_flops(HAND, 2, batch=2) == 2 * 7488 * 2
    # Parameters of static(2): patch embed 8·4·2·2 + 8 = 136; t-MLP 256·8 + 8 + 8·8 + 8 = 2128; labels 11·8 = 88;
    #   positions 4·8 = 32; block qkv 216 + proj 72 + fc1 288 + fc2 264 + adaLN 432 = 1272 (norms have no
    #   weights); final linear 8·32 + 32 = 288 + adaLN 144 = 432. Total 4088.
    assert weight_bytes(HAND, 2, "fp32") == 4 * 4088
    assert weight_bytes(HAND, 2, "bf16") == 2 * 4088
    assert weight_bytes(HAND, 2, "fp16") == 2 * 840 + 4 * (
        4088 - 840
    )  # attention + MLP halved, the rest fp32
    floor = forward_floor(HAND, 2, 2, weight_bytes(HAND, 2, "bf16"), peak_flops_per_s=1e12, bytes_per_s=1e9)
    assert floor.compute_ms == pytest.approx(29952 / 1e12 * 1e3)
    assert floor.memory_ms == pytest.approx(8176 / 1e9 * 1e3)
    assert floor.bound == "memory" and floor.floor_ms == floor.memory_ms
    got = against_floor(floor, measured_ms=2 * floor.floor_ms, peak_flops_per_s=1e12)
    assert got["over_floor"] == pytest.approx(2.0)
    assert got["tflops"] == pytest.approx(29952 / (2 * 8176e-9) / 1e12)
    assert got["peak_fraction"] == pytest.approx(got["tflops"] * 1e12 / 1e12)


def test_dit_xl_floors_at_h100_class_peaks() -> None:
    # At 790 TFLOP/s bf16 and ~3.0 TB/s (an H100's class): p2 at batch 16 has a floor near 4.8 ms, and reading the
    # 1.35 GB of bf16 weights takes ~0.45 ms.
    xl = get_config("dit_xl")
    assert forward_macs(xl, 2) == pytest.approx(118.6e9, rel=5e-3)
    wb = weight_bytes(xl, 2, "bf16")
    assert wb == pytest.approx(1.35e9, rel=5e-3)
    big = forward_floor(xl, 2, 16, wb, 790e12, 3.0e12)
    assert big.bound == "compute" and big.floor_ms == pytest.approx(4.8, rel=0.01)
    small = forward_floor(xl, 4, 2, weight_bytes(xl, 4, "bf16"), 790e12, 3.0e12)
    assert small.bound == "memory" and small.floor_ms == pytest.approx(0.45, rel=0.01)


# -- the time planner inside the bench -----------------------------------------------------------------------
def test_time_plans_pick_weak_steps_from_latency_and_run_them() -> None:
    """Step latency as if measured (a p4 step 60% of a p2 step), the chosen schedule run for real."""
    model = FlexiDiT.from_config("dit_s", init="random", depth=1, hidden_size=32, num_heads=2, input_size=8)
    macs = {p: model.macs(p) for p in model.patch_sizes}
    k_macs = plan(0.75, 10, macs).weak_steps
    measured = [
        {"images": 1, "budget": 1.0, "weak_steps": 0, "wall_s": 0.011, "outside_loop_ms": 1.0,
         "step_ms_by_patch": {"2": 1.0}, "steps_by_patch": {"2": 10}},
        {"images": 1, "budget": 0.75, "weak_steps": k_macs, "wall_s": 0.011 - 4e-4 * k_macs, "outside_loop_ms": 1.0,
         "step_ms_by_patch": {"2": 1.0, "4": 0.6}, "steps_by_patch": {"2": 10 - k_macs, "4": k_macs}},
    ]  # fmt: skip
    pipe, calls = pipeline_from_model(model, device="cpu"), []

    def run(images: int, budget: float) -> dict:
        calls.append(budget)
        record = pipe.generate([3] * images, budget=budget, steps=10).record
        return {
            "wall_s": record["timing"]["total_wall_s"],
            "weak_steps": record["plan"]["patch_per_step"].count(4),
        }

    options = BenchOptions(model="dit_s", batch_sizes=(1,), budgets=(0.75,), steps=10, device="cpu")
    (entry,) = time_plans(measured, options, macs, run)
    # Static: 1 ms outside + 10 × 1 ms = 11 ms; 75% is 8.25 ms: 1 + 0.6·k + (10 − k) <= 8.25 → k = 7.
    assert entry["weak_steps"] == 7 and k_macs < 7
    assert entry["predicted_fraction"] == pytest.approx((1 + 0.6 * 7 + 3) / 11)
    assert entry["macs_plan_predicted_fraction"] == pytest.approx((1 + 0.6 * k_macs + 10 - k_macs) / 11)
    assert entry["macs_plan_measured_fraction"] == pytest.approx(1 - 4e-4 * k_macs / 0.011)
    assert len(calls) == 1 and entry["measured_weak_steps"] == 7  # the chosen schedule, run once
    assert plan(calls[0], 10, macs).weak_steps == 7


# -- one real tiny run (shared by the tests below) -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """Run the CLI on an empty workdir (the bench exports ort's graphs itself): ort, torch-eager, trt and
    aoti (these two say why not), and the reference loop, two batch sizes, budgets 1.0 and 0.5, 6 steps."""
    root = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on a shared CI machine
    try:
        args = [
            "bench", *TINY_ARGS, "--backends", "ort,torch-eager,trt,aoti", "--batch-sizes", "2,1", "--budgets",
            "0.5", "--steps", "6", "--device", "cpu", "--workdir", str(root), "--out", str(root / "results"),
            "--repeats", "2", "--forward-runs", "20", "--warmup", "2",
        ]  # fmt: skip
        result = CliRunner().invoke(main, args)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "result": result, "files": find_results(root / "results")}


@pytest.mark.slow
def test_tiny_bench_run_writes_valid_results(tiny_run) -> None:
    result = tiny_run["result"]
    assert result.exit_code == 0, result.output
    docs = {d["backend"]: d for d in map(read_results, tiny_run["files"])}
    assert set(docs) == {"reference", "ort", "torch-eager", "trt", "aoti"}
    assert {p.parent.name for p in tiny_run["files"]} == {docs["ort"]["machine"]}
    assert docs["trt"]["status"] == "not run" and "TensorRT is not installed here" in docs["trt"]["reason"]
    assert docs["aoti"]["status"] == "not run" and "CUDA GPU" in docs["aoti"]["reason"]
    assert "forwards" not in docs["trt"] and "trajectories" not in docs["aoti"]  # no numbers for them
    for name in ("ort", "torch-eager"):
        d = docs[name]
        assert d["status"] == "ok" and d["reason"] is None
        assert d["options"]["budgets"] == [1.0, 0.5]  # the static model added as the baseline
        runs = {(t["images"], t["budget"]): t for t in d["trajectories"]}
        assert set(runs) == {(1, 1.0), (1, 0.5), (2, 1.0), (2, 0.5)}
        for (images, budget), t in runs.items():
            assert t["weak_steps"] == (5 if budget == 0.5 else 0)  # plan(0.5, 6 steps): p4×5 → p2×1
            assert t["wall"]["runs"] == 2 and t["wall_s"] > 0
            assert t["images_per_s"] == pytest.approx(images / t["wall_s"])
            static = runs[(images, 1.0)]["wall_s"]
            assert t["speedup_vs_static"] == pytest.approx(static / t["wall_s"])
            reference = next(r for r in docs["reference"]["trajectories"] if r["images"] == images)
            assert t["speedup_vs_reference"] == pytest.approx(reference["wall_s"] / t["wall_s"])
            assert set(t["step_ms_by_patch"]) == ({"2"} if budget == 1.0 else {"2", "4"})
        forwards = {(f["patch_size"], f["batch"]): f for f in d["forwards"]}
        assert set(forwards) == {(2, 2), (4, 2), (2, 4), (4, 4)}  # CFG: two rows per image
        for (p, batch), f in forwards.items():
            assert f["stats"]["runs"] == 20 and f["stats"]["median_ms"] > 0
            assert f["floor"]["flops"] == 2 * d["model"]["macs_by_patch"][str(p)] * batch
            assert f["over_floor"] == pytest.approx(f["stats"]["median_ms"] / f["floor"]["floor_ms"])
        assert "CPU" in d["memory"]["not_measured"]
        assert {t["images"] for t in d["time_plans"]} == {1, 2}
        for t in d["time_plans"]:  # a choice with its prediction and its measured run, or why none fits
            if "unreachable" not in t:
                assert t["predicted_fraction"] <= 0.5 + 1e-9 and t["measured_weak_steps"] == t["weak_steps"]
                assert t["measured_fraction"] > 0
        # The results feed the time planner: measured step latency per patch size.
        step_s = step_seconds(d, 2)
        assert step_s == {int(p): ms / 1e3 for p, ms in runs[(2, 1.0)]["step_ms_by_patch"].items()} | {
            4: runs[(2, 0.5)]["step_ms_by_patch"]["4"] / 1e3
        }
        macs = {int(p): m for p, m in d["model"]["macs_by_patch"].items()}
        assert plan_for_time("100%", 6, step_s, macs).plan.weak_steps == 0
    hw = docs["ort"]["hardware"]
    assert hw["gpu"] == "no GPU" and hw["matmul_peak"]["per_s"] > 0 and hw["copy_bandwidth"]["per_s"] > 0
    assert docs["ort"]["run_id"] == docs["reference"]["run_id"]  # one run, one id
    assert "not run: TensorRT is not installed here" in result.output  # the printed table
    table = [line for line in result.output.splitlines() if line.startswith("| ") and "× static" in line]
    rows = [line for line in result.output.splitlines() if "| trt | not run:" in line]
    assert table and rows and rows[0].count("|") == table[0].count("|")  # as many cells as the header
    # No prior `build`: the bench exported ort's graphs itself, at its precision, and kept the cost.
    built = docs["ort"]["build"]
    assert built["precision"] == "fp32" == docs["ort"]["model"]["precision"]
    assert built["folder"] == str(tiny_run["root"] / "export" / "dit_s")
    assert [(g["patch_size"], g["rebuilt"]) for g in built["graphs"]] == [(2, True), (4, True)]
    assert 0 < sum(g["export_seconds"] for g in built["graphs"]) <= built["seconds"]
    assert f"exported 2 graph(s) under {built['folder']} in {built['seconds']:.1f} s" in result.output
    assert docs["torch-eager"]["build"] is None  # nothing to build for the torch backends
    assert docs["ort"]["engines"][0]["providers"] == ["CPUExecutionProvider"]


@pytest.mark.slow
def test_a_second_bench_reuses_the_graphs_it_exported(tiny_run, tmp_path) -> None:
    """The same workdir again (ort only, the smallest grid): the graphs are opened as they are, not
    exported again, and the run still reports trajectories."""
    assert tiny_run["result"].exit_code == 0, tiny_run["result"].output
    folder = tiny_run["root"] / "export" / "dit_s"
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in folder.iterdir()}
    args = [
        "bench", *TINY_ARGS, "--backends", "ort", "--no-reference", "--batch-sizes", "1", "--budgets", "1.0",
        "--steps", "2", "--device", "cpu", "--workdir", str(tiny_run["root"]), "--out", str(tmp_path),
        "--repeats", "1", "--forward-runs", "20", "--warmup", "1",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(main, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    (doc,) = map(read_results, find_results(tmp_path))
    assert doc["backend"] == "ort" and doc["status"] == "ok" and doc["build"] is None
    assert [(t["images"], t["budget"]) for t in doc["trajectories"]] == [(1, 1.0)]
    assert "exporting" not in result.output
    assert {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in folder.iterdir()} == before


@pytest.mark.slow
def test_report_merges_machines_and_keeps_the_newest(tiny_run, tmp_path) -> None:
    """Files written by the tool itself, re-written by its own writer as a second machine (every wall time
    halved) and as an older run of the first machine (which the report must pass over)."""
    docs = [read_results(p) for p in tiny_run["files"]]
    results = tmp_path / "results"
    for doc in docs:
        write_results(doc, results)
        other = json.loads(json.dumps(doc))
        other["machine"] = "sku-b"
        for t in other.get("trajectories", []):
            t["wall_s"] /= 2
        write_results(other, results)
        old = json.loads(json.dumps(doc))
        old.update(
            date="2000-01-01", created="2000-01-01T00:00:00+00:00", status="failed", reason="an old run"
        )
        write_results(old, results)
    # A later run on sku-b that could not run ort (say its graphs were not built that time).
    ort = next(d for d in docs if d["backend"] == "ort")
    later = {**ort, "machine": "sku-b", "date": "2099-01-01", "created": "2099-01-01T00:00:00+00:00"}
    later.update(status="not run", reason="no graphs that day")
    for key in ("forwards", "trajectories", "memory", "time_plans"):
        later.pop(key)
    write_results(later, results)
    machine = docs[0]["machine"]
    report = build_report(results)
    assert len(report.files) == 3 * len(docs) + 1
    text = report.markdown
    assert report.markdown_path.read_text() == text
    assert "an old run" not in text  # superseded by the newer run of the same machine and backend
    assert "no graphs that day" not in text  # a later run without numbers does not hide earlier ones
    for m in (machine, "sku-b"):
        assert f"| {m} | trt | not run: TensorRT is not installed here |" in text
        assert f"| {m} | ort | 1 | 0.5 | 5 |" in text
    t = next(t for t in ort["trajectories"] if t["images"] == 1 and t["budget"] == 0.5)
    assert f"| {machine} | ort | 1 | 0.5 | 5 | {t['wall_s']:.3f} ± " in text
    assert f"| sku-b | ort | 1 | 0.5 | 5 | {t['wall_s'] / 2:.3f} ± " in text
    assert {p.name for p in report.plots} == {
        f"latency-vs-budget-{machine}.png",
        "latency-vs-budget-sku-b.png",
        "speedup-vs-reference.png",
    }
    for p in report.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({p.name})" in text
    out = CliRunner().invoke(
        main, ["bench", "report", "--results", str(results), "--out", str(tmp_path / "r")]
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "r" / "REPORT.md").read_text() == text


def test_report_marks_a_noisy_reference(tiny_run, tmp_path) -> None:
    """A reference whose runs spread by more than 10% is marked with their range: every × reference taken
    from it is that uncertain (the H200's 1-image reference once ran 3.57, 5.22 and 6.57 s)."""
    docs = [read_results(p) for p in tiny_run["files"]]
    ref = next(d for d in docs if d["backend"] == "reference")
    wall = ref["trajectories"][0]["wall"]
    wall.update(min_ms=3570.0, p25_ms=4393.0, median_ms=5217.0, p75_ms=5893.0, max_ms=6569.0)
    wall.update(iqr_ms=1500.0, spread=1500.0 / 5217.0)
    results = tmp_path / "results"
    for doc in docs:
        write_results(doc, results)
    text = build_report(results).markdown
    images = ref["trajectories"][0]["images"]
    wall_s = ref["trajectories"][0]["wall_s"]
    assert (
        f"| {ref['machine']} | reference | {images} | — | — | {wall_s:.3f} ± 1.500 (noisy: runs 3.570–6.569 s) |"
        in text
    )
    wall.update(p25_ms=5100.0, p75_ms=5300.0, iqr_ms=200.0, spread=200.0 / 5217.0)  # 3.8%: not marked
    write_results(ref, results)
    row = f"| {ref['machine']} | reference | {images} | — | — | {wall_s:.3f} ± 0.200 |"
    assert row in build_report(results).markdown


def test_every_backend_has_a_label_on_either_device() -> None:
    from flexidit_trt.bench.backends import BACKENDS, backend_label

    for device in ("cpu", "cuda"):
        labels = [backend_label(name, device) for name in BACKENDS]
        assert len(set(labels)) == len(BACKENDS) and all(labels), device


# -- the results format --------------------------------------------------------------------------------------
def test_results_reader_refuses_other_files(tiny_run, tmp_path) -> None:
    doc = read_results(tiny_run["files"][0])
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "2026-01-01-torch.json").write_text(json.dumps({**doc, "schema": 99}))
    with pytest.raises(ManifestError, match="field 'schema' is 99"):
        read_results(bad / "2026-01-01-torch.json")
    # A document that did not run does not replace the same day's file that did.
    ok = next(read_results(p) for p in tiny_run["files"] if read_results(p)["status"] == "ok")
    kept = write_results(ok, tmp_path)
    assert write_results({**ok, "status": "failed", "reason": "later"}, tmp_path) is None
    assert read_results(kept) == ok
    kept.unlink()
    with pytest.raises(ManifestError, match="lacks field"):
        write_results({k: v for k, v in doc.items() if k != "hardware"}, tmp_path)
    with pytest.raises(ManifestError, match="needs a reason"):
        write_results({**doc, "status": "not run", "reason": None}, tmp_path)
    with pytest.raises(ManifestError, match="Out of range float"):
        write_results({**doc, "trajectories": [{"wall_s": float("nan")}]}, tmp_path)
    assert find_results(tmp_path) == [bad / "2026-01-01-torch.json"]  # the refused documents left no file


# -- bad inputs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--backends", "tensorrt"],
            "expected some of trt, aoti, torch, torch-premod, torch-fused, torch-flash, torch-tuned, torch-fp8, torch-eager, ort",
        ),
        (["--batch-sizes", "0"], "positive integers"),
        (["--budgets", "1.5"], "in (0, 1]"),
        (["--budgets", "0.1"], "lowest reachable budget"),
        (["--steps", "0"], "x>=1"),
        (["--forward-runs", "5"], "x>=20"),
        (["--override", "depth"], "expected KEY=VALUE"),
        (["--override", "depth=two"], "must be a number"),
        (["--model", "dit_huge"], "unknown model config"),
        (["--device", "cuda:7"], "device cuda:7 is not available"),
        (["--device", "tpu"], "device must be cpu, cuda or cuda:N"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(tmp_path, args, message) -> None:
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["bench", *TINY_ARGS, "--steps", "4", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_options_with_report_are_refused() -> None:
    result = CliRunner().invoke(main, ["bench", "--steps", "10", "report"])
    assert result.exit_code == 2 and "options steps belong to the measurement" in result.output


def test_report_without_results_or_with_a_stray_file(tmp_path) -> None:
    result = CliRunner().invoke(main, ["bench", "report", "--results", str(tmp_path)])
    assert result.exit_code == 1 and "no results files under" in result.output
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.json").write_text("{}")  # not named as a result: not read
    result = CliRunner().invoke(main, ["bench", "report", "--results", str(tmp_path)])
    assert result.exit_code == 1 and "no results files under" in result.output
    (tmp_path / "m" / "2026-01-01-torch.json").write_text("{}")  # named as one: must be one
    result = CliRunner().invoke(main, ["bench", "report", "--results", str(tmp_path)])
    assert result.exit_code == 1 and "2026-01-01-torch.json" in result.output and "'kind'" in result.output


def test_unwritable_out_fails_before_measuring(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a path under a file cannot be created, whoever runs the test
    result = CliRunner().invoke(main, ["bench", *TINY_ARGS, "--steps", "4", "--out", str(blocker / "r")])
    assert result.exit_code == 1 and "cannot write to" in result.output, result.output
    assert "model:" not in result.output  # nothing was loaded or measured


def test_report_skips_other_json_beside_the_results(tiny_run, tmp_path) -> None:
    """benchmarks/results also holds run records and the eval's results.json: `bench report` reads only
    the files named as results."""
    root = tmp_path / "results"
    shutil.copytree(tiny_run["root"] / "results", root)  # the fixture's folder is shared by other tests
    files = [root / p.relative_to(tiny_run["root"] / "results") for p in tiny_run["files"]]
    machine = files[0].parent
    (machine / "run_budget0.5_cpu.record.json").write_text(json.dumps({"kind": "flexidit-trt/run-record"}))
    (root / "eval").mkdir()
    (root / "eval" / "results.json").write_text("{}")
    assert find_results(root) == files
    report = build_report(root, tmp_path / "report")
    assert report.files == files and "| reference |" in report.markdown
