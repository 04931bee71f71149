"""ONNX Runtime backend: one session per exported graph (`export/<model>/p<k>.onnx`). No torch import.

CPU: the CPU execution provider; the pipeline's numpy buffers are bound by address (IO binding), so a
forward copies nothing and allocates only inside ONNX Runtime. This is the CPU path and CI's parity
reference.

CUDA (where onnxruntime-gpu is installed): the CUDA execution provider on the run's stream
(`user_compute_stream`), with IO binding on the pipeline's device buffers and no synchronisation after a
run. Sessions share one registered device allocator (`session.use_env_allocators`). With `cuda_graphs`
(EngineOptions.cuda_graphs, on by default) ORT's own CUDA graphs: the provider option `enable_cuda_graph`,
and one graph per batch, named by the run option `gpu_graph_id` and captured in `prepare` (ORT replays a
graph on the addresses it captured, which are the pipeline's fixed buffers: new buffers get new ids).
A graph ORT cannot capture whole (nodes left to the CPU provider) fails the session; it then loads
without CUDA graphs and `describe` says why. Written to the documented API but never executed: no machine
here has onnxruntime-gpu.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import Device
from .backend import Backend, IOBuffers, RunError

_log = logging.getLogger(__name__)
_ORT_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}
_ORT_TYPE_NAMES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}
# The exported graphs' tensors (export/onnx_export.py names them; not imported: that module needs torch)
GRAPH_INPUTS = ("x", "t", "y")
GRAPH_OUTPUT = "out"
_ENV_ALLOCATORS: set[str] = set()  # devices whose shared allocator is registered in this process
# ORT's CUDA EP captures a graph id's graph on its third run (two regular runs first, so its allocations
# are made before capture), then replays it; ids are > 0 (0 is ORT's own, -1 turns capture off).
RUNS_TO_CAPTURE = 3
GRAPH_ID_SINCE = (1, 18)  # the first onnxruntime with more than one CUDA graph per session (gpu_graph_id)


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def provider_missing(device: str) -> str | None:
    """Why this onnxruntime cannot run on `device` (None: it can): a GPU needs onnxruntime-gpu."""
    if device == "cpu" or cuda_provider_available():
        return None
    return "this onnxruntime has the CPU execution provider only; a GPU needs onnxruntime-gpu"


def cuda_graphs_supported(version: str) -> bool:
    """Whether this onnxruntime version keeps one CUDA graph per `gpu_graph_id` (older ones capture one
    graph per session, which would replay the first batch's shapes for every batch)."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= GRAPH_ID_SINCE


def _register_env_allocator(ort: Any, device: str) -> None:
    """One arena allocator per device for every session of this process (sessions opt in with
    `session.use_env_allocators`), so engines of several patch sizes share their memory."""
    if device in _ENV_ALLOCATORS:
        return
    if device == "cpu":
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
    else:
        index = Device.parse(device).index
        info = ort.OrtMemoryInfo(
            "Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, index, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator_v2(
            "CUDAExecutionProvider", info, {}, ort.OrtArenaCfg(0, -1, -1, -1)
        )
    _ENV_ALLOCATORS.add(device)


class OrtBackend(Backend):
    """One exported graph in an ONNX Runtime session."""

    name = "ort"

    def __init__(
        self,
        session: Any,
        patch_size: int,
        max_batch: int,
        device: str,
        path: Path,
        run_config: Mapping[str, str] | None = None,
        cuda_graphs: bool = False,
        cuda_graphs_off: str | None = None,
    ):
        self.session = session
        self.patch_size = patch_size
        self.max_batch = max_batch
        self.device = device
        self.out_dtype = "float32"  # the graphs' signature is fp32 in and out at every precision
        self.path = path
        self.cuda_graphs = cuda_graphs  # the session was made with enable_cuda_graph
        self.cuda_graphs_off = cuda_graphs_off  # why not, where they were asked for
        self._io: IOBuffers | None = None
        self._bindings: dict[int, tuple[Any, Any]] = {}  # batch -> (IO binding, its RunOptions)
        self._graph_ids: dict[int, int] = {}  # batch -> gpu_graph_id of its binding's CUDA graph
        self._next_graph_id = 1
        self._run_config = dict(run_config or {})  # run config entries of every forward

    @classmethod
    def load(
        cls,
        path: str | Path,
        patch_size: int,
        device: str = "cpu",
        max_batch: int = 1 << 16,
        stream: int = 0,
        cuda_graphs: bool = True,
    ) -> OrtBackend:
        """The graph at `path` in a session on `device` (CUDA: on `stream`, with ORT's CUDA graphs unless
        `cuda_graphs` is False or this onnxruntime predates `gpu_graph_id`; the CPU provider has none)."""
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise RunError(f"exported graph {path} is missing")
        run_config: dict[str, str] = {}
        off = None
        if device == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
            cuda_graphs = False
        else:
            missing = provider_missing(device)
            if missing:
                raise RunError(f"the ort backend: {missing}; use --device cpu or another backend")
            cuda_options = {"device_id": str(Device.parse(device).index)}
            if stream:
                cuda_options.update(has_user_compute_stream="1", user_compute_stream=str(stream))
            if cuda_graphs and not cuda_graphs_supported(ort.__version__):
                cuda_graphs = False
                off = f"onnxruntime {ort.__version__} keeps one CUDA graph per session (gpu_graph_id: 1.18+)"
            providers = [("CUDAExecutionProvider", cuda_options)]
            # the pipeline orders everything on its stream; never block the host per step
            run_config["disable_synchronize_execution_providers"] = "1"
            _preload_cuda_libraries(ort)
        _register_env_allocator(ort, device)
        session, refused = None, None
        if cuda_graphs:
            # Not yet executed on a GPU: no onnxruntime-gpu was on any machine here (README).
            graph_providers = [(providers[0][0], {**providers[0][1], "enable_cuda_graph": "1"})]
            try:
                session = _session(ort, path, graph_providers)
            except RunError as err:  # nodes ORT leaves to the CPU cannot be captured: load without graphs
                refused = err
        if session is None:
            try:
                session = _session(ort, path, providers)
            except RunError as err:
                if "NOT_IMPLEMENTED" in str(err) and _holds_bf16(path):
                    # bf16 has the fewest kernels (none at all on the CPU provider, gaps on the CUDA one);
                    # fp16 graphs have kernels on both.
                    raise RunError(
                        f"{err}; bf16 has no kernel there: export the graphs in fp16 (--precision fp16) or use "
                        "another backend"
                    ) from None
                raise
        if refused is not None:
            cuda_graphs, off = False, f"ONNX Runtime refused them: {refused}"
            _log.warning("p%d: %s; running without CUDA graphs", patch_size, off)
        if device != "cpu" and session.get_providers()[0] != "CUDAExecutionProvider":
            # ORT drops to the CPU provider with only a log line when the CUDA one cannot load its
            # libraries; a CPU run must never pass for a GPU one.
            raise RunError(
                f"ONNX Runtime ran {path.name} on {session.get_providers()[0]}, not CUDA: its CUDA provider did not "
                "load (onnxruntime-gpu needs the CUDA 13 and cuDNN 9 libraries: the nvidia-* wheels, or "
                "torch's); use --device cpu or another backend"
            )
        names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        if names != (list(GRAPH_INPUTS), [GRAPH_OUTPUT]):
            raise RunError(
                f"exported graph {path} has inputs {names[0]} and outputs {names[1]}, not "
                f"{list(GRAPH_INPUTS)} and [{GRAPH_OUTPUT!r}] (edited or foreign)"
            )
        return cls(session, patch_size, max_batch, device, path, run_config, cuda_graphs, off)

    def signature(self) -> dict:
        """The loaded graph's inputs and outputs as the export manifest records them (name, dtype, shape)."""

        def spec(arg: Any) -> dict:
            return {
                "name": arg.name,
                "dtype": _ORT_TYPE_NAMES.get(arg.type, arg.type),
                "shape": list(arg.shape),
            }

        return {
            "inputs": [spec(a) for a in self.session.get_inputs()],
            "outputs": [spec(a) for a in self.session.get_outputs()],
        }

    def activation_bytes(self, batch: int) -> int:
        return 0  # ONNX Runtime owns its memory (one shared allocator per device)

    def bind(self, io: IOBuffers, activations: int | None, stream: Any) -> None:
        if _np_dtype(io.out) is not np.float32:
            raise ValueError(f"the ort backend writes fp32 outputs, got an out buffer of {io.out.dtype}")
        self._io = io
        self._bindings.clear()

    def prepare(self, batches: Sequence[int]) -> None:
        """Bind each batch's rows of the buffers; with CUDA graphs also run it until ORT has captured
        its graph (the outputs of these runs are overwritten by the loop's first forward)."""
        for b in batches:
            if b in self._bindings:
                continue
            self._bindings[b] = self._binding(b)
            if self.cuda_graphs:
                binding, run_options = self._bindings[b]
                for _ in range(RUNS_TO_CAPTURE):
                    self.session.run_with_iobinding(binding, run_options)

    def _binding(self, batch: int) -> tuple[Any, Any]:
        io = self._io
        if io is None:
            raise RuntimeError("bind() the buffers before prepare()")
        device = Device.parse(self.device)
        kind, index = (device.kind, max(device.index, 0))
        binding = self.session.io_binding()
        for name, buf in zip(GRAPH_INPUTS, (io.x, io.t, io.y), strict=True):
            binding.bind_input(name, kind, index, _np_dtype(buf), [batch, *buf.shape[1:]], _address(buf))
        out = io.out
        binding.bind_output(GRAPH_OUTPUT, kind, index, np.float32, [batch, *out.shape[1:]], _address(out))
        return binding, self._run_options(batch)

    def _run_options(self, batch: int) -> Any:
        """The RunOptions of `batch`'s forwards: the backend's entries, and with CUDA graphs a graph id
        of its own (a fresh one per binding: a graph replays the addresses it was captured on)."""
        import onnxruntime as ort

        options = ort.RunOptions()
        for key, value in self._run_config.items():
            options.add_run_config_entry(key, value)
        if self.cuda_graphs:
            self._graph_ids[batch] = self._next_graph_id
            self._next_graph_id += 1
            options.add_run_config_entry("gpu_graph_id", str(self._graph_ids[batch]))
        return options

    def forward(self, batch: int) -> None:
        if batch not in self._bindings:  # outside the pipeline's loop (tests, one-off calls)
            self.prepare([batch])
        binding, run_options = self._bindings[batch]
        self.session.run_with_iobinding(binding, run_options)

    def describe(self) -> dict:
        graphs: dict[str, Any] = {"cuda_graphs": self.cuda_graphs}
        if self.cuda_graphs:
            graphs["cuda_graph_ids"] = {str(b): i for b, i in sorted(self._graph_ids.items())}
        elif self.cuda_graphs_off:
            graphs["cuda_graphs_off"] = self.cuda_graphs_off
        return {
            **super().describe(),
            "graph": str(self.path),
            "providers": self.session.get_providers(),
            **graphs,
        }

    def close(self) -> None:
        self._bindings.clear()
        self.session = None


@functools.cache  # once per process
def _preload_cuda_libraries(ort: Any) -> None:
    """Let onnxruntime-gpu find CUDA and cuDNN where pip put them (torch's or the nvidia-* wheels):
    `onnxruntime.preload_dlls` (1.21+); without it the provider looks only on the loader's path."""
    if not hasattr(ort, "preload_dlls"):
        return
    try:
        ort.preload_dlls()
    except Exception as err:  # a missing library: session creation says what follows from it
        _log.warning("onnxruntime.preload_dlls: %s", err)


def _session(ort: Any, path: Path, providers: list[Any]) -> Any:
    """An InferenceSession of `path` on `providers`, every session on the one shared allocator; RunError
    in one line where ONNX Runtime refuses it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.use_env_allocators", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # a truncated or foreign file: InvalidProtobuf, Fail, InvalidGraph, ...
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise RunError(
            f"exported graph {path} cannot be loaded by ONNX Runtime ({type(err).__name__}: {reason[:200]})"
        ) from None


def _holds_bf16(path: Path) -> bool:
    """Whether the graph keeps weights in bf16 (False without onnx). It parses the whole .onnx (weights
    below protobuf's limit are inside it), so it runs only once a load has failed for good."""
    try:
        import onnx
    except ImportError:
        return False
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # unreadable: ONNX Runtime's own message says why
        return False
    return any(t.data_type == onnx.TensorProto.BFLOAT16 for t in graph.initializer)


def _address(buf: Any) -> int:
    return int(buf.ctypes.data) if isinstance(buf, np.ndarray) else int(buf.ptr)


def _np_dtype(buf: Any) -> Any:
    return buf.dtype.type if isinstance(buf, np.ndarray) else _ORT_DTYPES[buf.dtype]
