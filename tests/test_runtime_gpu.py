"""The runtime on a GPU: CUDA graphs in one shared pool, graph vs eager parity, GPU vs CPU samples, the
event timing and the stream discipline. Run on the device machine: pytest -q -m gpu tests/test_runtime_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from array_kernels import philox_normal
from runtime_helpers import reference_samples, rel_error, tiny_model

from flexidit_trt.engines.options import EngineOptions
from flexidit_trt.runtime import native, pipeline_from_model

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available() or not native.has_cuda():
    pytest.skip("needs a CUDA GPU and the extension's CUDA kernels", allow_module_level=True)

LABELS = [1, 2, 3, 4, 5]


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 parity needs fp32 math: no TF32 in cuBLAS or cuDNN (the patch embedding is a convolution)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("guidance, budget", [("cfg", 0.5), ("weak_to_strong", 0.6), ("none", 0.5)])
def test_gpu_graphs_equal_reference_loop(model, guidance, budget):
    """fp32 on the GPU in CUDA graphs (batches of 2) vs the float64 CPU reference loop on all 5 images:
    the same Philox noise on both devices, so the samples agree to float rounding."""
    ref, patches = reference_samples(model, LABELS, budget=budget, steps=40, guidance=guidance, seed=7)
    with pipeline_from_model(model, device="cuda", engine=EngineOptions(precision="fp32")) as pipe:
        result = pipe.generate(LABELS, budget=budget, steps=40, guidance=guidance, seed=7, batch_size=2)
    assert tuple(result.record["plan"]["patch_per_step"]) == patches
    assert rel_error(result.samples, ref) < 1e-4


def test_graphs_share_one_pool_and_match_eager(model):
    kw = dict(budget=0.5, steps=30, seed=3, batch_size=4)
    with pipeline_from_model(model, device="cuda", engine=EngineOptions(precision="bf16")) as graphed:
        a = graphed.generate(LABELS, **kw)
        pools = {id(b.pool) for b in graphed.backends.values()}
        captured = {p: b.describe()["captured_batches"] for p, b in graphed.backends.items()}
    with pipeline_from_model(
        model, device="cuda", engine=EngineOptions(precision="bf16", cuda_graphs=False)
    ) as eager:
        b = eager.generate(LABELS, **kw)
    assert len(pools) == 1
    assert captured == {2: [2, 8], 4: [2, 8]}  # CFG batches of 4 and of the last 1 image
    assert a.record["backend"]["engines"][0]["out_dtype"] == "bfloat16"
    # The same kernels replayed: bf16 forwards, identical inputs, so (nearly) identical samples.
    assert rel_error(a.samples, b.samples) < 1e-3


def test_separate_pools_hold_more_memory(model):
    """One pool per engine (for comparison) reserves at least what the shared pool does."""
    peaks = {}
    for shared in (True, False):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with pipeline_from_model(model, device="cuda", engine=EngineOptions(shared_pool=shared)) as pipe:
            pipe.generate(list(range(10)) * 3, budget=0.5, steps=5, seed=0)
            peaks[shared] = torch.cuda.max_memory_reserved()  # the graphs are alive here
    assert peaks[True] <= peaks[False]


def test_gpu_record_has_event_timing_and_memory(model):
    with pipeline_from_model(model, device="cuda") as pipe:
        rec = pipe.generate(LABELS, budget=0.5, steps=50, seed=0).record
    timing = rec["timing"]
    assert timing["clock"] == "cuda events"
    assert 0 < timing["forward_ms_sum"] < timing["loop_ms"] <= 1e3 * timing["total_wall_s"]
    assert set(timing["by_patch"]) == {"2", "4"}
    mem = rec["memory"]
    assert mem["arena_bytes"] > 0 and mem["torch_peak_reserved_bytes"] > 0
    assert mem["peak_device_bytes"] >= mem["arena_bytes"]
    assert isinstance(rec["gpu"], dict) and rec["gpu"].get("name")


def test_gpu_and_cpu_pipelines_agree(model):
    """The same seed gives the same samples on CPU and GPU (fp32, no TF32), batches of different sizes."""
    with (
        pipeline_from_model(model, device="cpu") as cpu,
        pipeline_from_model(model, device="cuda", engine=EngineOptions(precision="fp32")) as gpu,
    ):
        a = cpu.generate(LABELS, budget=0.5, steps=30, seed=5, batch_size=5).samples
        b = gpu.generate(LABELS, budget=0.5, steps=30, seed=5, batch_size=3).samples
    assert rel_error(b, a) < 1e-4


def test_philox_offset_on_gpu_matches_cpu():
    full = np.empty(1024, np.float32)
    philox_normal(full, 9, 4, offset=512)
    dev = torch.empty(1024, device="cuda")
    philox_normal(dev, 9, 4, offset=512)
    torch.cuda.synchronize()
    assert np.array_equal(dev.cpu().numpy(), full)


def test_torch_compile_in_graphs(model):
    with pipeline_from_model(
        model, device="cuda", engine=EngineOptions(precision="fp32", compile=True)
    ) as pipe:
        a = pipe.generate(LABELS[:2], budget=0.5, steps=10, seed=1).samples
    with pipeline_from_model(model, device="cuda", engine=EngineOptions(precision="fp32")) as pipe:
        b = pipe.generate(LABELS[:2], budget=0.5, steps=10, seed=1).samples
    assert rel_error(a, b) < 1e-4
