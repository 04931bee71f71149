"""FP8 GEMMs for the blocks' linear layers: an engine lever for large batches.

Each weight is stored once in float8 e4m3 with one scale per output channel; each call quantizes its
activations with one scale per row (the row's absolute maximum maps to e4m3's largest value, 448) and
multiplies with `torch._scaled_mm`, which applies both scales and the bias and writes bf16/fp16. The
products are exact in fp32 accumulation; the error is e4m3's 3 mantissa bits on both operands (a relative
error of up to 2⁻⁴ per element, averaging out over K).

Measured on an H200 with DiT-XL/2's block GEMMs (issue 19's numbers, by a probe since removed; NOTES.md):
no gain at 4,096 rows (8 images with CFG at patch 2: 16 × 256), a loss at ≤ 1,024 rows (0.75-0.84×),
1.04-1.70× per GEMM at 16,384 rows (32 images with CFG). So a layer runs in FP8 only from FP8_MIN_ROWS rows
(batch × tokens) and keeps its bf16 weight for smaller calls. The threshold was measured at DiT-XL's widths
(1,152 and 4,608) only; narrower models may need more rows to win.
"""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
FP8_MIN_ROWS = 16_384
FP8_PRECISIONS = ("bf16", "fp16")  # _scaled_mm writes these (with a bias); fp32 engines stay fp32
FP8_DTYPES = (torch.bfloat16, torch.float16)
_TINY = 1e-12  # an all-zero row gets this scale instead of 0 (its quantized values are 0 either way)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, K] → (e4m3 [rows, K], fp32 scale [rows, 1]) with x ≈ q · scale, each row's absolute
    maximum mapped to E4M3_MAX."""
    x32 = x.float()
    scale = x32.abs().amax(dim=-1, keepdim=True).clamp(min=_TINY) / E4M3_MAX
    q = (x32 / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def fp8_linear(
    x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ W.T + bias for x [..., K] in bf16/fp16, W given as `quantize_rows(W)` with its scale
    transposed to [1, N]; the result in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    q, scale = quantize_rows(rows)
    out = torch._scaled_mm(
        q,
        weight_q.t(),  # column-major, as _scaled_mm wants its second operand
        scale_a=scale,
        scale_b=weight_scale,
        bias=None if bias is None else bias.to(x.dtype),
        out_dtype=x.dtype,
    )
    return out.reshape(*x.shape[:-1], weight_q.shape[0])


def fp8_fits(in_features: int, out_features: int) -> bool:
    """Whether _scaled_mm takes a layer of these widths: on CUDA both must be multiples of 16."""
    return in_features % 16 == 0 and out_features % 16 == 0


def check_fp8(precision: str, device: str) -> str | None:
    """Why FP8 GEMMs cannot run for this engine (None: they can): bf16/fp16 engines only, and on CUDA a
    GPU with FP8 tensor cores (compute capability 8.9 or newer)."""
    if precision not in FP8_PRECISIONS:
        return f"FP8 GEMMs need a bf16 or fp16 engine, not {precision}"
    if device.startswith("cuda"):
        capability = torch.cuda.get_device_capability(torch.device(device))
        if capability < (8, 9):
            return f"FP8 GEMMs need compute capability 8.9 or newer; this GPU has {capability[0]}.{capability[1]}"
    return None
