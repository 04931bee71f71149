"""Helpers of the runtime tests: a tiny model and a plain reference sampling loop.

The reference loop is written from the diffusion package's public pieces (Sampler.step, guide,
split_cfg, cfg_labels) and runs the static models in float64 on the whole batch at once: it shares no
code with the pipeline's loop (buffers, batch layouts, Philox offsets, the fused step) beyond the
Philox generator, whose stream it reads with offset 0 for all N images.
"""

from __future__ import annotations

import numpy as np
import torch
from array_kernels import philox_normal

from flexidit_trt.diffusion import cfg_labels, guide, make_sampler, plan, split_cfg
from flexidit_trt.model import DiTConfig, FlexiDiT
from flexidit_trt.runtime.pipeline import INIT_NOISE_STEP

# 8x8 latents of 4 channels, patch sizes 2 (16 tokens) and 4 (4 tokens), 10 classes: a forward takes
# well under a millisecond, so 50-step runs cost little.
TINY = dict(
    depth=2, hidden_size=64, num_heads=2, input_size=8, in_channels=4, num_classes=10, patch_sizes=(2, 4)
)


def tiny_model(seed: int = 1, **overrides) -> FlexiDiT:
    config = DiTConfig(**{**TINY, **overrides}, name="tiny")
    return FlexiDiT.from_config(config, init="random", seed=seed)


def reference_samples(
    model: FlexiDiT,
    labels: list[int],
    *,
    budget: float,
    steps: int,
    sampler: str = "ddpm",
    guidance: str = "cfg",
    cfg_scale: float = 4.0,
    seed: int = 0,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """(samples, patch per step) of the textbook loop, float64."""
    cfg = model.config
    smp = make_sampler(sampler, steps)
    macs = {p: model.macs(p) for p in cfg.patch_sizes}
    schedule = plan(budget, len(smp), macs, guidance)
    statics = {p: model.static(p, dtype=torch.float64) for p in cfg.patch_sizes}
    base = min(cfg.patch_sizes)
    weak = min(p for p in cfg.patch_sizes if p != base)
    n = len(labels)
    shape = (n, cfg.in_channels, cfg.input_size, cfg.input_size)
    y = torch.tensor(labels)

    def normals(step: int) -> torch.Tensor:
        z = np.empty(shape, dtype=np.float32)
        philox_normal(z, seed, step)  # element e of the run's flat stream: offset 0 for all N images
        return torch.from_numpy(z).double()

    x = normals(INIT_NOISE_STEP)
    with torch.no_grad():
        for i, p in enumerate(schedule.patch_per_step):
            t = torch.full((n,), float(smp.timesteps[i]), dtype=torch.float64)
            if guidance == "none":
                out = statics[p](x, t, y)
            elif guidance == "weak_to_strong" and p == base:
                out = guide(statics[base](x, t, y), statics[weak](x, t, y), cfg_scale)
            else:
                both = statics[p](torch.cat([x, x]), torch.cat([t, t]), cfg_labels(y, cfg.num_classes))
                out = guide(*split_cfg(both), cfg_scale)
            x = smp.step(out, i, x, noise=normals(i))
    return x.numpy(), schedule.patch_per_step


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to max |b|."""
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())
