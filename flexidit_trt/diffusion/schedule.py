"""The noise schedule: the 1000-step linear β schedule, IDDPM respacing, and q_sample.

Matches the reference DiT/IDDPM code (facebookresearch/DiT, diffusion/): `get_named_beta_schedule("linear")`,
`space_timesteps` and the respaced process of `SpacedDiffusion`. Everything is float64 numpy; samplers turn
it into per-step scalars (coeffs.StepCoeffs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from numbers import Integral
from typing import Any

import numpy as np

from ._arrays import is_torch

NUM_TRAIN_TIMESTEPS = 1000


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Ho et al.'s linear β schedule, 1e-4..0.02 at 1000 steps, scaled by 1000/T for other T."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def parse_steps(steps: int | str, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int] | int:
    """Validate a step spec: an int, "N", comma-separated section counts "a,b,c", or "ddimN".

    Returns the section counts (a list) for the IDDPM rule, or N (an int) for "ddimN".
    """
    allowed = 'a positive int, "N", section counts like "10,20,30", or "ddimN" (e.g. 250, "250", "ddim50")'
    if isinstance(steps, bool) or not isinstance(steps, Integral | str):
        raise ValueError(f"steps must be {allowed}; got {steps!r}")
    if isinstance(steps, Integral):
        sections = [int(steps)]
    else:
        text = steps.strip().lower()
        body = text[len("ddim") :] if text.startswith("ddim") else text
        parts = body.split(",")
        if not all(p.strip().isdigit() for p in parts) or (text.startswith("ddim") and len(parts) != 1):
            raise ValueError(f"steps must be {allowed}; got {steps!r}")
        sections = [int(p) for p in parts]
        if text.startswith("ddim"):
            n = sections[0]
            if not 1 <= n <= num_timesteps:
                raise ValueError(f"steps {steps!r}: N must be in 1..{num_timesteps}")
            return n
    if any(s < 1 for s in sections) or sum(sections) > num_timesteps:
        raise ValueError(
            f"steps {steps!r}: every section count must be >= 1 and the total at most {num_timesteps}"
        )
    return sections


def space_timesteps(num_timesteps: int, steps: int | str) -> list[int]:
    """The original timesteps kept by the IDDPM respacing rule, ascending.

    "ddimN": the fixed integer stride of the DDIM paper (range(0, T, stride) with exactly N entries).
    Otherwise the T steps are cut into equal sections and each is strided evenly to its count.
    """
    spec = parse_steps(steps, num_timesteps)
    if isinstance(spec, int):
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == spec:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"steps {steps!r}: no integer stride gives exactly {spec} of {num_timesteps} timesteps; "
            "use a plain step count instead"
        )
    size_per, extra = divmod(num_timesteps, len(spec))
    start, kept = 0, []
    for i, count in enumerate(spec):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"steps {steps!r}: cannot take {count} steps from a section of {size}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the fractional index and round (Python's round-half-even) exactly as the
        # reference does, so that the kept timesteps (and the trajectory) are bit-identical.
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(kept))


@dataclass(frozen=True)
class SpacedSchedule:
    """The respaced diffusion process: index j (0 = least noisy) visits original timestep `timesteps[j]`.

    `alphas_cumprod[j]` is ᾱ at that timestep, `alphas_cumprod_prev[j]` the ᾱ of the next less noisy
    kept timestep (1 at the end), and `betas[j] = 1 − ᾱ_j / ᾱ_prev` the respaced β, as SpacedDiffusion.
    """

    timesteps: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    betas: np.ndarray

    @classmethod
    def create(cls, steps: int | str, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> SpacedSchedule:
        """Respace the linear schedule of `num_timesteps` to `steps` (see space_timesteps)."""
        kept = np.asarray(space_timesteps(num_timesteps, steps), dtype=np.int64)
        ac = np.cumprod(1.0 - linear_betas(num_timesteps))[kept]
        ac_prev = np.append(1.0, ac[:-1])
        return cls(timesteps=kept, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, betas=1.0 - ac / ac_prev)

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def posterior_variance(self) -> np.ndarray:
        """Variance of q(x_{t-1} | x_t, x_0) of the respaced process (0 at j = 0)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log posterior variance with j = 0 taking j = 1's value (the variance is 0 there)."""
        var = self.posterior_variance
        if len(var) < 2:  # one step: the reference has no value; the step adds no noise anyway
            return np.log(self.betas)
        return np.log(np.append(var[1], var[1:]))


def _alphas_cumprod(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    return np.cumprod(1.0 - linear_betas(num_timesteps))


@cache
def _alphas_cumprod_on(device: Any) -> Any:
    # Once per device: a fresh host-to-device copy per call would stall the host on every training step.
    import torch

    return torch.as_tensor(_alphas_cumprod(), dtype=torch.float64, device=device)


def q_sample(x0: Any, t: Any, noise: Any) -> Any:
    """Diffuse clean latents to original timestep(s) t of the base 1000-step schedule.

    x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise. `t` is an int or one index per batch element (numpy
    array or torch tensor); x0 and noise are numpy arrays or torch tensors of the same shape, (B, C, ...).
    """
    ac = _alphas_cumprod()
    if is_torch(x0):  # torch: look the scalars up on x0's device, no host round trip
        import torch

        table = _alphas_cumprod_on(x0.device)
        idx = torch.as_tensor(t, device=x0.device)
        # Negative indices would wrap silently; checking a GPU tensor would stall on a host sync.
        if idx.device.type == "cpu" and (idx.min() < 0 or idx.max() >= len(ac)):
            raise ValueError(f"timesteps must be in 0..{len(ac) - 1}")
        a = table[idx].to(x0.dtype)
        a = a.reshape(-1, *([1] * (x0.ndim - 1))) if a.ndim else a
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    idx = np.asarray(t)
    if idx.min() < 0 or idx.max() >= len(ac):
        raise ValueError(f"timesteps must be in 0..{len(ac) - 1}")
    a = ac[idx].astype(x0.dtype)
    a = a.reshape(-1, *([1] * (x0.ndim - 1))) if a.ndim else a
    return np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise
