"""The one interface every engine implements: one patch size, buffers bound once, forward per step.

A backend serves one patch size of one model. Its life cycle (build, load, activate on shared memory, infer):

    backend = SomeBackend.load(...)                     # read the engine / graph / module
    need = backend.activation_bytes(batch)              # device memory its activations need at `batch`
    backend.bind(io, activations, stream)               # fixed I/O buffers + its share of the shared pool
    backend.prepare([2, 4])                             # warm-up, CUDA graphs per batch (before the loop)
    backend.forward(batch)                              # out[:batch] = model(x[:batch], t[:batch], y[:batch])

`io` is an `IOBuffers`: x (fp32 [B, C, H, W]), t (fp32 [B]), y (int64 [B]) and out ([B, 2C, H, W] in the
backend's `out_dtype`), allocated once per pipeline at the largest batch; a forward at a smaller batch
uses the leading rows. On the CPU the buffers are numpy arrays; on a GPU they are `DeviceArray`s
(address, shape, dtype), so the TensorRT and ONNX Runtime backends never need torch; torch-based
backends wrap the same addresses (`torch.as_tensor` through `__cuda_array_interface__`).

`activations` is the address of one block of the pipeline's arena, sized to the largest
`activation_bytes(max_batch)` over the run's backends (max, not sum), or None when every backend returns
0 (frameworks that own their memory: torch and AOTInductor share one CUDA-graph pool instead, given to
them at construction). `stream` is the run's one CUDA stream as an int handle (0 / None on the CPU).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FlexiditError, UsageError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8}


@dataclass
class DeviceArray:
    """A device buffer: address, shape and dtype name ("float32", "float16", "bfloat16", "int64")."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    device: str  # "cuda:N"

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n

    def rows(self, n: int) -> DeviceArray:
        """The leading n rows (a view: same address)."""
        return DeviceArray(self.ptr, (n, *self.shape[1:]), self.dtype, self.device)

    def row_ptr(self, i: int) -> int:
        """Address of row i."""
        return self.ptr + i * (self.nbytes // self.shape[0])

    @property
    def __cuda_array_interface__(self) -> dict:
        typestr = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "int64": "<i8"}[self.dtype]
        return {
            "shape": self.shape,
            "typestr": typestr,
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
        }


@dataclass
class IOBuffers:
    """The fixed inputs and output of every forward of a run (numpy arrays on CPU, DeviceArray on GPU)."""

    x: Any
    t: Any
    y: Any
    out: Any


class Backend(abc.ABC):
    """One engine for one patch size. Subclasses set the attributes in their constructor."""

    name: str  # "trt", "aoti", "torch", "ort"
    patch_size: int
    max_batch: int
    device: str  # "cpu" or "cuda:N"
    out_dtype: str  # dtype of `out`: "float32", "float16" or "bfloat16"

    @abc.abstractmethod
    def activation_bytes(self, batch: int) -> int:
        """Device memory this engine's activations need at `batch` (0 where the framework owns it)."""

    @abc.abstractmethod
    def bind(self, io: IOBuffers, activations: int | None, stream: Any) -> None:
        """Fix the I/O buffers, the activation block (an address in the shared arena, or None) and the
        stream for every later forward."""

    def prepare(self, batches: Sequence[int]) -> None:  # noqa: B027  (optional)
        """Warm up and capture what `forward` needs at each of `batches` (after `bind`, before the
        loop; called again for new batches, captured ones are kept)."""

    def begin_chunk(self, timesteps: Any, labels: Any) -> None:  # noqa: B027  (optional)
        """Before a chunk's loop: the timesteps of the steps this engine will run (float32, as `t` gets
        them) and the chunk's label rows [labels; null labels] (host arrays). Engines that precompute
        what depends on t and y only use it; others ignore it."""

    def covers(self, batch: int) -> bool:
        """Whether `forward(batch)` can run."""
        return 1 <= batch <= self.max_batch

    @abc.abstractmethod
    def forward(self, batch: int) -> None:
        """out[:batch] = model(x[:batch], t[:batch], y[:batch]), enqueued on the bound stream."""

    def describe(self) -> dict:
        """What the run record says about this engine."""
        return {
            "backend": self.name,
            "patch_size": self.patch_size,
            "max_batch": self.max_batch,
            "device": self.device,
            "out_dtype": self.out_dtype,
        }

    def close(self) -> None:  # noqa: B027  (optional: release engine-owned resources)
        """Release what the backend owns (contexts, graphs, sessions). Idempotent."""


class RunError(FlexiditError):
    """A run cannot go on for a reason the user can fix (bad input, engines missing or built for another
    GPU / version / checkpoint, out of memory); the message says which and how. The CLI prints it as
    one line."""


class RunOptionError(RunError, UsageError):
    """Bad usage: an option value the run cannot take (a label outside the classes, a budget below the
    reachable one, 0 steps, a batch no engine covers...). The CLI exits with 2 for these, 1 for other
    RunErrors."""
