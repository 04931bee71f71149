"""Samplers: DDPM (learned-range variance), DDIM and flow-matching Euler, all as per-step StepCoeffs.

A sampler is a list of timesteps to feed the model and, for each, the scalars of one update
(coeffs.StepCoeffs). `Sampler.step` applies them with `apply_step`, the single array-level formula that
the fused C++/CUDA kernels implement too, so the math lives in one place:

    for i, t in enumerate(sampler.timesteps):      # noisiest first
        out = model(x, t, y)                       # (B, 2C, H, W) or (B, C, H, W), guided already
        x = sampler.step(out, i, x)

Diffusion kinds feed the ORIGINAL 0..999 timestep indices (the reference samples with
rescale_timesteps off). Flow matching follows SiT (Ma et al. 2024, the DiT-architecture flow model):
x_t = t·x_data + (1 − t)·noise, t = 0 is pure noise and t = 1 data, the model predicts the velocity
v = dx_t/dt = x_data − noise, and it is fed the continuous t in [0, 1). N steps use the grid
t_i = i/N and x_{i+1} = x_i + v/N (SiT's Euler ODE with `--num-sampling-steps N+1` takes the same
N model evaluations).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np

from ._arrays import is_torch
from .coeffs import StepCoeffs
from .schedule import SpacedSchedule

KINDS = ("ddpm", "ddim", "flow")


def _f32(a: Any) -> Any:
    return a.float() if is_torch(a) else np.asarray(a).astype(np.float32, copy=False)


def _exp(a: Any) -> Any:
    return a.exp() if is_torch(a) else np.exp(a)


def _scalar(v: float) -> float:
    # The kernels get fp32 scalars; round here too so that the Python path uses the very same values.
    return float(np.float32(v))


def apply_step(c: StepCoeffs, x: Any, pred: Any, var: Any = None, noise: Any = None) -> Any:
    """x_prev = c_x·x + c_pred·pred (+ std·noise) for numpy arrays or torch tensors, in fp32.

    `pred` is the (guided) prediction, `var` the variance half of the conditional output (needed only
    for a learned-variance step that adds noise), `noise` a standard normal draw of x's shape (needed
    only when `c.add_noise`). The result has x's dtype. This is THE formula of coeffs.py.
    """
    xf, pf = _f32(x), _f32(pred)
    out = _scalar(c.c_x) * xf + _scalar(c.c_pred) * pf
    if c.add_noise:
        if noise is None:
            raise ValueError("this step adds noise: pass a standard normal array of x's shape")
        if c.learned_variance:
            if var is None:
                raise ValueError("this step has a learned variance: pass the variance half of the output")
            frac = (_f32(var) + 1.0) * 0.5
            log_var = frac * _scalar(c.log_var_max) + (1.0 - frac) * _scalar(c.log_var_min)
            out = out + _exp(0.5 * log_var) * _f32(noise)
        else:
            out = out + _scalar(c.sigma) * _f32(noise)
    return out.to(x.dtype) if is_torch(out) else out.astype(x.dtype, copy=False)


def ddpm_coeffs(schedule: SpacedSchedule) -> list[StepCoeffs]:
    """Ancestral steps with ε-prediction and learned-range variance, x0 not clipped; noisiest first.

    mean = coef1·x0 + coef2·x with x0 = sqrt(1/ᾱ)·x − sqrt(1/ᾱ − 1)·ε, folded into c_x, c_pred.
    """
    s = schedule
    ac, ac_prev = s.alphas_cumprod, s.alphas_cumprod_prev
    coef1 = s.betas * np.sqrt(ac_prev) / (1.0 - ac)
    coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - s.betas) / (1.0 - ac)
    c_x = coef1 * np.sqrt(1.0 / ac) + coef2
    c_pred = -coef1 * np.sqrt(1.0 / ac - 1.0)
    log_max, log_min = np.log(s.betas), s.posterior_log_variance_clipped
    return [
        StepCoeffs(
            c_x=float(c_x[j]),
            c_pred=float(c_pred[j]),
            learned_variance=True,
            log_var_max=float(log_max[j]),
            log_var_min=float(log_min[j]),
            add_noise=j != 0,  # the reference adds no noise at (spaced) t == 0
        )
        for j in reversed(range(len(s)))
    ]


def ddim_coeffs(schedule: SpacedSchedule, eta: float) -> list[StepCoeffs]:
    """DDIM (Song et al. eq. 12) with ε-prediction, x0 not clipped; the variance output is unused."""
    ac, ac_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    sigma = eta * np.sqrt((1.0 - ac_prev) / (1.0 - ac)) * np.sqrt(1.0 - ac / ac_prev)
    # 1 − ᾱ_prev − σ² ≥ 0 for eta ≤ 1; clamp the rounding error at eta = 1.
    c_eps = np.sqrt(np.maximum(1.0 - ac_prev - sigma**2, 0.0))
    c_x = np.sqrt(ac_prev / ac)
    c_pred = c_eps - np.sqrt(ac_prev) * np.sqrt(1.0 / ac - 1.0)
    return [
        StepCoeffs(
            c_x=float(c_x[j]),
            c_pred=float(c_pred[j]),
            sigma=float(sigma[j]),
            add_noise=j != 0 and sigma[j] > 0.0,
        )
        for j in reversed(range(len(schedule)))
    ]


def flow_euler_coeffs(steps: int) -> list[StepCoeffs]:
    """Euler steps of dx/dt = v from t = 0 (noise) to t = 1 (data), dt = 1/steps."""
    return [StepCoeffs(c_x=1.0, c_pred=1.0 / steps) for _ in range(steps)]


class Sampler:
    """Timesteps to feed the model and one StepCoeffs per step; `step` applies them (numpy or torch).

    Build it with make_sampler. `timesteps[i]` is what the model is fed at step i (i = 0 is the
    noisiest); `step(model_out, i, x)` returns the next latent.
    """

    def __init__(self, kind: str, timesteps: np.ndarray, coeffs: list[StepCoeffs], seed: int | None = None):
        if len(timesteps) != len(coeffs):
            raise ValueError(f"{len(timesteps)} timesteps but {len(coeffs)} step coefficients")
        self.kind = kind
        self._timesteps = np.array(timesteps)
        self._timesteps.flags.writeable = False
        self._coeffs = tuple(coeffs)
        self.manual_seed(seed)

    @property
    def timesteps(self) -> np.ndarray:
        """The model inputs per step, noisiest first: int64 original indices, or float64 t for flow."""
        return self._timesteps

    def __len__(self) -> int:
        return len(self._coeffs)

    def __repr__(self) -> str:
        return f"Sampler(kind={self.kind!r}, steps={len(self)})"

    def manual_seed(self, seed: int | None) -> None:
        """Reseed the noise used by `step` when none is passed (None: fresh OS entropy)."""
        self.seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else int(seed)
        self._np_gen = np.random.default_rng(self.seed)
        self._torch_gens: dict[Any, Any] = {}

    def coeffs(self, i: int) -> StepCoeffs:
        """The float64 scalars of step i (0 = first, noisiest)."""
        if not 0 <= i < len(self._coeffs):
            raise IndexError(f"step index {i} is out of range 0..{len(self._coeffs) - 1}")
        return self._coeffs[i]

    def step(self, model_out: Any, i: int, x: Any, noise: Any = None) -> Any:
        """One update of x with the raw (already guided) model output of step i; returns x_prev.

        model_out has 2C channels (prediction, then the variance value in [-1, 1]) or, for kinds without
        learned variance, C. `noise` (x's shape) is used when the step adds noise; otherwise the
        sampler's seeded generator draws it. The last step adds none.
        """
        c = self.coeffs(i)
        pred, var = self._split(model_out, x, c.learned_variance)
        if c.add_noise and noise is None:
            noise = self._noise_like(x)
        return apply_step(c, x, pred, var, noise if c.add_noise else None)

    def _split(self, model_out: Any, x: Any, learned_variance: bool) -> tuple[Any, Any]:
        channels = x.shape[1]
        allowed = (2 * channels,) if learned_variance else (channels, 2 * channels)
        if model_out.shape[0] != x.shape[0] or tuple(model_out.shape[2:]) != tuple(x.shape[2:]):
            raise ValueError(
                f"model output {tuple(model_out.shape)} does not match x {tuple(x.shape)} in batch or "
                "spatial size (for CFG, guide the [cond; uncond] output first)"
            )
        if model_out.shape[1] not in allowed:
            raise ValueError(
                f"model output has {model_out.shape[1]} channels; the {self.kind} sampler needs "
                f"{' or '.join(map(str, allowed))} for latents of {channels} channels"
            )
        var = model_out[:, channels:] if model_out.shape[1] == 2 * channels else None
        return model_out[:, :channels], var

    def _noise_like(self, x: Any) -> Any:
        if is_torch(x):
            import torch

            gen = self._torch_gens.get(x.device)
            if gen is None:
                gen = self._torch_gens[x.device] = torch.Generator(device=x.device).manual_seed(self.seed)
            return torch.randn(tuple(x.shape), generator=gen, device=x.device, dtype=torch.float32)
        return self._np_gen.standard_normal(x.shape, dtype=np.float32)


def make_sampler(kind: str, steps: int | str, *, eta: float = 0.0, seed: int | None = None) -> Sampler:
    """A sampler of `kind` ("ddpm", "ddim", "flow") with `steps` (250, "250", "10,20,30", "ddim50").

    Diffusion kinds respace the 1000-step linear schedule by the IDDPM rule; "ddimN" is the DDIM
    paper's integer stride and works for either diffusion kind. `eta` is DDIM's noise scale in [0, 1].
    Flow takes a plain step count. `seed` seeds the noise drawn when `step` gets none.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown sampler kind {kind!r}; allowed: {', '.join(KINDS)}")
    if kind != "ddim" and eta != 0.0:
        raise ValueError(f"eta is a DDIM option; the {kind} sampler takes none (got eta={eta})")
    if kind == "flow":
        n = int(steps) if isinstance(steps, Integral) and not isinstance(steps, bool) else None
        if isinstance(steps, str) and steps.strip().isdigit():
            n = int(steps)
        if n is None or n < 1:
            raise ValueError(f'flow steps must be a positive int or "N" (no respacing rules); got {steps!r}')
        return Sampler(kind, np.arange(n, dtype=np.float64) / n, flow_euler_coeffs(n), seed)
    schedule = SpacedSchedule.create(steps)
    if kind == "ddpm":
        coeffs = ddpm_coeffs(schedule)
    else:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
        coeffs = ddim_coeffs(schedule, eta)
    return Sampler(kind, schedule.timesteps[::-1], coeffs, seed)
