"""The engine levers a torch engine of the model may pull, and the rule that decides them: the GELU
epilogue (`Mlp.gelu_epilogue`) and flash attention first (`Attention.sdpa_backends`); each was measured
on an H200 (benchmarks/NOTES.md)."""

from __future__ import annotations

from torch.nn.attention import SDPBackend

from ..device import is_cuda

# Every attention kernel but cuDNN's, so flash comes first whatever torch's priority order is (on Hopper
# torch puts cuDNN first, lazily, at the process's first attention call; changing that order inside a
# region can be undone by it). At 64 tokens (patch 4 at 256 px) flash took 7.7 µs per call against cuDNN's
# 11.9 on an H200, at 256 tokens 33.0 against 25.1 (benchmarks/NOTES.md).
FLASH_FIRST = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
# Engines of at most this many tokens (patch 4 at 256 px) take the levers aimed at them: flash is faster
# there (not at 256 tokens); max-autotune was tried there because their GEMMs ran at 78% of the matmul peak
# against patch 2's 97%, and measured slower (benchmarks/NOTES.md, 2026-12-01).
FEW_TOKENS = 64


def gelu_epilogue_default(device: str, precision: str) -> bool:
    """Whether engines use `Mlp.gelu_epilogue` when not told: on CUDA in bf16 (measured 5-7% faster per
    forward on an H200, no loss of accuracy: benchmarks/NOTES.md, 2026-12-01) and fp16 (the same cuBLASLt
    path, not measured); fp32 keeps the ordinary path (its numerics are the parity tests' reference)."""
    return is_cuda(device) and precision in ("bf16", "fp16")


def use_gelu_epilogue(device: str, precision: str, requested: bool | None) -> bool:
    """Whether an engine runs `Mlp.gelu_epilogue`: CUDA only; `gelu_epilogue_default` when not requested."""
    return gelu_epilogue_default(device, precision) if requested is None else requested and is_cuda(device)


def resolve_levers(
    device: str,
    precision: str,
    tokens: int,
    gelu_epilogue: bool | None,
    flash_attention: bool | None,
    autotune: bool = False,
) -> tuple[bool, bool, bool]:
    """(GELU epilogue, flash attention first, max-autotune) for one torch engine: `use_gelu_epilogue`;
    flash and autotune only on CUDA, in engines of ≤ FEW_TOKENS tokens. Flash is on by default (None) in
    bf16/fp16, where it measured faster (p4 forwards −5% in bf16, NOTES 2026-12-01); False refuses it, and
    fp32 (which flash kernels do not run) keeps the dispatcher's choice unless asked. Autotune measured
    slower, so only when asked."""
    few = is_cuda(device) and tokens <= FEW_TOKENS
    flash = (precision in ("bf16", "fp16") if flash_attention is None else flash_attention) and few
    return use_gelu_epilogue(device, precision, gelu_epilogue), flash, autotune and few
