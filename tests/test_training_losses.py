"""The training loss against a float64 transcription of the reference DiT/IDDPM `training_losses`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flexidit_trt.bench.reference_iddpm import GaussianDiffusion, get_named_beta_schedule_linear
from flexidit_trt.diffusion import q_sample
from flexidit_trt.training.losses import DiffusionLoss


# -- the reference, float64 numpy (facebookresearch/DiT diffusion/gaussian_diffusion.py and diffusion_utils.py:
#    normal_kl, approx_standard_normal_cdf, discretized_gaussian_log_likelihood, _vb_terms_bpd and
#    training_losses with LossType.MSE, EPSILON, LEARNED_RANGE; structure kept, model output passed in) ---------
def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * np.exp(-logvar2)
    )


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * np.power(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    centered_x = x - means
    inv_stdv = np.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    cdf_delta = cdf_plus - cdf_min
    return np.where(
        x < -0.999,
        log_cdf_plus,
        np.where(x > 0.999, log_one_minus_cdf_min, np.log(np.maximum(cdf_delta, 1e-12))),
    )


def mean_flat(a):
    return a.reshape(a.shape[0], -1).mean(axis=1)


def reference_training_losses(diffusion: GaussianDiffusion, model_output, x_start, t, noise):
    """Per sample: training_losses' "mse", "vb" and "loss" for a batch (t is an int array)."""
    B, C = x_start.shape[:2]
    mse, vb = np.zeros(B), np.zeros(B)
    for i in range(B):  # the reference broadcasts per-sample tables; one sample at a time is the same math
        ti, x0, eps = int(t[i]), x_start[i : i + 1], noise[i : i + 1]
        x_t = diffusion.q_sample(x0, ti, eps)
        out = model_output[i : i + 1]
        eps_pred = out[:, :C]
        true_mean = diffusion.q_posterior_mean(x0, x_t, ti)
        true_log_variance_clipped = diffusion.posterior_log_variance_clipped[ti]
        p = diffusion.p_mean_variance(out, x_t, ti)  # the frozen output: the mean's gradient is stopped
        kl = mean_flat(
            normal_kl(true_mean, true_log_variance_clipped, p["mean"], p["log_variance"])
        ) / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x0, means=p["mean"], log_scales=0.5 * p["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        vb[i] = (decoder_nll if ti == 0 else kl)[0]
        mse[i] = mean_flat((eps - eps_pred) ** 2)[0]
    return {"mse": mse, "vb": vb, "loss": mse + vb}


def batch(dtype=torch.float64, n=8, seed=0):
    """Images on the 256 levels (as the data), several t incl. 0 and 999, outputs with v in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 256, (n, 1, 6, 6), generator=gen).to(dtype) / 127.5 - 1
    t = torch.tensor([0, 1, 2, 10, 250, 500, 998, 999][:n])
    noise = torch.randn(n, 1, 6, 6, generator=gen, dtype=dtype)
    eps_pred = noise + 0.3 * torch.randn(n, 1, 6, 6, generator=gen, dtype=dtype)
    v = torch.rand(n, 1, 6, 6, generator=gen, dtype=dtype) * 2 - 1
    return x0, t, noise, torch.cat([eps_pred, v], dim=1)


@pytest.fixture(scope="module")
def reference():
    return GaussianDiffusion(get_named_beta_schedule_linear(1000))


def test_loss_matches_reference_float64(reference):
    x0, t, noise, out = batch(torch.float64)
    terms = DiffusionLoss()(out, x0, t, noise, q_sample(x0, t, noise))
    ref = reference_training_losses(reference, out.numpy(), x0.numpy(), t.numpy(), noise.numpy())
    for name in ("mse", "vb", "loss"):
        ours = getattr(terms, name).numpy()
        np.testing.assert_allclose(ours, ref[name], rtol=1e-9, atol=0, err_msg=name)
    assert (terms.vb > 0).all() and terms.vb[0] > 1.0  # t = 0 is the decoder NLL: bits, not a small KL


def test_loss_float32_close_to_reference(reference):
    """The training path: fp32 inputs; the measured worst relative error is ~1e-6."""
    x0, t, noise, out = batch(torch.float64, seed=1)
    terms = DiffusionLoss()(out.float(), x0.float(), t, noise.float(), q_sample(x0.float(), t, noise.float()))
    ref = reference_training_losses(reference, out.numpy(), x0.numpy(), t.numpy(), noise.numpy())
    np.testing.assert_allclose(terms.loss.double().numpy(), ref["loss"], rtol=2e-5)


def test_vb_term_does_not_train_the_mean():
    """Stop-gradient: the ε channels get the gradient of the MSE alone; the v channels get vb's only."""
    x0, t, noise, out = batch(torch.float64, seed=2)
    out = out.clone().requires_grad_(True)
    terms = DiffusionLoss()(out, x0, t, noise, q_sample(x0, t, noise))
    (grad,) = torch.autograd.grad(terms.loss.sum(), out)
    expected_eps_grad = -2 * (noise - out[:, :1].detach()) / noise[0].numel()
    torch.testing.assert_close(grad[:, :1], expected_eps_grad, rtol=1e-12, atol=1e-15)
    (vb_grad,) = torch.autograd.grad(DiffusionLoss()(out, x0, t, noise, q_sample(x0, t, noise)).vb.sum(), out)
    assert vb_grad[:, :1].abs().max() == 0 and vb_grad[:, 1:].abs().max() > 0


def test_loss_rejects_output_without_variance():
    x0, t, noise, out = batch()
    with pytest.raises(ValueError, match="learn_sigma"):
        DiffusionLoss()(out[:, :1], x0, t, noise, x0)


def test_vb_is_zero_at_the_posterior_variance():
    """frac = 0 with the exact mean: p equals q, so KL = 0 (a sign/offset error in the bound would show)."""
    x0, t, noise, _ = batch(torch.float64)
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    terms = DiffusionLoss()(out, x0, t, noise, q_sample(x0, t, noise))
    assert terms.mse.abs().max() == 0
    assert terms.vb[1:].abs().max() < 1e-12  # t = 0 is a likelihood, not a KL
    assert math.isfinite(terms.vb[0].item())
