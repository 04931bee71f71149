"""Guidance: classifier-free (CFG) and FlexiDiT's weak-to-strong, one formula for both.

`guide(cond, baseline, scale, guided_channels)` works on raw model outputs (B, 2C, H, W) — prediction
channels, then the learned-variance channels — or (B, C, H, W) for models without learned sigma:

    out[:, :g] = baseline[:, :g] + scale · (cond[:, :g] − baseline[:, :g])
    out[:, g:] = cond[:, g:]          (unguided prediction channels and the whole variance half)

- CFG: baseline = the unconditional prediction (null class). The reference DiT guides only the first 3
  of the 4 latent channels (REFERENCE_GUIDED_CHANNELS, "for reproducibility"); guided_channels=None
  guides all C, the standard choice.
- Weak-to-strong: baseline = the weak (large-patch) model's CONDITIONAL prediction for the same x, t, y.

CFG batch layout (as the reference `forward_with_cfg`): one forward on the batch [x; x] with labels
[y; null], null = num_classes (1000 for ImageNet), so the first half is conditional and the second
unconditional. `cfg_labels` builds the labels, `split_cfg` the halves. Unlike the reference — which
duplicates the guided half back to 2B and steps both copies — the sampler then steps B latents.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import is_torch

REFERENCE_GUIDED_CHANNELS = 3


def _copy(a: Any) -> Any:
    return a.clone() if is_torch(a) else np.array(a, copy=True)


def guide(
    cond: Any, baseline: Any, scale: float, guided_channels: int | None = None, *, learned_sigma: bool = True
) -> Any:
    """Guided output: prediction channels < guided_channels move from baseline toward cond by `scale`.

    cond, baseline: model outputs of equal shape (B, 2C, ...) (or (B, C, ...) with learned_sigma=False),
    numpy or torch. guided_channels: how many leading prediction channels to guide, 1..C, or None for
    all C (REFERENCE_GUIDED_CHANNELS = 3 reproduces the reference). The rest, and the variance half,
    are cond's. scale = 1 returns cond; scale = 0 the baseline on the guided channels.
    """
    if tuple(cond.shape) != tuple(baseline.shape):
        raise ValueError(f"cond {tuple(cond.shape)} and baseline {tuple(baseline.shape)} differ in shape")
    total = cond.shape[1]
    if learned_sigma and total % 2:
        raise ValueError(f"learned_sigma output needs an even channel count (2C), got {total}")
    channels = total // 2 if learned_sigma else total
    g = channels if guided_channels is None else int(guided_channels)
    if not 1 <= g <= channels:
        raise ValueError(
            f"guided_channels must be in 1..{channels} (the prediction channels) or None, got {g}"
        )
    out = _copy(cond)
    out[:, :g] = baseline[:, :g] + scale * (cond[:, :g] - baseline[:, :g])
    return out


def split_cfg(model_out: Any) -> tuple[Any, Any]:
    """(conditional, unconditional) halves of a CFG forward on [x; x] with labels [y; null]."""
    if model_out.shape[0] % 2:
        raise ValueError(f"a CFG output has an even batch ([cond; uncond]), got {model_out.shape[0]}")
    half = model_out.shape[0] // 2
    return model_out[:half], model_out[half:]


def cfg_labels(labels: Any, num_classes: int = 1000) -> Any:
    """Labels for a CFG forward: [y; null] with null = num_classes (the embedding table's last row)."""
    if is_torch(labels):
        import torch

        return torch.cat([labels, torch.full_like(labels, num_classes)])
    labels = np.asarray(labels)
    return np.concatenate([labels, np.full_like(labels, num_classes)])
