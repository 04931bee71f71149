"""PyTorch backend: `FlexiDiT.static(p)` per patch size, eager (the reference baseline) or compiled with
torch.compile; on CUDA each in CUDA graphs in the pipeline's shared pool (engines/torch_graphs.py).

With precompute_modulation the adaLN modulation (a third of the weights, and one GEMM launch per block,
that depends on t and y only) is computed for every step of a chunk in one batched pass before the loop
(`begin_chunk`), and each forward looks its step's rows up by timestep instead (`ModulationTable`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model import FlexiDiT
from ..model.fp8 import FP8_MIN_ROWS, check_fp8
from ..model.levers import FLASH_FIRST, resolve_levers
from .backend import RunOptionError
from .options import DEFAULT_ENGINE, EngineOptions
from .spec import ModelSpec
from .torch_graphs import DTYPE_NAMES, TORCH_DTYPES, GraphPool, TorchGraphBackend

# How every torch engine is compiled (one shape per engine batch); `build --compile-cache` records it.
COMPILE_OPTIONS = {"fullgraph": True, "dynamic": False}


@dataclass(frozen=True)
class TorchLevers:
    """How one torch engine was made, its options as the rule settled them (for the record)."""

    compiled: bool
    precision: str
    gelu_epilogue: bool
    flash_attention: bool
    autotune: bool
    fp8: bool = False


class TorchBackend(TorchGraphBackend):
    name = "torch"

    def __init__(
        self, fn: Callable, levers: TorchLevers, table: ModulationTable | None = None, **kwargs: Any
    ):
        super().__init__(fn, **kwargs)
        self.levers = levers
        self.compiles_on_first_call = levers.compiled
        self.table = table  # the precomputed modulation (None: computed in each forward)

    @classmethod
    def from_model(
        cls,
        model: FlexiDiT,
        patch_size: int,
        options: EngineOptions = DEFAULT_ENGINE,
        *,
        device: str = "cpu",
        max_batch: int = 1 << 16,
        pool: GraphPool | None = None,
    ) -> TorchBackend:
        """The engine of one patch size as `options` ask (precision None: fp32). The GELU epilogue, flash
        attention and autotune (inductor's max-autotune: Triton GEMM templates and tuned reductions,
        minutes of compile; with compile) are CUDA only, flash and autotune in engines of ≤ 64 tokens,
        settled by `model.levers.resolve_levers`."""
        precision = options.precision or "fp32"
        compile = options.compile
        dtype = TORCH_DTYPES[precision]
        gelu_epilogue, flash, autotune = resolve_levers(
            device,
            precision,
            model.config.tokens(patch_size),
            options.gelu_epilogue,
            options.flash_attention,
            options.autotune,
        )
        autotune = autotune and compile
        if options.fp8 and (why := check_fp8(precision, device)) is not None:
            raise RunOptionError(why)
        compile_options: dict[str, Any] = dict(COMPILE_OPTIONS)
        if autotune:  # our own CUDA graphs replay the engine, so inductor must not add its own
            compile_options["mode"] = "max-autotune-no-cudagraphs"
        # fp16 keeps the residual stream fp32 (DiT blocks overflow fp16 otherwise), as the export does.
        module = model.static(
            patch_size,
            dtype=dtype,
            fp32_residual=precision == "fp16",
            gelu_epilogue=gelu_epilogue,
            sdpa_backends=FLASH_FIRST if flash else None,
            fp8_min_rows=FP8_MIN_ROWS if options.fp8 else None,
        ).to(device)
        table = None
        if options.precompute_modulation:
            body = module.forward_modulated
            body = torch.compile(body, **compile_options) if compile else body
            table = ModulationTable(
                module.modulation_parts, module.modulation_width, module.residual_dtype(), device
            )
            fn = table.forward_with(body)
        else:
            fn = torch.compile(module, **compile_options) if compile else module
        levers = TorchLevers(compile, precision, gelu_epilogue, flash, autotune, options.fp8)
        return cls(
            fn,
            levers,
            table,
            patch_size=patch_size,
            device=device,
            out_dtype=DTYPE_NAMES[dtype],
            max_batch=max_batch,
            pool=pool,
            cuda_graphs=options.cuda_graphs,
        )

    def prepare(self, batches: Sequence[int]) -> None:
        if self.table is not None and batches:
            # Capture reads the table: it must hold every row the batch reads before anything is captured.
            self._on_stream(self.table.reserve, 1, max(batches))
        super().prepare(batches)

    def begin_chunk(self, timesteps: np.ndarray, labels: np.ndarray) -> None:
        if self.table is not None:
            self._on_stream(self.table.fill, timesteps, labels)

    def _on_stream(self, change: Callable[..., bool], *args: Any) -> None:
        """Change the table on the run's stream (ordered with the replays); if it moved, every captured graph
        read the old address: capture them all again."""
        with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
            moved = change(*args)
        if moved and self._graphs:
            captured = sorted(self._graphs)
            self._graphs.clear()
            super().prepare(captured)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "compiled": self.levers.compiled,
            "precision": self.levers.precision,
            "precomputed_modulation": self.table is not None,
            "gelu_epilogue": self.levers.gelu_epilogue,
            "flash_attention": self.levers.flash_attention,
            "autotune": self.levers.autotune,
            "fp8_min_rows": FP8_MIN_ROWS
            if self.levers.fp8
            else None,  # block GEMMs of ≥ this many rows in FP8
        }

    def close(self) -> None:
        super().close()
        if self.table is not None:
            self.table.release()


def torch_engines(
    model: FlexiDiT, device: str, options: EngineOptions
) -> tuple[dict[int, TorchBackend], list[GraphPool]]:
    """One engine per patch size of `model` on `device` (options' precision settled), and the CUDA-graph
    pools they use: one shared by all, or one per engine with shared_pool False (to measure what sharing
    saves); none on the CPU."""
    pool = GraphPool(device) if device != "cpu" else None
    pools = [pool] if pool else []
    engines: dict[int, TorchBackend] = {}
    for p in model.patch_sizes:
        own = pool if options.shared_pool or pool is None else GraphPool(device)
        engines[p] = TorchBackend.from_model(model, p, options, device=device, pool=own)
    return engines, pools


class ModulationTable:
    """Every step's adaLN modulation for a chunk's rows, [steps, rows, width], computed ahead: all steps in
    one batched pass, each layer's columns written into the table as they come (`modulation_parts`); a
    forward finds its step by its timestep (`searchsorted` on the device: no host sync, fixed addresses, so
    CUDA graphs capture the lookup). It only grows (steps and rows each to the largest seen), so a captured
    graph stays valid until a fill or reserve says it moved."""

    # Steps × rows per pass: bounds one layer's temporary (DiT-XL: 8192 × 6912 bf16, 0.11 GB). 250 steps of
    # 8 images (16 rows) is one pass: the fill is ~90 launches whatever the steps, not ~90 and a host sync
    # per 32 steps (on an H200 the per-32-step fill had torch-premod spend 21-42 ms outside its loop against
    # torch's 5-10 ms; with one pass torch-fused spent 13-17 ms, the fill itself ~2 ms of host time).
    ROWS_PER_PASS = 8192

    def __init__(
        self,
        modulation_parts: Callable[[torch.Tensor, torch.Tensor], Iterator[torch.Tensor]],
        width: int,
        dtype: torch.dtype,
        device: str,
    ):
        self.modulation_parts = modulation_parts
        self.width, self.dtype, self.device = width, dtype, device
        self.table: torch.Tensor | None = None  # [steps, rows, width]
        self.timesteps: torch.Tensor | None = None  # [steps] ascending, +inf past the filled ones

    def reserve(self, steps: int, rows: int) -> bool:
        """Room for `steps` × `rows` (never less than now); True when the table moved (a new address)."""
        have = (0, 0) if self.table is None else tuple(self.table.shape[:2])
        if steps <= have[0] and rows <= have[1]:
            return False
        steps, rows = max(steps, have[0]), max(rows, have[1])
        self.release()  # before the new one: never both alive (DiT-XL: up to 1.6 GB each)
        self.table = torch.zeros(steps, rows, self.width, dtype=self.dtype, device=self.device)
        self.timesteps = torch.full((steps,), float("inf"), dtype=torch.float32, device=self.device)
        return True

    @torch.no_grad()
    def fill(self, timesteps: np.ndarray, labels: np.ndarray) -> bool:
        """Compute the rows of `labels` at every one of `timesteps` (the steps one chunk runs on this
        engine); True when the table had to move."""
        steps = np.unique(np.asarray(timesteps, dtype=np.float32))  # ascending, as searchsorted needs
        if steps.size == 0:
            return False
        # One upload each: a pageable copy waits for the stream, so never one per pass.
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device)
        t = torch.as_tensor(steps, device=self.device)
        rows = y.numel()
        moved = self.reserve(steps.size, rows)
        self.timesteps.fill_(float("inf"))
        self.timesteps[: steps.size] = t
        per_pass = max(1, self.ROWS_PER_PASS // max(rows, 1))
        for i in range(0, steps.size, per_pass):
            group = t[i : i + per_pass]
            n, col = group.numel(), 0
            for part in self.modulation_parts(group.repeat_interleave(rows), y.repeat(n)):
                width = part.shape[1]  # the copy casts to the table's (residual) dtype, as `modulation` does
                self.table[i : i + n, :rows, col : col + width] = part.reshape(n, rows, width)
                col += width
            if col != self.width:
                raise RuntimeError(f"the modulation has {col} columns, the table {self.width}")
        return moved

    def lookup(self, t: torch.Tensor, rows: int) -> torch.Tensor:
        """The modulation of `rows` rows at the step whose timestep is t[0] (every row of a call has it)."""
        if self.table is None or rows > self.table.shape[1]:
            have = 0 if self.table is None else self.table.shape[1]
            raise RuntimeError(f"the modulation table holds {have} rows, a forward of {rows} asked for more")
        slot = torch.searchsorted(self.timesteps, t[:1].float()).clamp_max(self.table.shape[0] - 1)
        return self.table[:, :rows].index_select(0, slot)[0]  # copies the rows asked for, not the capacity

    def forward_with(self, body: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        """The engine's callable: (x, t, y) → body(x, modulation looked up by t); y was read by `fill`."""

        def forward(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return body(x, self.lookup(t, x.shape[0]))

        return forward

    def release(self) -> None:
        self.table = self.timesteps = None


def engine_inputs(spec: ModelSpec, batch: int, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of one engine call at `batch` rows with the dtypes, shapes and layout the pipeline binds,
    so a compiled engine fed them compiles what the pipeline will run: x float32 latents, t float32
    timesteps, y int64 labels spread over the classes (their values do not change the kernels)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *spec.latent_shape, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000
    y = (torch.arange(batch, dtype=torch.int64) * 17) % spec.num_classes
    return tuple(v.to(device) for v in (x, t, y))
