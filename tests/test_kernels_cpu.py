"""CPU kernels of flexidit_trt._C against float64 numpy references: the fused sampler step and Philox noise.

Tolerances: the step is compared norm-wise, ||got - ref||_2 / ||ref||_2 <= 1e-6, against a float64
evaluation of the same formula on the same (fp32, or fp16/bf16-rounded) inputs; Philox normals are compared
element-wise, |got - ref| <= 1e-6 * max(1, |ref|), against a pure-numpy Philox4x32-10 + float64 Box-Muller.
"""

from __future__ import annotations

import numpy as np
import pytest

from flexidit_trt import _C, kernels
from flexidit_trt.diffusion.coeffs import StepCoeffs
from flexidit_trt.kernels import PhiloxNoise, fused_step, philox_normal

STEP_RTOL = 1e-6
PHILOX_TOL = 1e-6

# A DDPM step with learned-range variance and a DDIM (eta > 0) step with a fixed sigma, in the
# magnitudes a 250-step linear-beta schedule produces.
DDPM = StepCoeffs(
    c_x=1.0123, c_pred=-0.1567, learned_variance=True, log_var_max=-3.912, log_var_min=-4.605, add_noise=True
)
DDIM = StepCoeffs(c_x=0.9871, c_pred=0.2213, sigma=0.1432, add_noise=True)


# ---- references ---------------------------------------------------------------------------------------

MASK32 = 0xFFFFFFFF


def philox4x32_10_np(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on uint64 arrays holding 32-bit words (Salmon et al. 2011, Random123)."""
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(0x9E3779B9)) & np.uint64(MASK32)
            k1 = (k1 + np.uint64(0xBB67AE85)) & np.uint64(MASK32)
        p0 = c0 * np.uint64(0xD2511F53)  # < 2**64: exact
        p1 = c2 * np.uint64(0xCD9E8D57)
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ k0,
            p1 & np.uint64(MASK32),
            (p0 >> np.uint64(32)) ^ c3 ^ k1,
            p0 & np.uint64(MASK32),
        )
    return c0, c1, c2, c3


def philox_normal_ref(seed: int, step: int, n: int) -> np.ndarray:
    """float64 normals: counter (g_lo, g_hi, step, 0), key (seed_lo, seed_hi), element e = 4g + lane."""
    g = np.arange((n + 3) // 4, dtype=np.uint64)
    zeros = np.zeros_like(g)
    r0, r1, r2, r3 = philox4x32_10_np(
        g & np.uint64(MASK32), g >> np.uint64(32), zeros + np.uint64(step), zeros, seed & MASK32, seed >> 32
    )

    def box_muller(a, b):
        u1 = ((a >> np.uint64(8)) + np.uint64(1)).astype(np.float64) / 2.0**24
        u2 = (b >> np.uint64(8)).astype(np.float64) / 2.0**24
        radius = np.sqrt(-2.0 * np.log(u1))
        return radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)

    out = np.empty((len(g), 4))
    out[:, 0], out[:, 1] = box_muller(r0, r1)
    out[:, 2], out[:, 3] = box_muller(r2, r3)
    return out.reshape(-1)[:n]


def reference_step(x, cond, coeffs, baseline=None, scale=1.0, guided=None, noise=None) -> np.ndarray:
    """float64 guidance + StepCoeffs update (flexidit_trt/diffusion/coeffs.py)."""
    x, cond = x.astype(np.float64), cond.astype(np.float64)
    channels = x.shape[1]
    pred = cond[:, :channels].copy()
    if baseline is not None:
        k = channels if guided is None else guided
        base = baseline.astype(np.float64)[:, :k]
        pred[:, :k] = base + scale * (cond[:, :k] - base)
    mean = coeffs.c_x * x + coeffs.c_pred * pred
    if not coeffs.add_noise:
        return mean
    if coeffs.learned_variance:
        frac = (cond[:, channels : 2 * channels] + 1.0) / 2.0
        std = np.exp(0.5 * (frac * coeffs.log_var_max + (1.0 - frac) * coeffs.log_var_min))
    else:
        std = coeffs.sigma
    return mean + std * noise.astype(np.float64)


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))


def make_inputs(shape, learned: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch, channels, height, width = shape
    out_channels = 2 * channels if learned else channels
    x = rng.standard_normal(shape, dtype=np.float32)
    cond = rng.standard_normal((batch, out_channels, height, width), dtype=np.float32)
    if learned:  # the variance interpolation value lives in about [-1, 1]
        cond[:, channels:] = np.tanh(cond[:, channels:])
    baseline = (cond + 0.3 * rng.standard_normal(cond.shape, dtype=np.float32)).astype(np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    return x, cond, baseline, noise


# ---- fused step ---------------------------------------------------------------------------------------

SHAPES = [(3, 4, 8, 8), (1, 3, 5, 7)]  # the second has 105 elements: a partial group of 4 at the end


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("guidance", ["none", "cfg", "partial"])
@pytest.mark.parametrize("noise_kind", ["none", "buffer", "philox"])
@pytest.mark.parametrize("inplace", [False, True])
def test_step_fp32_matches_float64_reference(shape, learned, guidance, noise_kind, inplace):
    x, cond, baseline, noise = make_inputs(shape, learned)
    coeffs = DDPM if learned else DDIM
    if noise_kind == "none":
        coeffs = StepCoeffs(c_x=coeffs.c_x, c_pred=coeffs.c_pred)
    channels = shape[1]
    scale, guided = {"none": (1.0, None), "cfg": (4.0, None), "partial": (1.5, channels - 1)}[guidance]
    base = None if guidance == "none" else baseline
    noise_arg = {"none": None, "buffer": noise, "philox": PhiloxNoise(seed=1234, step=17)}[noise_kind]
    ref_noise = philox_normal_ref(1234, 17, x.size).reshape(shape) if noise_kind == "philox" else noise
    ref = reference_step(x, cond, coeffs, base, scale, guided, ref_noise)

    x_in = x.copy()
    out = x_in if inplace else np.full(shape, np.nan, dtype=np.float32)
    fused_step(
        x_in, cond, coeffs, out, baseline=base, guidance_scale=scale, guided_channels=guided, noise=noise_arg
    )
    assert np.isfinite(out).all()
    assert rel_err(out, ref) <= STEP_RTOL
    if not inplace:
        np.testing.assert_array_equal(x_in, x)  # x untouched


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("learned", [True, False])
def test_step_low_precision_model_output(dtype, learned):
    shape = (2, 4, 6, 6)
    x, cond, baseline, _ = make_inputs(shape, learned, seed=1)
    coeffs = DDPM if learned else DDIM
    if dtype == "float16":
        cond_k, base_k = cond.astype(np.float16), baseline.astype(np.float16)
        cond_r, base_r = cond_k.astype(np.float32), base_k.astype(np.float32)
    else:
        cond_k, base_k = to_bf16(cond), to_bf16(baseline)
        cond_r, base_r = from_bf16(cond_k), from_bf16(base_k)
    assert not np.array_equal(cond_r, cond)  # really rounded
    ref = reference_step(x, cond_r, coeffs, base_r, 4.0, 3, philox_normal_ref(7, 3, x.size).reshape(shape))
    out = np.full(shape, np.nan, dtype=np.float32)
    fused_step(
        x,
        cond_k,
        coeffs,
        out,
        baseline=base_k,
        guidance_scale=4.0,
        guided_channels=3,
        noise=PhiloxNoise(7, 3),
    )
    assert rel_err(out, ref) <= STEP_RTOL


def test_step_philox_noise_equals_buffer_noise_bitwise():
    shape = (2, 4, 5, 5)
    x, cond, baseline, _ = make_inputs(shape, learned=True)
    buffer = np.empty(shape, dtype=np.float32)
    philox_normal(buffer, seed=99, step=4)
    a, b = np.empty_like(x), np.empty_like(x)
    fused_step(x, cond, DDPM, a, baseline=baseline, guidance_scale=2.0, noise=PhiloxNoise(99, 4))
    fused_step(x, cond, DDPM, b, baseline=baseline, guidance_scale=2.0, noise=buffer)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_step_without_guidance_ignores_scale_and_variance_without_noise():
    shape = (1, 4, 4, 4)
    x, cond, _, _ = make_inputs(shape, learned=True)
    coeffs = StepCoeffs(c_x=0.5, c_pred=2.0, learned_variance=True, log_var_max=-1.0, log_var_min=-2.0)
    out = np.empty_like(x)
    fused_step(x, cond, coeffs, out, guidance_scale=7.0)
    np.testing.assert_allclose(out, 0.5 * x + 2.0 * cond[:, :4], rtol=1e-6, atol=1e-7)


def test_step_torch_cpu_tensors():
    torch = pytest.importorskip("torch")
    shape = (2, 4, 4, 4)
    x, cond, baseline, noise = make_inputs(shape, learned=True)
    ref = reference_step(x, cond, DDPM, baseline, 3.0, None, noise)
    xt = torch.from_numpy(x.copy())
    fused_step(
        xt,
        torch.from_numpy(cond).to(torch.bfloat16),
        DDPM,
        xt,
        baseline=torch.from_numpy(baseline).to(torch.bfloat16),
        guidance_scale=3.0,
        noise=torch.from_numpy(noise),
    )
    assert rel_err(xt.numpy(), ref) <= 1e-2  # bf16-rounded model output against fp32 inputs


def test_step_rejects_bad_buffers():
    shape = (2, 4, 4, 4)
    x, cond, baseline, noise = make_inputs(shape, learned=True)
    out = np.empty_like(x)
    with pytest.raises(TypeError, match="x: dtype must be float32, got float64"):
        fused_step(x.astype(np.float64), cond, DDPM, out, noise=noise)
    with pytest.raises(ValueError, match="out: expected shape"):
        fused_step(x, cond, DDPM, out[:1], noise=noise)
    with pytest.raises(ValueError, match="cond: must be C-contiguous"):
        fused_step(x, np.asfortranarray(cond), DDPM, out, noise=noise)
    with pytest.raises(ValueError, match="cond: expected shape"):
        fused_step(x, cond[:, :5].copy(), DDPM, out, noise=noise)
    with pytest.raises(TypeError, match="baseline: dtype must be float32, got float16"):
        fused_step(x, cond, DDPM, out, baseline=baseline.astype(np.float16), noise=noise)
    with pytest.raises(ValueError, match="needs noise"):
        fused_step(x, cond, DDPM, out)
    with pytest.raises(ValueError, match="learned variance needs out_channels"):
        fused_step(x, cond[:, :4].copy(), DDPM, out, noise=noise)
    with pytest.raises(ValueError, match="guided_channels"):
        fused_step(x, cond, DDPM, out, baseline=baseline, guided_channels=5, noise=noise)
    with pytest.raises(ValueError, match="out overlaps x"):
        flat = np.empty(2 * x.size, dtype=np.float32)
        a, b = flat[: x.size].reshape(shape), flat[8 : 8 + x.size].reshape(shape)
        fused_step(a, cond, DDPM, b, noise=noise)
    with pytest.raises(TypeError, match="expected a numpy array"):
        fused_step(x.tolist(), cond, DDPM, out, noise=noise)
    with pytest.raises(ValueError, match="out: must be writable"):
        ro = np.empty_like(x)
        ro.flags.writeable = False
        fused_step(x, cond, DDPM, ro, noise=noise)


# ---- Philox -------------------------------------------------------------------------------------------


def test_philox_known_answers():
    """Random123 kat_vectors for philox4x32 with 10 rounds."""
    assert kernels.philox4x32_10([0, 0, 0, 0], [0, 0]) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    ones = [MASK32] * 4
    assert kernels.philox4x32_10(ones, ones[:2]) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    pi_ctr, pi_key = [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]
    assert kernels.philox4x32_10(pi_ctr, pi_key) == (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def test_philox_numpy_reference_matches_known_answer():
    words = philox4x32_10_np(*(np.zeros(1, np.uint64) for _ in range(4)), 0, 0)
    assert [int(w[0]) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def normals(seed: int, step: int, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.float32)
    philox_normal(out, seed, step)
    return out


@pytest.mark.parametrize("seed, step", [(0, 0), (1234, 17), (2**64 - 1, 2**32 - 1), (2**40 + 5, 3)])
def test_philox_normal_matches_float64_reference(seed, step):
    n = 100_003
    got = normals(seed, step, n).astype(np.float64)
    ref = philox_normal_ref(seed, step, n)
    err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
    assert err.max() <= PHILOX_TOL, f"max scaled error {err.max():.3g}"


def test_philox_normal_is_deterministic_and_depends_on_seed_and_step():
    n = 10_000
    base = normals(5, 2, n)
    np.testing.assert_array_equal(base.view(np.uint32), normals(5, 2, n).view(np.uint32))
    for other in (normals(6, 2, n), normals(5, 3, n), normals(5 + 2**32, 2, n)):
        assert np.mean(base == other) < 1e-3
    # element e's normal does not depend on how many are drawn (nor on batch size)
    np.testing.assert_array_equal(normals(5, 2, 37), base[:37])
    shifted = np.empty(n - 4, dtype=np.float32)
    _C.philox_normal_cpu(5, 2, n - 4, shifted.ctypes.data)
    np.testing.assert_array_equal(shifted, base[: n - 4])


def test_philox_normal_statistics():
    z = normals(2024, 0, 1_000_000).astype(np.float64)
    assert abs(z.mean()) < 5e-3
    assert abs(z.std() - 1.0) < 5e-3
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 3e-3
    assert abs(np.mean(z**4) - 3.0) < 0.05  # Gaussian kurtosis
    assert np.abs(z).max() < 5.8  # Box-Muller with 24-bit uniforms cannot exceed sqrt(2 ln 2^24)


def test_philox_normal_array_checks():
    with pytest.raises(TypeError, match="out: dtype must be float32"):
        philox_normal(np.empty(4), 0, 0)
    with pytest.raises(ValueError, match="seed"):
        philox_normal(np.empty(4, np.float32), -1, 0)
    with pytest.raises(ValueError, match="step"):
        philox_normal(np.empty(4, np.float32), 0, 2**32)
    philox_normal(np.empty(0, np.float32), 0, 0)  # nothing to do


# ---- CUDA entry points without a device -----------------------------------------------------------------


@pytest.mark.skipif(kernels.cuda_device_count() > 0, reason="a CUDA device is present (see test_kernels_gpu)")
def test_cuda_entry_points_raise_clear_errors_without_a_device():
    # CPU-only build: "built without CUDA"; CUDA build without a driver or device: CudaError with the CUDA
    # error string. The address is never dereferenced: the launch fails first.
    expected = kernels.CudaError if kernels.has_cuda() else RuntimeError
    with pytest.raises(expected, match="CUDA"):
        _C.philox_normal_cuda(0, 0, 4, 256)
    with pytest.raises(expected, match="CUDA"):
        kernels.Arena(1024, "cuda")
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(expected, match="CUDA"):
        kernels.fused_step_ptr("cuda", 256, 256, 256, x.shape, 4, "float32", DDIM, noise=PhiloxNoise(0, 0))


def test_cuda_kernels_compiled_wherever_nvcc_exists():
    """The package build compiles the CUDA kernels when nvcc is on PATH (CI has nvcc 13.0, no GPU)."""
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH: a CPU-only module is the expected build here")
    assert _C.has_cuda(), "nvcc is on PATH but flexidit_trt._C was built without its CUDA kernels"
