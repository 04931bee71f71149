"""The per-step update every sampler reduces to, shared by the Python samplers and the fused kernels.

One step, for a latent ``x`` and the (guided) prediction ``pred`` (the first C channels of the model
output after guidance) and, for learned variance, ``v`` (the second C channels of the conditional output):

    mean    = c_x * x + c_pred * pred
    log_var = frac * log_var_max + (1 - frac) * log_var_min,  frac = (v + 1) / 2   (learned_variance)
    std     = exp(0.5 * log_var)                                                  (learned_variance)
            = sigma                                                               (otherwise)
    x_prev  = mean + std * noise            (only when add_noise; the last step adds none)

DDPM (learned range), DDIM (any eta) and flow-matching Euler are all of this form, so the CUDA and C++
kernels need one code path and the samplers only compute these scalars (in float64).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepCoeffs:
    c_x: float
    c_pred: float
    learned_variance: bool = False
    log_var_max: float = 0.0
    log_var_min: float = 0.0
    sigma: float = 0.0
    add_noise: bool = False
