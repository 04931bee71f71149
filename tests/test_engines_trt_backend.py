"""The TensorRT backend without TensorRT: manifests, profile choice, the one shared activation block,
addresses bound once, one CUDA graph per (engine, batch) after a warm-up, and the error messages.

STAND-INS: `FakeTrt` replaces the `tensorrt` module and `FakeCudart` cuda-python's runtime. Both only
record the calls they receive and return success; nothing here runs a network or touches a GPU. The
engine folder is real: `build_artifacts` exports a tiny model and writes the real engine manifest, with
`sized_stub_builder` standing in for TensorRT's builder (placeholder plan bytes, made-up activation
sizes). What this cannot show, and never ran anywhere: see the list at the top of trt_backend.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cuda.bindings import runtime as real_cudart

from flexidit_trt.build import build_artifacts
from flexidit_trt.engines import GpuInfo, TrtStatus
from flexidit_trt.engines.backend import DeviceArray, IOBuffers, RunError
from flexidit_trt.engines.cuda import CudaCallError
from flexidit_trt.engines.trt import PlanBuild
from flexidit_trt.engines.trt_backend import CudaGraphs, TrtBackend, load_trt_engines
from flexidit_trt.engines.trt_manifest import (
    TrtTarget,
    check_engine_entry,
    engine_activation_bytes,
    find_trt_engines,
    profile_index,
    read_engine_manifest,
    shared_activation_bytes,
)
from flexidit_trt.runtime.native import Arena, arena_size

H100 = GpuInfo("NVIDIA H100 80GB HBM3", 9, 0)
TRT_VERSION = "10.15.1"
OK = real_cudart.cudaError_t.cudaSuccess
# Made-up activation bytes per engine batch: p2 needs more than p4 at every batch, and the sum differs.
NEED = {2: lambda b: 40_000 * b + 256, 4: lambda b: 9_000 * b + 512}


# -- stand-ins ---------------------------------------------------------------------------------------------
class FakeContext:
    """Stand-in execution context: records every call, with what the fake CUDA stream was doing."""

    def __init__(self, engine, strategy):
        self.engine, self.strategy, self.calls = engine, strategy, []
        self.fail_enqueue_while_capturing = False

    def set_device_memory(self, ptr, nbytes):
        self.calls.append(("set_device_memory", ptr, nbytes))

    def set_tensor_address(self, name, ptr):
        self.calls.append(("set_tensor_address", name, ptr))
        return True

    def set_optimization_profile_async(self, index, stream):
        self.calls.append(("set_optimization_profile_async", index, stream))
        return True

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        return True

    def execute_async_v3(self, stream):
        capturing = self.engine.cudart.capturing
        self.calls.append(("execute_async_v3", stream, "capturing" if capturing else "eager"))
        return not (capturing and self.fail_enqueue_while_capturing)


class FakeEngine:
    def __init__(self, plan, cudart):
        self.plan, self.cudart, self.contexts = plan, cudart, []
        self.num_io_tensors = 4

    def get_tensor_name(self, i):
        return ("x", "t", "y", "out")[i]

    def create_execution_context(self, strategy):
        context = FakeContext(self, strategy)
        self.contexts.append(context)
        return context


class FakeTrt:
    """Stand-in for the `tensorrt` module (TensorRT is not installed on any machine here)."""

    __version__ = TRT_VERSION

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level):
            self.level = level

    class ExecutionContextAllocationStrategy:
        STATIC = "STATIC"
        USER_MANAGED = "USER_MANAGED"

    def __init__(self, cudart):
        self.cudart, self.engines = cudart, []
        fake = self

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, plan):
                engine = FakeEngine(plan, fake.cudart)
                fake.engines.append(engine)
                return engine

        self.Runtime = Runtime


class FakeCudart:
    """Stand-in for cuda.bindings.runtime: records graph calls, returns (cudaSuccess, handle)."""

    cudaStreamCaptureMode = real_cudart.cudaStreamCaptureMode

    def __init__(self):
        self.calls, self.capturing, self._next = [], False, 100
        self.fail = {}  # call name -> cudaError_t to return instead of success

    def _ret(self, name, *values):
        err = self.fail.get(name, OK)
        return (err, *values)

    def _handle(self):
        self._next += 1
        return self._next

    def cudaStreamSynchronize(self, stream):
        self.calls.append(("sync", stream))
        return self._ret("cudaStreamSynchronize")

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls.append(("begin_capture", stream, mode))
        self.capturing = True
        return self._ret("cudaStreamBeginCapture")

    def cudaStreamEndCapture(self, stream):
        self.capturing = False
        graph = self._handle()
        self.calls.append(("end_capture", stream, graph))
        return self._ret("cudaStreamEndCapture", graph)

    def cudaGraphInstantiate(self, graph, flags):
        exec_ = self._handle()
        self.calls.append(("instantiate", graph, exec_))
        return self._ret("cudaGraphInstantiate", exec_)

    def cudaGraphDestroy(self, graph):
        self.calls.append(("graph_destroy", graph))
        return self._ret("cudaGraphDestroy")

    def cudaGraphLaunch(self, exec_, stream):
        self.calls.append(("launch", exec_, stream))
        return self._ret("cudaGraphLaunch")

    def cudaGraphExecDestroy(self, exec_):
        self.calls.append(("exec_destroy", exec_))
        return self._ret("cudaGraphExecDestroy")


def sized_stub_builder(onnx_path, profiles, *, in_channels, latent_size, opt_level, timing_cache):
    """Stands in for TensorRT's builder: placeholder plan bytes, made-up sizes per profile."""
    p = int(Path(onnx_path).stem[1:])
    return PlanBuild(
        plan=b"stub plan (not TensorRT) " + onnx_path.name.encode(),
        timing_cache=b"",
        device_memory=[NEED[p](pr.max) for pr in profiles],
        layers=None,
        seconds=0.0,
        polygraphy_version="stub",
    )


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """A real export and engine manifest (batches 1, 2 with guidance: profiles 1-1, 2-2, 3-4)."""
    workdir = tmp_path_factory.mktemp("trt")
    report = build_artifacts(
        "dit_s",
        overrides={"depth": 1},
        image_size=32,
        patch_sizes=(2, 4),
        batch_sizes=(1, 2),
        precision="fp32",
        workdir=workdir,
        trt=TrtStatus(True, "", TRT_VERSION, H100),
        plan_builder=sized_stub_builder,
        progress=False,
    )
    return workdir, report.engines.folder


@pytest.fixture()
def fakes():
    cudart = FakeCudart()
    return FakeTrt(cudart), cudart


def load(folder, p, fakes, **kw):
    trt, cudart = fakes
    return TrtBackend.load(folder, p, TrtTarget(trt=trt, gpu=H100, **kw), CudaGraphs(cudart))


@contextlib.contextmanager
def bound(folder, p, fakes, batch: int, stream: int):
    """The p engine loaded and bound at `batch` on `stream` in a fresh arena; (backend, its context)."""
    trt, _ = fakes
    backend = load(folder, p, fakes)
    with Arena(1 << 20, "cpu") as arena:
        backend.bind(io_buffers(arena, batch), arena.block(backend.activation_bytes(batch)), stream=stream)
        yield backend, trt.engines[-1].contexts[0]


def io_buffers(arena: Arena, batch: int, c=4, hw=4) -> IOBuffers:
    def array(shape, dtype, itemsize):
        n = itemsize
        for d in shape:
            n *= d
        return DeviceArray(arena.block(n), shape, dtype, "cuda:0")

    return IOBuffers(
        x=array((batch, c, hw, hw), "float32", 4),
        t=array((batch,), "float32", 4),
        y=array((batch,), "int64", 8),
        out=array((batch, 2 * c, hw, hw), "float32", 4),
    )


def io_bytes(batch: int, c=4, hw=4) -> list[int]:
    return [batch * c * hw * hw * 4, batch * 4, batch * 8, batch * 2 * c * hw * hw * 4]


# -- sizing --------------------------------------------------------------------------------------------------
def test_shared_block_is_the_largest_engines_need_not_the_sum(engines):
    _, folder = engines
    manifest = read_engine_manifest(folder)
    entries = [manifest["engines"][p] for p in ("2", "4")]
    # Per engine: the largest profile a batch up to max_batch can select.
    assert engine_activation_bytes(entries[0], 4) == NEED[2](4)
    assert engine_activation_bytes(entries[0], 2) == NEED[2](2)  # profile 3-4 is out of reach
    assert engine_activation_bytes(entries[1], 3) == NEED[4](4)  # batch 3 selects profile 3-4
    shared = shared_activation_bytes(entries, 4)
    assert shared == max(NEED[2](4), NEED[4](4)) == NEED[2](4)
    assert shared < NEED[2](4) + NEED[4](4)


def test_every_context_gets_the_one_arena_block(engines, fakes):
    """Both engines' USER_MANAGED contexts point at the same block, sized max (not sum) of their needs."""
    _, folder = engines
    backends = [load(folder, p, fakes) for p in (2, 4)]
    batch = 4
    shared = shared_activation_bytes([b.entry for b in backends], batch)
    assert shared == max(b.activation_bytes(batch) for b in backends)
    with Arena(arena_size([shared], io_bytes(batch)), "cpu") as arena:
        block = arena.block(shared)
        io = io_buffers(arena, batch)
        assert arena.used <= arena.capacity < shared + sum(io_bytes(batch)) + 5 * 256
        for backend in backends:
            backend.bind(io, block, stream=7)
    trt, _ = fakes
    contexts = [engine.contexts[0] for engine in trt.engines]
    assert [c.strategy for c in contexts] == ["USER_MANAGED", "USER_MANAGED"]
    memory = [[call for call in c.calls if call[0] == "set_device_memory"] for c in contexts]
    assert memory == [
        [("set_device_memory", block, NEED[2](4))],
        [("set_device_memory", block, NEED[4](4))],
    ]
    for c in contexts:  # addresses bound once, in bind, to the pipeline's fixed buffers
        bound = {call[1]: call[2] for call in c.calls if call[0] == "set_tensor_address"}
        assert bound == {"x": io.x.ptr, "t": io.t.ptr, "y": io.y.ptr, "out": io.out.ptr}
        assert len([call for call in c.calls if call[0] == "set_tensor_address"]) == 4
    assert trt.engines[0].plan == (folder / "p2.plan").read_bytes()


def test_prepare_warms_up_then_captures_one_graph_per_batch(engines, fakes):
    _, folder = engines
    _, cudart = fakes
    with bound(folder, 2, fakes, batch=4, stream=7) as (backend, context):
        context.calls.clear()
        backend.prepare([1, 2, 3])
        enqueues = [c for c in context.calls if c[0] == "execute_async_v3"]
        assert enqueues == [("execute_async_v3", 7, "eager"), ("execute_async_v3", 7, "capturing")] * 3
        profiles = [c[1] for c in context.calls if c[0] == "set_optimization_profile_async"]
        assert profiles == [0, 1, 2]  # 1 -> 1-1, 2 -> 2-2, 3 -> 3-4
        shapes = [c[1:] for c in context.calls if c[0] == "set_input_shape" and c[1] == "x"]
        assert shapes == [("x", (1, 4, 4, 4)), ("x", (2, 4, 4, 4)), ("x", (3, 4, 4, 4))]
        kinds = [c[0] for c in cudart.calls]
        # per batch: warm-up is synchronised, then one capture instantiated into one graph
        assert kinds == ["sync", "begin_capture", "end_capture", "instantiate", "graph_destroy"] * 3
        assert all(
            c[2] == real_cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            for c in cudart.calls
            if c[0] == "begin_capture"
        )
        execs = [c[2] for c in cudart.calls if c[0] == "instantiate"]

        # The loop: a forward is one graph launch, nothing else (no TensorRT call, no sync).
        context.calls.clear()
        cudart.calls.clear()
        backend.forward(3)
        backend.forward(1)
        assert context.calls == []
        assert cudart.calls == [("launch", execs[2], 7), ("launch", execs[0], 7)]
        assert backend.describe()["cuda_graphs"] == [1, 2, 3]
        backend.close()
        assert sorted(c[1] for c in cudart.calls if c[0] == "exec_destroy") == sorted(execs)


def test_enqueue_refused_during_capture_falls_back_to_plain_enqueues(engines, fakes):
    _, folder = engines
    _, cudart = fakes
    with bound(folder, 4, fakes, batch=2, stream=9) as (backend, context):
        context.fail_enqueue_while_capturing = True
        backend.prepare([2, 1])
        assert [c[0] for c in cudart.calls].count("instantiate") == 0
        assert [c[0] for c in cudart.calls].count("end_capture") == 2  # the capture was still ended
        context.calls.clear()
        backend.forward(2)  # the context holds batch 1's profile now: switch back, then enqueue
        assert [c[0] for c in context.calls][0] == "set_optimization_profile_async"
        assert context.calls[-1] == ("execute_async_v3", 9, "eager")
        context.calls.clear()
        backend.forward(2)  # already selected: only the enqueue
        assert context.calls == [("execute_async_v3", 9, "eager")]


def test_profile_choice_and_uncovered_batches(engines):
    _, folder = engines
    entry = read_engine_manifest(folder)["engines"]["2"]
    assert [profile_index(entry, b) for b in (1, 2, 3, 4)] == [0, 1, 2, 2]
    with pytest.raises(
        RunError, match=r"no optimization profile .* covers batch 5 \(profiles: 1-1, 2-2, 3-4\)"
    ):
        profile_index(entry, 5)


def test_manifest_mismatches_name_the_field(engines):
    _, folder = engines
    manifest = read_engine_manifest(folder)
    good = check_engine_entry(manifest, 2, gpu=H100, trt_version=TRT_VERSION)
    assert good["patch_size"] == 2
    cases = [
        (dict(gpu=GpuInfo("NVIDIA A100-SXM4-80GB", 8, 0), trt_version=TRT_VERSION), "gpu.compute_capability"),
        (dict(gpu=GpuInfo("NVIDIA H100 PCIe", 9, 0), trt_version=TRT_VERSION), "gpu.name"),
        (dict(gpu=H100, trt_version="10.9.0"), "tensorrt '10.15.1', this run has '10.9.0'"),
        (dict(gpu=H100, trt_version=TRT_VERSION, checkpoint_sha256="ab" * 32), "checkpoint.sha256"),
        (dict(gpu=H100, trt_version=TRT_VERSION, weights_sha256="cd" * 32), "weights_sha256"),
    ]
    for kwargs, field in cases:
        with pytest.raises(RunError, match=field.replace(".", r"\.").replace("(", r"\(")):
            check_engine_entry(manifest, 2, **kwargs)
    with pytest.raises(RunError, match=r"no TensorRT engine for patch size 8 .*built: p2, p4"):
        check_engine_entry(manifest, 8, gpu=H100, trt_version=TRT_VERSION)


def test_finding_missing_or_foreign_engines(engines, fakes, tmp_path):
    workdir, folder = engines
    trt, cudart = fakes
    got_folder, entries = find_trt_engines(workdir, "dit_s", target=TrtTarget(trt=trt, gpu=H100))
    assert got_folder == folder and sorted(entries) == [2, 4]
    graphs = json.loads((workdir / "export/dit_s/manifest.json").read_text())["graphs"]
    assert [entries[p]["macs"] for p in (2, 4)] == [graphs["2"]["macs"], graphs["4"]["macs"]]
    backends, _ = load_trt_engines(workdir, "dit_s", (4,), TrtTarget(trt=trt, gpu=H100), CudaGraphs(cudart))
    assert list(backends) == [4] and backends[4].patch_size == 4 and backends[4].out_dtype == "float32"
    with pytest.raises(RunError) as err:  # another GPU: the folder for it does not exist
        find_trt_engines(
            workdir, "dit_s", (2, 4), TrtTarget(trt=trt, gpu=GpuInfo("NVIDIA A100-SXM4-80GB", 8, 0))
        )
    assert f"engines there are for: {folder.name}" in str(err.value)
    with pytest.raises(RunError) as err:
        find_trt_engines(tmp_path, "dit_xl", (2, 4), TrtTarget(trt=trt, gpu=H100))
    assert str(err.value).endswith("run `flexidit-trt build --model dit_xl --require-trt`")
    broken = tmp_path / "engines"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"kind": "flexidit-trt/onnx-export", "schema": 1}))
    with pytest.raises(RunError, match="field 'kind'"):
        read_engine_manifest(broken)


def test_bind_refuses_bad_blocks_streams_and_buffers(engines, fakes):
    _, folder = engines
    backend = load(folder, 2, fakes)
    with Arena(1 << 20, "cpu") as arena:
        io = io_buffers(arena, 2)
        block = arena.block(backend.activation_bytes(2))
        with pytest.raises(ValueError, match="256-byte aligned"):
            backend.bind(io, block + 8, stream=7)
        with pytest.raises(ValueError, match="needs an activation block"):
            backend.bind(io, None, stream=7)
        with pytest.raises(ValueError, match="non-default stream"):
            backend.bind(io, block, stream=0)
        wrong = IOBuffers(io.x, io.t, io.y, DeviceArray(io.out.ptr, io.out.shape, "bfloat16", "cuda:0"))
        with pytest.raises(ValueError, match=r"out: TensorRT engine p2 takes float32 \[batch, 8, 4, 4\]"):
            backend.bind(wrong, block, stream=7)
    assert backend.covers(4) and not backend.covers(5)


def test_capture_always_ends_and_cuda_errors_name_the_call(fakes):
    _, cudart = fakes
    graphs = CudaGraphs(cudart)

    def explode():
        raise RuntimeError("enqueue blew up")

    with pytest.raises(RuntimeError, match="blew up"):
        graphs.capture(5, explode)
    assert [c[0] for c in cudart.calls] == ["begin_capture", "end_capture"]
    assert cudart.capturing is False
    cudart.fail["cudaGraphLaunch"] = real_cudart.cudaError_t.cudaErrorInvalidValue
    with pytest.raises(CudaCallError, match=r"cudaGraphLaunch failed: cudaErrorInvalidValue"):
        graphs.launch(123, 5)


def test_no_torch_import():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import flexidit_trt.engines.trt_backend as m\n"
        "assert m.TrtBackend and 'torch' not in {k for k, v in sys.modules.items() if v is not None}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
