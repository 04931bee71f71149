"""Analytic compute of one image forward, in multiply-accumulates (the DiT paper's "Gflops").

Counted: every matmul and the patch-embedding convolution, attention's QKᵀ and AV products.
Not counted (as in the paper's tables): norms, activations, softmax, additions, modulation.
"""

from __future__ import annotations

from .config import DiTConfig


def forward_macs(config: DiTConfig, patch_size: int) -> int:
    if patch_size not in config.patch_sizes:
        raise ValueError(f"patch size {patch_size} is not one of the patch sizes {list(config.patch_sizes)}")
    d, n = config.hidden_size, config.tokens(patch_size)
    mlp = int(d * config.mlp_ratio)
    embed = n * (config.in_channels * patch_size**2) * d
    timestep = 256 * d + d * d
    per_block = (
        n * (3 * d * d + d * d)  # qkv and output projection
        + 2 * n * n * d  # QKᵀ and AV over all heads
        + n * 2 * d * mlp  # fc1 and fc2
        + d * 6 * d  # adaLN modulation (once per image)
    )
    final = d * 2 * d + n * d * patch_size**2 * config.out_channels
    return embed + timestep + config.depth * per_block + final
