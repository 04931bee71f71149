"""Samplers against the reference IDDPM/DiT math (flexidit_trt/bench/reference_iddpm.py), step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexidit_trt.bench import reference_iddpm as ref
from flexidit_trt.diffusion import StepCoeffs, apply_step, make_sampler, q_sample, space_timesteps

SHAPE = (2, 4, 8, 8)  # B, C, H, W


def rel_err(ours: np.ndarray, reference: np.ndarray) -> float:
    """Max abs error over the max magnitude: elementwise ratios blow up at values near zero."""
    return float(np.max(np.abs(ours.astype(np.float64) - reference)) / np.max(np.abs(reference)))


def random_inputs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fp32 model output (ε half ~ N(0,1), variance half in [-1, 1]), x and noise."""
    eps = rng.standard_normal(SHAPE)
    var = rng.uniform(-1.0, 1.0, SHAPE)
    out = np.concatenate([eps, var], axis=1).astype(np.float32)
    x = (2.0 * rng.standard_normal(SHAPE)).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    return out, x, noise


@pytest.mark.parametrize("spacing", ["250", "100", "50", "ddim50", "ddim25", "10,20,30", "1000"])
def test_timesteps_are_the_reference_model_inputs(spacing: str) -> None:
    diffusion = ref.create_diffusion(spacing)
    _, fed = ref.sample_indices(diffusion)
    for kind in ("ddpm", "ddim"):
        sampler = make_sampler(kind, spacing)
        assert sampler.timesteps.tolist() == fed
        assert len(sampler) == len(fed)
    assert space_timesteps(1000, spacing) == sorted(ref.space_timesteps(1000, spacing))


def test_int_and_string_steps_agree() -> None:
    assert make_sampler("ddpm", 250).timesteps.tolist() == make_sampler("ddpm", "250").timesteps.tolist()
    assert make_sampler("ddpm", 250).timesteps[0] == 999 and make_sampler("ddpm", 250).timesteps[-1] == 0


@pytest.mark.parametrize("spacing", ["250", "50", "ddim50"])
def test_ddpm_step_matches_reference_p_sample(spacing: str) -> None:
    diffusion = ref.create_diffusion(spacing)
    spaced, _ = ref.sample_indices(diffusion)
    sampler = make_sampler("ddpm", spacing)
    rng = np.random.default_rng(0)
    for i, t in enumerate(spaced):  # every index, first (t = 999) and last (no noise) included
        out, x, noise = random_inputs(rng)
        expected = diffusion.p_sample(
            out.astype(np.float64), x.astype(np.float64), t, noise.astype(np.float64)
        )
        got = sampler.step(out, i, x, noise)
        assert got.dtype == np.float32
        assert rel_err(got, expected) <= 1e-5, (spacing, i, rel_err(got, expected))


@pytest.mark.parametrize("spacing", ["50", "ddim50", "250"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_reference_ddim_sample(spacing: str, eta: float) -> None:
    diffusion = ref.create_diffusion(spacing)
    spaced, _ = ref.sample_indices(diffusion)
    sampler = make_sampler("ddim", spacing, eta=eta)
    rng = np.random.default_rng(1)
    for i, t in enumerate(spaced):
        out, x, noise = random_inputs(rng)
        expected = diffusion.ddim_sample(
            out.astype(np.float64), x.astype(np.float64), t, noise.astype(np.float64), eta=eta
        )
        got = sampler.step(out, i, x, noise)
        assert rel_err(got, expected) <= 1e-5, (spacing, eta, i, rel_err(got, expected))


def test_ddim_trajectory_matches_reference_loop() -> None:
    """A whole deterministic 50-step run with a toy ε-model, to catch order/indexing mistakes."""
    diffusion = ref.create_diffusion("ddim50")
    spaced, fed = ref.sample_indices(diffusion)
    sampler = make_sampler("ddim", "ddim50")
    rng = np.random.default_rng(2)
    w = rng.standard_normal(SHAPE[1:]) * 0.3

    def model(x: np.ndarray, t: float) -> np.ndarray:
        eps = np.tanh(x * w) + 0.01 * t / 1000
        return np.concatenate([eps, np.zeros_like(eps)], axis=1)

    x_ref = rng.standard_normal(SHAPE)
    x = x_ref.astype(np.float32)
    for i, (t_spaced, t_fed) in enumerate(zip(spaced, fed, strict=True)):
        x_ref = diffusion.ddim_sample(model(x_ref, t_fed), x_ref, t_spaced, np.zeros(SHAPE))
        x = sampler.step(model(x, sampler.timesteps[i]).astype(np.float32), i, x)
    assert rel_err(x, x_ref) <= 1e-4


def test_torch_and_numpy_paths_agree() -> None:
    sampler = make_sampler("ddpm", "50")
    rng = np.random.default_rng(3)
    for i in (0, 17, len(sampler) - 1):
        out, x, noise = random_inputs(rng)
        a = sampler.step(out, i, x, noise)
        b = sampler.step(torch.from_numpy(out), i, torch.from_numpy(x), torch.from_numpy(noise))
        assert isinstance(b, torch.Tensor) and b.dtype == torch.float32
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-6, atol=1e-6)


def test_half_precision_inputs_give_x_dtype() -> None:
    sampler = make_sampler("ddim", "50")
    rng = np.random.default_rng(4)
    out, x, _ = random_inputs(rng)
    got = sampler.step(torch.from_numpy(out).half(), 3, torch.from_numpy(x).half())
    assert got.dtype == torch.float16
    np.testing.assert_allclose(got.float().numpy(), sampler.step(out, 3, x), rtol=2e-2, atol=2e-2)


def test_step_is_apply_step_of_coeffs() -> None:
    """`step` uses exactly the coeffs.py formula on coeffs(i), written out here by hand."""
    sampler = make_sampler("ddpm", "50")
    rng = np.random.default_rng(5)
    out, x, noise = random_inputs(rng)
    i = 10
    c = sampler.coeffs(i)
    frac = (out[:, 4:].astype(np.float64) + 1) / 2
    std = np.exp(0.5 * (frac * c.log_var_max + (1 - frac) * c.log_var_min))
    by_hand = c.c_x * x + c.c_pred * out[:, :4] + std * noise
    assert rel_err(sampler.step(out, i, x, noise), by_hand) <= 1e-6
    assert rel_err(apply_step(c, x, out[:, :4], out[:, 4:], noise), by_hand) <= 1e-6


def test_generator_noise_is_seeded_and_last_step_adds_none() -> None:
    rng = np.random.default_rng(6)
    out, x, noise = random_inputs(rng)
    a, b, c = (make_sampler("ddpm", "50", seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.step(out, 0, x), b.step(out, 0, x))
    assert not np.allclose(a.step(out, 1, x), c.step(out, 1, x))
    ta, tb = make_sampler("ddpm", "50", seed=9), make_sampler("ddpm", "50", seed=9)
    assert torch.equal(
        ta.step(torch.from_numpy(out), 0, torch.from_numpy(x)),
        tb.step(torch.from_numpy(out), 0, torch.from_numpy(x)),
    )
    last = len(a) - 1
    assert not a.coeffs(last).add_noise
    assert np.array_equal(a.step(out, last, x), a.step(out, last, x, noise))
    assert np.array_equal(a.step(out, last, x), apply_step(a.coeffs(last), x, out[:, :4]))


def test_ddim_eta0_is_deterministic() -> None:
    sampler = make_sampler("ddim", 50, seed=None)
    assert not any(sampler.coeffs(i).add_noise for i in range(len(sampler)))


def test_flow_euler_follows_a_straight_path_exactly() -> None:
    """With the true velocity of x_t = t·data + (1−t)·noise, Euler lands on the data from the noise."""
    rng = np.random.default_rng(7)
    data = rng.standard_normal(SHAPE).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    sampler = make_sampler("flow", 8)
    np.testing.assert_array_equal(sampler.timesteps, np.arange(8) / 8)
    x = noise
    for i, t in enumerate(sampler.timesteps):
        np.testing.assert_allclose(x, t * data + (1 - t) * noise, atol=1e-5)
        v = data - noise
        model_out = v if i % 2 else np.concatenate([v, np.zeros_like(v)], axis=1)  # C or 2C channels
        x = sampler.step(model_out, i, x)
    np.testing.assert_allclose(x, data, atol=1e-5)


def test_q_sample_matches_reference() -> None:
    diffusion = ref.create_diffusion("1000")
    rng = np.random.default_rng(8)
    x0, noise = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    t = np.array([0, 999])
    expected = np.stack([diffusion.q_sample(x0[b], t[b], noise[b]) for b in range(2)])
    assert rel_err(q_sample(x0, t, noise), expected) <= 1e-12
    got = q_sample(torch.from_numpy(x0), torch.from_numpy(t), torch.from_numpy(noise))
    assert rel_err(got.numpy(), expected) <= 1e-12
    assert rel_err(q_sample(x0, 500, noise), diffusion.q_sample(x0, 500, noise)) <= 1e-12


@pytest.mark.parametrize(
    ("kind", "steps", "kwargs", "message"),
    [
        ("euler", 50, {}, "allowed: ddpm, ddim, flow"),
        ("ddpm", "fifty", {}, "steps must be"),
        ("ddpm", "ddimx", {}, "steps must be"),
        ("ddpm", 0, {}, ">= 1"),
        ("ddpm", 1001, {}, "at most 1000"),
        ("ddpm", "ddim999", {}, "no integer stride"),
        ("ddpm", 2.5, {}, "steps must be"),
        ("ddpm", 50, {"eta": 0.5}, "DDIM option"),
        ("ddim", 50, {"eta": 1.5}, "eta must be in [0, 1]"),
        ("flow", "ddim50", {}, "flow steps"),
        ("flow", 0, {}, "flow steps"),
    ],
)
def test_bad_arguments_raise_clear_errors(kind: str, steps: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_sampler(kind, steps, **kwargs)


def test_bad_model_outputs_raise() -> None:
    rng = np.random.default_rng(9)
    out, x, _ = random_inputs(rng)
    with pytest.raises(ValueError, match="needs 8"):
        make_sampler("ddpm", 50).step(out[:, :4], 0, x)  # learned variance needs 2C
    with pytest.raises(ValueError, match="batch"):
        make_sampler("ddim", 50).step(np.concatenate([out, out]), 0, x)  # unguided [cond; uncond]
    with pytest.raises(IndexError, match="out of range"):
        make_sampler("ddim", 50).coeffs(50)
    with pytest.raises(ValueError, match="adds noise"):
        apply_step(StepCoeffs(c_x=1.0, c_pred=0.0, sigma=1.0, add_noise=True), out[:, :4], out[:, :4])
