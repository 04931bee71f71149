"""Issue 9's engine levers besides the precomputed modulation (tests/test_precompute_modulation.py):
- the GELU epilogue: each MLP's fc1 + tanh-GELU as one `aten._addmm_activation` call, which CUDA runs as one
  cuBLASLt GEMM with a bias + GELU epilogue. On the CPU the same op applies the exact GELU, so the model keeps
  the epilogue to CUDA; these tests pin that guard, the plumbing (static model, torch backend, pipeline,
  bench), and on a GPU the numerics against float64 and the compiled code;
- flash attention first in engines of few tokens (`Attention.sdpa_backends`: every kernel but cuDNN's)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from flexidit_trt.engines.aoti import AotiOptions
from flexidit_trt.engines.options import EngineOptions
from flexidit_trt.engines.torch_backend import TorchBackend
from flexidit_trt.model import FlexiDiT, gelu_epilogue_default
from flexidit_trt.model.levers import FLASH_FIRST, resolve_levers
from flexidit_trt.runtime import pipeline_from_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(**overrides) -> FlexiDiT:
    torch.manual_seed(0)
    config = dict(depth=2, hidden_size=64, num_heads=2, input_size=8, patch_sizes=(2, 4), lora_rank=4)
    model = FlexiDiT.from_config("dit_s", init="random", **{**config, **overrides})
    for module in model.modules():  # zero-initialised adaLN would make every block the identity
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.05)
    return model.eval()


def _inputs(batch: int, dtype: torch.dtype, device: str = "cpu", size: int = 8):
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 4, size, size, generator=gen, dtype=torch.float64).to(device, dtype)
    t = torch.linspace(999.0, 3.0, batch, dtype=torch.float64).to(device, dtype)
    return x, t, torch.arange(batch, device=device) % 1001


def test_the_cpu_op_is_the_exact_gelu_so_the_model_keeps_the_epilogue_to_cuda() -> None:
    x, w, b = (
        torch.randn(16, 8, dtype=torch.float64),
        torch.randn(32, 8, dtype=torch.float64),
        torch.randn(32),
    )
    b = b.double()
    fused = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    h = x @ w.t() + b
    assert torch.allclose(fused, F.gelu(h), rtol=1e-12, atol=1e-12)  # erf, not tanh, on the CPU
    assert (fused - F.gelu(h, approximate="tanh")).abs().max() > 1e-5  # DiT's tanh GELU differs measurably

    model = _model().double()
    plain, fused_model = model.static(4), model.static(4, gelu_epilogue=True)
    assert all(b.mlp.gelu_epilogue for b in fused_model.blocks) and not any(
        b.mlp.gelu_epilogue for b in plain.blocks
    )
    x, t, y = _inputs(3, torch.float64)
    with torch.no_grad():
        assert torch.equal(fused_model(x, t, y), plain(x, t, y))  # on the CPU: the ordinary path, bit for bit


def test_the_levers_resolve_per_engine() -> None:
    """One rule for every engine kind: CUDA only; the epilogue by default in half precision (fp32 keeps the
    parity path); flash and max-autotune only in engines of ≤ 64 tokens (where flash measured faster and
    the GEMMs ran furthest from peak), flash by default there, max-autotune (measured slower) only asked."""
    assert [gelu_epilogue_default(d, p) for d, p in [("cuda", "bf16"), ("cuda:1", "fp16")]] == [True, True]
    assert [gelu_epilogue_default(d, p) for d, p in [("cuda", "fp32"), ("cpu", "bf16")]] == [False, False]
    assert resolve_levers("cuda:0", "fp32", 64, True, True, True) == (True, True, True)  # asked: on in fp32
    assert resolve_levers("cuda:0", "bf16", 65, None, True, True) == (True, False, False)  # too many tokens
    assert resolve_levers("cuda", "bf16", 16, False, False) == (False, False, False)  # autotune: off unasked
    assert resolve_levers("cuda", "bf16", 16, False, False, True) == (False, False, True)
    assert resolve_levers("cpu", "bf16", 16, True, True, True) == (False, False, False)  # never on the CPU
    assert resolve_levers("cuda", "bf16", 64, None, None) == (True, True, False)  # the defaults: flash on,
    assert resolve_levers("cuda", "bf16", 256, None, None) == (True, False, False)  # where tokens are few
    assert resolve_levers("cuda", "fp16", 64, None, None) == (True, True, False)
    assert resolve_levers("cuda", "fp32", 64, None, None) == (False, False, False)  # fp32: no flash kernel
    assert resolve_levers("cpu", "fp32", 16, None, None) == (False, False, False)


def test_backend_pipeline_and_bench_carry_the_options(monkeypatch) -> None:
    """What pipeline_from_model is asked reaches each engine's static model (the CPU would settle both
    levers off, so the rule is replaced by one that keeps what was asked: the plumbing is under test)."""
    import flexidit_trt.engines.torch_backend as torch_backend

    monkeypatch.setattr(
        torch_backend, "resolve_levers", lambda _d, _p, n, g, f, a: (bool(g), f and n <= 16, a and n <= 16)
    )
    made, static = [], FlexiDiT.static
    monkeypatch.setattr(
        FlexiDiT, "static", lambda self, *a, **k: made.append(static(self, *a, **k)) or made[-1]
    )
    pipe = pipeline_from_model(
        _model(),
        engine=EngineOptions(
            precision="fp32", gelu_epilogue=True, flash_attention=True, precompute_modulation=True
        ),
    )
    try:
        assert [m.config.patch_size for m in made] == [2, 4]  # input 8: p2 has 16 tokens, p4 has 4
        for module in made:
            assert all(b.mlp.gelu_epilogue and b.attn.sdpa_backends == FLASH_FIRST for b in module.blocks)
        assert all(
            e.describe()["gelu_epilogue"] and e.describe()["flash_attention"] for e in pipe.backends.values()
        )
        assert "fc1 + GELU in one GEMM at patch 2/4, flash attention at patch 2/4" in pipe.selection.reason
        assert (
            pipe.generate([1, 2], budget=0.5, steps=4).samples.shape[0] == 2
        )  # runs (the CPU's ordinary math)
    finally:
        pipe.close()
    monkeypatch.undo()
    engine = TorchBackend.from_model(
        _model(), 2, options=EngineOptions(gelu_epilogue=True, flash_attention=True)
    )  # the real rule
    assert engine.describe()["gelu_epilogue"] is False and engine.describe()["flash_attention"] is False

    assert AotiOptions(precision="bf16").resolved().gelu_epilogue is True
    assert AotiOptions(precision="fp32").resolved().gelu_epilogue is False
    assert AotiOptions(precision="bf16", gelu_epilogue=False).resolved().gelu_epilogue is False

    from flexidit_trt.bench.backends import BACKENDS, TORCH_VARIANTS

    assert set(TORCH_VARIANTS) <= set(BACKENDS)
    # each lever adds to the one before: neighbouring columns differ by exactly one option
    names = ["torch-eager", "torch", "torch-premod", "torch-fused", "torch-flash", "torch-tuned"]
    for before, after in itertools.pairwise(names):
        changed = {
            k
            for k in {*TORCH_VARIANTS[before], *TORCH_VARIANTS[after]}
            if TORCH_VARIANTS[before][k] != TORCH_VARIANTS[after][k]
        }
        assert len(changed) == 1, (before, after, changed)


def test_run_and_the_python_api_leave_the_levers_to_the_rule(monkeypatch) -> None:
    """`pipeline_from_model` and `run`'s default pipeline ask for no lever, so each engine gets the rule's
    defaults (the GELU epilogue and flash where they measured faster, no autotune)."""
    import flexidit_trt.engines.torch_backend as torch_backend
    from flexidit_trt.runtime.run import RunOptions, open_pipeline

    asked, rule = [], torch_backend.resolve_levers
    monkeypatch.setattr(torch_backend, "resolve_levers", lambda *a: asked.append(a[3:]) or rule(*a))
    with pipeline_from_model(_model()):
        pass
    with open_pipeline(RunOptions(device="cpu")):
        pass
    assert asked == [(None, None, False)] * 4  # two engines each


def test_autotune_compiles_only_the_engines_of_few_tokens_with_max_autotune(monkeypatch) -> None:
    """torch.compile is asked for inductor's max-autotune (without inductor's own CUDA graphs: the engine
    replays its own) in the engines the rule picks, and only when compiling at all."""
    import flexidit_trt.engines.torch_backend as torch_backend

    monkeypatch.setattr(  # the CPU would settle autotune off: keep what was asked for ≤ 4 tokens (patch 4)
        torch_backend, "resolve_levers", lambda _d, _p, n, g, f, a: (bool(g), False, a and n <= 4)
    )
    modes = []
    monkeypatch.setattr(torch_backend.torch, "compile", lambda fn, **kw: modes.append(kw.get("mode")) or fn)
    pipe = pipeline_from_model(_model(), engine=EngineOptions(precision="fp32", compile=True, autotune=True))
    try:
        assert modes == [None, "max-autotune-no-cudagraphs"]  # patch 2 (16 tokens), patch 4 (4 tokens)
        assert [e.describe()["autotune"] for e in pipe.backends.values()] == [False, True]
        assert "max-autotune at patch 4" in pipe.selection.reason
    finally:
        pipe.close()
    eager = TorchBackend.from_model(
        _model(), 4, options=EngineOptions(autotune=True)
    )  # nothing to tune without compile
    assert eager.describe()["autotune"] is False


def test_attention_priority_runs_the_same_attention() -> None:
    """The priority list is a kernel choice, not different math: on the CPU (flash first picks the CPU flash
    kernel) the forward stays within float32 rounding of the dispatcher's choice."""
    model = _model()
    plain, flash = model.static(4), model.static(4, sdpa_backends=FLASH_FIRST)
    assert all(b.attn.sdpa_backends == FLASH_FIRST for b in flash.blocks)
    assert all(b.attn.sdpa_backends is None for b in plain.blocks)
    x, t, y = _inputs(3, torch.float32)
    with torch.no_grad():
        want, got = plain(x, t, y), flash(x, t, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


# -- on a GPU -------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flash_first_only_in_engines_of_few_tokens_and_compiled_with_it() -> None:
    from torch._inductor.utils import run_and_get_code

    model = _model(hidden_size=256, num_heads=4, input_size=32)  # p4: 64 tokens, p2: 256
    engine = EngineOptions(precision="bf16", flash_attention=True, cuda_graphs=False)  # no pool needed
    few = TorchBackend.from_model(model, 4, engine, device="cuda")
    many = TorchBackend.from_model(model, 2, engine, device="cuda")
    assert few.describe()["flash_attention"] is True and many.describe()["flash_attention"] is False
    net = model.static(4, dtype=torch.bfloat16, sdpa_backends=FLASH_FIRST).cuda()
    x, t, y = _inputs(4, torch.float32, "cuda", size=32)
    torch._dynamo.reset()
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(net, fullgraph=True, dynamic=False), x, t, y)
        want = model.static(4, dtype=torch.bfloat16).cuda()(x, t, y)
    assert "_scaled_dot_product_flash_attention" in "\n".join(code)
    torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


@pytest.mark.parametrize("patch_size", [2, 4])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_forward_with_the_epilogue_is_as_close_to_float64_as_without(patch_size: int) -> None:
    """The epilogue applies GELU to the fp32 accumulator before rounding to bf16 (the ordinary path rounds
    first), so its error against float64 should be no larger; and it must differ from the ordinary path,
    or the epilogue did not run."""
    model = _model(hidden_size=256, num_heads=4, input_size=16)
    x, t, y = _inputs(4, torch.float64, "cuda", size=16)
    with torch.no_grad():
        want = model.double().static(patch_size).cuda()(x, t, y)
        outs = {}
        for fused in (False, True):
            net = model.float().static(patch_size, dtype=torch.bfloat16, gelu_epilogue=fused).cuda()
            outs[fused] = net(x.float(), t.float(), y).double()
    errors = {k: float((v - want).abs().max() / want.abs().max()) for k, v in outs.items()}
    assert not torch.equal(outs[True], outs[False])
    assert errors[True] <= 1.1 * errors[False], errors  # bf16: ~1e-2 relative either way


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_forward_keeps_one_addmm_activation_per_block() -> None:
    """Inductor has no decomposition for `_addmm_activation` and falls back to the ATen op (the cuBLASLt
    call): the compiled code must hold one per block, or the compile split the epilogue off again."""
    from torch._inductor.utils import run_and_get_code

    model = _model(hidden_size=256, num_heads=4, input_size=16, depth=3)
    net = model.static(2, dtype=torch.bfloat16, gelu_epilogue=True).cuda()
    x, t, y = _inputs(4, torch.float32, "cuda", size=16)
    torch._dynamo.reset()
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(net, fullgraph=True, dynamic=False), x, t, y)
        want = net(x, t, y)
    source = "\n".join(code)
    assert source.count("torch.ops.aten._addmm_activation.default(") == 3, source[:2000]  # depth 3
    torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
