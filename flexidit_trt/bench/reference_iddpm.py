"""Transcription of the reference sampler math, in float64 numpy: the schedule of the reference sampling
loop (reference_loop.py, in torch) and the tests' reference for our samplers and training loss
(tests/test_diffusion_samplers.py, tests/test_training_losses.py). It shares nothing with the package's diffusion/, whose math it checks.

Source: facebookresearch/DiT (commit 29e4fa6), diffusion/__init__.py (create_diffusion),
diffusion/respace.py (space_timesteps, SpacedDiffusion, _WrappedModel) and diffusion/gaussian_diffusion.py
(get_named_beta_schedule("linear"), GaussianDiffusion.__init__, q_sample, q_posterior_mean_variance,
p_mean_variance with EPSILON / LEARNED_RANGE, p_sample, ddim_sample), which in turn derive from OpenAI's
improved-diffusion / guided-diffusion. Only what the tests need: model outputs are passed in instead of
a model, clip_denoised=False, no denoised_fn/cond_fn, and float64 throughout (the reference extracts the
coefficients as float32). Kept deliberately close to the original's structure, not to our code's.
"""

from __future__ import annotations

import numpy as np


def get_named_beta_schedule_linear(num_diffusion_timesteps: int) -> np.ndarray:
    scale = 1000 / num_diffusion_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps, section_counts):
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired_count = int(section_counts[len("ddim") :])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == desired_count:
                    return set(range(0, num_timesteps, i))
            raise ValueError(f"cannot create exactly {num_timesteps} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


class GaussianDiffusion:
    """EPSILON mean, LEARNED_RANGE variance (what create_diffusion makes for DiT)."""

    def __init__(self, betas):
        betas = np.array(betas, dtype=np.float64)
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = (
            np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            if len(self.posterior_variance) > 1
            else np.array([])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    def q_sample(self, x_start, t, noise):
        return self.sqrt_alphas_cumprod[t] * x_start + self.sqrt_one_minus_alphas_cumprod[t] * noise

    def q_posterior_mean(self, x_start, x_t, t):
        return self.posterior_mean_coef1[t] * x_start + self.posterior_mean_coef2[t] * x_t

    def p_mean_variance(self, model_output, x, t):
        """`model_output` is what the (wrapped) model returned for x at spaced step t: (B, 2C, ...)."""
        C = x.shape[1]
        model_output, model_var_values = model_output[:, :C], model_output[:, C:]
        min_log = self.posterior_log_variance_clipped[t]
        max_log = np.log(self.betas)[t]
        frac = (model_var_values + 1) / 2
        model_log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = (
            self.sqrt_recip_alphas_cumprod[t] * x - self.sqrt_recipm1_alphas_cumprod[t] * model_output
        )
        model_mean = self.q_posterior_mean(pred_xstart, x, t)
        return {"mean": model_mean, "log_variance": model_log_variance, "pred_xstart": pred_xstart}

    def p_sample(self, model_output, x, t, noise):
        out = self.p_mean_variance(model_output, x, t)
        nonzero_mask = float(t != 0)
        return out["mean"] + nonzero_mask * np.exp(0.5 * out["log_variance"]) * noise

    def ddim_sample(self, model_output, x, t, noise, eta=0.0):
        out = self.p_mean_variance(model_output, x, t)
        eps = (self.sqrt_recip_alphas_cumprod[t] * x - out["pred_xstart"]) / self.sqrt_recipm1_alphas_cumprod[
            t
        ]
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod_prev[t]
        sigma = (
            eta * np.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * np.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        mean_pred = (
            out["pred_xstart"] * np.sqrt(alpha_bar_prev) + np.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        )
        nonzero_mask = float(t != 0)
        return mean_pred + nonzero_mask * sigma * noise


class SpacedDiffusion(GaussianDiffusion):
    def __init__(self, use_timesteps, betas):
        self.use_timesteps = set(use_timesteps)
        self.timestep_map = []
        self.original_num_steps = len(betas)
        base_diffusion = GaussianDiffusion(betas)
        last_alpha_cumprod = 1.0
        new_betas = []
        for i, alpha_cumprod in enumerate(base_diffusion.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        super().__init__(np.array(new_betas))


def create_diffusion(timestep_respacing, diffusion_steps=1000):
    """DiT's create_diffusion with its defaults (linear schedule, learn_sigma=True, EPSILON)."""
    betas = get_named_beta_schedule_linear(diffusion_steps)
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    return SpacedDiffusion(space_timesteps(diffusion_steps, timestep_respacing), betas)


def sample_indices(diffusion):
    """The loop order of p_sample_loop: spaced t from num_timesteps-1 down to 0, and the original
    timestep the wrapped model is fed at each (timestep_map[t], rescale_timesteps off)."""
    spaced = list(range(diffusion.num_timesteps))[::-1]
    return spaced, [diffusion.timestep_map[t] for t in spaced]
