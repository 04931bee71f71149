"""FlexiDiT: the reference DiT network (facebookresearch/DiT, models.py) run at several patch sizes.

Read top to bottom, after its building blocks in layers.py: the DiT block, the final layer, the model,
then the sin-cos helpers. Parameter names follow the reference so an official state dict loads as is;
per-patch-size parts live under `weak.p<k>.*` and `*.lora.p<k>.*`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from .config import DiTConfig, get_config
from .fp8 import FP8_DTYPES
from .layers import Attention, LabelEmbedder, LoRALinear, Mlp, PatchEmbed, TimestepEmbedder, modulate
from .resize import resize_patch_embedding, resize_patch_projection


class AdaLNModulated(nn.Module):
    """A module conditioned by adaLN: `adaLN_modulation` (SiLU, then a LoRALinear) turns c into its shifts,
    scales (and gates); it depends on t and y only, so it can be computed ahead (`FlexiDiT.modulation`)."""

    adaLN_modulation: nn.Sequential

    def modulation(self, c: torch.Tensor, adapter: str | None = None) -> torch.Tensor:
        return self.adaLN_modulation[1](F.silu(c), adapter)


class DiTBlock(AdaLNModulated):
    """adaLN-Zero transformer block: c gives shift/scale/gate for attention and for the MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), LoRALinear(hidden_size, 6 * hidden_size))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None,
        adapter: str | None = None,
        mod: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mod: this block's modulation ([N, 6·hidden]: shift, scale, gate for attention, then for the
        MLP) computed ahead; then c is not read."""
        mod = (self.modulation(c, adapter) if mod is None else mod).to(x.dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), adapter)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp), adapter)
        return x


class FinalLayer(AdaLNModulated):
    """adaLN modulation then the per-token linear de-embedding to p·p·out_channels values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), LoRALinear(hidden_size, 2 * hidden_size))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None,
        linear: nn.Linear,
        adapter: str | None = None,
        mod: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mod = (self.modulation(c, adapter) if mod is None else mod).to(x.dtype)
        shift, scale = mod.chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)
        return linear(x.to(linear.weight.dtype))


class PatchIO(nn.Module):
    """What a weak patch size owns: its patch embedding, its de-embedding and its positional grid."""

    def __init__(self, config: DiTConfig, patch_size: int):
        super().__init__()
        self.x_embedder = PatchEmbed(patch_size, config.in_channels, config.hidden_size)
        self.linear = nn.Linear(config.hidden_size, patch_size * patch_size * config.out_channels)
        pos = sincos_pos_embed(config.hidden_size, config.input_size // patch_size)
        self.register_buffer("pos_embed", pos, persistent=False)  # fixed: recomputed, never stored


class FlexiDiT(nn.Module):
    """A DiT whose transformer is shared by every patch size in `config.patch_sizes`.

    forward(x, t, y, patch_size=p): x [N, C, H, W] latents, t [N] timesteps, y [N] class labels
    (num_classes = null class) → [N, out_channels, H, W] (noise prediction, then variance values).
    """

    def __init__(self, config: DiTConfig, initialize: bool = True):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.x_embedder = PatchEmbed(p, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_embeddings, d)
        # A fixed sin-cos table, kept as a (frozen) parameter so the reference state dict matches.
        self.pos_embed = nn.Parameter(sincos_pos_embed(d, config.input_size // p), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, p, config.out_channels)
        self.weak = nn.ModuleDict({adapter_key(q): PatchIO(config, q) for q in config.weak_patch_sizes})
        if config.lora_rank > 0:
            for q in config.weak_patch_sizes:
                for layer in self.lora_layers():
                    layer.add_adapter(adapter_key(q), config.lora_rank, config.lora_alpha)
        if initialize:
            self.initialize_weights()

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, name: str | DiTConfig, *, init: str = "dit", seed: int = 0, **overrides) -> FlexiDiT:
        """Build a named config (`dit_s`, `dit_b`, `dit_l`, `dit_xl`) with `overrides`.

        init: "dit" (the reference's adaLN-Zero init), "random" (every weight drawn, seeded: outputs
        depend on every parameter, for tests and latency work), or "empty" (no init; to be loaded).
        """
        config = name if isinstance(name, DiTConfig) else get_config(name, **overrides)
        if init not in ("dit", "random", "empty"):
            raise ValueError(f"init must be 'dit', 'random' or 'empty', got {init!r}")
        if init == "dit":
            return cls(config)
        # Shapes only, no init work (DiT-XL has 675 M parameters); fixed tables are recomputed.
        with torch.device("meta"):
            model = cls(config, initialize=False)
        model.to_empty(device="cpu")
        model.reset_fixed_tables()
        return model.randomize_(seed) if init == "random" else model

    def initialize_weights(self) -> None:
        """The reference init: Xavier linears, zeroed adaLN and final layer, then weak sizes by resize."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        for name, module in self.named_modules():
            if ".lora." not in f".{name}.":  # adapters keep their own (zero-effect) init
                basic(module)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        self.init_weak_from_base()

    @torch.no_grad()
    def reset_fixed_tables(self) -> None:
        """Recompute the sin-cos positional tables (they are functions of the config, never learned)."""
        cfg = self.config
        self.pos_embed.copy_(sincos_pos_embed(cfg.hidden_size, cfg.input_size // cfg.patch_size))
        for q in cfg.weak_patch_sizes:
            self.weak[adapter_key(q)].pos_embed.copy_(sincos_pos_embed(cfg.hidden_size, cfg.input_size // q))

    @torch.no_grad()
    def randomize_(self, seed: int = 0, std: float = 0.02) -> FlexiDiT:
        """Draw every learned tensor from N(0, std²) (seeded), then re-derive weak sizes from the base."""
        gen = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if name == "pos_embed":
                continue
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * std)
        self.init_weak_from_base()
        return self

    @torch.no_grad()
    def init_weak_from_base(self) -> None:
        """Set every weak patch size's embedding and de-embedding from the base ones (pinv resize)."""
        p = self.config.patch_size
        for q in self.config.weak_patch_sizes:
            io = self.weak[adapter_key(q)]
            io.x_embedder.proj.weight.copy_(resize_patch_embedding(self.x_embedder.proj.weight, q))
            io.x_embedder.proj.bias.copy_(self.x_embedder.proj.bias)
            w, b = resize_patch_projection(self.final_layer.linear.weight, self.final_layer.linear.bias, p, q)
            io.linear.weight.copy_(w)
            io.linear.bias.copy_(b)

    # -- the network -------------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, patch_size: int | None = None
    ) -> torch.Tensor:
        p = self.check_input(x, patch_size)
        embedder, pos_embed, linear = self.patch_io(p)
        adapter = adapter_key(p) if p != self.config.patch_size else None
        h = embedder(x) + pos_embed.to(embedder.proj.weight.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        h = h.to(self.residual_dtype())
        for block in self.blocks:
            h = block(h, c, adapter)
        h = self.final_layer(h, c, linear, adapter)
        return unpatchify(h, p, self.config.out_channels)

    # -- the adaLN modulation computed ahead (it depends on t and y only, not on x) ------------------------
    def modulation(self, t: torch.Tensor, y: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        """[N, depth·6·hidden + 2·hidden]: every block's modulation, then the final layer's, as `forward`
        computes them at `patch_size` (its adapters), in the residual stream's dtype."""
        return torch.cat(list(self.modulation_parts(t, y, patch_size)), dim=1).to(self.residual_dtype())

    def modulation_parts(
        self, t: torch.Tensor, y: torch.Tensor, patch_size: int | None = None
    ) -> Iterator[torch.Tensor]:
        """`modulation`'s column blocks one at a time ([N, 6·hidden] per block, then [N, 2·hidden]), in the
        adaLN layers' dtype: a caller that stores them never holds the whole [N, width] twice."""
        p = patch_size or self.config.patch_size
        adapter = adapter_key(p) if p != self.config.patch_size else None
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            yield block.modulation(c, adapter)
        yield self.final_layer.modulation(c, adapter)

    @property
    def modulation_width(self) -> int:
        """Columns of `modulation`: 6·hidden per block, then the final layer's 2·hidden."""
        return (6 * len(self.blocks) + 2) * self.config.hidden_size

    def forward_modulated(
        self, x: torch.Tensor, mod: torch.Tensor, patch_size: int | None = None
    ) -> torch.Tensor:
        """`forward` with the modulation given (from `modulation(t, y, patch_size)`): no adaLN GEMM runs."""
        p = self.check_input(x, patch_size)
        embedder, pos_embed, linear = self.patch_io(p)
        adapter = adapter_key(p) if p != self.config.patch_size else None
        h = (embedder(x) + pos_embed.to(embedder.proj.weight.dtype)).to(self.residual_dtype())
        width = 6 * self.config.hidden_size
        for i, block in enumerate(self.blocks):
            h = block(h, None, adapter, mod=mod[:, i * width : (i + 1) * width])
        h = self.final_layer(h, None, linear, adapter, mod=mod[:, len(self.blocks) * width :])
        return unpatchify(h, p, self.config.out_channels)

    def patch_io(self, patch_size: int) -> tuple[PatchEmbed, torch.Tensor, nn.Linear]:
        if patch_size == self.config.patch_size:
            return self.x_embedder, self.pos_embed, self.final_layer.linear
        io = self.weak[adapter_key(patch_size)]
        return io.x_embedder, io.pos_embed, io.linear

    def check_input(self, x: torch.Tensor, patch_size: int | None) -> int:
        cfg = self.config
        p = cfg.patch_size if patch_size is None else int(patch_size)
        if p not in cfg.patch_sizes:
            raise ValueError(f"patch size {p} is not one of this model's patch sizes {list(cfg.patch_sizes)}")
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected latents [N, {cfg.in_channels}, H, W], got shape {list(x.shape)}")
        h, w = x.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by patch size {p}")
        if (h, w) != (cfg.input_size, cfg.input_size):
            raise ValueError(
                f"latent size {h}x{w} does not match the model's input_size {cfg.input_size} "
                "(the positional embedding is fixed per grid)"
            )
        return p

    def residual_dtype(self) -> torch.dtype:
        # The residual stream runs in the dtype of the norms' neighbours: the adaLN linears. With
        # `static(..., fp32_residual=True)` they stay fp32 while attention and MLP weights are halved.
        return self.blocks[0].adaLN_modulation[1].weight.dtype if len(self.blocks) else torch.float32

    # -- flexibility -------------------------------------------------------------------------------------
    def lora_layers(self) -> Iterator[LoRALinear]:
        for module in self.modules():
            if isinstance(module, LoRALinear):
                yield module

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return self.config.patch_sizes

    @torch.no_grad()
    def static(
        self,
        patch_size: int,
        dtype: torch.dtype | None = None,
        fp32_residual: bool = False,
        gelu_epilogue: bool = False,
        sdpa_backends: tuple[SDPBackend, ...] | None = None,
        fp8_min_rows: int | None = None,
    ) -> FlexiDiT:
        """A plain single-patch-size model (reference key layout) with that size's LoRA folded in.

        dtype: cast the network to it; with fp32_residual the embedders, adaLN modulation, gates,
        norms and the residual stream stay fp32 and only attention and MLP run in `dtype` (the
        layout that avoids fp16 overflow in DiT blocks). gelu_epilogue: every MLP's fc1 + GELU as one
        GEMM with a GELU epilogue on CUDA (`Mlp`). sdpa_backends: the attention kernels allowed
        (`Attention`; e.g. FLASH_FIRST). fp8_min_rows: the blocks' four linear layers run calls of at least
        this many rows (batch × tokens) as FP8 GEMMs (`model.fp8`; a bf16/fp16 `dtype` only).
        """
        if patch_size not in self.config.patch_sizes:
            raise ValueError(
                f"patch size {patch_size} is not one of this model's patch sizes {list(self.config.patch_sizes)}"
            )
        if fp8_min_rows is not None and dtype not in FP8_DTYPES:
            raise ValueError(f"FP8 GEMMs need a bf16 or fp16 model, not {dtype}")
        cfg = self.config.replace(patch_size=patch_size, patch_sizes=(patch_size,), lora_rank=0)
        adapter = adapter_key(patch_size) if patch_size != self.config.patch_size else None
        state = {k: v.detach() for k, v in self.state_dict().items() if is_base_key(k)}
        for name, module in self.named_modules():
            if isinstance(module, LoRALinear) and adapter in module.lora:
                state[f"{name}.weight"] = module.folded_weight(adapter)
        embedder, _, linear = self.patch_io(patch_size)
        state["x_embedder.proj.weight"] = embedder.proj.weight.detach()
        state["x_embedder.proj.bias"] = embedder.proj.bias.detach()
        state["final_layer.linear.weight"] = linear.weight.detach()
        state["final_layer.linear.bias"] = linear.bias.detach()
        state["pos_embed"] = sincos_pos_embed(cfg.hidden_size, cfg.input_size // patch_size)
        with torch.device("meta"):
            model = FlexiDiT(cfg, initialize=False)
        # One copy of every weight (the static model must not alias the flexible one), then the casts.
        model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
        model.eval().requires_grad_(False)
        if dtype is not None and fp32_residual:
            for block in model.blocks:
                block.attn.to(dtype)
                block.mlp.to(dtype)
        elif dtype is not None:
            model.to(dtype)
        for block in model.blocks:
            block.mlp.gelu_epilogue = gelu_epilogue
            block.attn.sdpa_backends = sdpa_backends
            if fp8_min_rows is not None:
                for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                    linear.use_fp8(fp8_min_rows)
        return model

    # -- accounting --------------------------------------------------------------------------------------
    def macs(self, patch_size: int | None = None) -> int:
        """Multiply-accumulates of one image forward at `patch_size` (the DiT paper's "Gflops")."""
        from .macs import forward_macs

        return forward_macs(self.config, self.config.patch_size if patch_size is None else patch_size)

    def num_parameters(self, base_only: bool = True) -> int:
        """Parameters of the reference layout (base_only) or everything incl. weak sizes and LoRA."""
        return sum(v.numel() for k, v in self.state_dict().items() if not base_only or is_base_key(k))


def adapter_key(patch_size: int) -> str:
    return f"p{patch_size}"


def is_base_key(key: str) -> bool:
    """True for keys of the reference DiT layout (not per-patch-size embeddings or adapters)."""
    return not key.startswith("weak.") and ".lora." not in key


def unpatchify(x: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """[N, T, p·p·C] tokens → [N, C, H, W] (the reference's einsum nhwpqc → nchpwq).

    Written as a permute so the exported graph holds a plain Transpose (TensorRT shuffles it freely;
    ONNX's Einsum has no bf16 before opset 22)."""
    n, tokens, _ = x.shape
    h = w = int(round(math.sqrt(tokens)))
    x = x.reshape(n, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, channels, h * p, w * p)


# -- fixed 2-D sin-cos positional embedding (as the reference's get_2d_sincos_pos_embed) --------------------
def sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """[1, grid², D] table: first half of D from the column coordinate, second half from the row."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb = np.concatenate([_sincos_1d(embed_dim // 2, grid[0]), _sincos_1d(embed_dim // 2, grid[1])], axis=1)
    return torch.from_numpy(emb).float().unsqueeze(0)


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
