"""FP8 GEMMs (`model.fp8`, the torch-fp8 bench variant): quantization, the GEMM against a float64 reference,
where a layer takes FP8 and where it keeps its plain weight, and an engine of the embedded default model.

torch._scaled_mm runs on the CPU here with the same per-row / per-channel scales as on a GPU; its speed on
the GPU is what the lever is for and is measured by the bench, never here."""

from __future__ import annotations

import pytest
import torch

from flexidit_trt.bench.backends import TORCH_VARIANTS, backend_label
from flexidit_trt.default_model import default_model
from flexidit_trt.engines.backend import RunOptionError
from flexidit_trt.engines.options import EngineOptions
from flexidit_trt.engines.torch_backend import TorchBackend
from flexidit_trt.model.fp8 import E4M3_MAX, FP8_MIN_ROWS, check_fp8, fp8_linear, quantize_rows
from flexidit_trt.model.layers import LoRALinear


def test_quantize_rows_maps_each_row_maximum_to_e4m3_max_and_round_trips_within_its_precision():
    x = torch.randn(64, 96, dtype=torch.float64) * torch.logspace(-3, 3, 64, dtype=torch.float64)[:, None]
    x[5] = 0.0  # an all-zero row: zeros back, no NaN
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1) and scale.dtype == torch.float32
    back = q.double() * scale.double()
    assert torch.all(back[5] == 0) and torch.isfinite(back).all()
    peak = q.double().abs().amax(dim=1)
    assert torch.all(peak[torch.arange(64) != 5] == E4M3_MAX)
    # e4m3 keeps 3 mantissa bits: a normal value is off by at most half a step, 2^-4 of itself; values
    # below its smallest normal (2^-6 of the scale unit) are off by at most half of the subnormal step.
    err = (back - x).abs()
    bound = torch.maximum(x.abs() * 2.0**-4, scale.double() * 2.0**-10)
    assert torch.all(err <= bound * 1.0001)


def test_fp8_linear_matches_the_dequantized_product_and_stays_near_the_exact_one():
    torch.manual_seed(0)
    w = torch.randn(384, 256, dtype=torch.float64) * 0.05
    b = torch.randn(384, dtype=torch.float64) * 0.1
    x = torch.randn(3, 500, 256, dtype=torch.float64)
    wq, ws = quantize_rows(w)
    out = fp8_linear(x.to(torch.bfloat16), wq, ws.t().contiguous(), b.to(torch.bfloat16))
    assert out.shape == (3, 500, 384) and out.dtype == torch.bfloat16
    # What _scaled_mm is asked for, in float64: the quantized operands, their scales, the bias.
    xq, xs = quantize_rows(x.to(torch.bfloat16).reshape(-1, 256))
    wanted = (xq.double() * xs.double()) @ (wq.double() * ws.double()).t() + b.to(torch.bfloat16).double()
    got = out.double().reshape(-1, 384)
    assert (
        (got - wanted).norm() / wanted.norm()
    ).item() < 4e-3  # measured 0.0017: the bf16 output's rounding
    exact = x.reshape(-1, 256) @ w.t() + b
    rel = ((got - exact).norm() / exact.norm()).item()
    assert 0.01 < rel < 0.05  # measured 0.037: e4m3 on both operands, far from bf16's 0.003


def test_a_layer_takes_fp8_from_its_row_threshold_on_and_never_with_an_adapter():
    torch.manual_seed(1)
    layer = LoRALinear(64, 128).to(torch.bfloat16)
    layer.add_adapter("p4", rank=4)
    layer.lora.to(torch.bfloat16)
    plain = LoRALinear(64, 128).to(torch.bfloat16)
    plain.load_state_dict(layer.state_dict(), strict=False)
    layer.use_fp8(min_rows=256)
    small, large = torch.randn(2, 100, 64).bfloat16(), torch.randn(2, 128, 64).bfloat16()
    assert not layer.runs_fp8(small) and layer.runs_fp8(large) and not layer.runs_fp8(large, "p4")
    with torch.no_grad():
        assert torch.equal(layer(small), torch.nn.functional.linear(small, layer.weight, layer.bias))
        fp8 = fp8_linear(large, layer.fp8_weight, layer.fp8_scale, layer.bias)
        assert torch.equal(layer(large), fp8)
        assert not torch.equal(fp8, torch.nn.functional.linear(large, layer.weight, layer.bias))
        assert torch.equal(layer(large, "p4"), plain(large, "p4"))  # adapters keep the plain path
    assert "fp8_weight" not in layer.state_dict()  # derived, never saved


@pytest.mark.usefixtures("one_torch_thread")
def test_default_model_engine_in_fp8_stays_near_the_fp32_one_and_below_the_threshold_is_bf16():
    model, _ = default_model()
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([999, 600, 300, 20])
    y = torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        exact = model.static(2)(x, t, y).double()
        bf16 = model.static(2, dtype=torch.bfloat16)(x.bfloat16(), t, y).double()
        fp8 = model.static(2, dtype=torch.bfloat16, fp8_min_rows=0)(x.bfloat16(), t, y).double()
        above = model.static(2, dtype=torch.bfloat16, fp8_min_rows=4 * 256 + 1)(x.bfloat16(), t, y)

    def rel(a):
        return ((a - exact).norm() / exact.norm()).item()

    assert torch.equal(above.double(), bf16)  # 4 images × 256 tokens: below the threshold, plain bf16
    assert rel(bf16) < 0.012 and rel(fp8) < 0.045  # measured 0.0072 and 0.029
    assert rel(fp8) > 1.5 * rel(bf16)  # FP8 really ran


def test_engine_option_fp8_is_refused_for_fp32_and_recorded_when_on():
    model, _ = default_model()
    with pytest.raises(RunOptionError, match="bf16 or fp16 engine, not fp32"):
        TorchBackend.from_model(model, 2, EngineOptions(precision="fp32", fp8=True))
    engine = TorchBackend.from_model(model, 2, EngineOptions(precision="bf16", fp8=True, cuda_graphs=False))
    try:
        assert engine.describe()["fp8_min_rows"] == FP8_MIN_ROWS
        in_fp8 = [
            m for m in engine.fn.modules() if isinstance(m, LoRALinear) and m.fp8_min_rows == FP8_MIN_ROWS
        ]
        assert len(in_fp8) == 4 * model.config.depth  # qkv, proj, fc1, fc2 of every block
    finally:
        engine.close()
    assert check_fp8("bf16", "cpu") is None and "fp16" in check_fp8("fp32", "cpu")
    with pytest.raises(ValueError, match="bf16 or fp16 model"):
        model.static(2, fp8_min_rows=0)  # fp32


def test_a_layer_whose_widths_fp8_cannot_take_stays_plain():
    odd = LoRALinear(72, 200).to(torch.bfloat16)  # 200 is not a multiple of 16
    assert not odd.use_fp8(min_rows=0) and odd.fp8_min_rows is None
    x = torch.randn(4, 72).bfloat16()
    assert not odd.runs_fp8(x)
    with torch.no_grad():
        assert torch.equal(odd(x), torch.nn.functional.linear(x, odd.weight, odd.bias))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_linear_on_the_gpu_matches_the_float64_reference(dtype):
    if not torch.cuda.is_available() or check_fp8("bf16", "cuda") is not None:
        pytest.skip("needs a CUDA GPU of compute capability 8.9 or newer")
    torch.manual_seed(3)
    w = torch.randn(4608, 1152, dtype=torch.float64) * 0.02  # DiT-XL's fc1
    b = torch.randn(4608, dtype=torch.float64) * 0.1
    x = torch.randn(16_384, 1152, dtype=torch.float64)
    wq, ws = quantize_rows(w.to(dtype).cuda())
    out = fp8_linear(x.to(dtype).cuda(), wq, ws.t().contiguous(), b.to(dtype).cuda()).double().cpu()
    xq, xs = quantize_rows(x.to(dtype).reshape(-1, 1152))
    wanted = (xq.double() * xs.double()) @ (wq.cpu().double() * ws.cpu().double()).t() + b.to(dtype).double()
    assert ((out - wanted).norm() / wanted.norm()).item() < 4e-3


def test_torch_fp8_bench_variant_is_torch_flash_plus_fp8():
    fp8, flash = TORCH_VARIANTS["torch-fp8"], TORCH_VARIANTS["torch-flash"]
    assert fp8 == {**flash, "fp8": True} and not any(
        v["fp8"] for k, v in TORCH_VARIANTS.items() if k != "torch-fp8"
    )
    assert f"{FP8_MIN_ROWS} rows in FP8" in backend_label("torch-fp8", "cuda")
