"""CUDA kernels of flexidit_trt._C against the CPU kernels (run on a GPU machine: pytest -m gpu).

Device buffers are blocks of a device Arena (cudaMalloc) filled with ``native.memcpy``; outputs are
poisoned with NaN first. Tolerance: norm-wise relative error 1e-6 against the CPU kernel on the same
inputs, for every model dtype: both kernels read the same fp32/fp16/bf16 values (decoded by the same
bit-exact functions of csrc/step_math.h) and compute in fp32 in the same order without FMA contraction,
so they differ only where the device's expf and the host's round differently (learned variance);
1.1e-8 was measured on an H100. Philox noise must be bit-identical to the CPU's.

These tests skip only when the driver sees no GPU (asked of libcuda, not of `_C`); on a machine with a
GPU, a `_C` built without CUDA makes every one of them fail.
"""

from __future__ import annotations

import array_kernels
import numpy as np
import pytest
from array_kernels import fused_step, philox_normal
from kernel_helpers import DDIM, DDPM, as_model_dtype, driver_gpu_count, make_inputs, rel_err

from flexidit_trt import _C
from flexidit_trt.diffusion.coeffs import StepCoeffs
from flexidit_trt.runtime import native
from flexidit_trt.runtime.native import Arena, ArenaFullError, PhiloxNoise, fused_step_ptr, philox_normal_ptr

GPUS = driver_gpu_count()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(GPUS == 0, reason="the CUDA driver sees no GPU"),
]

TOL = 1e-6


@pytest.fixture(autouse=True)
def _extension_has_cuda():
    """A GPU is visible (or the module would have skipped): a `_C` without CUDA kernels is a failure."""
    if not native.has_cuda():
        pytest.fail(
            f"the driver sees {GPUS} GPU(s) but flexidit_trt._C was built without CUDA: rebuild it with nvcc on "
            "PATH (pip install --no-build-isolation --no-deps -e .)"
        )


# ---- helpers ------------------------------------------------------------------------------------------


def upload(arena: Arena, a: np.ndarray, stream: object = 0) -> int:
    a = np.ascontiguousarray(a)
    ptr = arena.block(a.nbytes)
    native.memcpy(ptr, a.ctypes.data, a.nbytes, stream)
    native.stream_synchronize(stream)  # the host array may go away after this
    return ptr


def download(ptr: int, shape: tuple[int, ...], dtype: type = np.float32, stream: object = 0) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    native.memcpy(out.ctypes.data, ptr, out.nbytes, stream)
    native.stream_synchronize(stream)
    return out


@pytest.fixture(scope="module")
def device_arena():
    with Arena(256 << 20, "cuda") as arena:
        yield arena


@pytest.fixture
def arena(device_arena):
    device_arena.reset()
    return device_arena


def run_step_both(arena, shape, dtype, learned, guidance, noise_kind, inplace, stream: object = 0):
    """The same step through the CPU kernel (numpy) and the CUDA kernel (arena blocks); returns both."""
    x, cond, baseline, noise = make_inputs(shape, learned)
    cond, baseline = as_model_dtype(cond, dtype), as_model_dtype(baseline, dtype)
    coeffs = DDPM if learned else DDIM
    if noise_kind == "none":
        coeffs = StepCoeffs(c_x=coeffs.c_x, c_pred=coeffs.c_pred)
    channels = shape[1]
    scale, guided = {"none": (1.0, None), "cfg": (4.0, None), "partial": (1.5, channels - 1)}[guidance]
    philox = PhiloxNoise(seed=2**63 + 11, step=42)

    cpu = np.full(shape, np.nan, dtype=np.float32)
    fused_step(
        x,
        cond,
        coeffs,
        cpu,
        baseline=None if guidance == "none" else baseline,
        guidance_scale=scale,
        guided_channels=guided,
        noise={"none": None, "buffer": noise, "philox": philox}[noise_kind],
        bf16_as_uint16=dtype == "bfloat16",
    )

    d_x = upload(arena, x, stream)
    d_cond = upload(arena, cond, stream)
    d_base = upload(arena, baseline, stream) if guidance != "none" else 0
    d_noise = upload(arena, noise, stream)
    d_out = d_x if inplace else upload(arena, np.full(shape, np.nan, dtype=np.float32), stream)
    fused_step_ptr(
        "cuda",
        d_x,
        d_cond,
        d_out,
        shape,
        cond.shape[1],
        dtype,
        coeffs,
        baseline=d_base,
        guidance_scale=scale,
        guided_channels=guided,
        noise={"none": None, "buffer": d_noise, "philox": philox}[noise_kind],
        stream=stream,
    )
    gpu = download(d_out, shape, stream=stream)
    return cpu, gpu


# ---- fused step ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("guidance", ["none", "cfg", "partial"])
@pytest.mark.parametrize("noise_kind", ["none", "buffer", "philox"])
@pytest.mark.parametrize("inplace", [False, True])
def test_step_matches_cpu(arena, dtype, learned, guidance, noise_kind, inplace):
    shape = (3, 4, 16, 16) if not inplace else (1, 3, 5, 7)  # the latter ends in a partial group of 4
    cpu, gpu = run_step_both(arena, shape, dtype, learned, guidance, noise_kind, inplace)
    assert np.isfinite(gpu).all(), "poisoned output not overwritten everywhere"
    assert rel_err(gpu, cpu) <= TOL


def test_step_large_uses_grid_stride(arena):
    shape = (5, 4, 512, 512)  # 5.2M elements: more than one sweep of the capped grid
    cpu, gpu = run_step_both(arena, shape, "bfloat16", True, "cfg", "philox", inplace=False)
    assert np.isfinite(gpu).all()
    assert rel_err(gpu, cpu) <= TOL


def test_step_philox_noise_bit_identical_to_cpu(arena):
    """With c_x = c_pred = 0 and sigma = 1 the step writes 0 + 1 * z: the in-kernel Philox noise itself."""
    shape = (2, 4, 33, 33)
    x, cond, _, _ = make_inputs(shape, learned=False)
    coeffs = StepCoeffs(c_x=0.0, c_pred=0.0, sigma=1.0, add_noise=True)
    noise = PhiloxNoise(seed=987654321, step=249)
    cpu = np.empty(shape, np.float32)
    fused_step(x, cond, coeffs, cpu, noise=noise)
    d_out = upload(arena, np.full(shape, np.nan, np.float32))
    fused_step_ptr(
        "cuda", upload(arena, x), upload(arena, cond), d_out, shape, 4, "float32", coeffs, noise=noise
    )
    np.testing.assert_array_equal(download(d_out, shape).view(np.uint32), cpu.view(np.uint32))


# ---- Philox -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 4, 1_000_003, 5_000_001])
@pytest.mark.parametrize("seed, step", [(0, 0), (1234, 17), (2**64 - 1, 2**32 - 1)])
def test_philox_normal_bit_identical_to_cpu(arena, n, seed, step):
    cpu = np.empty(n, np.float32)
    philox_normal_ptr("cpu", cpu.ctypes.data, n, seed, step)
    d_out = upload(arena, np.full(n, np.nan, np.float32))
    philox_normal_ptr("cuda", d_out, n, seed, step)
    np.testing.assert_array_equal(download(d_out, (n,)).view(np.uint32), cpu.view(np.uint32))


# ---- streams ------------------------------------------------------------------------------------------


def _torch_stream():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    stream = torch.cuda.Stream()
    return stream, stream.cuda_stream, lambda: None


def _cuda_python_stream():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            pytest.skip("cuda-python is not installed")
    err, stream = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
    assert err == cudart.cudaError_t.cudaSuccess, err
    return stream, int(stream), lambda: cudart.cudaStreamDestroy(stream)


@pytest.mark.parametrize("provider", ["torch", "cuda-python"])
def test_non_default_stream(arena, provider):
    stream, handle, destroy = _torch_stream() if provider == "torch" else _cuda_python_stream()
    try:
        assert handle != 0
        cpu, gpu = run_step_both(arena, (2, 4, 32, 32), "bfloat16", True, "partial", "philox", False, stream)
        assert rel_err(gpu, cpu) <= TOL
        # the stream object itself is accepted too (torch: .cuda_stream, cuda-python: int())
        n = 4099
        d_out = upload(arena, np.full(n, np.nan, np.float32))
        philox_normal_ptr("cuda", d_out, n, 3, 4, stream=stream)
        cpu_noise = np.empty(n, np.float32)
        philox_normal_ptr("cpu", cpu_noise.ctypes.data, n, 3, 4)
        np.testing.assert_array_equal(
            download(d_out, (n,), stream=stream).view(np.uint32), cpu_noise.view(np.uint32)
        )
    finally:
        destroy()


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    return torch


def test_torch_tensors_default_to_torchs_current_stream(monkeypatch):
    """Without a stream, torch CUDA tensors are worked on torch's current stream (the one ``with
    torch.cuda.stream(s)`` sets), not the legacy default stream, which does not wait for ``s``."""
    torch = _torch_cuda()
    seen = []
    real_step, real_philox = _C.step_cuda, _C.philox_normal_cuda

    def step_cuda(**kwargs):
        seen.append(("step", kwargs["device"], kwargs["stream"]))
        real_step(**kwargs)

    def philox_normal_cuda(*args, **kwargs):
        seen.append(("philox", kwargs["device"], kwargs["stream"]))
        real_philox(*args, **kwargs)

    monkeypatch.setattr(_C, "step_cuda", step_cuda)
    monkeypatch.setattr(_C, "philox_normal_cuda", philox_normal_cuda)
    shape = (2, 4, 16, 16)
    x, cond, baseline, _ = make_inputs(shape, learned=True, seed=5)
    cpu = np.empty(shape, np.float32)
    fused_step(x, cond, DDPM, cpu, baseline=baseline, guidance_scale=3.0, noise=PhiloxNoise(8, 9))
    cpu_noise = np.empty(shape, np.float32)
    philox_normal(cpu_noise, 8, 9)

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # uploads, kernels and downloads all queued on `stream`
        xg, cond_g, base_g = (torch.from_numpy(a).cuda() for a in (x, cond, baseline))
        fused_step(xg, cond_g, DDPM, xg, baseline=base_g, guidance_scale=3.0, noise=PhiloxNoise(8, 9))
        noise_g = torch.empty(shape, device="cuda")
        philox_normal(noise_g, 8, 9)
        got, got_noise = xg.cpu().numpy(), noise_g.cpu().numpy()
    device = torch.cuda.current_device()
    assert seen == [("step", device, stream.cuda_stream), ("philox", device, stream.cuda_stream)]
    assert rel_err(got, cpu) <= TOL
    np.testing.assert_array_equal(got_noise.view(np.uint32), cpu_noise.view(np.uint32))


@pytest.mark.parametrize("given_as", ["torch stream", "int handle"])
def test_tensor_stepped_on_a_side_stream_is_not_reused_while_that_stream_may_use_it(given_as):
    """A torch tensor allocated on the current stream, stepped on another and then dropped: torch's caching
    allocator must not hand its memory to a new tensor before that stream has run the step (the array
    functions record_stream the tensors they launch on; a bare handle through torch.cuda.ExternalStream).
    The control shows the allocator would otherwise reuse the block at once."""
    torch = _torch_cuda()
    shape, coeffs = (1, 4, 64, 64), StepCoeffs(c_x=1.0, c_pred=1.0)
    cond = torch.zeros(shape, device="cuda")

    x = torch.zeros(shape, device="cuda")  # control: stepped on the stream it was allocated on
    fused_step(x, cond, coeffs, x)
    freed = x.data_ptr()
    del x
    again = torch.empty(shape, device="cuda")
    assert again.data_ptr() == freed, "control: the allocator did not reuse a freed block at once"
    del again

    side = torch.cuda.Stream()
    x = torch.zeros(shape, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s: the step below stays queued behind it
    fused_step(x, cond, coeffs, x, stream=side if given_as == "torch stream" else side.cuda_stream)
    freed = x.data_ptr()
    del x
    other = torch.empty(shape, device="cuda")
    try:
        assert other.data_ptr() != freed, "x's memory was handed out while the side stream may still use it"
    finally:
        side.synchronize()


# ---- devices: kernels run on the buffers' device, whatever device is current -----------------------------


def test_missing_device_raises_clear_error(arena):
    n = native.cuda_device_count()
    missing, msg = f"cuda:{n}", rf"cudaErrorInvalidDevice.*\(CUDA device {n} requested, {n} visible\)"
    with pytest.raises(native.CudaError, match=msg):
        Arena(1024, missing)
    # real, disjoint addresses on cuda:0; the device check comes first
    d_x, d_cond, d_step = (upload(arena, np.zeros(16, np.float32)) for _ in range(3))
    with pytest.raises(native.CudaError, match=msg):
        philox_normal_ptr(missing, d_x, 16, 0, 0)
    with pytest.raises(native.CudaError, match=msg):
        fused_step_ptr(
            missing, d_x, d_cond, d_step, (1, 4, 2, 2), 4, "float32", DDIM, noise=PhiloxNoise(0, 0)
        )
    with pytest.raises(native.CudaError, match=msg):  # even with nothing to do
        fused_step_ptr(missing, 0, 0, 0, (0, 4, 2, 2), 4, "float32", DDIM, noise=PhiloxNoise(0, 0))
    # no sticky error, and the devices that exist still work
    d_out = upload(arena, np.full(16, np.nan, np.float32))
    philox_normal_ptr("cuda:0", d_out, 16, 1, 1)
    ref = np.empty(16, np.float32)
    philox_normal_ptr("cpu", ref.ctypes.data, 16, 1, 1)
    np.testing.assert_array_equal(download(d_out, (16,)).view(np.uint32), ref.view(np.uint32))


def test_cuda_pointer_device(arena):
    assert _C.cuda_pointer_device(arena.block(256)) == 0
    assert _C.cuda_pointer_device(np.zeros(4, np.float32).ctypes.data) == -1  # pageable host memory
    assert _C.cuda_pointer_device(0) == -1


two_devices = pytest.mark.skipif(GPUS < 2, reason="needs two CUDA devices")


@two_devices
def test_second_device_arena_with_device_zero_current():
    """An Arena('cuda:1') block stepped with fused_step_ptr('cuda:1', ...) while cuda:0 is current."""
    torch = _torch_cuda()
    shape = (2, 4, 16, 16)
    x, cond, baseline, _ = make_inputs(shape, learned=True, seed=6)
    cond16, base16 = as_model_dtype(cond, "bfloat16"), as_model_dtype(baseline, "bfloat16")
    philox = PhiloxNoise(11, 12)
    cpu = np.empty(shape, np.float32)
    fused_step(x, cond16, DDPM, cpu, baseline=base16, guidance_scale=4.0, noise=philox, bf16_as_uint16=True)
    n = 4099
    cpu_noise = np.empty(n, np.float32)
    philox_normal_ptr("cpu", cpu_noise.ctypes.data, n, 3, 4)

    with torch.cuda.device(0), Arena(64 << 20, "cuda:1") as arena1:
        assert _C.cuda_pointer_device(arena1.ptr) == 1
        s1 = torch.cuda.Stream(device=1)  # stream 0 would be cuda:0's here: copies would not wait
        d_x, d_cond, d_base = (upload(arena1, a, s1) for a in (x, cond16, base16))
        d_out = upload(arena1, np.full(shape, np.nan, np.float32), s1)
        fused_step_ptr(
            "cuda:1",
            d_x,
            d_cond,
            d_out,
            shape,
            8,
            "bfloat16",
            DDPM,
            baseline=d_base,
            guidance_scale=4.0,
            noise=philox,
            stream=s1,
        )
        d_noise = upload(arena1, np.full(n, np.nan, np.float32), s1)
        philox_normal_ptr("cuda:1", d_noise, n, 3, 4, stream=s1)
        gpu, gpu_noise = download(d_out, shape, stream=s1), download(d_noise, (n,), stream=s1)
        assert torch.cuda.current_device() == 0  # the launches restored the current device
    assert np.isfinite(gpu).all()
    assert rel_err(gpu, cpu) <= TOL
    np.testing.assert_array_equal(gpu_noise.view(np.uint32), cpu_noise.view(np.uint32))


@two_devices
def test_torch_tensors_on_second_device():
    torch = _torch_cuda()
    shape = (2, 4, 16, 16)
    x, cond, baseline, _ = make_inputs(shape, learned=True, seed=7)
    cpu = np.empty(shape, np.float32)
    fused_step(x, cond, DDPM, cpu, baseline=baseline, guidance_scale=2.0, noise=PhiloxNoise(1, 2))
    with torch.cuda.device(0):
        xg, cond_g, base_g = (torch.from_numpy(a).to("cuda:1") for a in (x, cond, baseline))
        # no stream: torch's current stream on cuda:1, which the uploads and the download use too
        fused_step(xg, cond_g, DDPM, xg, baseline=base_g, guidance_scale=2.0, noise=PhiloxNoise(1, 2))
        assert torch.cuda.current_device() == 0
        got = xg.cpu().numpy()
        assert rel_err(got, cpu) <= TOL
        with pytest.raises(ValueError, match=r"one device: x on cuda:1, cond on cuda:0"):
            fused_step(xg, cond_g.to("cuda:0"), DDPM, xg, noise=PhiloxNoise(1, 2))
        with pytest.raises(ValueError, match="stream is on cuda:0, the buffers on cuda:1"):
            fused_step(xg, cond_g, DDPM, xg, noise=PhiloxNoise(1, 2), stream=torch.cuda.Stream(device=0))


# ---- array conveniences: torch tensors and __cuda_array_interface__ --------------------------------------


def test_fused_step_on_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    shape = (2, 4, 16, 16)
    x, cond, baseline, _ = make_inputs(shape, learned=True, seed=3)
    cond_t = torch.from_numpy(cond).to(torch.bfloat16)
    base_t = torch.from_numpy(baseline).to(torch.bfloat16)
    cpu = np.empty(shape, np.float32)
    noise = PhiloxNoise(5, 6)
    fused_step(x, cond_t, DDPM, cpu, baseline=base_t, guidance_scale=4.0, guided_channels=3, noise=noise)

    xg, cond_g, base_g = torch.from_numpy(x).cuda(), cond_t.cuda(), base_t.cuda()
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()  # the uploads ran on torch's default stream
    fused_step(
        xg,
        cond_g,
        DDPM,
        xg,
        baseline=base_g,
        guidance_scale=4.0,
        guided_channels=3,
        noise=noise,
        stream=stream,
    )
    stream.synchronize()
    assert rel_err(xg.cpu().numpy(), cpu) <= TOL

    out = torch.full(shape, float("nan"), device="cuda")
    torch.cuda.synchronize()
    philox_normal(out, 5, 6)  # no stream: torch's current one (here its default stream)
    ref = np.empty(shape, np.float32)
    philox_normal(ref, 5, 6)
    np.testing.assert_array_equal(out.cpu().numpy().view(np.uint32), ref.view(np.uint32))

    with pytest.raises(ValueError, match="one device"):
        fused_step(xg, cond_t, DDPM, xg, noise=noise)  # cond on the CPU


def test_fused_step_on_cuda_array_interface():
    cp = pytest.importorskip("cupy")
    shape = (2, 4, 8, 8)
    x, cond, baseline, noise = make_inputs(shape, learned=False, seed=4)
    cond16, base16 = cond.astype(np.float16), baseline.astype(np.float16)
    cpu = np.empty(shape, np.float32)
    fused_step(x, cond16, DDIM, cpu, baseline=base16, guidance_scale=2.0, noise=noise)
    # only copies: no cupy kernel (and so no NVRTC) is needed
    x_d, cond_d, base_d, noise_d = (cp.asarray(a) for a in (x, cond16, base16, noise))
    out = cp.asarray(np.full(shape, np.nan, np.float32))
    assert array_kernels._describe(x_d, "x").device == f"cuda:{cp.cuda.Device().id}"  # asked of the runtime
    cp.cuda.Device().synchronize()
    fused_step(x_d, cond_d, DDIM, out, baseline=base_d, guidance_scale=2.0, noise=noise_d)
    cp.cuda.Device().synchronize()
    assert rel_err(cp.asnumpy(out), cpu) <= TOL
    with pytest.raises(ValueError, match="C-contiguous"):
        fused_step(x_d, cond_d[..., ::2], DDIM, out, noise=noise_d)


# ---- device arena -------------------------------------------------------------------------------------


def test_device_arena_blocks_aligned_disjoint_and_usable():
    with Arena(1 << 20, "cuda:0") as arena:
        assert arena.ptr % 256 == 0
        sizes = [4 * 1001, 4 * 3, 4 * 64, 4 * 5000]
        ptrs = [arena.block(n) for n in sizes]
        assert all(p % 256 == 0 for p in ptrs)
        spans = sorted(zip(ptrs, sizes, strict=True))
        assert all(p + n <= q for (p, n), (q, _) in zip(spans[:-1], spans[1:], strict=True))
        for i, (p, n) in enumerate(zip(ptrs, sizes, strict=True)):  # neighbours must not clobber each other
            philox_normal_ptr("cuda", p, n // 4, seed=i, step=0)
        for i, (p, n) in enumerate(zip(ptrs, sizes, strict=True)):
            ref = np.empty(n // 4, np.float32)
            philox_normal_ptr("cpu", ref.ctypes.data, n // 4, seed=i, step=0)
            np.testing.assert_array_equal(download(p, (n // 4,)).view(np.uint32), ref.view(np.uint32))
        with pytest.raises(ArenaFullError, match="requested"):
            arena.block(1 << 20)
        arena.reset()
        assert arena.block(1 << 20) == arena.ptr


def test_device_arena_frees_on_close_and_destruction():
    nbytes = 256 << 20
    free0, _ = native.cuda_mem_get_info(0)  # the context exists already (module fixtures, earlier tests)
    open0 = native.open_arena_bytes()
    arena = Arena(nbytes, "cuda")
    free1, _ = native.cuda_mem_get_info(0)
    assert free0 - free1 >= nbytes - (2 << 20)
    assert native.open_arena_bytes() == open0 + nbytes
    arena.close()
    arena.close()
    free2, _ = native.cuda_mem_get_info(0)
    assert abs(free2 - free0) <= 4 << 20
    assert native.open_arena_bytes() == open0

    arena = Arena(nbytes, "cuda")
    del arena  # no close: the destructor frees
    free3, _ = native.cuda_mem_get_info(0)
    assert abs(free3 - free0) <= 4 << 20
    assert native.open_arena_bytes() == open0


def test_cuda_errors_become_exceptions():
    with pytest.raises(native.CudaError, match="cudaErrorMemoryAllocation|out of memory"):
        Arena(1 << 50, "cuda")  # 1 PiB
    with pytest.raises(native.CudaError, match="cudaErrorInvalidDevice|invalid device"):
        native.cuda_mem_get_info(native.cuda_device_count() + 7)
    # the failed calls left no sticky error behind
    n = 16
    d_out = Arena(4096, "cuda")
    philox_normal_ptr("cuda", d_out.ptr, n, 1, 1)
    assert np.isfinite(download(d_out.ptr, (n,))).all()
    d_out.close()
