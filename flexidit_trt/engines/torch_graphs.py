"""The torch side of the torch and aoti backends, in one place: run a forward `fn(x, t, y) -> out` on the
pipeline's fixed buffers; on CUDA, one CUDA graph per batch, captured after a warm-up on the run's
stream, every graph of every engine in one shared memory pool (`GraphPool`) — the torch backends'
counterpart of TensorRT's shared activation block: engines run one after another on one stream, so their
graphs can reuse the same pool memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..device import is_cuda
from .backend import Backend, DeviceArray, IOBuffers, RunError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
WARMUP_ITERS = 2  # cuDNN/cuBLAS heuristics and torch.compile's first call happen here, not in the graph


class GraphPool:
    """One CUDA-graph memory pool shared by every graph of a pipeline (created on first use)."""

    def __init__(self, device: str):
        self.device = device
        self._handle: Any = None

    @property
    def handle(self) -> Any:
        if self._handle is None:
            with torch.cuda.device(self.device):
                self._handle = torch.cuda.graph_pool_handle()
        return self._handle

    @property
    def pool_id(self) -> tuple[int, int] | None:
        """The pool's id as the allocator's snapshot spells a segment's `segment_pool_id`: a plain pair of
        ints (graph_pool_handle() returns that pair; torch 2.13 types it as the `_POOL_HANDLE` NewType, the
        pair itself at run time). None until first use: no graph was captured in it, so it holds nothing."""
        return None if self._handle is None else (int(self._handle[0]), int(self._handle[1]))


def graph_pool_bytes(pools: Sequence[GraphPool], segments: Sequence[dict] | None = None) -> dict[str, Any]:
    """Device memory that the CUDA-graph pools among `pools` hold now, read from the caching allocator's
    snapshot (`segments`: torch.cuda.memory_snapshot(), taken here when not given). A pool that several
    engines share counts once. Per pool: reserved bytes, the `total_size` of the segments whose
    `segment_pool_id` is the pool's id (what its graphs keep for replay; blocks freed during capture stay
    in the pool), and allocated bytes, its blocks in state `active_allocated` (tensors still alive).
    Neither the general pool (id (0, 0): weights, buffers, eager warm-up) nor any other pool counts,
    unlike a peak of memory_reserved. Pool ids are process-wide, so every device's segments are read."""
    per = {  # one entry per distinct pool, in the order given
        p.pool_id: {"pool_id": list(p.pool_id), "reserved_bytes": 0, "allocated_bytes": 0, "segments": 0}
        for p in pools
        if p.pool_id is not None
    }
    if segments is None:
        segments = torch.cuda.memory_snapshot() if per else []
    for seg in segments:
        entry = per.get(tuple(int(v) for v in seg["segment_pool_id"]))
        if entry is None:
            continue
        entry["segments"] += 1
        entry["reserved_bytes"] += seg["total_size"]
        entry["allocated_bytes"] += sum(b["size"] for b in seg["blocks"] if b["state"] == "active_allocated")
    rows = list(per.values())
    return {
        "reserved_bytes": sum(r["reserved_bytes"] for r in rows),
        "allocated_bytes": sum(r["allocated_bytes"] for r in rows),
        "pools": rows,
    }


def as_tensor(buf: Any, device: str) -> torch.Tensor:
    """A torch view (no copy) of a pipeline buffer: numpy on the CPU, DeviceArray on CUDA. bf16 buffers
    are uint16 bits on the numpy / __cuda_array_interface__ side."""
    if isinstance(buf, np.ndarray):
        tensor = torch.from_numpy(buf)
        bf16 = buf.dtype == np.uint16
    elif isinstance(buf, DeviceArray):
        tensor = torch.as_tensor(buf, device=device)
        bf16 = buf.dtype == "bfloat16"
    else:
        raise TypeError(f"expected a numpy array or a DeviceArray, got {type(buf).__name__}")
    return tensor.view(torch.bfloat16) if bf16 else tensor


class TorchGraphBackend(Backend):
    """A backend whose forward is a torch callable: eager on the CPU (or with cuda_graphs=False), CUDA
    graphs per batch in the shared pool otherwise. Subclasses load the callable."""

    compiles_on_first_call = False  # torch.compile'd callables: prepare() runs each batch once without graphs

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        patch_size: int,
        device: str,
        out_dtype: str,
        max_batch: int,
        pool: GraphPool | None,
        cuda_graphs: bool = True,
    ):
        self.fn = fn
        self.patch_size = patch_size
        self.device = device
        self.out_dtype = out_dtype
        self.max_batch = max_batch
        self.pool = pool
        self.use_graphs = cuda_graphs and is_cuda(device)
        if self.use_graphs and pool is None:
            raise ValueError("CUDA graphs need the pipeline's GraphPool")
        self._tensors: tuple[torch.Tensor, ...] = ()
        self._stream: Any = None
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._warmed: set[int] = set()  # batches already run once without graphs

    def activation_bytes(self, batch: int) -> int:
        return 0  # torch's caching allocator owns it: the shared graph pool

    def bind(self, io: IOBuffers, activations: int | None, stream: Any) -> None:
        self._tensors = tuple(as_tensor(b, self.device) for b in (io.x, io.t, io.y, io.out))
        want = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            self.out_dtype
        ]
        if self._tensors[3].dtype != want:
            raise ValueError(f"out buffer is {self._tensors[3].dtype}, this engine writes {want}")
        if is_cuda(self.device):
            self._stream = torch.cuda.ExternalStream(int(stream or 0), device=self.device)
        self._graphs.clear()

    def _run(self, batch: int) -> None:
        x, t, y, out = self._tensors
        out[:batch].copy_(self.fn(x[:batch], t[:batch], y[:batch]))

    @torch.no_grad()
    def prepare(self, batches: Sequence[int]) -> None:
        if not self.use_graphs:
            # A compiled callable compiles on its first call per shape: made here, outside the timed loop.
            for b in batches:
                if self.compiles_on_first_call and b not in self._warmed:
                    self.forward(b)
                    self._warmed.add(b)
            return
        for b in batches:
            if b in self._graphs:
                continue
            try:
                with torch.cuda.stream(self._stream):
                    for _ in range(WARMUP_ITERS):
                        self._run(b)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool.handle, stream=self._stream):
                    self._run(b)
            except torch.cuda.OutOfMemoryError as err:
                raise RunError(
                    f"{self.device} out of memory capturing the p{self.patch_size} engine at batch {b}: "
                    f"{str(err).splitlines()[0]}"
                ) from None
            self._graphs[b] = graph

    @torch.no_grad()
    def forward(self, batch: int) -> None:
        if self.use_graphs:
            graph = self._graphs.get(batch)
            if graph is None:
                raise RuntimeError(f"batch {batch} was not prepared (prepare() captures its CUDA graph)")
            with torch.cuda.stream(self._stream):  # replay launches on the current stream
                graph.replay()
        elif self._stream is not None:
            with torch.cuda.stream(self._stream):
                self._run(batch)
        else:
            self._run(batch)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "cuda_graphs": self.use_graphs,
            "captured_batches": sorted(self._graphs),
        }

    def close(self) -> None:
        self._graphs.clear()
        self._tensors = ()
