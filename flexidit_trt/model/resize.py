"""Patch-size resizing of the embedding and de-embedding weights (FlexiViT's pseudo-inverse resize).

A p×p patch is resized to p'×p' by a fixed linear map B (bilinear interpolation, [p'², p²]).
- Embedding: w' = pinv(Bᵀ) w, so that ⟨B x, w'⟩ = ⟨x, w⟩ for every patch x (exact when p' ≥ p, since
  Bᵀ then has full row rank): an up-sized patch embeds like the original.
- De-embedding: a token's predicted p×p patch is up-sized, W' = B W per output channel (bias too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_matrix(old: int, new: int) -> torch.Tensor:
    """B with B @ vec(patch) = vec(bilinear_resize(patch, new)), float64, shape [new², old²]."""
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bilinear", align_corners=False, antialias=False)
    return resized.reshape(old * old, new * new).T.contiguous()


def resize_patch_embedding(weight: torch.Tensor, new: int) -> torch.Tensor:
    """Conv kernel [D, C, p, p] → [D, C, new, new] by pinv(Bᵀ) (computed in float64)."""
    d, c, old, _ = weight.shape
    b = resize_matrix(old, new)
    resize = torch.linalg.pinv(b.T)  # [new², old²]
    flat = weight.detach().to(torch.float64).reshape(d * c, old * old)
    return (flat @ resize.T).reshape(d, c, new, new).to(weight.dtype)


def resize_patch_projection(
    weight: torch.Tensor, bias: torch.Tensor, old: int, new: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final linear [p²·C_out, D] (rows ordered p, q, c as DiT's unpatchify) → [new²·C_out, D]."""
    b = resize_matrix(old, new)
    out_channels = weight.shape[0] // (old * old)

    def up(t: torch.Tensor) -> torch.Tensor:
        rows = t.detach().to(torch.float64).reshape(old * old, out_channels, -1)  # [(p q), c, D]
        return torch.einsum("ij,jcd->icd", b, rows).reshape(new * new * out_channels, *t.shape[1:])

    return up(weight).to(weight.dtype), up(bias.unsqueeze(-1)).squeeze(-1).to(bias.dtype)
