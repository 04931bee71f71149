"""A plain PyTorch sampling loop over a FlexiDiT: planner → model at that step's patch size → guidance → step.

For training-time uses (self-distillation inputs, sample grids of a fresh checkpoint) where the engine
runtime is not wanted; it reads like the reference's sample.py. The runtime's Pipeline is the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion import cfg_labels, guide, make_sampler, plan, split_cfg
from ..model import FlexiDiT


@dataclass(frozen=True)
class SampleOptions:
    steps: int = 250
    budget: float = 1.0  # fraction of the static model's MACs (planner)
    cfg_scale: float = 4.0  # 1.0: no guidance (conditional only)
    seed: int = 0
    bf16: bool = False  # autocast the network on CUDA


@torch.no_grad()
def sample_images(
    model: FlexiDiT, labels: torch.Tensor, options: SampleOptions = SampleOptions()
) -> torch.Tensor:
    """Images [N, C, H, W] (fp32, in the data range) for class `labels` [N], on the model's device."""
    cfg = model.config
    device = next(model.parameters()).device
    labels = labels.to(device=device, dtype=torch.long)
    guidance = "none" if options.cfg_scale == 1.0 else "cfg"
    schedule = plan(options.budget, options.steps, {p: model.macs(p) for p in cfg.patch_sizes}, guidance)
    sampler = make_sampler("ddpm", options.steps, seed=options.seed)
    gen = torch.Generator(device=device).manual_seed(options.seed)
    x = torch.randn(
        len(labels), cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen, device=device
    )
    y = cfg_labels(labels, cfg.num_classes) if guidance == "cfg" else labels
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=options.bf16 and device.type == "cuda")
    for i, (t, p) in enumerate(zip(sampler.timesteps, schedule.patch_per_step, strict=True)):
        x_in = torch.cat([x, x]) if guidance == "cfg" else x
        t_in = torch.full((len(x_in),), int(t), device=device, dtype=torch.long)
        with autocast:
            out = model(x_in, t_in, y, patch_size=p).float()
        if guidance == "cfg":
            cond, uncond = split_cfg(out)
            out = guide(cond, uncond, options.cfg_scale)
        x = sampler.step(out, i, x)
    return x
