"""Helpers shared by the kernel tests (test_kernels_cpu.py, test_kernels_gpu.py): bf16 bits, model-dtype
rounding, step inputs and coefficients, the norm-wise relative error, a fake CUDA array for checking
what the array functions hand to `_C` on a machine without a GPU, and a GPU count that does not depend
on how `_C` was built."""

from __future__ import annotations

import ctypes

import numpy as np

from flexidit_trt.diffusion.coeffs import StepCoeffs

# A DDPM step with learned-range variance and a DDIM (eta > 0) step with a fixed sigma, in the
# magnitudes a 250-step linear-beta schedule produces.
DDPM = StepCoeffs(
    c_x=1.0123, c_pred=-0.1567, learned_variance=True, log_var_max=-3.912, log_var_min=-4.605, add_noise=True
)
DDIM = StepCoeffs(c_x=0.9871, c_pred=0.2213, sigma=0.1432, add_noise=True)


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def as_model_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> the model output dtype: float32 as is, float16, or bfloat16 bits (uint16)."""
    return {"float32": lambda: a, "float16": lambda: a.astype(np.float16), "bfloat16": lambda: to_bf16(a)}[
        dtype
    ]()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref||_2 / ||ref||_2, in float64."""
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def make_inputs(shape, learned: bool, seed: int = 0):
    """x, cond, baseline (cond plus a perturbation) and noise, all fp32, for a step on latents of
    ``shape``; cond has 2C channels with learned variance (the variance half squashed into [-1, 1])."""
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


class FakeCudaArray:
    """An object with ``__cuda_array_interface__`` at a made-up address: for checking the arguments the
    array functions pass to `_C` (with `_C`'s CUDA functions replaced), never for running a kernel."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str = "<f4", strides=None) -> None:
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, False),
            "strides": strides,
            "version": 3,
        }


def driver_gpu_count() -> int:
    """CUDA devices the driver reports (libcuda's cuDeviceGetCount through ctypes, honouring
    CUDA_VISIBLE_DEVICES); 0 without a driver. Asked of the driver itself, not of `_C`, whose CPU-only
    build reports 0 devices even on a GPU machine."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value
