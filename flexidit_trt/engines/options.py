"""How the torch engines are made: one frozen options object instead of a keyword list per caller."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .backend import RunOptionError

DEFAULT_MAX_BATCH = 64
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class EngineOptions:
    """precision: None picks fp32 on the CPU, bf16 on a GPU. max_batch: images per batch at most.
    compile: torch.compile each engine. cuda_graphs / shared_pool (GPU): replay each engine from CUDA
    graphs, all in one memory pool (False: eager launches / one pool per engine, for comparisons);
    cuda_graphs also turns ONNX Runtime's CUDA graphs on (the ort backend's CUDA provider; the CPU
    provider has none) or off.
    precompute_modulation: the adaLN modulation of every step computed before each chunk's loop in one
    batched pass (memory: steps × rows × (depth·6 + 2)·hidden values; DiT-XL at 8 images: 1.6 GB per
    patch size in bf16). gelu_epilogue: each MLP's fc1 and GELU as one cuBLASLt GEMM with a GELU epilogue
    (CUDA only; None: on for bf16/fp16, `model.gelu_epilogue_default`). flash_attention: flash attention
    first in the engines of ≤ 64 tokens (CUDA; None: on in bf16/fp16, False refuses it). autotune: those
    engines compiled with inductor's max-autotune (CUDA, with compile; minutes of tuning, measured
    slower). fp8: the blocks' GEMMs in FP8 e4m3 with per-row scales in calls of ≥ `model.fp8.FP8_MIN_ROWS`
    rows (batch × tokens), where they measured faster; smaller calls keep bf16/fp16 (bf16/fp16 engines,
    CPU or a GPU of compute capability ≥ 8.9)."""

    precision: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    compile: bool = False
    cuda_graphs: bool = True
    shared_pool: bool = True
    precompute_modulation: bool = False
    gelu_epilogue: bool | None = None
    flash_attention: bool | None = None
    autotune: bool = False
    fp8: bool = False

    def resolved(self, device: str) -> EngineOptions:
        """These options with the precision settled for `device`; RunOptionError naming a bad one."""
        return replace(self, precision=resolve_precision(self.precision, device))


def resolve_precision(precision: str | None, device: str) -> str:
    """fp32 on the CPU, bf16 on a GPU when not given; RunOptionError for an unknown one."""
    if precision is None:
        return "fp32" if device == "cpu" else "bf16"
    if precision not in PRECISIONS:
        raise RunOptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


DEFAULT_ENGINE = EngineOptions()  # the defaults, as a default argument
