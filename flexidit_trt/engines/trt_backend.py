"""TensorRT backend (`trt`): one plan per patch size from `flexidit-trt build`, run on fixed buffers, its
activations in ONE block of the pipeline's arena shared by every engine. No torch import.

    backends, entries = load_trt_engines(workdir, "dit_xl", target=TrtTarget("cuda:0"))    # manifests checked
    size = shared_activation_bytes(entries.values(), max_batch=16)              # max over engines, not sum
    block = arena.block(size)                                                    # one block for all of them
    for b in backends.values():
        b.bind(io, block, stream.handle); b.prepare([16])                       # addresses once, graphs
    backends[2].forward(16)                                                      # one cudaGraphLaunch

Life cycle of one engine (TensorRT 10.x/11.x Python API):
- `trt.Runtime(logger).deserialize_cuda_engine(plan)`; one execution context created with
  `ExecutionContextAllocationStrategy.USER_MANAGED`, given the shared block with
  `context.set_device_memory(ptr, nbytes)` (10.1+; the deprecated `context.device_memory = ptr` where
  that call is missing or fails). Contexts may share the block because the pipeline runs them one after
  the other on one stream; it is sized by the manifests' per-profile `device_memory_bytes`.
- I/O addresses (`set_tensor_address`) are set once, in `bind`: x, t, y and out are the pipeline's fixed
  buffers at the largest batch; a smaller batch uses their leading rows.
- `prepare(batches)`: per batch, select the optimization profile covering it
  (`set_optimization_profile_async`), set the input shapes, enqueue once (`execute_async_v3`) and
  synchronise (TensorRT's first enqueue initialises state), then capture one enqueue into a CUDA graph
  on the run's non-default stream (cudaStreamBeginCapture in thread-local mode, EndCapture,
  GraphInstantiate). If an enqueue returns False during capture, the capture is ended and that batch
  falls back to plain enqueues.
- `forward(batch)`: `cudaGraphLaunch` of that batch's graph on the stream. Nothing else: no shape or
  address calls, no synchronisation, no allocation.

Every call into TensorRT is in `TrtEngine`; every CUDA graph call in `CudaGraphs` (cuda-python).

NEVER EXECUTED against the real libraries (TensorRT cannot be installed where this was tested).
tests/test_engines_trt_backend.py drives everything
around them with labelled stand-ins for the `tensorrt` module and for cuda-python's runtime. Unexecuted
against real libraries: every `TrtEngine` method (Logger, Runtime, deserialize_cuda_engine,
create_execution_context(USER_MANAGED), set_device_memory / device_memory, set_tensor_address,
set_optimization_profile_async, set_input_shape, execute_async_v3) and every real cuda-python call in
`CudaGraphs` (cudaStreamBeginCapture, cudaStreamEndCapture, cudaGraphInstantiate, cudaGraphLaunch,
cudaGraphExecDestroy, cudaGraphDestroy, cudaStreamSynchronize) and `set_device`. Unconfirmed facts it
relies on: that a profile switch keeps tensor addresses (they are set again after each switch in
`prepare` anyway, outside the loop) and that `create_execution_context(strategy)` is still accepted by
TensorRT 11 (its `IRuntimeConfig` route is the fallback).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import cuda
from .backend import Backend, IOBuffers, RunError
from .trt_manifest import (
    DEFAULT_TARGET,
    TrtTarget,
    engine_activation_bytes,
    find_trt_engines,
    profile_index,
    read_engine_manifest,
)

DEVICE_MEMORY_ALIGN = 256  # TensorRT's requirement for user-managed activation memory
INPUTS = ("x", "t", "y")
OUTPUT = "out"


# -- every TensorRT call, in one place ------------------------------------------------------------------
class TrtEngine:
    """One deserialized plan and its one execution context, reduced to the calls this backend makes."""

    def __init__(self, trt: Any, plan: bytes, name: str):
        self.trt = trt
        self.name = name
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RunError(f"TensorRT could not deserialize {name} (built by another TensorRT, or damaged)")
        self.context = None
        self.profile: int | None = None

    def tensor_names(self) -> list[str]:
        return [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def create_context(self) -> None:
        """An execution context whose activation memory the caller provides (USER_MANAGED)."""
        strategy = self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        try:
            context = self.engine.create_execution_context(strategy)
        except TypeError:  # a TensorRT whose contexts take a runtime config instead
            config = self.engine.create_runtime_config()
            config.set_execution_context_allocation_strategy(strategy)
            context = self.engine.create_execution_context(config)
        if context is None:
            raise RunError(f"TensorRT could not create an execution context for {self.name}")
        self.context = context
        self.profile = None  # selected explicitly before the first enqueue

    def set_device_memory(self, ptr: int, nbytes: int) -> None:
        setter = getattr(self.context, "set_device_memory", None)
        if setter is not None:
            try:
                setter(ptr, nbytes)
                return
            except Exception:  # reported failing on some 10.x builds: the deprecated setter below
                pass
        self.context.device_memory = ptr

    def set_address(self, name: str, ptr: int) -> None:
        if not self.context.set_tensor_address(name, ptr):
            raise RunError(f"TensorRT refused the address of tensor {name!r} of {self.name}")

    def select(self, profile: int, shapes: Mapping[str, tuple[int, ...]], stream: int) -> None:
        if self.profile != profile:
            if not self.context.set_optimization_profile_async(profile, stream):
                raise RunError(f"TensorRT could not select optimization profile {profile} of {self.name}")
            self.profile = profile
        for name, shape in shapes.items():
            if not self.context.set_input_shape(name, tuple(shape)):
                raise RunError(f"TensorRT refused shape {tuple(shape)} for input {name!r} of {self.name}")

    def enqueue(self, stream: int) -> bool:
        return bool(self.context.execute_async_v3(stream))

    def close(self) -> None:
        self.context = None
        self.engine = None
        self.runtime = None


# -- CUDA graphs through cuda-python ------------------------------------------------------------------------
class CudaGraphs:
    """Capture, launch and destroy CUDA graphs on a stream (cuda-python's runtime API)."""

    def __init__(self, cudart: Any = None):
        self.rt = cudart if cudart is not None else cuda._cudart()

    def synchronize(self, stream: int) -> None:
        cuda.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def capture(self, stream: int, enqueue: Callable[[], bool]) -> Any | None:
        """The executable graph of what `enqueue()` puts on `stream`, or None when it returned False."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda.check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        ok = False
        try:
            ok = enqueue()
        finally:  # always end the capture, or the stream stays unusable
            graph = cuda.check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            if not ok:
                return None
            return cuda.check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            cuda.check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, graph_exec: Any, stream: int) -> None:
        cuda.check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy(self, graph_exec: Any) -> None:
        with contextlib.suppress(Exception):
            self.rt.cudaGraphExecDestroy(graph_exec)


# -- the backend ----------------------------------------------------------------------------------------
class TrtBackend(Backend):
    """One TensorRT engine (one patch size), its context on the shared activation block."""

    name = "trt"

    def __init__(self, engine: TrtEngine, entry: Mapping, device: str, graphs: CudaGraphs, path: Path):
        self.engine = engine
        self.entry = dict(entry)
        self.patch_size = int(entry["patch_size"])
        self.max_batch = int(entry["max_batch"])
        self.device = device
        self.out_dtype = _signature(entry, OUTPUT)["dtype"]
        self.path = path
        self._cuda = graphs
        self._io: IOBuffers | None = None
        self._stream = 0
        self._activations: tuple[int, int] | None = None  # (address, bytes) given to the context
        self._graphs: dict[int, Any] = {}  # batch -> executable graph, or None: plain enqueue
        self._selected: int | None = None  # the batch whose profile and shapes the context holds

    @classmethod
    def load(
        cls,
        folder: str | Path,
        patch_size: int,
        target: TrtTarget = DEFAULT_TARGET,
        graphs: CudaGraphs | None = None,
    ) -> TrtBackend:
        """The engine of `patch_size` in an engine folder, after checking its manifest entry against the
        target's GPU, TensorRT and checkpoint. graphs: the CUDA graph calls (default: the real ones; a
        parameter so the logic can be tested without them)."""
        target = target.resolved()
        trt, device = target.trt, target.device
        folder = Path(folder)
        entry = target.check(read_engine_manifest(folder), patch_size)
        path = folder / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            raise RunError(f"TensorRT plan {path} is missing or not the one its manifest records: rebuild it")
        if graphs is None:
            cuda.set_device(device)
        engine = TrtEngine(trt, path.read_bytes(), path.name)
        names = set(engine.tensor_names())
        if names != {*INPUTS, OUTPUT}:
            raise RunError(f"TensorRT plan {path} has tensors {sorted(names)}, expected x, t, y and out")
        return cls(engine, entry, device, graphs or CudaGraphs(), path)

    def activation_bytes(self, batch: int) -> int:
        return engine_activation_bytes(self.entry, batch)

    def covers(self, batch: int) -> bool:
        return any(p["min"] <= batch <= p["max"] for p in self.entry["profiles"])

    def bind(self, io: IOBuffers, activations: int | None, stream: Any) -> None:
        capacity = int(io.x.shape[0])
        need = self.activation_bytes(capacity)
        if need and activations is None:
            raise ValueError(f"TensorRT engine p{self.patch_size} needs an activation block of {need} bytes")
        if activations is not None and activations % DEVICE_MEMORY_ALIGN:
            raise ValueError(f"activation block {activations:#x} is not {DEVICE_MEMORY_ALIGN}-byte aligned")
        if not stream:
            raise ValueError(
                "the trt backend needs the run's non-default stream (CUDA graphs are captured on it)"
            )
        self._check_io(io)
        self.close_graphs()
        self._io, self._stream = io, int(stream)
        self.engine.create_context()
        if activations is not None:
            self.engine.set_device_memory(activations, need)
            self._activations = (activations, need)
        self._set_addresses()
        self._selected = None

    def prepare(self, batches: Sequence[int]) -> None:
        for batch in batches:
            if batch in self._graphs:
                continue
            self._select(batch)
            if not self.engine.enqueue(self._stream):  # warm-up: TensorRT initialises on the first enqueue
                raise RunError(f"TensorRT engine p{self.patch_size} failed to run at batch {batch}")
            self._cuda.synchronize(self._stream)
            self._graphs[batch] = self._cuda.capture(self._stream, lambda: self.engine.enqueue(self._stream))

    def forward(self, batch: int) -> None:
        if batch not in self._graphs:  # outside the pipeline's loop (tests, one-off calls)
            self.prepare([batch])
        graph = self._graphs[batch]
        if graph is not None:
            self._cuda.launch(graph, self._stream)
            return
        if self._selected != batch:  # this batch could not be captured: plain enqueue
            self._select(batch)
        if not self.engine.enqueue(self._stream):
            raise RunError(f"TensorRT engine p{self.patch_size} failed to run at batch {batch}")

    def describe(self) -> dict:
        captured = sorted(b for b, g in self._graphs.items() if g is not None)
        return {
            **super().describe(),
            "plan": str(self.path),
            "tensorrt": self.entry.get("tensorrt"),
            "profiles": [
                {k: p[k] for k in ("min", "opt", "max", "device_memory_bytes")}
                for p in self.entry["profiles"]
            ],
            "activation_block": None if self._activations is None else {"bytes": self._activations[1]},
            "cuda_graphs": captured,
        }

    def close_graphs(self) -> None:
        for graph in self._graphs.values():
            if graph is not None:
                self._cuda.destroy(graph)
        self._graphs.clear()

    def close(self) -> None:
        self.close_graphs()
        if self.engine is not None:
            self.engine.close()

    # -- helpers ------------------------------------------------------------------------------------------
    def _select(self, batch: int) -> None:
        """Profile and input shapes for `batch`, then the addresses again (unconfirmed whether a profile
        switch keeps them; this runs before the loop only)."""
        profile = profile_index(self.entry, batch)
        shapes = {name: (batch, *self._io_array(name).shape[1:]) for name in INPUTS}
        self.engine.select(profile, shapes, self._stream)
        self._set_addresses()
        self._selected = batch

    def _set_addresses(self) -> None:
        for name in (*INPUTS, OUTPUT):
            self.engine.set_address(name, int(self._io_array(name).ptr))

    def _io_array(self, name: str) -> Any:
        return getattr(self._io, name)

    def _check_io(self, io: IOBuffers) -> None:
        """The buffers' dtypes and per-row shapes against the plan's signature (recorded in its manifest)."""
        for name in (*INPUTS, OUTPUT):
            buf, spec = getattr(io, name), _signature(self.entry, name)
            want_shape = tuple(spec["shape"][1:])
            if buf.dtype != spec["dtype"] or tuple(buf.shape[1:]) != want_shape or not hasattr(buf, "ptr"):
                raise ValueError(
                    f"{name}: TensorRT engine p{self.patch_size} takes {spec['dtype']} [batch, "
                    f"{', '.join(map(str, want_shape))}] device buffers, got {getattr(buf, 'dtype', '?')} "
                    f"{tuple(getattr(buf, 'shape', ()))}"
                )


def _signature(entry: Mapping, name: str) -> dict:
    for spec in (*entry["inputs"], *entry["outputs"]):
        if spec["name"] == name:
            return spec
    raise RunError(f"the engine manifest has no tensor {name!r}")


def load_trt_engines(
    workdir: str | Path,
    model_name: str,
    patch_sizes: Sequence[int] | None = None,
    target: TrtTarget = DEFAULT_TARGET,
    graphs: CudaGraphs | None = None,
) -> tuple[dict[int, TrtBackend], dict[int, dict]]:
    """One TrtBackend per patch size (default: every engine built), and their checked manifest entries."""
    target = target.resolved()
    folder, entries = find_trt_engines(workdir, model_name, patch_sizes, target)
    backends = {p: TrtBackend.load(folder, p, target, graphs) for p in entries}
    return backends, entries
