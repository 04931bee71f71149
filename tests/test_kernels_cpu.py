"""CPU kernels of flexidit_trt._C against float64 numpy references: the fused sampler step and Philox noise.

Tolerances: the step is compared norm-wise, ||got - ref||_2 / ||ref||_2 <= 1e-6, against a float64
evaluation of the same formula on the same (fp32, or fp16/bf16-rounded) inputs; Philox normals are compared
element-wise, |got - ref| <= 1e-6 * max(1, |ref|), against a pure-numpy Philox4x32-10 + float64 Box-Muller.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from array_kernels import fused_step, philox_normal
from kernel_helpers import DDIM, DDPM, FakeCudaArray, from_bf16, make_inputs, rel_err, to_bf16

from flexidit_trt import _C
from flexidit_trt.diffusion.coeffs import StepCoeffs
from flexidit_trt.runtime import native
from flexidit_trt.runtime.native import PhiloxNoise

STEP_RTOL = 1e-6
PHILOX_TOL = 1e-6


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
        bf16_as_uint16=dtype == "bfloat16",
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
    cond_t, base_t = (torch.from_numpy(a).to(torch.bfloat16) for a in (cond, baseline))
    # the reference sees the same bf16-rounded model output (torch rounds to nearest even, as to_bf16)
    ref = reference_step(x, from_bf16(to_bf16(cond)), DDPM, from_bf16(to_bf16(baseline)), 3.0, None, noise)
    xt = torch.from_numpy(x.copy())
    fused_step(xt, cond_t, DDPM, xt, baseline=base_t, guidance_scale=3.0, noise=torch.from_numpy(noise))
    assert rel_err(xt.numpy(), ref) <= STEP_RTOL


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


# ---- buffer checks: byte order, bf16 bits, alignment, overlap ------------------------------------------

NON_NATIVE = ">" if sys.byteorder == "little" else "<"


def swapped(a: np.ndarray) -> np.ndarray:
    """The same values stored in the other byte order."""
    return a.astype(a.dtype.newbyteorder(NON_NATIVE))


def misaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` at an address one byte past a multiple of 8 (numpy allows unaligned arrays)."""
    raw = np.zeros(a.nbytes + 16, np.uint8)
    start = (-raw.ctypes.data) % 8 + 1
    view = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    view[...] = a
    assert not view.flags.aligned
    return view


def step_args(**change):
    """Keyword arguments for a guided DDPM step on (2, 4, 3, 3) with buffer noise, with some replaced."""
    x, cond, baseline, noise = make_inputs((2, 4, 3, 3), learned=True, seed=8)
    args = dict(x=x, cond=cond, coeffs=DDPM, out=np.empty_like(x), baseline=baseline, noise=noise)
    return {**args, **change}


def test_non_native_byte_order_is_refused():
    """A big-endian float32 array has dtype name 'float32' but other bytes: the kernels would read garbage."""
    ok = step_args()
    for name in ("x", "cond", "out", "baseline", "noise"):
        bad = step_args(**{name: swapped(ok[name])})
        with pytest.raises(ValueError, match=rf"{name}: byte order must be native .*got {NON_NATIVE}f4"):
            fused_step(**bad)
    with pytest.raises(ValueError, match="out: byte order must be native"):
        philox_normal(swapped(np.zeros(8, np.float32)), 0, 0)
    half = step_args(cond=ok["cond"].astype(np.float16), baseline=ok["baseline"].astype(np.float16))
    with pytest.raises(ValueError, match=rf"cond: byte order must be native .*got {NON_NATIVE}f2"):
        fused_step(**{**half, "cond": swapped(half["cond"])})


def test_cuda_array_interface_byte_order_and_bits_are_checked(cuda_calls):
    shape = (1, 4, 2, 2)
    cuda_calls.devices.update({4096: 0, 8192: 0})
    x = FakeCudaArray(4096, shape)
    with pytest.raises(ValueError, match=rf"cond: byte order must be native .*got {NON_NATIVE}f4"):
        fused_step(x, FakeCudaArray(8192, shape, f"{NON_NATIVE}f4"), DDIM, x, noise=PhiloxNoise(0, 0))
    with pytest.raises(TypeError, match="cond: dtype must be .*got uint16"):
        fused_step(x, FakeCudaArray(8192, shape, "<u2"), DDIM, x, noise=PhiloxNoise(0, 0))
    assert cuda_calls == []
    fused_step(x, FakeCudaArray(8192, shape, "<u2"), DDIM, x, noise=PhiloxNoise(0, 0), bf16_as_uint16=True)
    assert cuda_calls[-1][1]["dtype"] == "bfloat16"


def test_uint16_is_bf16_only_when_the_caller_says_so():
    shape = (2, 4, 3, 3)
    x, cond, baseline, _ = make_inputs(shape, learned=True, seed=2)
    bits, base_bits = to_bf16(cond), to_bf16(baseline)
    ref = reference_step(
        x,
        from_bf16(bits),
        DDPM,
        from_bf16(base_bits),
        2.0,
        None,
        philox_normal_ref(3, 4, x.size).reshape(shape),
    )
    out = np.full(shape, np.nan, np.float32)
    with pytest.raises(
        TypeError, match=r"cond: dtype must be .*got uint16 \(bf16 bits: pass bf16_as_uint16=True\)"
    ):
        fused_step(x, bits, DDPM, out, baseline=base_bits, guidance_scale=2.0, noise=PhiloxNoise(3, 4))
    assert np.isnan(out).all()
    fused_step(
        x,
        bits,
        DDPM,
        out,
        baseline=base_bits,
        guidance_scale=2.0,
        noise=PhiloxNoise(3, 4),
        bf16_as_uint16=True,
    )
    assert rel_err(out, ref) <= STEP_RTOL
    # the flag is a statement about cond and baseline: a float16 model output with it is a caller's bug
    with pytest.raises(TypeError, match=r"cond: bf16_as_uint16=True needs uint16 .*got float16"):
        fused_step(x, cond.astype(np.float16), DDPM, out, noise=PhiloxNoise(3, 4), bf16_as_uint16=True)
    with pytest.raises(TypeError, match="baseline: dtype must be uint16, got float32"):
        fused_step(x, bits, DDPM, out, baseline=baseline, noise=PhiloxNoise(3, 4), bf16_as_uint16=True)
    # uint16 is never taken for fp32 buffers, flag or not
    with pytest.raises(TypeError, match="x: dtype must be float32, got uint16"):
        fused_step(bits[:, :4].copy(), bits, DDPM, out, noise=PhiloxNoise(3, 4), bf16_as_uint16=True)
    # torch uint16 tensors follow the same rule
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="got uint16"):
        fused_step(x, torch.from_numpy(bits), DDPM, out, noise=PhiloxNoise(3, 4))


def test_bfloat16_typed_arrays_need_no_flag():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    shape = (2, 4, 3, 3)
    x, cond, baseline, _ = make_inputs(shape, learned=True, seed=2)
    bits, base_bits = to_bf16(cond), to_bf16(baseline)
    a, b = np.empty_like(x), np.empty_like(x)
    kwargs = dict(guidance_scale=2.0, noise=PhiloxNoise(3, 4))
    fused_step(x, bits, DDPM, a, baseline=base_bits, bf16_as_uint16=True, **kwargs)
    fused_step(
        x, bits.view(ml_dtypes.bfloat16), DDPM, b, baseline=base_bits.view(ml_dtypes.bfloat16), **kwargs
    )
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_misaligned_buffers_are_refused():
    """The kernels load each element with its natural alignment (4 bytes for fp32, 2 for fp16/bf16; no
    wider vector loads), which a GPU enforces; the CPU is held to the same rule."""
    ok = step_args()
    for name in ("x", "cond", "out", "baseline", "noise"):
        with pytest.raises(ValueError, match=rf"{name}: address 0x[0-9a-f]+ is not 4-byte aligned"):
            fused_step(**step_args(**{name: misaligned(ok[name])}))
    half = dict(cond=ok["cond"].astype(np.float16), baseline=ok["baseline"].astype(np.float16))
    with pytest.raises(ValueError, match="cond: address 0x[0-9a-f]+ is not 2-byte aligned"):
        fused_step(**step_args(**{**half, "cond": misaligned(half["cond"])}))
    with pytest.raises(ValueError, match="out: address 0x[0-9a-f]+ is not 4-byte aligned"):
        philox_normal(misaligned(np.zeros(8, np.float32)), 0, 0)
    fused_step(**step_args(**half))  # 2-byte aligned half-precision buffers are fine


def test_ptr_functions_check_alignment_before_launching(cuda_calls):
    shape, noise = (1, 4, 2, 2), PhiloxNoise(0, 0)
    with pytest.raises(ValueError, match="x: address 0x102 is not 4-byte aligned"):
        native.fused_step_ptr("cuda", 0x102, 0x200, 0x300, shape, 4, "float32", DDIM, noise=noise)
    with pytest.raises(ValueError, match="cond: address 0x201 is not 2-byte aligned"):
        native.fused_step_ptr("cuda", 0x100, 0x201, 0x300, shape, 4, "bfloat16", DDIM, noise=noise)
    with pytest.raises(ValueError, match="baseline: address 0x403 is not 2-byte aligned"):
        native.fused_step_ptr(
            "cuda", 0x100, 0x200, 0x300, shape, 4, "float16", DDIM, baseline=0x403, noise=noise
        )
    with pytest.raises(ValueError, match="noise: address 0x406 is not 4-byte aligned"):
        native.fused_step_ptr("cuda", 0x100, 0x200, 0x300, shape, 4, "float32", DDIM, noise=0x406)
    with pytest.raises(ValueError, match="out: address 0x301 is not 4-byte aligned"):
        native.philox_normal_ptr("cuda:1", 0x301, 8, 1, 2)
    assert cuda_calls == []
    native.fused_step_ptr("cuda", 0x100, 0x202, 0x300, shape, 4, "bfloat16", DDIM, noise=noise)
    assert len(cuda_calls) == 1


def test_out_must_not_overlap_what_the_step_reads():
    """Only x may share memory with out, and only as the very same buffer (an in-place step): out over
    cond, baseline or noise would overwrite values another element still has to read."""
    ok = step_args()
    shape = ok["x"].shape
    for name in ("cond", "baseline", "noise"):
        a = ok[name]
        flat = np.zeros(a.size + ok["x"].size, np.float32)
        inside = flat[: a.size].reshape(a.shape)
        inside[...] = a
        for offset in (0, a.size - 4):  # out starting where the input does, and across its end
            out = flat[offset : offset + ok["x"].size].reshape(shape)
            with pytest.raises(ValueError, match=rf"out overlaps {name}"):
                fused_step(**step_args(**{name: inside, "out": out}))
    # the same through the pointer function
    x, cond, noise = ok["x"], ok["cond"], ok["noise"]
    with pytest.raises(ValueError, match="out overlaps cond"):
        native.fused_step_ptr(
            "cpu",
            x.ctypes.data,
            cond.ctypes.data,
            cond.ctypes.data + 64,
            x.shape,
            8,
            "float32",
            DDPM,
            noise=noise.ctypes.data,
        )
    with pytest.raises(ValueError, match="out overlaps noise"):
        native.fused_step_ptr(
            "cpu",
            x.ctypes.data,
            cond.ctypes.data,
            noise.ctypes.data,
            x.shape,
            8,
            "float32",
            DDPM,
            noise=noise.ctypes.data,
        )
    # disjoint buffers, and out being x itself, are fine
    fused_step(**ok)
    fused_step(**{**ok, "out": ok["x"]})


# ---- Philox -------------------------------------------------------------------------------------------


def test_philox_known_answers():
    """Random123 kat_vectors for philox4x32 with 10 rounds."""
    assert native.philox4x32_10([0, 0, 0, 0], [0, 0]) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    ones = [MASK32] * 4
    assert native.philox4x32_10(ones, ones[:2]) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    pi_ctr, pi_key = [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]
    assert native.philox4x32_10(pi_ctr, pi_key) == (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


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


@pytest.mark.skipif(native.cuda_device_count() > 0, reason="a CUDA device is present (see test_kernels_gpu)")
def test_cuda_entry_points_raise_clear_errors_without_a_device():
    # CPU-only build: "built without CUDA"; CUDA build without a driver or device: CudaError with the CUDA
    # error string. The address is never dereferenced: the launch fails first.
    expected = native.CudaError if native.has_cuda() else RuntimeError
    with pytest.raises(expected, match="CUDA"):
        _C.philox_normal_cuda(0, 0, 4, 256)
    with pytest.raises(expected, match="CUDA"):
        native.Arena(1024, "cuda")
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(expected, match="CUDA"):
        native.fused_step_ptr("cuda", 256, 512, 768, x.shape, 4, "float32", DDIM, noise=PhiloxNoise(0, 0))
    with pytest.raises(expected, match="CUDA"):
        native.fused_step_ptr("cuda:1", 256, 512, 768, x.shape, 4, "float32", DDIM, noise=PhiloxNoise(0, 0))
    with pytest.raises(expected, match="CUDA"):
        native.philox_normal_ptr("cuda:1", 256, 4, 0, 0)


# ---- CUDA device and stream: what the wrappers hand to _C (its CUDA functions replaced by recorders) ----


class _CudaCalls(list):
    def __init__(self) -> None:
        super().__init__()
        self.devices: dict[int, int] = {}


@pytest.fixture
def cuda_calls(monkeypatch):
    """Replaces _C.step_cuda and _C.philox_normal_cuda by recorders (nothing runs) and returns the list of
    (name, kwargs) calls; _C.cuda_pointer_device answers from the dict ``calls.devices`` (address ->
    device ordinal), for the fake __cuda_array_interface__ buffers."""

    calls = _CudaCalls()

    def step_cuda(**kwargs):
        calls.append(("step", kwargs))

    def philox_normal_cuda(seed, step, n, out, stream=0, device=0, offset=0):
        calls.append(
            ("philox", dict(seed=seed, step=step, n=n, out=out, stream=stream, device=device, offset=offset))
        )

    monkeypatch.setattr(_C, "step_cuda", step_cuda)
    monkeypatch.setattr(_C, "philox_normal_cuda", philox_normal_cuda)
    monkeypatch.setattr(_C, "cuda_pointer_device", lambda ptr: calls.devices.get(ptr, -1))
    return calls


def test_ptr_functions_pass_device_index_and_stream(cuda_calls):
    shape = (1, 4, 2, 2)
    native.fused_step_ptr(
        "cuda:3", 256, 512, 768, shape, 4, "float32", DDIM, noise=PhiloxNoise(0, 0), stream=77
    )
    native.fused_step_ptr("cuda", 256, 512, 768, shape, 4, "float32", DDIM, noise=PhiloxNoise(0, 0))
    native.philox_normal_ptr("cuda:2", 1024, 8, 1, 2, stream=SimpleNamespace(cuda_stream=99))
    native.philox_normal_ptr("cuda", 1024, 8, 1, 2)
    assert [(name, kw["device"], kw["stream"]) for name, kw in cuda_calls] == [
        ("step", 3, 77),
        ("step", 0, 0),
        ("philox", 2, 99),
        ("philox", 0, 0),
    ]
    assert cuda_calls[0][1]["x"] == 256 and cuda_calls[2][1]["out"] == 1024
    for bad in ("cuda:", "cuda:-1", "gpu:0", "cuda1"):
        with pytest.raises(ValueError, match="device must be"):
            native.philox_normal_ptr(bad, 1024, 8, 1, 2)
    assert len(cuda_calls) == 4


def test_cuda_array_interface_buffers_carry_their_device(cuda_calls):
    shape = (1, 4, 2, 2)
    cuda_calls.devices.update({4096: 1, 8192: 1, 12288: 1, 16384: 0})
    x, cond, out = FakeCudaArray(4096, shape), FakeCudaArray(8192, shape), FakeCudaArray(12288, shape)
    fused_step(x, cond, DDIM, out, noise=PhiloxNoise(0, 0))
    fused_step(x, cond, DDIM, out, noise=PhiloxNoise(0, 0), stream=5)
    philox_normal(out, 1, 2)
    assert [(name, kw["device"], kw["stream"]) for name, kw in cuda_calls] == [
        ("step", 1, 0),
        ("step", 1, 5),
        ("philox", 1, 0),
    ]
    # cuda:0 and cuda:1 are two devices
    with pytest.raises(ValueError, match=r"one device: x on cuda:1, cond on cuda:0, out on cuda:1"):
        fused_step(x, FakeCudaArray(16384, shape), DDIM, out, noise=PhiloxNoise(0, 0))
    with pytest.raises(ValueError, match="one device"):
        fused_step(x, cond, DDIM, out, noise=FakeCudaArray(16384, shape))
    with pytest.raises(ValueError, match="x: __cuda_array_interface__ address 0x5000 is not CUDA memory"):
        fused_step(FakeCudaArray(0x5000, shape), cond, DDIM, out, noise=PhiloxNoise(0, 0))
    assert len(cuda_calls) == 3
    # an empty array may have no address (no device to ask): it goes with the others' device
    empty = (0, 4, 2, 2)
    cuda_calls.devices.update({20480: 1})
    fused_step(
        FakeCudaArray(0, empty),
        FakeCudaArray(20480, empty),
        DDIM,
        FakeCudaArray(0, empty),
        noise=PhiloxNoise(0, 0),
    )
    assert cuda_calls[-1][1]["device"] == 1
    philox_normal(FakeCudaArray(0, (0,)), 1, 2)  # nothing to fill, no device to run on
    assert len(cuda_calls) == 4


class FakeTorchCudaTensor:
    """Duck-types the torch tensor attributes array_kernels._describe reads, on a CUDA device this machine may
    not have (nothing runs: _C's CUDA functions are recorders); ``recorded`` lists the handles of the
    streams passed to ``record_stream``."""

    def __init__(self, torch, ptr: int, shape: tuple[int, ...], index: int, dtype=None) -> None:
        self._ptr, self.shape, self.device = ptr, shape, torch.device("cuda", index)
        self.dtype = torch.float32 if dtype is None else dtype
        self.recorded: list[int] = []

    def data_ptr(self) -> int:
        return self._ptr

    def is_contiguous(self) -> bool:
        return True

    def record_stream(self, stream) -> None:
        self.recorded.append(stream.cuda_stream)


@pytest.fixture
def torch_streams(monkeypatch):
    """torch.cuda's stream constructors replaced by fakes that need no CUDA: current_stream(i) has handle
    0xBEEF0 + i, default_stream(i) handle 0, ExternalStream(h, device) handle h. Returns (torch, the list
    of device indices current_stream was asked for)."""
    torch = pytest.importorskip("torch")
    asked: list[int] = []

    def stream(handle: int, index: int) -> SimpleNamespace:
        return SimpleNamespace(cuda_stream=handle, device=torch.device("cuda", index))

    def current_stream(device=None):
        asked.append(device)
        return stream(0xBEEF0 + int(device), int(device))

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: stream(0, int(device)))
    monkeypatch.setattr(
        torch.cuda, "ExternalStream", lambda stream_ptr, device=None: stream(stream_ptr, device.index)
    )
    return torch, asked


def test_torch_cuda_tensors_default_to_torchs_current_stream_on_their_device(cuda_calls, torch_streams):
    torch, asked = torch_streams
    shape = (1, 4, 2, 2)
    x, cond = (FakeTorchCudaTensor(torch, p, shape, 1) for p in (4096, 8192))
    fused_step(x, cond, DDIM, x, noise=PhiloxNoise(0, 0))
    philox_normal(x, 1, 2)
    assert asked == [1, 1]
    assert [(name, kw["device"], kw["stream"]) for name, kw in cuda_calls] == [
        ("step", 1, 0xBEEF1),
        ("philox", 1, 0xBEEF1),
    ]
    # an explicit stream wins, 0 included (torch is not asked)
    fused_step(x, cond, DDIM, x, noise=PhiloxNoise(0, 0), stream=0)
    philox_normal(x, 1, 2, stream=SimpleNamespace(cuda_stream=42, device=torch.device("cuda", 1)))
    assert asked == [1, 1]
    assert [(kw["device"], kw["stream"]) for _, kw in cuda_calls[2:]] == [(1, 0), (1, 42)]
    # a torch stream of another device, and tensors of two devices, are refused before any launch
    with pytest.raises(ValueError, match="stream is on cuda:0, the buffers on cuda:1"):
        fused_step(
            x,
            cond,
            DDIM,
            x,
            noise=PhiloxNoise(0, 0),
            stream=SimpleNamespace(cuda_stream=7, device=torch.device("cuda", 0)),
        )
    with pytest.raises(ValueError, match=r"one device: x on cuda:1, cond on cuda:0"):
        fused_step(x, FakeTorchCudaTensor(torch, 8192, shape, 0), DDIM, x, noise=PhiloxNoise(0, 0))
    # CPU tensors never ask torch for a stream
    xc = torch.zeros(shape)
    fused_step(xc, torch.zeros(shape), DDIM, xc, noise=PhiloxNoise(0, 0))
    assert asked == [1, 1] and len(cuda_calls) == 4


def test_torch_cuda_tensors_record_the_stream_they_are_used_on(cuda_calls, torch_streams):
    """torch's caching allocator must not hand a tensor's memory to another allocation while a kernel on
    a stream other than the one it was allocated on may still use it: every torch CUDA tensor an array
    function reads or writes gets ``record_stream(launch stream)``, whatever form the stream was given in."""
    torch, _ = torch_streams
    shape = (1, 4, 2, 2)
    x, cond, base, noise = (FakeTorchCudaTensor(torch, p, shape, 1) for p in (4096, 8192, 12288, 16384))
    streams = [None, 0, 42, SimpleNamespace(cuda_stream=43, device=torch.device("cuda", 1))]
    for stream in streams:
        fused_step(x, cond, DDIM, x, baseline=base, noise=noise, stream=stream)
        philox_normal(noise, 1, 2, stream=stream)
    launched = [kw["stream"] for _, kw in cuda_calls]
    assert launched == [0xBEEF1, 0xBEEF1, 0, 0, 42, 42, 43, 43]
    assert x.recorded == cond.recorded == base.recorded == [0xBEEF1, 0, 42, 43]
    assert noise.recorded == [0xBEEF1, 0xBEEF1, 0, 0, 42, 42, 43, 43]
    # a __cuda_array_interface__ buffer beside a torch tensor: the tensor still records the stream
    cuda_calls.devices.update({20480: 1})
    fused_step(x, FakeCudaArray(20480, shape), DDIM, x, noise=PhiloxNoise(0, 0), stream=44)
    assert x.recorded[-1] == 44


def test_cuda_kernels_compiled_wherever_nvcc_exists():
    """The package build compiles the CUDA kernels when nvcc is on PATH (CI has nvcc 13.0, no GPU)."""
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH: a CPU-only module is the expected build here")
    assert _C.has_cuda(), "nvcc is on PATH but flexidit_trt._C was built without its CUDA kernels"
