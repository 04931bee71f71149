"""CUDA kernels of flexidit_trt._C against the CPU kernels (run on a GPU machine: pytest -m gpu).

Device buffers are blocks of a device Arena (cudaMalloc) filled with ``kernels.memcpy``; outputs are
poisoned with NaN first. Tolerances (norm-wise relative, against the CPU kernel on the same inputs): fp32
1e-5, fp16/bf16 model outputs 1e-2. Philox noise must be bit-identical to the CPU's.
"""

from __future__ import annotations

import numpy as np
import pytest

from flexidit_trt import kernels
from flexidit_trt.diffusion.coeffs import StepCoeffs
from flexidit_trt.kernels import (
    Arena,
    ArenaFullError,
    PhiloxNoise,
    fused_step,
    fused_step_ptr,
    philox_normal_ptr,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not kernels.has_cuda(), reason="flexidit_trt._C was built without CUDA"),
    pytest.mark.skipif(kernels.cuda_device_count() == 0, reason="no CUDA device visible"),
]

TOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
DDPM = StepCoeffs(
    c_x=1.0123, c_pred=-0.1567, learned_variance=True, log_var_max=-3.912, log_var_min=-4.605, add_noise=True
)
DDIM = StepCoeffs(c_x=0.9871, c_pred=0.2213, sigma=0.1432, add_noise=True)


# ---- helpers ------------------------------------------------------------------------------------------


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


def as_model_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    return {"float32": lambda: a, "float16": lambda: a.astype(np.float16), "bfloat16": lambda: to_bf16(a)}[
        dtype
    ]()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def upload(arena: Arena, a: np.ndarray, stream: object = 0) -> int:
    a = np.ascontiguousarray(a)
    ptr = arena.block(a.nbytes)
    kernels.memcpy(ptr, a.ctypes.data, a.nbytes, stream)
    kernels.stream_synchronize(stream)  # the host array may go away after this
    return ptr


def download(ptr: int, shape: tuple[int, ...], dtype: type = np.float32, stream: object = 0) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    kernels.memcpy(out.ctypes.data, ptr, out.nbytes, stream)
    kernels.stream_synchronize(stream)
    return out


def make_inputs(shape, learned: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch, channels, height, width = shape
    out_channels = 2 * channels if learned else channels
    x = rng.standard_normal(shape, dtype=np.float32)
    cond = rng.standard_normal((batch, out_channels, height, width), dtype=np.float32)
    if learned:
        cond[:, channels:] = np.tanh(cond[:, channels:])
    baseline = (cond + 0.3 * rng.standard_normal(cond.shape, dtype=np.float32)).astype(np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    return x, cond, baseline, noise


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
    assert rel_err(gpu, cpu) <= TOL[dtype]


def test_step_large_uses_grid_stride(arena):
    shape = (5, 4, 512, 512)  # 5.2M elements: more than one sweep of the capped grid
    cpu, gpu = run_step_both(arena, shape, "bfloat16", True, "cfg", "philox", inplace=False)
    assert np.isfinite(gpu).all()
    assert rel_err(gpu, cpu) <= TOL["bfloat16"]


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
        assert rel_err(gpu, cpu) <= TOL["bfloat16"]
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
    assert rel_err(xg.cpu().numpy(), cpu) <= TOL["bfloat16"]

    out = torch.full(shape, float("nan"), device="cuda")
    torch.cuda.synchronize()
    kernels.philox_normal(out, 5, 6)  # default stream, as torch's
    ref = np.empty(shape, np.float32)
    kernels.philox_normal(ref, 5, 6)
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
    cp.cuda.Device().synchronize()
    fused_step(x_d, cond_d, DDIM, out, baseline=base_d, guidance_scale=2.0, noise=noise_d)
    cp.cuda.Device().synchronize()
    assert rel_err(cp.asnumpy(out), cpu) <= TOL["float16"]
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
    free0, _ = kernels.cuda_mem_get_info(0)  # the context exists already (module fixtures, earlier tests)
    open0 = kernels.open_arena_bytes()
    arena = Arena(nbytes, "cuda")
    free1, _ = kernels.cuda_mem_get_info(0)
    assert free0 - free1 >= nbytes - (2 << 20)
    assert kernels.open_arena_bytes() == open0 + nbytes
    arena.close()
    arena.close()
    free2, _ = kernels.cuda_mem_get_info(0)
    assert abs(free2 - free0) <= 4 << 20
    assert kernels.open_arena_bytes() == open0

    arena = Arena(nbytes, "cuda")
    del arena  # no close: the destructor frees
    free3, _ = kernels.cuda_mem_get_info(0)
    assert abs(free3 - free0) <= 4 << 20
    assert kernels.open_arena_bytes() == open0


def test_cuda_errors_become_exceptions():
    with pytest.raises(kernels.CudaError, match="cudaErrorMemoryAllocation|out of memory"):
        Arena(1 << 50, "cuda")  # 1 PiB
    with pytest.raises(kernels.CudaError, match="cudaErrorInvalidDevice|invalid device"):
        kernels.cuda_mem_get_info(kernels.cuda_device_count() + 7)
    # the failed calls left no sticky error behind
    n = 16
    d_out = Arena(4096, "cuda")
    philox_normal_ptr("cuda", d_out.ptr, n, 1, 1)
    assert np.isfinite(download(d_out.ptr, (n,))).all()
    d_out.close()
