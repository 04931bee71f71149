"""The other direction of checkpoints.py's diffusers support: a reference-layout state dict (a
`FlexiDiT.static(p)` state) as diffusers' `DiTTransformer2DModel` stores it, and that class's config.

    transformer = DiTTransformer2DModel(**diffusers_config(static.config))
    transformer.load_state_dict(reference_to_diffusers(static.state_dict()), strict=True)

q/k/v split from the fused qkv; the shared timestep and class embedders copied into every block (diffusers
keeps one per block and conditions the final layer on block 0's). The fixed sin-cos position table is left
out: diffusers recomputes it and does not store it. The same name tables as the reading direction
(checkpoints.DIFFUSERS_BLOCK / DIFFUSERS_TOP), so the two cannot drift apart.

One difference is diffusers' own, not the weights': its DiT embeds the timestep with frequencies
exp(-ln(10⁴)·i/(half − 1)) where DiT's models.py uses i/half (diffusers' `CombinedTimestepLabelEmbeddings`
builds `Timesteps(..., downscale_freq_shift=1)`), so on the same weights its outputs differ slightly from
the reference forward except at t = 0. The compute is the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .checkpoints import DIFFUSERS_BLOCK, DIFFUSERS_TOP
from .config import DiTConfig

_SHARED_EMBEDDERS = "transformer_blocks.0.norm1.emb."  # the per-block copies, as diffusers names block 0's


def reference_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename reference-layout DiT weights to diffusers' DiTTransformer2DModel keys (split q/k/v, copy the
    embedders into every block); the `pos_embed` table is dropped. KeyError names a key it cannot place."""
    top = {ref: ours for ours, ref in DIFFUSERS_TOP.items()}
    block_names = {ref: ours for ours, ref in DIFFUSERS_BLOCK.items()}
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if key == "pos_embed":
            continue
        if prefix in top:
            name = top[prefix]
            if name.startswith(_SHARED_EMBEDDERS):
                for block in range(depth):
                    suffix = name[len(_SHARED_EMBEDDERS) :]
                    out[f"transformer_blocks.{block}.norm1.emb.{suffix}.{leaf}"] = value
            else:
                out[f"{name}.{leaf}"] = value
            continue
        head, block, rest = (prefix.split(".", 2) + ["", ""])[:3]
        if head != "blocks":
            raise KeyError(f"{key} is not a reference DiT key")
        target = f"transformer_blocks.{block}.attn1"
        if rest == "attn.qkv":
            for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"{target}.to_{part}.{leaf}"] = chunk
        elif rest in block_names:
            out[f"transformer_blocks.{block}.{block_names[rest]}.{leaf}"] = value
        else:
            raise KeyError(f"{key} is not a reference DiT key")
    return out


def diffusers_config(config: DiTConfig) -> dict:
    """`DiTTransformer2DModel` keyword arguments for a single-patch-size DiT (its base patch size).
    ValueError for a DiT that class cannot express (its MLP is 4× wide, its class table has the null row)."""
    if config.mlp_ratio != 4.0 or config.class_dropout_prob <= 0:
        raise ValueError(
            f"diffusers' DiTTransformer2DModel has a 4x MLP and a null class row; this config has mlp_ratio "
            f"{config.mlp_ratio} and class_dropout_prob {config.class_dropout_prob}"
        )
    return {
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.hidden_size // config.num_heads,
        "in_channels": config.in_channels,
        "out_channels": config.in_channels * (2 if config.learn_sigma else 1),
        "num_layers": config.depth,
        "norm_num_groups": 32,  # unused by the ada_norm_zero blocks; diffusers' default
        "attention_bias": True,
        "sample_size": config.input_size,
        "patch_size": config.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": config.num_classes,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-5,
    }
