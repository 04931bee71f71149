"""The adaLN modulation computed ahead (issue 9's lever): `FlexiDiT.modulation` / `forward_modulated`, the
torch backend's `ModulationTable`, the pipeline's `begin_chunk` hook and the bench's `torch-premod`.
Compared with the ordinary forward, in float64 where the model allows it, else fp32 at measured error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_bench import TINY_ARGS  # the bench tests' tiny config

from flexidit_trt.cli import main
from flexidit_trt.engines.options import EngineOptions
from flexidit_trt.engines.torch_backend import ModulationTable, TorchBackend
from flexidit_trt.model import FlexiDiT
from flexidit_trt.runtime import pipeline_from_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(dtype: torch.dtype = torch.float32) -> FlexiDiT:
    torch.manual_seed(0)
    model = FlexiDiT.from_config(
        "dit_s",
        init="random",
        depth=2,
        hidden_size=64,
        num_heads=2,
        input_size=8,
        patch_sizes=(2, 4),
        lora_rank=4,
    )
    for layer in model.lora_layers():  # adapters that act: the weak size's modulation differs from the base's
        for param in layer.lora.parameters():
            torch.nn.init.normal_(param, std=0.05)
    return model.eval().to(dtype)


@pytest.mark.parametrize("patch_size", [2, 4])
def test_forward_modulated_is_forward_exactly(patch_size: int) -> None:
    model = _model(torch.float64)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    t, y = torch.tensor([999.0, 500.0, 3.0], dtype=torch.float64), torch.tensor([1, 2, 1000])
    with torch.no_grad():
        mod = model.modulation(t, y, patch_size)
        assert mod.shape == (3, 2 * 6 * 64 + 2 * 64)
        assert torch.equal(model.forward_modulated(x, mod, patch_size), model(x, t, y, patch_size=patch_size))
        static = model.static(patch_size)  # the engines' module: adapters folded in
        assert torch.equal(static.forward_modulated(x, static.modulation(t, y), None), static(x, t, y))
    # The weak size's adapters change its modulation: a table made for one size is not the other's.
    assert not torch.allclose(model.modulation(t, y, 2), model.modulation(t, y, 4))


def test_table_finds_each_step_and_only_grows() -> None:
    static = _model().static(4)
    width = (6 * 2 + 2) * 64
    table = ModulationTable(static.modulation_parts, width, torch.float32, "cpu")
    labels = np.array([3, 7, 1000, 1000])
    assert table.fill(np.array([999.0, 3.0, 500.0, 500.0], np.float32), labels) is True  # unsorted, repeated
    assert table.table.shape == (3, 4, width)
    assert table.fill(np.array([20.0, 10.0], np.float32), labels[:2]) is False  # fits: same storage
    assert table.fill(np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32), labels[:2]) is True  # more steps
    assert table.table.shape == (5, 4, width)  # the rows a captured bigger batch reads stay
    assert table.reserve(1, 8) is True and table.table.shape == (5, 8, width)
    assert table.reserve(5, 8) is False
    table.fill(np.array([1.0, 3.0, 5.0], np.float32), labels)
    y = torch.as_tensor(labels)
    with torch.no_grad():
        for t in (1.0, 3.0, 5.0):
            got = table.lookup(torch.full((4,), t), 4)
            torch.testing.assert_close(got, static.modulation(torch.full((4,), t), y), rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="holds 8 rows, a forward of 9"):
        table.lookup(torch.full((9,), 1.0), 9)


def test_fill_is_one_pass_for_a_whole_trajectory_and_splits_only_past_its_bound(monkeypatch) -> None:
    static = _model().static(2)
    width, passes = (6 * 2 + 2) * 64, []

    def parts(t: torch.Tensor, y: torch.Tensor):
        passes.append(t.numel())
        yield from static.modulation_parts(t, y)

    steps, labels = np.linspace(999.0, 0.0, 250, dtype=np.float32), np.arange(16) * 61 % 1001
    one = ModulationTable(parts, width, torch.float32, "cpu")
    one.fill(steps, labels)
    assert passes == [250 * 16]  # 8 images with CFG over 250 steps: one pass
    passes.clear()
    monkeypatch.setattr(ModulationTable, "ROWS_PER_PASS", 64)
    split = ModulationTable(parts, width, torch.float32, "cpu")
    split.fill(steps, labels)
    assert passes == [64] * 62 + [2 * 16]  # 4 steps of 16 rows per pass, the last 2 steps alone
    torch.testing.assert_close(split.table, one.table, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        want = static.modulation(torch.full((16,), float(steps[7])), torch.as_tensor(labels))
    torch.testing.assert_close(one.lookup(torch.full((16,), float(steps[7])), 16), want, rtol=1e-6, atol=1e-6)


def test_prepare_reserves_the_rows_of_every_batch_it_captures() -> None:
    """A bigger batch than the table has rows (a later, larger generate; uneven chunks) must grow the table
    before it is captured: on the GPU the capture would otherwise read past it."""
    engine = TorchBackend.from_model(_model(), 2, options=EngineOptions(precompute_modulation=True))
    engine.prepare([4])
    assert engine.table.table.shape[1] == 4
    engine.begin_chunk(np.array([999.0, 500.0], np.float32), np.array([1, 2, 1000, 1000]))
    engine.prepare([8])
    assert engine.table.table.shape[:2] == (2, 8)
    engine.close()
    assert engine.table.table is None  # the pipeline's close frees the tables


@pytest.mark.parametrize("patch_size", [2, 4])
def test_backend_forward_matches_the_ordinary_engine(patch_size: int) -> None:
    model = _model()
    plain = TorchBackend.from_model(model, patch_size)
    premod = TorchBackend.from_model(model, patch_size, options=EngineOptions(precompute_modulation=True))
    x, y = torch.randn(6, 4, 8, 8), np.array([1, 5, 9, 1000, 1000, 1000])
    with pytest.raises(RuntimeError, match="holds 0 rows"):  # nothing reserved or filled yet
        premod.fn(x, torch.full((6,), 999.0), torch.as_tensor(y))
    premod.begin_chunk(np.array([999.0, 500.0, 3.0], np.float32), y)
    for t in (999.0, 500.0, 3.0):
        args = (x, torch.full((6,), t), torch.as_tensor(y))
        with torch.no_grad():  # measured 3e-8: the batched modulation GEMM rounds differently
            torch.testing.assert_close(premod.fn(*args), plain.fn(*args), rtol=0, atol=1e-6)
    assert premod.describe()["precomputed_modulation"] and not plain.describe()["precomputed_modulation"]


@pytest.mark.parametrize(
    ("guidance", "sampler"), [("cfg", "ddpm"), ("weak-to-strong", "ddim"), ("none", "ddpm")]
)
def test_trajectories_match_with_every_guidance(guidance: str, sampler: str) -> None:
    model = _model()
    kwargs = {"budget": 0.5, "steps": 20, "guidance": guidance, "sampler": sampler, "batch_size": 2}
    plain = pipeline_from_model(model, engine=EngineOptions(precision="fp32")).generate([1, 2, 3], **kwargs)
    premod = pipeline_from_model(model, engine=EngineOptions(precision="fp32", precompute_modulation=True))
    got = premod.generate([1, 2, 3], **kwargs)  # two chunks of 2 and 1 images: the table is refilled
    scale = np.abs(plain.samples).max()
    # measured: 1.8e-4 on values up to 597 (3e-7 relative) after 20 steps of a random model
    np.testing.assert_allclose(got.samples, plain.samples, rtol=0, atol=1e-5 * scale)
    assert all(e["precomputed_modulation"] for e in got.record["backend"]["engines"])
    assert "adaLN modulation precomputed" in premod.selection.reason


def test_bench_runs_the_torch_levers_side_by_side(tmp_path, monkeypatch) -> None:
    """The bench's variant in one run with the plain compiled backend (torch.compile replaced by the
    module itself: a real CPU compile takes a minute; on the GPU it is the real one)."""
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)
    args = [
        "bench",
        *TINY_ARGS,
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--steps",
        "6",
        "--batch-sizes",
        "1",
    ]
    args += [
        "--budgets",
        "1.0,0.5",
        "--no-reference",
        "--repeats",
        "1",
        "--forward-runs",
        "20",
        "--warmup",
        "1",
    ]
    args += ["--backends", "torch,torch-premod,torch-fused,torch-flash", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    docs = {d["backend"]: d for d in map(json.loads, (p.read_text() for p in tmp_path.glob("*/*.json")))}
    ran = [docs[name] for name in ("torch", "torch-premod", "torch-fused", "torch-flash")]
    assert [d["status"] for d in ran] == ["ok"] * 4
    assert "precomputed" in docs["torch-premod"]["label"]
    assert "no GEMM epilogue" in docs["torch-fused"]["label"]  # on the CPU it is torch-premod, and says so
    assert [len(d["trajectories"]) for d in ran] == [2] * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_read_the_table_and_recapture_when_it_grows() -> None:
    """In CUDA graphs the lookup is captured with the table's address: a bigger chunk moves the table and
    must re-capture, or the replays would read freed memory."""
    model = _model()
    plain = pipeline_from_model(model, device="cuda", engine=EngineOptions(precision="fp32"))
    premod = pipeline_from_model(
        model, device="cuda", engine=EngineOptions(precision="fp32", precompute_modulation=True)
    )
    for labels in ([1, 2], [1, 2, 3, 4], [5]):  # grows, then a smaller chunk in the grown table
        kwargs = {"budget": 0.5, "steps": 20}
        want, got = plain.generate(labels, **kwargs).samples, premod.generate(labels, **kwargs).samples
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
