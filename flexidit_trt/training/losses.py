"""DiT's training loss: ε-MSE plus the variational bound on the learned variance (IDDPM's "hybrid").

As the reference's `GaussianDiffusion.training_losses` with EPSILON mean, LEARNED_RANGE variance and
LossType.MSE (what DiT's `create_diffusion` makes), per sample:

    mse = mean((ε − ε̂)²)
    vb  = KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t)) / ln 2     (t > 0; bits per dimension)
        = −log₂ p(x_0 | x_1) under a Gaussian discretised to 256 levels   (t = 0)
    loss = mse + vb

with p's mean from ε̂ with the gradient stopped (the bound trains only the variance, so it cannot pull
the mean away from the MSE optimum). The single-timestep vb term with weight 1 is IDDPM's λ = 0.001
times the full T = 1000-term bound. p's mean and log-variance come from the samplers' own per-step
scalars (diffusion.samplers.ddpm_coeffs of the unspaced schedule), so training and sampling share one
set of formulas: mean = c_x·x_t + c_pred·ε̂ and log σ² = frac·log_var_max + (1 − frac)·log_var_min with
frac = (v + 1)/2. q's mean is the same expression with the true ε (x_t = √ᾱ·x_0 + √(1−ᾱ)·ε), so the
difference of the means is c_pred·(ε − ε̂), exact rather than a difference of two large numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion.samplers import ddpm_coeffs
from ..diffusion.schedule import NUM_TRAIN_TIMESTEPS, SpacedSchedule


@dataclass(frozen=True)
class LossTerms:
    """Per-sample terms [N]: the total, the ε-MSE and the variational bound term (bits per dim)."""

    loss: torch.Tensor
    mse: torch.Tensor
    vb: torch.Tensor


def _coefficient_table() -> torch.Tensor:
    """[T, 4] float64: c_x, c_pred, log_var_max, log_var_min per original timestep (index = t)."""
    steps = ddpm_coeffs(SpacedSchedule.create(NUM_TRAIN_TIMESTEPS))[::-1]  # noisiest-first → by t
    return torch.tensor([[c.c_x, c.c_pred, c.log_var_max, c.log_var_min] for c in steps], dtype=torch.float64)


class DiffusionLoss:
    """Callable: terms = loss(model_out, x0, t, noise, x_t). Tables are moved to a device once."""

    def __init__(self) -> None:
        self._table = _coefficient_table()
        self._on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _coeffs(self, t: torch.Tensor, dtype: torch.dtype, ndim: int) -> list[torch.Tensor]:
        key = (t.device, dtype)
        if key not in self._on:
            self._on[key] = self._table.to(device=t.device, dtype=dtype)
        rows = self._on[key][t]  # [N, 4]
        shape = (-1,) + (1,) * (ndim - 1)
        return [rows[:, i].reshape(shape) for i in range(4)]

    def __call__(
        self,
        model_out: torch.Tensor,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        x_t: torch.Tensor,
    ) -> LossTerms:
        channels = x0.shape[1]
        if model_out.shape[1] != 2 * channels or model_out.shape[0] != x0.shape[0]:
            raise ValueError(
                f"model output {list(model_out.shape)} must be [N, 2C, ...] for x0 {list(x0.shape)} "
                "(noise prediction, then variance values: learn_sigma=True)"
            )
        # Losses in fp32 at least, whatever the network ran in (bf16 autocast gives bf16 outputs).
        dtype = torch.promote_types(model_out.dtype, torch.float32)
        out, x0, noise, x_t = (a.to(dtype) for a in (model_out, x0, noise, x_t))
        eps, v = out[:, :channels], out[:, channels:]
        c_x, c_pred, log_max, log_min = self._coeffs(t, dtype, x0.ndim)
        dims = tuple(range(1, x0.ndim))

        mse = (noise - eps).square().mean(dim=dims)

        frac = (v + 1) / 2
        log_var = frac * log_max + (1 - frac) * log_min  # p's; q's is log_min (the clipped posterior)
        eps_frozen = eps.detach()
        kl = 0.5 * (
            -1.0
            + log_var
            - log_min
            + torch.exp(log_min - log_var)
            + (c_pred * (noise - eps_frozen)).square() * torch.exp(-log_var)
        )
        mean = c_x * x_t + c_pred * eps_frozen
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        per_dim = torch.where(t.reshape((-1,) + (1,) * (x0.ndim - 1)) == 0, nll, kl)
        vb = per_dim.mean(dim=dims) / math.log(2.0)
        return LossTerms(loss=mse + vb, mse=mse, vb=vb)


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation the reference uses (not erf), so that the t = 0 term matches it.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) (nats, per element) for x on the 256 levels of [-1, 1] under N(mean, exp(log_scale)²)
    integrated over each level's bin; the end bins extend to ±∞."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
