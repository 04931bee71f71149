"""PyTorch backend: `FlexiDiT.static(p)` per patch size, eager (the reference baseline) or compiled with
torch.compile; on CUDA each in CUDA graphs in the pipeline's shared pool (runtime/torch_graphs.py)."""

from __future__ import annotations

import torch

from ..model import FlexiDiT
from .torch_graphs import DTYPE_NAMES, TORCH_DTYPES, GraphPool, TorchGraphBackend


class TorchBackend(TorchGraphBackend):
    name = "torch"

    @classmethod
    def from_model(
        cls,
        model: FlexiDiT,
        patch_size: int,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        max_batch: int = 1 << 16,
        pool: GraphPool | None = None,
        cuda_graphs: bool = True,
    ) -> TorchBackend:
        dtype = TORCH_DTYPES[precision]
        # fp16 keeps the residual stream fp32 (DiT blocks overflow fp16 otherwise), as the export does.
        module = model.static(patch_size, dtype=dtype, fp32_residual=precision == "fp16").to(device)
        fn = torch.compile(module, fullgraph=True, dynamic=False) if compile else module
        backend = cls(
            fn,
            patch_size=patch_size,
            device=device,
            out_dtype=DTYPE_NAMES[dtype],
            max_batch=max_batch,
            pool=pool,
            cuda_graphs=cuda_graphs,
        )
        backend.compiled = compile
        backend.precision = precision
        return backend

    def describe(self) -> dict:
        return {**super().describe(), "compiled": self.compiled, "precision": self.precision}
