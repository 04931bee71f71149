"""The bench's backends: which can run here (the missing runtime named before the missing engines), the
`build` hints its messages print, and the engines re-captured in another graph pool for the memory
comparison (they keep the backend name the run record reads)."""

from __future__ import annotations

import pytest
import torch

from flexidit_trt.bench.memory import graph_clone
from flexidit_trt.cli import main
from flexidit_trt.engines.manifest import build_command
from flexidit_trt.engines.torch_backend import TorchBackend
from flexidit_trt.model import FlexiDiT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_backend() -> TorchBackend:
    torch.manual_seed(0)
    model = FlexiDiT.from_config("dit_s", init="random", depth=1, hidden_size=32, num_heads=2, input_size=8)
    return TorchBackend.from_model(model, 2, max_batch=4)


def test_clone_keeps_the_engine_and_its_name() -> None:
    engine = _tiny_backend()
    clone = graph_clone(engine, pool=None)
    assert clone.describe()["backend"] == "torch" == engine.describe()["backend"]
    assert clone.fn is engine.fn and clone is not engine
    assert (clone.patch_size, clone.max_batch, clone.out_dtype) == (2, 4, engine.out_dtype)
    assert not clone.use_graphs  # CPU: eager; on CUDA the probe passes a GraphPool


@pytest.mark.parametrize("kind", ["trt", "aoti", "compile-cache", "ort", "torch"])
def test_build_commands_in_messages_parse(kind: str) -> None:
    """Every `run`/`bench` hint names options `build` has (one named an `--engines` option, which it has not)."""
    args = build_command("dit_xl", kind, precision="bf16").split()[2:]
    ctx = main.commands["build"].make_context("build", args)  # parses only; a wrong option raises here
    assert "dit_xl" in ctx.params.values() and "bf16" in ctx.params.values()
    assert ctx.params.get("aoti", False) == (kind == "aoti")
    assert ctx.params.get("compile_cache", False) == (kind == "compile-cache")


def test_bench_names_the_missing_runtime_before_the_missing_engines(monkeypatch) -> None:
    """An onnxruntime without its CUDA provider is the reason given for ort on a GPU, not the missing
    export (which would not help)."""
    import flexidit_trt.engines.ort_backend as ort_backend
    from flexidit_trt.bench.backends import unavailable

    monkeypatch.setattr(ort_backend, "cuda_provider_available", lambda: False)
    assert "CPU execution provider only" in unavailable("ort", "cuda:0")
    assert unavailable("ort", "cpu") is None  # the CPU provider serves a CPU run
    monkeypatch.setattr(ort_backend, "cuda_provider_available", lambda: True)
    assert unavailable("ort", "cuda:0") is None
    assert "CUDA GPU" in unavailable("aoti", "cpu")
    assert unavailable("torch", "cpu") is None
