"""The embedded default model beyond the one-liner: `run --backend ort` names a `build` that works when
typed literally, after which the ort run matches the torch backend to fp32 accuracy; `dit_fmnist` names the
embedded weights (never random ones); `info` and the export manifest know it is pixel space (32x32, no
VAE factor)."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
from click.testing import CliRunner

from flexidit_trt.cli import main
from flexidit_trt.default_model import DEFAULT_WEIGHTS
from flexidit_trt.model import get_config

SAMPLE = ["--precision", "fp32", "--steps", "10", "--num-images", "2", "--cfg-scale", "4.0"]
STEPS, CFG = 10, 4.0


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fp32_sample_tolerance(config, steps: int, cfg_scale: float, scale: float) -> float:
    """How far two fp32 evaluations of the same network (ONNX Runtime's fused kernels against torch's) may
    drift apart over a sampling run. Per forward: each of the L sequential reductions (per block: qkv,
    scores, attention x values, projection, fc1, fc2; plus the embedders and the final layer) rounds its
    sum of at most K = 4·hidden terms, a random walk of sqrt(K) unit roundoffs u = 2^-24, so the
    prediction carries L·sqrt(K)·u relative error. Guidance eps_u + s·(eps_c - eps_u) adds the errors of both
    halves with weights |1 + s| + |s|. Each step passes at most that error (times the sample's scale) into
    the sample, and the steps add up."""
    u = np.finfo(np.float32).eps / 2
    reductions = 6 * config.depth + 2
    per_forward = reductions * np.sqrt(4 * config.hidden_size) * u
    return steps * per_forward * (1 + 2 * abs(cfg_scale)) * scale


def test_the_ort_hint_on_the_default_model_builds_what_run_then_uses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = invoke("run", "--backend", "ort", *SAMPLE, "--out", "a")
    assert first.exit_code == 1 and "Traceback" not in first.output, first.output
    assert len(first.output.strip().splitlines()) == 1, first.output
    hint = re.search(r"`(flexidit-trt build[^`]*)`", first.output).group(1)
    words = shlex.split(hint)
    assert words[:4] == ["flexidit-trt", "build", "--model", "dit_fmnist"], hint
    built = invoke(*words[1:])  # the hint, literally, in the same workdir
    assert built.exit_code == 0, built.output
    assert f"weights from checkpoint {DEFAULT_WEIGHTS}" in built.output  # the trained weights, not random
    entry = json.loads((tmp_path / "export/dit_fmnist/manifest.json").read_text())["graphs"]["2"]
    assert (entry["image_size"], entry["latent_size"], entry["precision"]) == (32, 32, "fp32")
    assert not (tmp_path / "export/dit_fmnist/.lock").exists()

    ort = invoke("run", "--backend", "ort", *SAMPLE, "--out", "ort")
    assert ort.exit_code == 0, ort.output
    assert "backend: ort" in ort.output and "random weights" not in ort.output
    torch_run = invoke("run", "--backend", "torch", *SAMPLE, "--out", "torch")
    assert torch_run.exit_code == 0, torch_run.output
    a, b = np.load(tmp_path / "ort/samples.npy"), np.load(tmp_path / "torch/samples.npy")
    tol = fp32_sample_tolerance(get_config("dit_fmnist"), STEPS, CFG, max(1.0, float(np.abs(b).max())))
    assert a.shape == b.shape == (2, 1, 32, 32)
    assert float(np.abs(a - b).max()) <= tol, (float(np.abs(a - b).max()), tol)  # measured 6.6e-5 of 5.2e-3


def test_dit_fmnist_without_a_build_runs_the_embedded_weights(tmp_path):
    from flexidit_trt.runtime import pipeline_from_workdir

    with pipeline_from_workdir(tmp_path, "dit_fmnist", backend="torch", device="cpu") as pipe:
        assert not pipe.spec.random_weights and str(DEFAULT_WEIGHTS) in pipe.spec.weights
        assert pipe.spec.checkpoint_sha256 is not None


def test_info_knows_dit_fmnist_is_pixel_space():
    result = invoke("info", "--model", "dit_fmnist", "--image-size", "32")
    assert result.exit_code == 0, result.output
    assert "pixel-space input 32x32" in result.output
    facts = json.loads(invoke("info", "--model", "dit_fmnist", "--json").output)
    assert facts["input_size"] == 32  # the model's own size by default
    assert "latent 32x32" in invoke("info").output  # dit_xl at 256 px: 256 / 8, as before
    bad = invoke("info", "--model", "dit_xl", "--image-size", "100")
    assert bad.exit_code == 2 and "not a positive multiple of 8" in bad.output, bad.output
    for command in ("build", "info"):
        assert "dit_fmnist" in invoke(command, "--help").output


@pytest.mark.parametrize("name", ["dit_fmnist", "DiT-FMNIST"])
def test_build_of_dit_fmnist_uses_the_embedded_weights_and_random_ones_need_overrides(tmp_path, name):
    from flexidit_trt.build import build_artifacts

    report = build_artifacts(name, workdir=tmp_path, precision="fp32", patch_sizes=(4,), progress=False)
    assert report.model == "dit_fmnist" and report.weights == f"checkpoint {DEFAULT_WEIGHTS}"
    tiny = build_artifacts(
        "dit_fmnist", workdir=tmp_path / "r", precision="fp32", patch_sizes=(4,), overrides={"depth": 1}
    )
    assert tiny.weights.startswith("seeded random weights")
