"""An independent, functional transcription of the reference DiT forward (facebookresearch/DiT models.py).

It reads a state dict in the official layout and computes the forward with plain tensor ops, so the
tests can compare our module against the reference math on the same weights. Also: the official key
layout built from sizes alone, and the diffusers renaming, written from the format descriptions rather
than from our loader.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def official_shapes(depth, hidden, patch, in_channels=4, num_classes=1000, input_size=32, learn_sigma=True):
    """Key → shape of an official DiT checkpoint (`DiT-XL-2-256x256.pt` style)."""
    out_ch = 2 * in_channels if learn_sigma else in_channels
    tokens = (input_size // patch) ** 2
    shapes = {
        "x_embedder.proj.weight": (hidden, in_channels, patch, patch),
        "x_embedder.proj.bias": (hidden,),
        "pos_embed": (1, tokens, hidden),
        "t_embedder.mlp.0.weight": (hidden, 256),
        "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden),
        "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (num_classes + 1, hidden),
    }
    for n in range(depth):
        b = f"blocks.{n}."
        shapes.update(
            {
                b + "attn.qkv.weight": (3 * hidden, hidden),
                b + "attn.qkv.bias": (3 * hidden,),
                b + "attn.proj.weight": (hidden, hidden),
                b + "attn.proj.bias": (hidden,),
                b + "mlp.fc1.weight": (4 * hidden, hidden),
                b + "mlp.fc1.bias": (4 * hidden,),
                b + "mlp.fc2.weight": (hidden, 4 * hidden),
                b + "mlp.fc2.bias": (hidden,),
                b + "adaLN_modulation.1.weight": (6 * hidden, hidden),
                b + "adaLN_modulation.1.bias": (6 * hidden,),
            }
        )
    shapes.update(
        {
            "final_layer.linear.weight": (patch * patch * out_ch, hidden),
            "final_layer.linear.bias": (patch * patch * out_ch,),
            "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
            "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
        }
    )
    return shapes


def random_official_state(depth, hidden, patch, input_size=32, seed=0, std=0.05, **kw):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(depth, hidden, patch, input_size=input_size, **kw).items():
        state[key] = torch.randn(shape, generator=gen) * std
    state["pos_embed"] = torch.from_numpy(pos_embed_2d(hidden, input_size // patch)).float().unsqueeze(0)
    return state


def pos_embed_2d(dim, grid):
    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing="ij")

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # The reference's meshgrid(w, h) puts the column coordinate first.
    return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


def dit_forward(state, x, t, y, num_heads, patch):
    """The reference forward on an official-layout state dict (float64 if the inputs are)."""
    s = {k: v.to(x.dtype) for k, v in state.items()}
    n, c_in, hgt, wid = x.shape
    h = F.conv2d(x, s["x_embedder.proj.weight"], s["x_embedder.proj.bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2) + s["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half).to(x.dtype)
    args = t[:, None].to(x.dtype) * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    temb = F.linear(
        F.silu(F.linear(temb, s["t_embedder.mlp.0.weight"], s["t_embedder.mlp.0.bias"])),
        s["t_embedder.mlp.2.weight"],
        s["t_embedder.mlp.2.bias"],
    )
    c = temb + s["y_embedder.embedding_table.weight"][y]
    depth = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("blocks."))
    dim = h.shape[-1]

    def ln(v):
        return F.layer_norm(v, (dim,), eps=1e-6)

    def mod(v, shift, scale):
        return v * (1 + scale[:, None]) + shift[:, None]

    for i in range(depth):
        b = f"blocks.{i}."
        m = F.linear(F.silu(c), s[b + "adaLN_modulation.1.weight"], s[b + "adaLN_modulation.1.bias"])
        sh1, sc1, g1, sh2, sc2, g2 = m.chunk(6, dim=1)
        a = mod(ln(h), sh1, sc1)
        qkv = F.linear(a, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"])
        tokens = qkv.shape[1]
        q, k, v = qkv.reshape(n, tokens, 3, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // num_heads), dim=-1)
        a = (att @ v).transpose(1, 2).reshape(n, tokens, dim)
        h = h + g1[:, None] * F.linear(a, s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        a = mod(ln(h), sh2, sc2)
        a = F.gelu(F.linear(a, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"]), approximate="tanh")
        h = h + g2[:, None] * F.linear(a, s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"])
    m = F.linear(
        F.silu(c), s["final_layer.adaLN_modulation.1.weight"], s["final_layer.adaLN_modulation.1.bias"]
    )
    shift, scale = m.chunk(2, dim=1)
    h = F.linear(mod(ln(h), shift, scale), s["final_layer.linear.weight"], s["final_layer.linear.bias"])
    out_ch = h.shape[-1] // (patch * patch)
    g = hgt // patch
    h = h.reshape(n, g, g, patch, patch, out_ch).permute(0, 5, 1, 3, 2, 4)
    return h.reshape(n, out_ch, hgt, wid)


def to_diffusers(state, num_heads, patch, input_size):
    """The official layout renamed as diffusers' DiTTransformer2DModel stores it, plus its config."""
    out = {}
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hidden = state["x_embedder.proj.weight"].shape[0]
    for leaf in ("weight", "bias"):
        out[f"pos_embed.proj.{leaf}"] = state[f"x_embedder.proj.{leaf}"]
        out[f"proj_out_1.{leaf}"] = state[f"final_layer.adaLN_modulation.1.{leaf}"]
        out[f"proj_out_2.{leaf}"] = state[f"final_layer.linear.{leaf}"]
        for i in range(depth):
            b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
            q, k, v = state[b + f"attn.qkv.{leaf}"].chunk(3, dim=0)
            out[d + f"attn1.to_q.{leaf}"], out[d + f"attn1.to_k.{leaf}"], out[d + f"attn1.to_v.{leaf}"] = (
                q,
                k,
                v,
            )
            out[d + f"attn1.to_out.0.{leaf}"] = state[b + f"attn.proj.{leaf}"]
            out[d + f"ff.net.0.proj.{leaf}"] = state[b + f"mlp.fc1.{leaf}"]
            out[d + f"ff.net.2.{leaf}"] = state[b + f"mlp.fc2.{leaf}"]
            out[d + f"norm1.linear.{leaf}"] = state[b + f"adaLN_modulation.1.{leaf}"]
            emb = d + "norm1.emb."
            out[emb + f"timestep_embedder.linear_1.{leaf}"] = state[f"t_embedder.mlp.0.{leaf}"]
            out[emb + f"timestep_embedder.linear_2.{leaf}"] = state[f"t_embedder.mlp.2.{leaf}"]
    for i in range(depth):
        out[f"transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight"] = state[
            "y_embedder.embedding_table.weight"
        ]
    in_ch = state["x_embedder.proj.weight"].shape[1]
    config = {
        "_class_name": "DiTTransformer2DModel",
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": hidden // num_heads,
        "in_channels": in_ch,
        "norm_type": "ada_norm_zero",
        "num_attention_heads": num_heads,
        "num_embeds_ada_norm": state["y_embedder.embedding_table.weight"].shape[0] - 1,
        "num_layers": depth,
        "out_channels": state["final_layer.linear.weight"].shape[0] // (patch * patch),
        "patch_size": patch,
        "sample_size": input_size,
    }
    return {k: v.contiguous().clone() for k, v in out.items()}, config
