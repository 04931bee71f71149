"""`flexidit-trt bench` on a GPU: CUDA-event timing, the measured rates, NVML facts and the graph-pool
memory comparison, on a tiny model (the DiT-XL numbers come from benchmarks/bench_gpu.sh)."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from flexidit_trt.bench import BenchOptions, run_bench  # noqa: E402
from flexidit_trt.bench.measure import EventClock, TimingOptions, time_calls  # noqa: E402
from flexidit_trt.bench.results import read_results  # noqa: E402
from flexidit_trt.runtime import native  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (native.has_cuda() and native.cuda_device_count() > 0 and torch.cuda.is_available()),
        reason="needs a CUDA GPU and the extension built with CUDA",
    ),
]


def test_event_timing_matches_the_host_clock() -> None:
    """Events between back-to-back calls on one stream time each call: their median × calls agrees with
    the host's clock around the same calls with one synchronisation."""
    from flexidit_trt.engines import cuda

    stream = cuda.Stream("cuda:0")
    torch_stream = torch.cuda.ExternalStream(stream.handle, device="cuda:0")

    def spin() -> None:
        with torch.cuda.stream(torch_stream):
            torch.cuda._sleep(2_000_000)  # ~1 ms of spinning at ~2 GHz

    stats = time_calls(spin, EventClock(stream), TimingOptions(runs=20, warmup=2))
    start = time.perf_counter()
    for _ in range(20):
        spin()
    stream.synchronize()
    host_ms = (time.perf_counter() - start) * 1e3
    stream.close()
    assert stats.runs == 20 and stats.spread < 0.1
    assert stats.median_ms * 20 == pytest.approx(host_ms, rel=0.15)


def test_tiny_bench_on_the_gpu(tmp_path) -> None:
    opts = BenchOptions(
        model="dit_s",
        overrides={"depth": 2, "hidden_size": 128, "num_heads": 2},
        image_size=64,
        backends=("torch-eager", "trt"),
        batch_sizes=(1, 4),
        budgets=(0.5,),
        steps=8,
        device="cuda",
        precision="bf16",
        out=tmp_path,
        repeats=2,
        timing=TimingOptions(runs=20, warmup=2),
    )
    run = run_bench(opts, say=lambda line: None)
    docs = {d["backend"]: read_results(p) for d, p in zip(run.docs, run.paths, strict=True)}
    hw = docs["torch-eager"]["hardware"]
    assert hw["gpu"]["name"] and hw["gpu"]["memory_total_bytes"] > 0
    assert (
        isinstance(hw["gpu"]["clocks"], dict) and hw["gpu"]["clocks"]["sm_max_mhz"] > 0
    )  # nvidia-ml-py there
    assert hw["matmul_peak"]["per_s"] > 1e13 and hw["copy_bandwidth"]["per_s"] > 1e11  # any datacenter GPU
    assert docs["reference"]["status"] == "ok"
    if docs["trt"]["status"] == "not run":
        assert "TensorRT" in docs["trt"]["reason"] or "engines" in docs["trt"]["reason"]
    eager = docs["torch-eager"]
    assert eager["status"] == "ok", eager["reason"]
    assert {(f["patch_size"], f["batch"]) for f in eager["forwards"]} == {(2, 2), (4, 2), (2, 8), (4, 8)}
    assert all(f["over_floor"] > 1.0 for f in eager["forwards"])  # nothing beats the measured floor
    memory = eager["memory"]
    # Two engines' graphs: one shared pool holds less than one pool each (seen on the CPU machine: n/a).
    assert 0 < memory["shared_pool_bytes"] <= memory["pool_per_engine_bytes"]
    for t in eager["trajectories"]:
        assert t["memory"]["peak_device_bytes"] > 0 and t["speedup_vs_reference"] > 0
