"""The one interface every engine implements: one patch size, buffers bound once, forward per step.

A backend serves one patch size of one model. Its life cycle follows demoDiffusion's engines:

    backend = SomeBackend.load(...)                     # read the engine / graph / module
    need = backend.activation_bytes(batch)              # device memory its activations need at `batch`
    backend.bind(io, activations, stream)               # fixed I/O buffers + its share of the shared pool
    backend.forward(batch)                              # out[:batch] = model(x[:batch], t[:batch], y[:batch])

`io` is an `IOBuffers`: x (fp32 [B, C, H, W]), t (fp32 [B]), y (int64 [B]) and out ([B, 2C, H, W] in the
backend's `out_dtype`), allocated once per run at the largest batch by the pipeline; a forward at a
smaller batch uses the leading rows. On the CPU the buffers are numpy arrays; on a GPU they are device
addresses (ints) with shapes, so the TensorRT and ONNX Runtime backends never need torch; torch-based
backends wrap the same addresses (DLPack / `torch.as_strided` on `from_blob`-style views).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


@dataclass
class DeviceArray:
    """A device buffer: address, shape and dtype name ("float32", "float16", "bfloat16", "int64")."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    device: str  # "cuda:N"

    @property
    def __cuda_array_interface__(self) -> dict:
        typestr = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "int64": "<i8"}[self.dtype]
        return {"shape": self.shape, "typestr": typestr, "data": (self.ptr, False), "version": 3}


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
        stream for every later forward; may warm up and capture CUDA graphs."""

    @abc.abstractmethod
    def forward(self, batch: int) -> None:
        """out[:batch] = model(x[:batch], t[:batch], y[:batch]), enqueued on the bound stream."""

    def close(self) -> None:  # noqa: B027  (optional: release engine-owned resources)
        """Release what the backend owns (contexts, graphs, sessions). Idempotent."""
