"""The reference DiT's building blocks (facebookresearch/DiT, models.py, and timm's layers it uses), with
a LoRA adapter per weak patch size on every linear layer. Read top to bottom: modulation, the embedders,
the LoRA linear, attention and the MLP. `dit.py` assembles them into the block and the model."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .fp8 import fp8_fits, fp8_linear, quantize_rows


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps → 256-dim sinusoidal features (cos half first) → MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table; the extra last row (index num_classes) is the null class of guidance."""

    def __init__(self, num_embeddings: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_embeddings, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens (timm's PatchEmbed as DiT uses it)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)


class LoRALinear(nn.Linear):
    """nn.Linear plus optional low-rank adapters, one per weak patch size, used only at that size."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.lora = nn.ModuleDict()
        self.lora_scale: dict[str, float] = {}
        self.fp8_min_rows: int | None = None  # calls of this many rows or more run in FP8 (`use_fp8`)

    def add_adapter(self, key: str, rank: int, alpha: float | None = None) -> None:
        adapter = nn.ModuleDict(
            {
                "down": nn.Linear(self.in_features, rank, bias=False),
                "up": nn.Linear(rank, self.out_features, bias=False),
            }
        )
        nn.init.kaiming_uniform_(adapter["down"].weight, a=math.sqrt(5))
        nn.init.zeros_(adapter["up"].weight)  # a fresh adapter changes nothing
        self.lora[key] = adapter
        self.lora_scale[key] = (alpha if alpha is not None else rank) / rank

    def use_fp8(self, min_rows: int) -> bool:
        """Run calls of at least `min_rows` rows (and no adapter) as an FP8 GEMM (`model.fp8`): the weight
        quantized once, per output channel; the plain weight stays for smaller calls. Call it after the
        module's last dtype cast (a cast would turn the e4m3 copy into that dtype). A layer whose widths
        `fp8_fits` refuses stays plain: False."""
        if not fp8_fits(self.in_features, self.out_features):
            return False
        weight_q, scale = quantize_rows(self.weight.detach())
        self.register_buffer("fp8_weight", weight_q, persistent=False)
        self.register_buffer("fp8_scale", scale.t().contiguous(), persistent=False)
        self.fp8_min_rows = min_rows
        return True

    def runs_fp8(self, x: torch.Tensor, adapter: str | None = None) -> bool:
        """Whether this call takes the FP8 GEMM: FP8 on, no adapter, enough rows."""
        return (
            self.fp8_min_rows is not None
            and adapter not in self.lora
            and x.numel() // x.shape[-1] >= self.fp8_min_rows
        )

    def forward(self, x: torch.Tensor, adapter: str | None = None) -> torch.Tensor:
        if self.runs_fp8(x, adapter):
            return fp8_linear(x, self.fp8_weight, self.fp8_scale, self.bias)
        out = F.linear(x, self.weight, self.bias)
        if adapter is not None and adapter in self.lora:
            lora = self.lora[adapter]
            out = out + lora["up"](lora["down"](x)) * self.lora_scale[adapter]
        return out

    def folded_weight(self, adapter: str) -> torch.Tensor:
        """The plain weight with the adapter merged in (weight + scale · up · down), a new tensor."""
        lora = self.lora[adapter]
        delta = (lora["up"].weight.double() @ lora["down"].weight.double()) * self.lora_scale[adapter]
        return (self.weight.double() + delta).to(self.weight.dtype).detach()


class Attention(nn.Module):
    """Multi-head self-attention (timm's, as DiT uses it). Runs in its weights' dtype.

    sdpa_backends: the attention kernels the dispatcher may choose from (an engine's lever,
    `FlexiDiT.static`); None leaves every kernel to it."""

    sdpa_backends: tuple[SDPBackend, ...] | None = None

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = LoRALinear(dim, dim * 3)
        self.proj = LoRALinear(dim, dim)

    def forward(self, x: torch.Tensor, adapter: str | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = x.to(self.qkv.weight.dtype)
        qkv = (
            self.qkv(h, adapter).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        if self.sdpa_backends is None:
            h = F.scaled_dot_product_attention(q, k, v)
        else:
            with sdpa_kernel(list(self.sdpa_backends)):
                h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(1, 2).reshape(b, n, d)
        return self.proj(h, adapter).to(x.dtype)


class Mlp(nn.Module):
    """fc1 → tanh-GELU → fc2. Runs in its weights' dtype.

    gelu_epilogue (a compiled engine's lever, CUDA only): fc1 and the GELU as one cuBLASLt GEMM whose
    epilogue adds the bias and applies tanh-GELU, so the 4×-wide hidden activation is written once
    instead of written, read and written again; compilers keep `_addmm_activation` as that one call.
    Off by default: on the CPU the same op applies the exact GELU, not DiT's tanh one. A call whose fc1
    runs in FP8 (`LoRALinear.use_fp8`) takes the plain path: _scaled_mm has no GELU epilogue."""

    gelu_epilogue = False

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = LoRALinear(dim, hidden)
        self.fc2 = LoRALinear(hidden, dim)

    def forward(self, x: torch.Tensor, adapter: str | None = None) -> torch.Tensor:
        h = x.to(self.fc1.weight.dtype)
        if self.gelu_epilogue and h.is_cuda and adapter not in self.fc1.lora and not self.fc1.runs_fp8(h):
            rows = h.reshape(-1, h.shape[-1])
            h = torch._addmm_activation(self.fc1.bias, rows, self.fc1.weight.t(), use_gelu=True)
            h = h.reshape(*x.shape[:-1], -1)
        else:
            h = F.gelu(self.fc1(h, adapter), approximate="tanh")
        return self.fc2(h, adapter).to(x.dtype)
