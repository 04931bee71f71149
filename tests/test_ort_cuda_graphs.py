"""The ort backend's CUDA graphs on the CPU: what reaches ONNX Runtime's provider options and run options,
the captures in `prepare`, fresh graph ids for fresh buffers, the ways they are turned off, and the CPU
provider left as it was.

No CUDA session can be made here (onnxruntime has the CPU provider only), so the CUDA-provider tests run
`OrtBackend.load` against a STAND-IN: `_StandInSession` replaces `onnxruntime.InferenceSession` and only
records the providers it was given, the IO bindings and each run with its (real) RunOptions. They check
the calls, not that ORT captures or replays anything: that has never executed (README)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import onnxruntime
import pytest

import flexidit_trt.engines.ort_backend as ort_backend
from flexidit_trt.engines.backend import DeviceArray, IOBuffers, RunError
from flexidit_trt.engines.ort_backend import RUNS_TO_CAPTURE, OrtBackend, cuda_graphs_supported

STREAM = 0x7F00  # a stream handle as the pipeline passes it (never dereferenced by the stand-in)


class _Arg:
    def __init__(self, name: str):
        self.name, self.type, self.shape = name, "tensor(float)", ["batch"]


class _StandInBinding:
    """Records what the backend binds: (name, device, index, dtype, shape, address)."""

    def __init__(self) -> None:
        self.inputs: list[tuple] = []
        self.outputs: list[tuple] = []

    def bind_input(self, name, kind, index, dtype, shape, ptr) -> None:
        self.inputs.append((name, kind, index, dtype, list(shape), ptr))

    def bind_output(self, name, kind, index, dtype, shape, ptr) -> None:
        self.outputs.append((name, kind, index, dtype, list(shape), ptr))


class _StandInSession:
    """STAND-IN for onnxruntime.InferenceSession (see the module docstring): no graph is read or run."""

    made: list[list[Any]] = []  # the providers of every session asked for, in order
    refuse_cuda_graphs = False  # act as ORT does for a graph with nodes left to the CPU provider
    cuda_did_not_load = False  # act as ORT does when its CUDA provider finds no CUDA libraries

    def __init__(self, path: str, options: Any, providers: list[Any]):
        type(self).made.append(providers)
        if self.refuse_cuda_graphs and any(
            isinstance(p, tuple) and p[1].get("enable_cuda_graph") == "1" for p in providers
        ):
            raise RuntimeError(
                "This session cannot use the graph capture feature as requested by the user as all compute "
                "graph nodes have not been partitioned to the CUDAExecutionProvider"
            )
        self.providers = providers
        self.runs: list[tuple[_StandInBinding, dict[str, str]]] = []

    def get_inputs(self) -> list[_Arg]:
        return [_Arg(n) for n in ("x", "t", "y")]

    def get_outputs(self) -> list[_Arg]:
        return [_Arg("out")]

    def get_providers(self) -> list[str]:
        if self.cuda_did_not_load:
            return ["CPUExecutionProvider"]
        return [p[0] if isinstance(p, tuple) else p for p in self.providers]

    def io_binding(self) -> _StandInBinding:
        return _StandInBinding()

    def run_with_iobinding(self, binding: _StandInBinding, run_options: Any) -> None:
        entries = {}
        for key in ("gpu_graph_id", "disable_synchronize_execution_providers"):
            with contextlib.suppress(RuntimeError):  # raised for a key not set
                entries[key] = run_options.get_run_config_entry(key)
        self.runs.append((binding, entries))


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """A graph file, onnxruntime's session replaced by the stand-in, its CUDA provider reported present."""
    monkeypatch.setattr(onnxruntime, "InferenceSession", _StandInSession)
    monkeypatch.setattr(_StandInSession, "made", [])
    monkeypatch.setattr(ort_backend, "cuda_provider_available", lambda: True)
    monkeypatch.setattr(ort_backend, "_register_env_allocator", lambda ort, device: None)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: None, raising=False)
    ort_backend._preload_cuda_libraries.cache_clear()  # each test sees a fresh process's first session
    path = tmp_path / "p2.onnx"
    path.write_bytes(b"the stand-in session never reads it")
    return path


def _device_io(base: int, rows: int = 8) -> IOBuffers:
    """Device buffers at made-up addresses (only bound by address, never touched)."""

    def buf(offset: int, shape: tuple[int, ...], dtype: str) -> DeviceArray:
        return DeviceArray(base + offset, shape, dtype, "cuda:0")

    return IOBuffers(
        buf(0, (rows, 4, 8, 8), "float32"),
        buf(1 << 20, (rows,), "float32"),
        buf(2 << 20, (rows,), "int64"),
        buf(3 << 20, (rows, 8, 8, 8), "float32"),
    )


def test_cuda_graphs_reach_the_provider_and_run_options(stand_in) -> None:
    backend = OrtBackend.load(stand_in, 2, "cuda:0", stream=STREAM)
    (providers,) = _StandInSession.made
    assert providers == [
        (
            "CUDAExecutionProvider",
            {
                "device_id": "0",
                "has_user_compute_stream": "1",
                "user_compute_stream": str(STREAM),
                "enable_cuda_graph": "1",
            },
        )
    ]
    assert backend.cuda_graphs and backend.cuda_graphs_off is None
    io = _device_io(0x10000000)
    backend.bind(io, None, STREAM)
    backend.prepare([2, 4])
    runs = backend.session.runs
    # Each batch: two regular runs and the capturing one, on one binding with a graph id of its own.
    assert [e["gpu_graph_id"] for _, e in runs] == ["1"] * RUNS_TO_CAPTURE + ["2"] * RUNS_TO_CAPTURE
    assert all(e["disable_synchronize_execution_providers"] == "1" for _, e in runs)
    first, second = runs[0][0], runs[RUNS_TO_CAPTURE][0]
    assert all(b is first for b, _ in runs[:RUNS_TO_CAPTURE]) and second is not first
    assert first.inputs == [
        ("x", "cuda", 0, np.float32, [2, 4, 8, 8], io.x.ptr),
        ("t", "cuda", 0, np.float32, [2], io.t.ptr),
        ("y", "cuda", 0, np.int64, [2], io.y.ptr),
    ]
    assert first.outputs == [("out", "cuda", 0, np.float32, [2, 8, 8, 8], io.out.ptr)]
    assert second.outputs[0][4:] == ([4, 8, 8, 8], io.out.ptr)  # the same addresses, the batch's rows
    # The loop's forwards replay the captured graphs: same binding, same id, no further capture.
    backend.forward(4)
    backend.forward(2)
    assert [(b, e["gpu_graph_id"]) for b, e in runs[-2:]] == [(second, "2"), (first, "1")]
    assert backend.describe()["cuda_graph_ids"] == {"2": 1, "4": 2}
    # New buffers (the pipeline grew them): a graph replays the addresses it captured, so fresh ids.
    backend.bind(_device_io(0x20000000, rows=16), None, STREAM)
    backend.prepare([2])
    assert [e["gpu_graph_id"] for _, e in runs[-RUNS_TO_CAPTURE:]] == ["3"] * RUNS_TO_CAPTURE
    assert runs[-1][0].outputs[0][5] == 0x20000000 + (3 << 20)


def test_cuda_graphs_off_when_asked_or_unsupported(stand_in, monkeypatch) -> None:
    """EngineOptions(cuda_graphs=False) (passed on as cuda_graphs), or an onnxruntime without
    gpu_graph_id: the CUDA provider as before, forwards without graph ids and no runs in prepare."""
    backend = OrtBackend.load(stand_in, 2, "cuda:0", stream=STREAM, cuda_graphs=False)
    assert "enable_cuda_graph" not in _StandInSession.made[-1][0][1]
    backend.bind(_device_io(0x10000000), None, STREAM)
    backend.prepare([2])
    assert backend.session.runs == []
    backend.forward(2)
    assert [e for _, e in backend.session.runs] == [{"disable_synchronize_execution_providers": "1"}]
    assert backend.describe()["cuda_graphs"] is False and "cuda_graph_ids" not in backend.describe()

    monkeypatch.setattr(onnxruntime, "__version__", "1.17.3")
    old = OrtBackend.load(stand_in, 2, "cuda:0")
    assert "enable_cuda_graph" not in _StandInSession.made[-1][0][1] and not old.cuda_graphs
    assert "onnxruntime 1.17.3 keeps one CUDA graph per session" in old.describe()["cuda_graphs_off"]
    assert [cuda_graphs_supported(v) for v in ("1.18.0", "1.31.1", "2.0", "1.17.3", "dev")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_a_graph_ort_cannot_capture_loads_without_cuda_graphs(stand_in, monkeypatch, caplog) -> None:
    monkeypatch.setattr(_StandInSession, "refuse_cuda_graphs", True)
    backend = OrtBackend.load(stand_in, 2, "cuda:0", stream=STREAM)
    assert [p[0][1].get("enable_cuda_graph") for p in _StandInSession.made] == ["1", None]
    assert not backend.cuda_graphs
    assert "all compute graph nodes have not been partitioned" in backend.describe()["cuda_graphs_off"]
    assert "running without CUDA graphs" in caplog.text


def test_cpu_provider_has_no_cuda_graphs(stand_in) -> None:
    backend = OrtBackend.load(stand_in, 2, "cpu")
    assert _StandInSession.made == [["CPUExecutionProvider"]]
    assert not backend.cuda_graphs and backend.cuda_graphs_off is None
    io = IOBuffers(
        np.zeros((2, 4, 8, 8), np.float32),
        np.zeros(2, np.float32),
        np.zeros(2, np.int64),
        np.zeros((2, 8, 8, 8), np.float32),
    )
    backend.bind(io, None, 0)
    backend.prepare([2])
    backend.forward(2)
    assert [e for _, e in backend.session.runs] == [{}]  # one run, ORT's default run options


def test_cuda_libraries_are_preloaded_once_and_a_fallback_to_the_cpu_is_refused(
    stand_in, monkeypatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: calls.append("preload"), raising=False)
    OrtBackend.load(stand_in, 2, "cuda:0")
    OrtBackend.load(stand_in, 4, "cuda:0")
    OrtBackend.load(stand_in, 2, "cpu")
    assert calls == ["preload"]
    monkeypatch.setattr(_StandInSession, "cuda_did_not_load", True)
    with pytest.raises(RunError, match="on CPUExecutionProvider, not CUDA: its CUDA provider did not load"):
        OrtBackend.load(stand_in, 2, "cuda:0")
