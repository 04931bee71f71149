"""The reference DiT sampling loop, transcribed: facebookresearch/DiT's sample.py as it runs, in torch.

    with reference_precision():                       # fp32 weights, TF32 matmuls and convolutions
        samples = reference_sample(model, [207, 360], cfg_scale=4.0, steps=250, seed=0, device="cuda")

Sources (facebookresearch/DiT, main): sample.py (TF32 on, `create_diffusion(str(num_sampling_steps))`,
z = randn(n, 4, latent, latent), the CFG batch [z; z] with labels [y; 1000], `p_sample_loop(
model.forward_with_cfg, z.shape, z, clip_denoised=False, model_kwargs=dict(y=y, cfg_scale=...),
device=...)`, then the first half kept); models.py `DiT.forward_with_cfg` (one forward on [half; half],
CFG on the first 3 channels only, the guided half duplicated back to 2B); diffusion/
gaussian_diffusion.py `p_sample_loop` / `p_sample_loop_progressive` / `p_sample` / `p_mean_variance`
(LEARNED_RANGE variance, EPSILON mean, no clipping) / `_predict_xstart_from_eps` /
`q_posterior_mean_variance` / `_extract_into_tensor`; diffusion/respace.py `_WrappedModel` (the spaced
index mapped to the original timestep on every call). Kept close to the original's structure and
per-step work (host-side coefficient tables copied to the device on every extract, the variance
exponentiated though unused, the whole 2B batch stepped): that work is part of what the benchmark
compares against. The schedule's numpy float64 arrays come from reference_iddpm.py (beside this file,
the transcription the sampler tests check ours against). No VAE: the benchmark times the loop. Nothing
here comes from the package's diffusion/: this loop is the baseline that code is measured and checked
against.

Two hooks the original lacks, both off by default: `initial_noise` (sample.py draws z with
torch.randn) and `step_noise(k, x)` (p_sample draws torch.randn_like(x) at loop position k = 0 for the
noisiest step), so a test can feed the reference the very noise our pipeline uses; and `guided_channels`
(3, as the reference) so the same test can match a pipeline that guides all channels.

The network is the project's FlexiDiT at its base patch size: its forward is the reference forward
(tests/test_model.py checks it against an independent transcription of models.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from . import reference_iddpm

REFERENCE_GUIDED_CHANNELS = 3  # models.py: "for exact reproducibility", CFG on three channels only


def forward_with_cfg(model, x, t, y, cfg_scale, guided_channels: int = REFERENCE_GUIDED_CHANNELS):
    """models.py DiT.forward_with_cfg, with `model.forward` the network."""
    half = x[: len(x) // 2]
    combined = torch.cat([half, half], dim=0)
    model_out = model.forward(combined, t, y)
    eps, rest = model_out[:, :guided_channels], model_out[:, guided_channels:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    eps = torch.cat([half_eps, half_eps], dim=0)
    return torch.cat([eps, rest], dim=1)


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape) -> torch.Tensor:
    """gaussian_diffusion._extract_into_tensor: the float64 table to the device, indexed, as float32."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    while len(res.shape) < len(broadcast_shape):
        res = res[..., None]
    return res + torch.zeros(broadcast_shape, device=timesteps.device)


class _WrappedModel:
    """respace._WrappedModel: the model sees the original timestep of each spaced index."""

    def __init__(self, model, timestep_map, original_num_steps):
        self.model = model
        self.timestep_map = timestep_map
        self.original_num_steps = original_num_steps

    def __call__(self, x, ts, **kwargs):
        map_tensor = torch.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        new_ts = map_tensor[ts]
        return self.model(x, new_ts, **kwargs)


class ReferenceDiffusion:
    """The sampling half of DiT's SpacedDiffusion (create_diffusion's defaults: linear betas over 1000
    steps, learned-range variance, epsilon prediction), on the arrays reference_iddpm computes."""

    def __init__(self, timestep_respacing: str | int = 250, diffusion_steps: int = 1000):
        spaced = reference_iddpm.create_diffusion(str(timestep_respacing), diffusion_steps)
        self.num_timesteps = spaced.num_timesteps
        self.timestep_map = spaced.timestep_map
        self.original_num_steps = spaced.original_num_steps
        self.betas = spaced.betas
        self.posterior_variance = spaced.posterior_variance
        self.posterior_log_variance_clipped = spaced.posterior_log_variance_clipped
        self.posterior_mean_coef1 = spaced.posterior_mean_coef1
        self.posterior_mean_coef2 = spaced.posterior_mean_coef2
        self.sqrt_recip_alphas_cumprod = spaced.sqrt_recip_alphas_cumprod
        self.sqrt_recipm1_alphas_cumprod = spaced.sqrt_recipm1_alphas_cumprod

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.original_num_steps)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        posterior_mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        posterior_variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        posterior_log_variance_clipped = _extract_into_tensor(
            self.posterior_log_variance_clipped, t, x_t.shape
        )
        return posterior_mean, posterior_variance, posterior_log_variance_clipped

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def p_mean_variance(self, model, x, t, clip_denoised=True, model_kwargs=None):
        model = self._wrap_model(model)  # SpacedDiffusion.p_mean_variance
        if model_kwargs is None:
            model_kwargs = {}
        B, C = x.shape[:2]
        assert t.shape == (B,)
        model_output = model(x, t, **model_kwargs)
        assert model_output.shape == (B, C * 2, *x.shape[2:])
        model_output, model_var_values = torch.split(model_output, C, dim=1)
        min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
        max_log = _extract_into_tensor(np.log(self.betas), t, x.shape)
        # The model_var_values is [-1, 1] for [min_var, max_var].
        frac = (model_var_values + 1) / 2
        model_log_variance = frac * max_log + (1 - frac) * min_log
        model_variance = torch.exp(model_log_variance)

        def process_xstart(x):
            if clip_denoised:
                return x.clamp(-1, 1)
            return x

        pred_xstart = process_xstart(self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output))
        model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
        return {
            "mean": model_mean,
            "variance": model_variance,
            "log_variance": model_log_variance,
            "pred_xstart": pred_xstart,
        }

    def p_sample(self, model, x, t, clip_denoised=True, model_kwargs=None, noise=None):
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        if noise is None:
            noise = torch.randn_like(x)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))  # no noise when t == 0
        sample = out["mean"] + nonzero_mask * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise=None, **kwargs):
        """The last step of p_sample_loop_progressive (the original repeats its keyword list here)."""
        final = None
        for sample in self.p_sample_loop_progressive(model, shape, noise=noise, **kwargs):
            final = sample
        return final["sample"]

    def p_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        model_kwargs=None,
        device=None,
        progress=False,
        step_noise: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> Iterator[dict]:
        if device is None:
            device = next(model.parameters()).device
        assert isinstance(shape, (tuple, list))
        img = noise if noise is not None else torch.randn(*shape, device=device)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices)
        for k, i in enumerate(indices):
            t = torch.tensor([i] * shape[0], device=device)
            with torch.no_grad():
                fed = step_noise(k, img) if step_noise is not None else None
                out = self.p_sample(
                    model, img, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs, noise=fed
                )
                yield out
                img = out["sample"]


@contextlib.contextmanager
def reference_precision() -> Iterator[None]:
    """What sample.py sets at import: TF32 for matmuls and cuDNN convolutions (restored on exit)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def reference_sample(
    model,
    class_labels: Sequence[int],
    *,
    cfg_scale: float = 4.0,
    steps: int = 250,
    seed: int = 0,
    device: str = "cuda",
    diffusion: ReferenceDiffusion | None = None,
    initial_noise: torch.Tensor | None = None,
    step_noise: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    guided_channels: int = REFERENCE_GUIDED_CHANNELS,
) -> torch.Tensor:
    """sample.py's main() from the seed to the latents (no VAE): [n, C, H, W] on `device`.

    `model` is an fp32 network in eval mode on `device` whose forward(x, t, y) is DiT's (a FlexiDiT runs
    its base patch size). initial_noise ([n, C, H, W]) replaces torch.randn for z; step_noise(k, x)
    the per-step draws; diffusion: a prepared ReferenceDiffusion (default: create_diffusion(steps)).
    """
    torch.manual_seed(seed)
    diffusion = diffusion or ReferenceDiffusion(steps)
    config = model.config
    latent_size = config.input_size
    n = len(class_labels)
    if initial_noise is None:
        z = torch.randn(n, config.in_channels, latent_size, latent_size, device=device)
    else:
        z = initial_noise.to(device)
    y = torch.tensor(list(class_labels), device=device)

    # Setup classifier-free guidance:
    z = torch.cat([z, z], 0)
    y_null = torch.tensor([config.num_classes] * n, device=device)
    y = torch.cat([y, y_null], 0)
    model_kwargs = dict(y=y, cfg_scale=cfg_scale)

    def model_fn(x, t, y, cfg_scale):
        return forward_with_cfg(model, x, t, y, cfg_scale, guided_channels)

    samples = diffusion.p_sample_loop(
        model_fn,
        z.shape,
        z,
        clip_denoised=False,
        model_kwargs=model_kwargs,
        device=device,
        step_noise=step_noise,
    )
    samples, _ = samples.chunk(2, dim=0)  # Remove null class samples
    return samples
