"""PyTorch backend: `FlexiDiT.static(p)` per patch size, eager (the reference baseline) or compiled with
torch.compile; on CUDA each in CUDA graphs in the pipeline's shared pool (runtime/torch_graphs.py)."""

from __future__ import annotations

import torch

from ..model import FlexiDiT
from .spec import ModelSpec
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


def engine_inputs(spec: ModelSpec, batch: int, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of one engine call at `batch` rows with the dtypes, shapes and layout the pipeline binds,
    so a compiled engine fed them compiles what the pipeline will run: x float32 latents, t float32
    timesteps, y int64 labels spread over the classes (their values do not change the kernels)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *spec.latent_shape, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000
    y = (torch.arange(batch, dtype=torch.int64) * 17) % spec.num_classes
    return tuple(v.to(device) for v in (x, t, y))
