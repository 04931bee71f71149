"""`build` says what it will do and roughly what it costs before any work (parameters and bytes from the
config), refuses in one line when the disk cannot hold the graphs, and names the compile cache as such."""

from __future__ import annotations

from collections import namedtuple

import pytest
from click.testing import CliRunner

import flexidit_trt.build_cost as build_cost
from flexidit_trt.cli import main
from flexidit_trt.info import model_info
from flexidit_trt.model import get_config

Usage = namedtuple("Usage", "total used free")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_bare_build_says_its_cost_and_refuses_a_small_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(build_cost.shutil, "disk_usage", lambda path: Usage(10**10, 10**10 - 10**9, 10**9))
    result = invoke("build", "--workdir", tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    plan, error = result.output.strip().splitlines()
    params = model_info(get_config("dit_xl")).base_parameters
    expected = 2 * params * 2  # two graphs (p2, p4), fp16: two bytes a weight
    assert plan.startswith("dit_xl (seeded random weights") and f"{params / 1e6:.1f} M parameters" in plan
    assert f"about {expected / 1e9:.2f} GB to write" in plan and "1.00 GB free" in plan
    assert error.startswith("Error: not enough disk space under") and "1.00 GB are free" in error
    assert not (tmp_path / "export").exists()  # nothing half-written


def test_the_estimate_matches_what_a_build_writes(tmp_path):
    result = invoke("build", "--model", "dit_fmnist", "--precision", "fp32", "--workdir", tmp_path)
    assert result.exit_code == 0, result.output
    plan = result.output.splitlines()[0]
    estimate = float(plan.split("about ")[1].split(" MB")[0]) * 1e6
    written = sum(f.stat().st_size for f in (tmp_path / "export/dit_fmnist").glob("p*.onnx"))
    # The graphs hold the weights plus the graph structure and the positional tables' copies: a few
    # percent over parameters x 4 bytes at this size (0.3% at DiT-XL's).
    assert estimate <= written <= 1.05 * estimate, (estimate, written)
    again = invoke("build", "--model", "dit_fmnist", "--precision", "fp32", "--workdir", tmp_path)
    assert again.output.splitlines()[0].split(": ", 1)[1].startswith("reuse p2, p4"), again.output


def test_the_compile_cache_skip_names_the_compile_cache():
    import torch

    from flexidit_trt.engines.compile_cache import build_torch_compile_cache

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: nothing is skipped")
    result = build_torch_compile_cache(None, ".", "dit_s", (1,), "fp32")
    assert (
        result.skipped == "no CUDA GPU is visible: torch.compile caches are compiled on the GPU they run on"
    )
