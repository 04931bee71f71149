"""`flexidit-trt bench --profile`: the kernel categories and the limit verdict on real kernel names, an
end-to-end profile of a tiny FlexiDiT forward on the CPU, the CLI and report with --profile, and (GPU
marker) a profile on CUDA where the kernels must be seen."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from flexidit_trt.bench.profile import (
    CATEGORIES,
    categorize,
    kernel_category,
    limit_verdict,
    profile_forward,
)
from flexidit_trt.bench.report import build_report, markdown
from flexidit_trt.bench.results import find_results, read_results
from flexidit_trt.cli import main
from flexidit_trt.model import FlexiDiT
from flexidit_trt.model.layers import LoRALinear

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Kernel names as torch.profiler and Nsight Systems print them (demangled). Where they come from:
# - cuBLAS on an H100 (sm90_xmma_..._cublas, nvjet_tst_... from cuBLAS 12.8+ / 13), on an A100 (ampere_...,
#   cutlass_80_...), its gemv and split-K reduction kernels: cuBLAS/cuBLASLt kernels as printed in H100 and
#   A100 nsys / torch.profiler tables (vLLM and diffusers profiling write-ups);
# - FlashAttention-2 as vendored in PyTorch (aten/src/ATen/native/transformers/cuda/flash_attn:
#   pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<...cutlass::bfloat16_t...>>), the memory-efficient
#   kernel (mem_eff_attention/kernels/cutlassF.h: fmha_cutlassF_bf16_aligned_64x128_rf_sm80) and cuDNN's SDPA
#   (cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x...);
# - Inductor's kernels (torch/_inductor: triton_{poi,per,red}_fused_<origin ops>_<n>, matmul templates
#   triton_tem_fused_<ops>_<n>), including a pre-attention pointwise kernel named after the SDPA it feeds
#   (Wan 2.2 under torch.compile: triton_poi_fused__scaled_dot_product_flash_attention_add_mul_permute_...);
# - ATen's CUDA kernels (vectorized_layer_norm_kernel, vectorized_elementwise_kernel<GeluCUDAKernelImpl>,
#   reduce_kernel, direct_copy_kernel_cuda, CatArrayBatchedCopy, indexSelectLargeIndex) and CUPTI's copies;
# - CPU ops as this profiler records them on the CPU (aten::...).
REAL_KERNELS = [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas", "gemm"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "gemm"),
    ("nvjet_tst_64x8_64x16_2x1_v_bz_splitK_TNT", "gemm"),
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn", "gemm"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>"
     "(cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8::Params)", "gemm"),
    ("void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, float, 128, 16, 4, 4, false, false>", "gemm"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, false, false>", "gemm"),
    ("triton_tem_fused_addmm_gelu_1", "gemm"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1", "gemm"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, cutlass::bfloat16_t, "
     "Flash_kernel_traits<64, 128, 128, 4, cutlass::bfloat16_t> >, false, false, false, false, true, true, false, false>"
     "(pytorch_flash::Flash_fwd_params)", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t, "
     "cutlass::arch::Sm80, true, 64, 128, 64, true, true>::Params)", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_cga1x1x1_kernel0_0", "attention"),
    ("triton_per_fused_native_layer_norm_1", "norm_elementwise"),
    ("triton_red_fused_add_mul_native_layer_norm_unsqueeze_0", "norm_elementwise"),
    ("triton_poi_fused__scaled_dot_product_flash_attention_add_mul_permute_stack_sub_unbind_view", "norm_elementwise"),
    ("triton_poi_fused_cat_3", "norm_elementwise"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float, "
     "c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, c10::BFloat16*)", "norm_elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
     "at::native::GeluType)::{lambda()#2}::operator()() const::{lambda(c10::BFloat16)#1}, "
     "at::detail::Array<char*, 2> >(int, at::detail::Array<char*, 2>)", "norm_elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, float, "
     "float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float, at::native::MeanOps<float, float, float, "
     "float>, unsigned int, float, 4, 4>)", "norm_elementwise"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)"
     "::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::{lambda(float)#1}, "
     "at::detail::Array<char*, 2>, 4, TrivialOffsetCalculator<1, unsigned int>>", "copies"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType<2>, "
     "unsigned int, 3, 128, 1>", "copies"),
    ("Memcpy HtoD (Pageable -> Device)", "copies"),
    ("Memset (Device)", "copies"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true, "
     "(cudnnKernelDataType_t)0>(cudnn::engines_precompiled::nchw2nhwc_params_t<float>, __nv_bfloat16 const*, "
     "__nv_bfloat16*)", "copies"),
    ("void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, 2, -2, true>", "other"),
    ("void at::native::(anonymous namespace)::upsample_bilinear2d_out_frame<float, float>", "other"),  # no "linear"
    ("aten::addmm", "gemm"),
    ("aten::_addmm_activation", "gemm"),
    ("aten::bmm", "gemm"),
    ("aten::linear", "gemm"),
    ("aten::mkldnn_convolution", "gemm"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::native_layer_norm", "norm_elementwise"),
    ("aten::gelu", "norm_elementwise"),
    ("aten::add", "norm_elementwise"),
    ("aten::add_", "norm_elementwise"),
    ("aten::copy_", "copies"),
    ("aten::cat", "copies"),
    ("aten::view", "other"),
    ("aten::embedding", "other"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "category"), REAL_KERNELS)
def test_kernel_category_of_real_names(name: str, category: str) -> None:
    assert kernel_category(name) == category


def test_categorize_sums_each_category() -> None:
    rows = [
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", 70.0),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 1.0),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", 20.0),
        ("triton_per_fused_native_layer_norm_1", 5.0),
        ("triton_per_fused_native_layer_norm_1", 2.0),
        ("Memcpy DtoD (Device -> Device)", 1.5),
    ]
    assert categorize(rows) == {
        "gemm": 71.0,
        "attention": 20.0,
        "norm_elementwise": 7.0,
        "copies": 1.5,
        "other": 0.0,
    }
    assert categorize([]) == dict.fromkeys(CATEGORIES, 0.0)


@pytest.mark.parametrize(
    ("busy", "by_category", "on_gpu", "verdict"),
    [
        # The device idles 62% of the wall: nothing a kernel does matters as much.
        (0.38, {"gemm": 90.0, "norm_elementwise": 10.0}, True, "launch-bound: device busy 38% of wall"),
        (0.95, {"gemm": 71.0, "attention": 9.0, "norm_elementwise": 20.0}, True,
         "GEMM-bound: 71% of device time in GEMMs (busy 95% of wall)"),
        (0.9, {"gemm": 40.0, "attention": 15.0, "norm_elementwise": 45.0}, True,
         "memory-bound elementwise: 45% in normalisation/elementwise (busy 90% of wall)"),
        (0.8, {"gemm": 30.0, "attention": 60.0, "copies": 10.0}, True,
         "attention-bound: 60% of device time in attention (busy 80% of wall)"),
        (0.8, {"copies": 50.0, "other": 10.0, "gemm": 40.0}, True, "copy-bound: 50% of device time in copies (busy 80% of wall)"),
        # Gap 40% of wall vs GEMMs 60% × 60% = 36%: the gap is the larger part.
        (0.6, {"gemm": 60.0, "norm_elementwise": 40.0}, True, "launch-bound: device busy 60% of wall"),
        # Gap 30% vs GEMMs 60% × 70% = 42%.
        (0.7, {"gemm": 60.0, "norm_elementwise": 40.0}, True, "GEMM-bound: 60% of device time in GEMMs (busy 70% of wall)"),
        # Device time measured under the profiler can exceed the unprofiled wall: busy is capped at 100%.
        (1.2, {"gemm": 100.0}, True, "GEMM-bound: 100% of device time in GEMMs (busy 100% of wall)"),
        (0.3, {"gemm": 1.0}, False, "host-bound: ops busy 30% of wall"),
        (0.9, dict.fromkeys(CATEGORIES, 0.0), True, "unknown: no device kernels were recorded"),
    ],
)  # fmt: skip
def test_limit_verdict(busy: float, by_category: dict, on_gpu: bool, verdict: str) -> None:
    assert limit_verdict(busy, by_category, on_gpu) == verdict


def _event(name: str, device: str, activity: str | None, start: float, end: float, annotation: bool = False):
    """A stand-in for the profiler's FunctionEvent with the fields the summary reads."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    return SimpleNamespace(
        name=name,
        device_type=DeviceType.CUDA if device == "cuda" else DeviceType.CPU,
        activity_type=activity,
        is_user_annotation=annotation,
        time_range=SimpleNamespace(start=start, end=end),
        self_cpu_time_total=end - start if device == "cpu" else 0.0,
    )


@pytest.mark.parametrize("with_activity", [True, False])  # False: a torch whose events lack activity_type
def test_gpu_rows_keep_kernels_and_copies_only(with_activity: bool) -> None:
    """What the device timeline holds besides kernels must not count: the mirror of a CPU range (torch.compile's
    "## Call CompiledFxGraph ##" spans every kernel it launches) and sync events."""
    from flexidit_trt.bench.profile import _rows, _union_us

    def act(kind: str) -> str | None:
        return kind if with_activity else None

    graph = "## Call CompiledFxGraph fw3evyze33 ##"
    triton = "triton_per_fused_native_layer_norm_1"
    events = [
        _event("aten::addmm", "cpu", act("cpu_op"), 0.0, 5.0),
        _event(triton, "cpu", act("cpu_op"), 5.0, 6.0),  # inductor records each Triton launch by name
        _event(graph, "cpu", act("cpu_op"), 0.0, 9.0),
        _event("ProfilerStep#1", "cpu", act("user_annotation"), 0.0, 9.0, annotation=True),
        _event("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "cuda", act("kernel"), 10.0, 30.0),
        _event("triton_per_fused_native_layer_norm_1", "cuda", act("kernel"), 25.0, 35.0),  # overlaps by 5
        _event("Memcpy DtoD (Device -> Device)", "cuda", act("gpu_memcpy"), 40.0, 42.0),
        _event(graph, "cuda", act("gpu_user_annotation"), 10.0, 42.0),
        _event("ProfilerStep#1", "cuda", act("gpu_user_annotation"), 10.0, 42.0, annotation=True),
    ]
    if with_activity:  # only a torch that names activities can tell a sync event from a kernel
        events.append(_event("Event Sync", "cuda", "cuda_sync", 42.0, 50.0))
    rows, intervals = _rows(events, on_gpu=True)
    kernels = [
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", 20.0),
        (triton, 10.0),
        ("Memcpy DtoD (Device -> Device)", 2.0),
    ]
    # Without activity types (torch 2.11 on the H200) the Triton kernel stays by its name, the mirror goes.
    assert rows == kernels
    assert _union_us(intervals) == 27.0  # 10..35 and 40..42: the overlap once
    cpu_rows, _ = _rows(events, on_gpu=False)
    assert cpu_rows == [("aten::addmm", 5.0), (triton, 1.0), (graph, 9.0)]  # CPU ops by self time


# -- profile_forward on the CPU --------------------------------------------------------------------------------
def _tiny_static(patch: int = 2) -> torch.nn.Module:
    model = FlexiDiT.from_config("dit_s", init="random", depth=2, hidden_size=64, num_heads=2, input_size=8)
    return model.static(patch)


def _inputs(batch: int, side: int = 8, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """x float32 latents, t float32 timesteps, y int64 labels: what the pipeline feeds an engine."""
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(batch, 4, side, side, generator=gen), torch.rand(batch, generator=gen) * 1000
    return tuple(v.to(device) for v in (x, t, torch.arange(batch) % 10))


def _linear_calls(module: torch.nn.Module, inputs: tuple) -> int:
    """Linear layers called in one forward, counted by hooks (each runs one aten::linear)."""
    calls = []
    hooks = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in module.modules()
        if isinstance(m, (torch.nn.Linear, LoRALinear))
    ]
    with torch.no_grad():
        module(*inputs)
    for h in hooks:
        h.remove()
    return len(calls)


def test_profile_forward_on_the_cpu_counts_per_forward() -> None:
    static, inputs = _tiny_static(), _inputs(4)
    linears = _linear_calls(static, inputs)
    assert linears == 14  # 2 blocks × (qkv, proj, fc1, fc2, adaLN) + t-embedder 2 + final adaLN and linear
    one = profile_forward(static, inputs, device="cpu", runs=1, warmup=1, top=10_000)
    three = profile_forward(static, inputs, device="cpu", runs=3, warmup=1, top=10_000)
    for prof, runs in ((one, 1), (three, 3)):
        assert prof.runs == runs and prof.activities == ("cpu",) and prof.rows == "CPU ops (self time)"
        by_name = {k.name: k for k in prof.top}
        assert by_name["aten::linear"].count == linears * runs  # the profile holds exactly `runs` forwards
        assert by_name["aten::linear"].category == "gemm"
        assert sum(k.count for k in prof.top) == prof.kernels_per_forward * runs  # top=10_000: every row
        # The categories split the device time, and each is its rows' sum.
        assert sum(prof.by_category_us.values()) == pytest.approx(prof.device_us_per_forward)
        for c in CATEGORIES:
            mine = sum(k.total_us for k in prof.top if k.category == c) / runs
            assert prof.by_category_us[c] == pytest.approx(mine)
        assert prof.busy_us_per_forward == pytest.approx(prof.device_us_per_forward)  # one thread: no overlap
        assert prof.device_us_per_forward > 0 and prof.wall_us_per_forward > 0
        assert prof.by_category_us["gemm"] > 0 and prof.by_category_us["attention"] > 0
        top = prof.top
        assert [k.total_us for k in top] == sorted((k.total_us for k in top), reverse=True)
        assert all(k.mean_us == pytest.approx(k.total_us / k.count) for k in top)
        assert prof.limit == limit_verdict(prof.busy_fraction, prof.by_category_us, on_gpu=False)
        assert "CPU run" in prof.note
    assert one.kernels_per_forward == three.kernels_per_forward  # the same ops every forward
    assert len(profile_forward(static, inputs, device="cpu", runs=2, warmup=0).top) == 15  # the default top
    doc = json.loads(json.dumps(three.to_dict(), allow_nan=False))  # plain JSON, as the results file needs
    assert sum(v["share"] for v in doc["by_category"].values()) == pytest.approx(1.0)
    assert doc["busy_fraction"] == pytest.approx(three.busy_us_per_forward / three.wall_us_per_forward)
    linear = next(k for k in doc["top"] if k["name"] == "aten::linear")
    assert linear["per_forward"] == linears and linear["count"] == 3 * linears


@pytest.mark.parametrize(("runs", "warmup"), [(0, 1), (True, 1), (2, -1)])
def test_profile_forward_refuses_bad_counts(runs, warmup) -> None:
    with pytest.raises(ValueError, match="runs must|warmup must"):
        profile_forward(lambda: None, (), device="cpu", runs=runs, warmup=warmup)


# -- the CLI and the report ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_cli_profiles_each_engine_and_batch(tmp_path) -> None:
    out = tmp_path / "results"
    args = [
        "bench", "--model", "dit_s", "--image-size", "64", "--override", "depth=2", "--override", "hidden_size=64",
        "--override", "num_heads=2", "--backends", "torch-eager,trt", "--batch-sizes", "1,2", "--budgets", "1.0",
        "--steps", "2", "--device", "cpu", "--no-reference", "--repeats", "1", "--forward-runs", "20",
        "--warmup", "1", "--out", str(out), "--profile",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    docs = {d["backend"]: d for d in map(read_results, find_results(out))}
    eager = docs["torch-eager"]
    assert eager["status"] == "ok" and eager["options"]["profile"] is True
    profiles = {(p["patch_size"], p["batch"]): p for p in eager["profiles"]}
    assert set(profiles) == {(2, 2), (4, 2), (2, 4), (4, 4)}  # CFG: two rows per image, as the forwards
    forwards = {(f["patch_size"], f["batch"]) for f in eager["forwards"]}
    assert set(profiles) == forwards
    for (_, batch), p in profiles.items():
        assert p["images"] == batch // 2 and p["runs"] == 10 and p["activities"] == ["cpu"]
        assert p["kernels_per_forward"] > 0 and p["wall_us_per_forward"] > 0
        assert sum(c["us_per_forward"] for c in p["by_category"].values()) == pytest.approx(
            p["device_us_per_forward"]
        )
        assert len(p["top"]) == 15 and p["limit"]
    assert "profiles" not in docs["trt"]  # not run: no numbers of any kind
    assert "## Profiles" in result.output and profiles[(2, 4)]["limit"] in result.output
    assert "profile p2 batch 4" in result.output  # the progress line

    report = build_report(out).markdown
    row = f"| {eager['machine']} | torch-eager | 2 | 4 | {profiles[(2, 4)]['kernels_per_forward']:.0f} |"
    assert row in report
    assert "Eager launches, no CUDA graph" in report and "## Top 5 kernels of each profile" in report
    top = profiles[(2, 4)]["top"][0]
    assert f"| {eager['machine']} | torch-eager | 2 | 4 | 1 | `{top['name']}` | {top['category']} |" in report

    # A backend whose engines are not torch callables, and a profile that failed: said in words.
    ort = {**eager, "backend": "ort", "profiles": {"not_profiled": "the ort engines are not torch callables"}}
    failed = {
        **eager,
        "profiles": [{"patch_size": 2, "batch": 4, "images": 2, "failed": "RuntimeError: boom"}],
    }
    text = markdown([ort, failed])
    assert (
        f"| {eager['machine']} | ort | — | — | not profiled: the ort engines are not torch callables |"
        in text
    )
    assert f"| {eager['machine']} | torch-eager | 2 | 4 | failed: RuntimeError: boom |" in text


# -- on a GPU ----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_profile_forward_sees_the_kernels_on_cuda() -> None:
    model = FlexiDiT.from_config("dit_s", init="random", depth=2, hidden_size=128, num_heads=2, input_size=16)
    static = model.static(2, dtype=torch.bfloat16).to("cuda")
    inputs = _inputs(8, side=16, device="cuda")
    prof = profile_forward(static, inputs, device="cuda", runs=5, warmup=3, top=10_000)
    names = [f"{k.category}: {k.name[:100]}" for k in prof.top]
    assert prof.activities == ("cpu", "cuda") and prof.rows.startswith("CUDA kernels")
    assert prof.kernels_per_forward >= 20, names  # 2 blocks of linears, attention, norms: kernels were seen
    assert prof.kernels_per_forward == int(prof.kernels_per_forward)  # the same kernels every forward
    assert sum(k.count for k in prof.top) == prof.kernels_per_forward * prof.runs
    # The categories split the device total exactly; the busy time (overlaps once) is at most that total.
    assert sum(prof.by_category_us.values()) == pytest.approx(prof.device_us_per_forward, rel=1e-9)
    assert 0 < prof.busy_us_per_forward <= prof.device_us_per_forward * (1 + 1e-9)
    assert prof.by_category_us["gemm"] > 0 and prof.by_category_us["attention"] > 0, names
    # The named patterns cover what a DiT forward launches: little is left unnamed.
    assert prof.by_category_us["other"] < 0.25 * prof.device_us_per_forward, names
    assert "no CUDA graph" in prof.note and prof.limit.split(":")[0] in {
        "launch-bound", "GEMM-bound", "attention-bound", "memory-bound elementwise", "copy-bound", "other kernels",
    }  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_profile_forward_sees_the_triton_kernels_of_a_compiled_forward() -> None:
    """Inductor's Triton kernels are in the profile of a compiled forward beside cuBLAS's and attention's:
    every compiled engine's time by category depends on it."""
    model = FlexiDiT.from_config("dit_s", init="random", depth=2, hidden_size=128, num_heads=2, input_size=16)
    static = model.static(2, dtype=torch.bfloat16).to("cuda")
    compiled = torch.compile(static, fullgraph=True, dynamic=False)
    inputs = _inputs(8, side=16, device="cuda")
    prof = profile_forward(compiled, inputs, device="cuda", runs=3, warmup=2, top=10_000)
    names = [k.name for k in prof.top]
    assert any(n.startswith("triton_") for n in names), names
    assert prof.by_category_us["norm_elementwise"] > 0, names
