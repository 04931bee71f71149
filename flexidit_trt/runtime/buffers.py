"""The run's fixed buffers: x, t and y shared by every engine, one `out` per engine, the activation block
the engines share and the timestep tables, all carved from one arena on a GPU (numpy arrays on the CPU),
made once and grown only when a larger batch is asked for."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ..diffusion import Sampler
from ..engines.backend import DTYPE_BYTES, Backend, DeviceArray, IOBuffers, RunError
from ..engines.spec import ModelSpec
from . import native


class RunBuffers:
    """Buffers for up to `capacity` images per batch (x and t for 2·capacity rows: a CFG batch is [x; x]).
    `stream`: the run's one CUDA stream (an engines.cuda.Stream), made on the first device allocation
    when none is given; None on the CPU."""

    def __init__(self, spec: ModelSpec, backends: Mapping[int, Backend], device: str, stream: Any = None):
        self.spec = spec
        self.backends = backends
        self.device = device
        self.stream = stream
        self.capacity = 0  # images per batch the buffers hold
        self._io: dict[int, IOBuffers] = {}
        self._arena: native.Arena | None = None
        self._t_tables: dict[tuple, tuple[Any, native.Arena | None]] = {}

    @property
    def io(self) -> Mapping[int, IOBuffers]:
        """Each engine's buffers by patch size (read-only)."""
        return MappingProxyType(self._io)

    @property
    def arena_bytes(self) -> int:
        """Device memory the buffers hold: the arena and the timestep tables (0 on the CPU)."""
        arena = self._arena.capacity if self._arena is not None else 0
        return arena + sum(a.capacity for _, a in self._t_tables.values() if a is not None)

    def stream_handle(self) -> int:
        return 0 if self.stream is None else self.stream.handle

    def ensure_capacity(self, images: int) -> bool:
        """Buffers for `images` per batch (x and t for 2·images rows, one out per engine); reallocated
        (and every engine rebound) only when a larger batch is asked for. True when they were."""
        if images <= self.capacity:
            return False
        self.release()
        rows = 2 * images
        c, h, w = self.spec.latent_shape
        shapes = {"x": ((rows, c, h, w), "float32"), "t": ((rows,), "float32"), "y": ((rows,), "int64")}
        for p, backend in self.backends.items():
            shapes[f"out{p}"] = ((rows, self.spec.out_channels, h, w), backend.out_dtype)
        if self.device == "cpu":
            bufs = {k: np.zeros(shape, dtype=_np_dtype(dt)) for k, (shape, dt) in shapes.items()}
            activations = None
        else:
            bufs, activations = self._device_buffers(shapes, rows)
        for p, backend in self.backends.items():
            io = IOBuffers(bufs["x"], bufs["t"], bufs["y"], bufs[f"out{p}"])
            backend.bind(io, activations, self.stream_handle())
            self._io[p] = io
        self.capacity = images
        return True

    def _device_buffers(self, shapes: dict, rows: int) -> tuple[dict, int | None]:
        from ..engines import cuda

        if self.stream is None:
            self.stream = cuda.Stream(self.device)
        sizes = {k: math.prod(shape) * DTYPE_BYTES[dt] for k, (shape, dt) in shapes.items()}
        engine_bytes = [b.activation_bytes(rows) for b in self.backends.values()]
        total = native.arena_size(engine_bytes, list(sizes.values()))
        try:
            self._arena = native.Arena(total, self.device)
        except (MemoryError, native.CudaError) as err:
            raise RunError(
                f"{self.device} out of memory: the run's buffers need {total / 2**20:.1f} MiB "
                f"(batch {rows // 2} images; activations {max(engine_bytes, default=0) / 2**20:.1f} MiB): {err}"
            ) from None
        activations = self._arena.block(max(engine_bytes)) if max(engine_bytes, default=0) > 0 else None
        bufs = {
            k: DeviceArray(self._arena.block(sizes[k]), shape, dt, self.device)
            for k, (shape, dt) in shapes.items()
        }
        # Zeroed once: engines warm up and capture before the first batch writes its inputs, and a
        # garbage label would index outside the class table.
        zeros = np.zeros(max(sizes.values()), dtype=np.uint8)
        for k, buf in bufs.items():
            native.memcpy(buf.ptr, zeros.ctypes.data, sizes[k], self.stream.handle)
        return bufs, activations

    def t_table(self, smp: Sampler) -> Any:
        """Every step's timestep, one row of 2·capacity values per step, on the device (made once per
        sampler and capacity): the loop copies row i into t with one async copy."""
        key = (smp.kind, tuple(np.asarray(smp.timesteps, dtype=np.float64).tolist()))
        if key in self._t_tables:
            return self._t_tables[key][0]
        rows = 2 * self.capacity
        host = np.repeat(np.asarray(smp.timesteps, dtype=np.float32)[:, None], rows, axis=1)
        arena = None
        if self.device == "cpu":
            table = np.ascontiguousarray(host)
        else:
            arena = native.Arena(max(host.nbytes, 1), self.device)
            # On the run's stream, so the loop's reads are ordered after it; pageable, so it returns
            # once the host memory has been read.
            native.memcpy(arena.ptr, host.ctypes.data, host.nbytes, self.stream_handle())
            table = DeviceArray(arena.ptr, host.shape, "float32", self.device)
        self._t_tables[key] = (table, arena)
        return table

    def release(self) -> None:
        if self._arena is not None and self.stream is not None:
            self.stream.synchronize()  # nothing queued may still use the memory
        self._io.clear()
        for _, arena in self._t_tables.values():
            if arena is not None:
                arena.close()
        self._t_tables.clear()
        if self._arena is not None:
            self._arena.close()
            self._arena = None
        self.capacity = 0

    def close(self) -> None:
        self.release()
        if self.stream is not None and hasattr(self.stream, "close"):
            self.stream.close()
        self.stream = None


def _np_dtype(name: str) -> Any:
    return np.uint16 if name == "bfloat16" else np.dtype(name)
