"""flexidit_trt/bench/reference_loop.py, the reference DiT sampling loop the GPU benchmark times: step by step
against the float64 transcription of the sampler math (reference_iddpm), and end to end against our
Pipeline at budget 1.0 fed the same noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from array_kernels import philox_normal

from flexidit_trt.bench import reference_iddpm
from flexidit_trt.bench.reference_loop import ReferenceDiffusion, forward_with_cfg, reference_sample
from flexidit_trt.engines.options import EngineOptions
from flexidit_trt.model import FlexiDiT
from flexidit_trt.runtime import pipeline_from_model
from flexidit_trt.runtime.pipeline import INIT_NOISE_STEP


def toy_output(x, t):
    """A smooth stand-in network output (ε half, variance half in [-1, 1]) for numpy and torch alike."""
    tanh = np.tanh if isinstance(x, np.ndarray) else torch.tanh
    t = t.reshape(-1, 1, 1, 1)
    eps = tanh(0.7 * x + t / 1000.0)
    var = tanh(0.5 * x - 0.2)
    return np.concatenate([eps, var], 1) if isinstance(x, np.ndarray) else torch.cat([eps, var], 1)


def test_loop_matches_the_float64_transcription_step_by_step():
    steps, shape = 25, (3, 4, 5, 5)
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape)
    draws = rng.standard_normal((steps, *shape))
    fed_t = []

    def model(x, t):
        fed_t.append(t.tolist())
        return toy_output(x, t.to(x.dtype))

    ours = ReferenceDiffusion(steps)
    out = ours.p_sample_loop(
        model,
        shape,
        torch.from_numpy(z).float(),
        clip_denoised=False,
        device="cpu",
        step_noise=lambda k, x: torch.from_numpy(draws[k]).float(),
    )

    ref = reference_iddpm.create_diffusion(str(steps))
    spaced, original = reference_iddpm.sample_indices(ref)
    x = z
    for k, (i, t_orig) in enumerate(zip(spaced, original, strict=True)):
        x = ref.p_sample(toy_output(x, np.full(shape[0], float(t_orig))), x, i, draws[k])
    assert fed_t == [[t] * shape[0] for t in original]  # the original timestep, every row
    rel = float(np.abs(out.numpy() - x).max() / np.abs(x).max())
    assert rel < 1e-5, rel  # float32 tables and math against float64 (seen: 4.6e-7)


def test_forward_with_cfg_guides_three_channels_and_duplicates_the_guided_half():
    class Net:
        def forward(self, x, t, y):
            return x.repeat(1, 2, 1, 1) + y.float().reshape(-1, 1, 1, 1)

    x = torch.randn(2, 4, 2, 2)
    x2 = torch.cat([x, torch.randn_like(x)])  # the second half is never read
    y = torch.tensor([5, 9, 1000, 1000])
    out = forward_with_cfg(Net(), x2, torch.zeros(4), y, 4.0)
    cond = x.repeat(1, 2, 1, 1) + torch.tensor([5.0, 9.0]).reshape(-1, 1, 1, 1)
    uncond = x.repeat(1, 2, 1, 1) + 1000.0
    guided = uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3])
    assert torch.allclose(out[:2, :3], guided) and torch.allclose(out[2:, :3], guided)
    assert torch.allclose(out[:2, 3:], cond[:, 3:]) and torch.allclose(out[2:, 3:], uncond[:, 3:])


@pytest.mark.parametrize("cfg_scale", [4.0, 1.0])
def test_reference_matches_the_pipeline_at_budget_1_with_the_same_noise(cfg_scale):
    """Our pipeline (torch backend, fp32, CPU) and the reference loop on one tiny model, fed the
    pipeline's Philox noise. The pipeline guides all four channels, so the reference is told to as well
    (its default, three, is what the GPU benchmark runs)."""
    model = FlexiDiT.from_config(
        "dit_s", init="random", input_size=8, depth=2, hidden_size=64, num_heads=2, patch_sizes=(2, 4), seed=3
    )
    model.eval()
    labels, seed, steps = [3, 7], 11, 25
    result = pipeline_from_model(
        model, backend="torch", device="cpu", engine=EngineOptions(precision="fp32")
    ).generate(
        labels, budget=1.0, steps=steps, sampler="ddpm", guidance="cfg", cfg_scale=cfg_scale, seed=seed
    )
    assert result.record["plan"]["patch_per_step"] == [2] * steps

    n, chw = len(labels), 4 * 8 * 8
    z = np.empty((n, 4, 8, 8), dtype=np.float32)
    philox_normal(z, seed, INIT_NOISE_STEP)

    def step_noise(k, x):  # the pipeline's step-k stream: image r takes elements [r·CHW, (r+1)·CHW)
        out = np.empty(tuple(x.shape), dtype=np.float32)
        philox_normal(out, seed, k)
        return torch.from_numpy(out)

    ref = reference_sample(
        model,
        labels,
        cfg_scale=cfg_scale,
        steps=steps,
        seed=seed,
        device="cpu",
        initial_noise=torch.from_numpy(z),
        step_noise=step_noise,
        guided_channels=4,
    ).numpy()
    assert ref.shape == result.samples.shape == (n, 4, 8, 8)
    rel = float(np.abs(result.samples - ref).max() / np.abs(ref).max())
    assert rel < 1e-5, rel  # seen: 3.3e-7 (cfg 4), 3.1e-7 (cfg 1)
    assert chw * n == z.size
