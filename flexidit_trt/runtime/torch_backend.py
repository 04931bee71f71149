"""PyTorch backend: `FlexiDiT.static(p)` per patch size, eager (the reference baseline) or compiled with
torch.compile; on CUDA each in CUDA graphs in the pipeline's shared pool (runtime/torch_graphs.py).

With precompute_modulation the adaLN modulation (a third of the weights, and one GEMM launch per block,
that depends on t and y only) is computed for every step of a chunk in one batched pass before the loop
(`begin_chunk`), and each forward looks its step's rows up by timestep instead (`ModulationTable`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
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
        precompute_modulation: bool = False,
    ) -> TorchBackend:
        dtype = TORCH_DTYPES[precision]
        # fp16 keeps the residual stream fp32 (DiT blocks overflow fp16 otherwise), as the export does.
        module = model.static(patch_size, dtype=dtype, fp32_residual=precision == "fp16").to(device)
        table = None
        if precompute_modulation:
            body = module.forward_modulated
            body = torch.compile(body, fullgraph=True, dynamic=False) if compile else body
            table = ModulationTable(module.modulation, device)
            fn = table.forward_with(body)
        else:
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
        backend.table = table
        return backend

    def prepare(self, batches: Sequence[int]) -> None:
        if self.table is not None and self.table.table is None and batches:
            # Capture needs a table to read; the first chunk fills the real one (and captures again).
            self.table.fill(np.zeros(1, np.float32), np.zeros(max(batches), np.int64))
        super().prepare(batches)

    def begin_chunk(self, timesteps: np.ndarray, labels: np.ndarray) -> None:
        if self.table is None:
            return
        captured = sorted(self._graphs)
        with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
            moved = self.table.fill(timesteps, labels)
        if moved and captured:  # the captured graphs read the old table's address: capture them again
            self._graphs.clear()
            self.prepare(captured)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "compiled": self.compiled,
            "precision": self.precision,
            "precomputed_modulation": self.table is not None,
        }


class ModulationTable:
    """Every step's adaLN modulation for a chunk's rows, [steps, rows, width], computed ahead in one batched
    pass per group of steps; a forward finds its step by its timestep (`searchsorted` on the device: no
    host sync, fixed addresses, so CUDA graphs capture the lookup)."""

    STEPS_PER_PASS = 32  # bounds the pass's temporary memory (DiT-XL, 16 rows: ~0.2 GB per 32 steps)

    def __init__(self, modulation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: str):
        self.modulation = modulation
        self.device = device
        self.table: torch.Tensor | None = None  # [steps, rows, width]
        self.timesteps: torch.Tensor | None = None  # [steps] ascending, +inf past the filled ones

    @torch.no_grad()
    def fill(self, timesteps: np.ndarray, labels: np.ndarray) -> bool:
        """Compute the rows of `labels` at every one of `timesteps`; True when the table had to move (it
        grows to the largest chunk seen, then stays)."""
        steps = np.unique(np.asarray(timesteps, dtype=np.float32))  # ascending, as searchsorted needs
        if steps.size == 0:
            return False
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device)
        first = self.modulation(torch.full((1,), float(steps[0]), device=self.device), y[:1])
        moved = (
            self.table is None
            or self.table.shape[0] < steps.size
            or self.table.shape[1] < y.numel()
            or self.table.dtype != first.dtype
        )
        if moved:
            self.table = torch.empty(
                steps.size, y.numel(), first.shape[1], dtype=first.dtype, device=self.device
            )
            self.timesteps = torch.empty(steps.size, dtype=torch.float32, device=self.device)
        self.timesteps.fill_(float("inf"))
        self.timesteps[: steps.size] = torch.as_tensor(steps, device=self.device)
        rows = y.numel()
        for i in range(0, steps.size, self.STEPS_PER_PASS):
            group = torch.as_tensor(steps[i : i + self.STEPS_PER_PASS], device=self.device)
            t = group.repeat_interleave(rows)
            mod = self.modulation(t, y.repeat(group.numel()))
            self.table[i : i + group.numel(), :rows] = mod.view(group.numel(), rows, -1)
        return moved

    def lookup(self, t: torch.Tensor, rows: int) -> torch.Tensor:
        """The modulation of `rows` rows at the step whose timestep is t[0] (every row of a call has it)."""
        slot = torch.searchsorted(self.timesteps, t[:1].float()).clamp_max(self.table.shape[0] - 1)
        return self.table.index_select(0, slot)[0, :rows]

    def forward_with(self, body: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        """The engine's callable: (x, t, y) → body(x, modulation looked up by t); y was read by `fill`."""

        def forward(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if self.table is None:
                raise RuntimeError("begin_chunk() fills the modulation table before the first forward")
            return body(x, self.lookup(t, x.shape[0]))

        return forward


def engine_inputs(spec: ModelSpec, batch: int, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of one engine call at `batch` rows with the dtypes, shapes and layout the pipeline binds,
    so a compiled engine fed them compiles what the pipeline will run: x float32 latents, t float32
    timesteps, y int64 labels spread over the classes (their values do not change the kernels)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *spec.latent_shape, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000
    y = (torch.arange(batch, dtype=torch.int64) * 17) % spec.num_classes
    return tuple(v.to(device) for v in (x, t, y))
