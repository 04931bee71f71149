"""ONNX Runtime backend: one session per exported graph (`export/<model>/p<k>.onnx`). No torch import.

CPU: the CPU execution provider; the pipeline's numpy buffers are bound by address (IO binding), so a
forward copies nothing and allocates only inside ONNX Runtime. This is the CPU path and CI's parity
reference.

CUDA (where onnxruntime-gpu is installed): the CUDA execution provider on the run's stream
(`user_compute_stream`), with IO binding on the pipeline's device buffers and no synchronisation after a
run. Sessions share one registered device allocator (`session.use_env_allocators`). Written to the
documented API but never executed: no machine here has onnxruntime-gpu.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import Device
from .backend import Backend, IOBuffers, RunError

_ORT_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}
_ORT_TYPE_NAMES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}
# The exported graphs' tensors (export/onnx_export.py names them; not imported: that module needs torch)
GRAPH_INPUTS = ("x", "t", "y")
GRAPH_OUTPUT = "out"
_ENV_ALLOCATORS: set[str] = set()  # devices whose shared allocator is registered in this process


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def provider_missing(device: str) -> str | None:
    """Why this onnxruntime cannot run on `device` (None: it can): a GPU needs onnxruntime-gpu."""
    if device == "cpu" or cuda_provider_available():
        return None
    return "this onnxruntime has the CPU execution provider only; a GPU needs onnxruntime-gpu"


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
        run_options: Any = None,
    ):
        self.session = session
        self.patch_size = patch_size
        self.max_batch = max_batch
        self.device = device
        self.out_dtype = "float32"  # the graphs' signature is fp32 in and out at every precision
        self.path = path
        self._io: IOBuffers | None = None
        self._bindings: dict[int, Any] = {}
        self._run_options = run_options  # ONNX Runtime's RunOptions for every forward (None: its defaults)

    @classmethod
    def load(
        cls, path: str | Path, patch_size: int, device: str = "cpu", max_batch: int = 1 << 16, stream: int = 0
    ) -> OrtBackend:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise RunError(f"exported graph {path} is missing")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.use_env_allocators", "1")
        if device == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
        else:
            missing = provider_missing(device)
            if missing:
                raise RunError(f"the ort backend: {missing}; use --device cpu or another backend")
            cuda_options = {"device_id": str(Device.parse(device).index)}
            if stream:
                cuda_options.update(has_user_compute_stream="1", user_compute_stream=str(stream))
            providers = [("CUDAExecutionProvider", cuda_options)]
        _register_env_allocator(ort, device)
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # a truncated or foreign file: InvalidProtobuf, Fail, InvalidGraph, ...
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            raise RunError(
                f"exported graph {path} cannot be loaded by ONNX Runtime ({type(err).__name__}: {reason[:200]})"
            ) from None
        names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        if names != (list(GRAPH_INPUTS), [GRAPH_OUTPUT]):
            raise RunError(
                f"exported graph {path} has inputs {names[0]} and outputs {names[1]}, not "
                f"{list(GRAPH_INPUTS)} and [{GRAPH_OUTPUT!r}] (edited or foreign)"
            )
        run_options = ort.RunOptions()
        if device != "cpu":  # the pipeline orders everything on its stream; never block the host per step
            run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return cls(session, patch_size, max_batch, device, path, run_options)

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
        for b in batches:
            if b not in self._bindings:
                self._bindings[b] = self._binding(b)

    def _binding(self, batch: int) -> Any:
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
        return binding

    def forward(self, batch: int) -> None:
        binding = self._bindings.get(batch)
        if binding is None:  # outside the pipeline's loop (tests, one-off calls)
            binding = self._bindings[batch] = self._binding(batch)
        self.session.run_with_iobinding(binding, self._run_options)

    def describe(self) -> dict:
        return {**super().describe(), "graph": str(self.path), "providers": self.session.get_providers()}

    def close(self) -> None:
        self._bindings.clear()
        self.session = None


def _address(buf: Any) -> int:
    return int(buf.ctypes.data) if isinstance(buf, np.ndarray) else int(buf.ptr)


def _np_dtype(buf: Any) -> Any:
    return buf.dtype.type if isinstance(buf, np.ndarray) else _ORT_DTYPES[buf.dtype]
