"""`build --compile-cache` warms the torch backend's compiled engines and saves torch.compile's portable
cache; `run --compile` on that workdir hot-loads it before compiling. torch.compile and the cache's
save/load are stand-ins here (a real compile on this CPU takes about a minute per shape; the real round
trip ran on an H100 (benchmarks/NOTES.md, 2026-11-22): a fresh process's warm-up 68.9 s cold, 10.5 s loaded)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from flexidit_trt.build import report_lines
from flexidit_trt.cli import main
from flexidit_trt.engines.aoti import TorchTarget, aoti_dir
from flexidit_trt.engines.compile_cache import build_torch_compile_cache
from flexidit_trt.engines.options import EngineOptions
from flexidit_trt.model import FlexiDiT
from flexidit_trt.runtime import pipeline_from_workdir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = TorchTarget("cpu", None, torch.__version__)


@pytest.fixture()
def stand_ins(monkeypatch):
    """torch.compile that records what it was asked and every call of what it returns (with grad mode),
    and a cache save/load that records the blob."""
    seen = {"compiles": [], "calls": [], "loaded": []}

    def fake_compile(module, **options):
        index = len(seen["compiles"])
        seen["compiles"].append(options)

        def compiled(x, t, y):
            seen["calls"].append((index, x.shape[0], torch.is_grad_enabled()))
            return module(x, t, y)

        return compiled

    class Info:
        artifacts = {"inductor": ["a", "b"]}

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"cache blob", Info()))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda blob: seen["loaded"].append(blob))
    return seen


def _tiny() -> FlexiDiT:
    return FlexiDiT.from_config("dit_s", init="random", depth=1, hidden_size=32, num_heads=2, input_size=8)


def test_build_warms_every_engine_at_every_batch_then_saves(tmp_path, stand_ins) -> None:
    result = build_torch_compile_cache(
        _tiny(), tmp_path, "dit_s", rows=[4, 2, 4], precision="fp32", target=CPU
    )
    # One compile per patch size, as the torch backend compiles; each run at every engine batch, no grad.
    assert stand_ins["compiles"] == [{"fullgraph": True, "dynamic": False}] * 2
    assert sorted(stand_ins["calls"]) == [(0, 2, False), (0, 4, False), (1, 2, False), (1, 4, False)]
    entry = result.entry
    assert result.folder == aoti_dir(tmp_path, "dit_s", CPU) and result.skipped is None
    assert (entry["patch_sizes"], entry["batches"], entry["precision"]) == ([2, 4], [2, 4], "fp32")
    assert (result.folder / entry["file"]).read_bytes() == b"cache blob"
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest["compile_cache"]["sha256"] == entry["sha256"]
    assert "compile cache  " in report_lines(_report(tmp_path, result))[-1]


def test_without_a_gpu_the_build_says_why(tmp_path, stand_ins) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = build_torch_compile_cache(_tiny(), tmp_path, "dit_s", rows=[2], precision="bf16")
    assert result.entry is None and "no CUDA GPU" in result.skipped
    assert stand_ins["compiles"] == [] and not (tmp_path / "engines").exists()
    assert report_lines(_report(tmp_path, result))[-1].startswith("compile cache: skipped (no CUDA GPU")


def test_run_compile_loads_the_cache_before_compiling(tmp_path, stand_ins) -> None:
    cold = pipeline_from_workdir(
        str(tmp_path), "dit_s", backend="torch", device="cpu", engine=EngineOptions(compile=True)
    )
    cold.close()
    assert "compiling cold (`flexidit-trt build --model dit_s --precision fp32 --compile-cache`)" in (
        cold.selection.reason
    )
    assert stand_ins["loaded"] == []

    build_torch_compile_cache(_tiny(), tmp_path, "dit_s", rows=[2], precision="fp32", target=CPU)
    compiles_before = len(stand_ins["compiles"])
    warm = pipeline_from_workdir(
        str(tmp_path), "dit_s", backend="torch", device="cpu", engine=EngineOptions(compile=True)
    )
    warm.close()
    assert stand_ins["loaded"] == [b"cache blob"]  # loaded before the pipeline's own compiles
    assert len(stand_ins["compiles"]) == compiles_before + 2
    assert "torch.compile cache loaded from" in warm.selection.reason and "miss" not in warm.selection.reason

    bf16 = pipeline_from_workdir(
        str(tmp_path),
        "dit_s",
        backend="torch",
        device="cpu",
        engine=EngineOptions(compile=True, precision="bf16"),
    )
    bf16.close()
    assert "it was built for fp32, this run is bf16: its compiles will miss" in bf16.selection.reason

    plain = pipeline_from_workdir(str(tmp_path), "dit_s", backend="torch", device="cpu")
    plain.close()
    assert "torch.compile cache" not in plain.selection.reason and len(stand_ins["loaded"]) == 2


def test_build_cli_has_the_flag() -> None:
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0 and "--compile-cache" in result.output


def _report(workdir, cache):
    from flexidit_trt.build import BuildReport
    from flexidit_trt.engines.build import EngineBuildResult

    return BuildReport("dit_s", "random weights", workdir, [], EngineBuildResult(None), None, [], cache)
