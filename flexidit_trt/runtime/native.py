"""The native extension (`flexidit_trt._C`) with checked conveniences: arena, fused sampler step, Philox noise.

`_C` itself takes raw addresses (ints) and a CUDA stream handle, so the runtime drives it without torch
(the ``*_ptr`` functions below; tests/array_kernels.py puts a checked array front on them).

What every function checks (the ``*_ptr`` functions know sizes from shape and dtype): each
address is aligned to its element size (4 bytes for fp32, 2 for fp16/bf16: the kernels load and store
one element at a time, no wider vectors, and a GPU faults on a misaligned access); ``out`` overlaps
none of ``cond``, ``baseline`` and the noise buffer, and ``x`` only by being ``x`` itself (an in-place
step).

Devices and streams: ``'cuda'`` is ``'cuda:0'``; the CUDA kernels run on the named device (made current
for the launch, the caller's current device restored after it) and on the given stream, which must
belong to that device. The ``*_ptr`` functions default to stream 0 (the device's legacy default
stream).

The step implements :class:`~flexidit_trt.diffusion.coeffs.StepCoeffs` exactly, with guidance in front::

    pred   = baseline + scale * (cond - baseline)   first ``guided_channels`` prediction channels
           = cond                                    other prediction channels, or without a baseline
    mean   = c_x * x + c_pred * pred
    std    = exp(0.5 * (frac * log_var_max + (1 - frac) * log_var_min)),  frac = (v + 1) / 2
           = sigma                                   (without learned variance)
    x_prev = mean + std * noise                      (only when add_noise)

with v the variance half of ``cond`` (channels C..2C). fp32 math inside, whatever the model's dtype.

Noise is either an fp32 buffer shaped like ``x`` or :class:`PhiloxNoise`: counter-based Philox4x32-10
normals that are a pure function of (seed, step, flat element index), bit-identical on CPU and GPU
(counter layout in csrc/step_math.h).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _C
from ..device import Device
from ..diffusion.coeffs import StepCoeffs

ARENA_ALIGN = 256
"""Alignment of every arena allocation, and the default alignment of its blocks."""

CudaError = _C.CudaError
"""A CUDA runtime call failed (subclass of RuntimeError); the message carries the CUDA error string."""
ArenaFullError = _C.ArenaFullError
"""An arena block did not fit (subclass of MemoryError)."""

MODEL_DTYPES = ("float32", "float16", "bfloat16")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def has_cuda() -> bool:
    """True when the extension was built with the CUDA kernels (says nothing about a device)."""
    return bool(_C.has_cuda())


def cuda_device_count() -> int:
    """CUDA devices visible; 0 in a CPU-only build or without a driver."""
    return int(_C.cuda_device_count())


def cuda_mem_get_info(device: int = 0) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device."""
    free, total = _C.cuda_mem_get_info(device)
    return int(free), int(total)


def stream_handle(stream: object) -> int:
    """A CUDA stream as an int: None or 0 (the default stream), an int, a torch stream (``.cuda_stream``)
    or anything ``int()`` accepts (cuda-python's ``cudaStream_t`` / ``CUstream``)."""
    if stream is None:
        return 0
    if isinstance(stream, int):
        return stream
    if hasattr(stream, "cuda_stream"):
        return int(stream.cuda_stream)
    return int(stream)  # type: ignore[call-overload]


def stream_synchronize(stream: object = 0) -> None:
    """Block the host until ``stream`` has finished (for tests and the end of a run, never per step)."""
    _C.cuda_stream_synchronize(stream_handle(stream))


def memcpy(dst: int, src: int, nbytes: int, stream: object = 0) -> None:
    """Copy ``nbytes`` between any two addresses (host or device), ordered on ``stream``; the host side
    must stay valid until the stream reaches the copy (pageable device-to-host copies return when done)."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    _C.cuda_memcpy(dst, src, nbytes, stream_handle(stream))


# ----------------------------------------------------------------------------------------------------
# Arena
# ----------------------------------------------------------------------------------------------------


def open_arena_bytes() -> int:
    """Capacity summed over the arenas open in this process, host and device (0 once all are freed)."""
    return int(_C.open_arena_bytes())


def _parse_device(device: str) -> tuple[str, int]:
    """'cpu' -> ('cpu', -1); 'cuda' / 'cuda:N' -> ('cuda:N', N)."""
    parsed = Device.parse(device)
    return str(parsed), parsed.index


def _check_align(align: int) -> None:
    if align <= 0 or align & (align - 1):
        raise ValueError(f"align must be a positive power of two, got {align}")


class Arena:
    """One 256-byte-aligned allocation (``cudaMalloc`` on a device, aligned host memory on ``'cpu'``) from
    which a run's buffers are carved: the engines' shared activation block, latents, model outputs, noise.

    Blocks are handed out in order and released together (:meth:`reset`) or with the allocation
    (:meth:`close`, the end of a ``with`` block, or garbage collection).

    Lifetimes: a :meth:`host_array` owns a share of the memory, so it never sees freed memory (close()
    leaves the memory to the last host array) nor memory handed out again (reset() refuses while one
    lives); a step running in another thread on host arrays holds them, and so the memory, until it
    returns. A :meth:`block` is a plain address that owns nothing: the caller keeps the arena open, and
    does not reset it, while work on the block may still run (a queued CUDA stream included).
    """

    def __init__(self, nbytes: int, device: str = "cuda") -> None:
        if not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"Arena size must be a positive int, got {nbytes!r}")
        self.device, index = _parse_device(device)
        self._arena = _C.Arena(nbytes, index)

    @property
    def ptr(self) -> int:
        """Base address (0 once closed)."""
        return int(self._arena.ptr)

    @property
    def capacity(self) -> int:
        return int(self._arena.capacity)

    @property
    def used(self) -> int:
        """Bytes from the base to the end of the last block, alignment padding included."""
        return int(self._arena.used)

    @property
    def closed(self) -> bool:
        return bool(self._arena.closed)

    def block(self, nbytes: int, align: int = ARENA_ALIGN) -> int:
        """Address of a new block of ``nbytes`` aligned to ``align``; :class:`ArenaFullError` if it does
        not fit, RuntimeError once closed."""
        if nbytes < 0:
            raise ValueError(f"block size must be >= 0, got {nbytes}")
        _check_align(align)
        return int(self._arena.block(nbytes, align))

    def host_array(self, shape: Sequence[int], dtype: Any, align: int = ARENA_ALIGN) -> np.ndarray:
        """A new block as a numpy array (CPU arenas only). The array and every view of it hold a share of
        the arena's memory (the array's ``base`` chain ends in a ``_C.HostBlock``): the memory outlives
        :meth:`close` until the last of them is gone, and :meth:`reset` refuses while any is alive."""
        if self.device != "cpu":
            raise ValueError(f"host_array needs a 'cpu' arena, this one is on {self.device}")
        if any(int(n) < 0 for n in shape):
            raise ValueError(f"shape must be >= 0, got {tuple(shape)}")
        _check_align(align)
        dt = np.dtype(dtype)
        count = math.prod(shape)
        block = self._arena.host_block(count * dt.itemsize, align)
        return np.frombuffer(block, dtype=dt, count=count).reshape(tuple(shape))

    def reset(self) -> None:
        """Release every block at once; the allocation stays. RuntimeError, changing nothing, while host
        arrays of this arena are alive (their memory would be handed out again); :meth:`block` addresses
        are the caller's not to use after it."""
        self._arena.reset()

    def close(self) -> None:
        """Give the allocation up (idempotent): freed now, or once the last live host array of it is gone
        (then :func:`open_arena_bytes` still counts it until that moment)."""
        self._arena.close()

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.used}/{self.capacity} bytes used"
        return f"Arena({self.device}, {state})"


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def arena_size(engine_bytes: Sequence[int], buffer_bytes: Sequence[int], align: int = ARENA_ALIGN) -> int:
    """Bytes for an arena holding one activation block shared by all engines (the largest need, not the
    sum) plus the per-run buffers, each carved with ``Arena.block(n, align)`` in any order."""
    _check_align(align)
    sizes = [*engine_bytes, *buffer_bytes]
    if any(n < 0 for n in sizes):
        raise ValueError(f"sizes must be >= 0, got {sizes}")
    total = _round_up(max(engine_bytes, default=0), align) + sum(_round_up(n, align) for n in buffer_bytes)
    if align > ARENA_ALIGN:  # the base is only promised 256-byte alignment
        total += align - ARENA_ALIGN
    return max(total, align)


def _check_aligned(name: str, ptr: int, itemsize: int) -> None:
    if ptr % itemsize:
        raise ValueError(
            f"{name}: address {ptr:#x} is not {itemsize}-byte aligned (the kernels access its "
            f"{itemsize}-byte elements whole; a GPU faults on a misaligned one)"
        )


def _check_out_overlap(out: int, out_bytes: int, reads: dict[str, tuple[int, int]]) -> None:
    """ValueError when ``out`` shares memory with one of ``reads`` (name -> (address, bytes)), except
    with ``x`` when it is ``x`` itself: the step writes element e after reading element e of x only."""
    for name, (ptr, nbytes) in reads.items():
        if name == "x" and ptr == out:
            continue
        if out_bytes and nbytes and ptr < out + out_bytes and out < ptr + nbytes:
            if name == "x":
                raise ValueError("out overlaps x without being x: pass x itself for an in-place step")
            raise ValueError(
                f"out overlaps {name}: the step would overwrite {name} values it has yet to read"
            )


# ----------------------------------------------------------------------------------------------------
# Philox noise
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhiloxNoise:
    """In-kernel noise: the standard normals of (seed, step), element e of x taking normal number
    offset + e. The offset (a multiple of 4) lets a run split N images into batches and still give
    every image the noise it gets in one batch of all N: a batch starting at image i uses
    offset = i * C * H * W."""

    seed: int
    step: int
    offset: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")
        if not 0 <= self.step < 2**32:
            raise ValueError(f"step must be in [0, 2**32), got {self.step}")
        if not 0 <= self.offset < 2**64 or self.offset % 4:
            raise ValueError(f"offset must be a multiple of 4 in [0, 2**64), got {self.offset}")


def philox4x32_10(counter: Sequence[int], key: Sequence[int]) -> tuple[int, int, int, int]:
    """One raw Philox4x32-10 block (4 counter words, 2 key words, each 32-bit)."""
    if len(counter) != 4 or len(key) != 2:
        raise ValueError("philox4x32_10 takes 4 counter words and 2 key words")
    r = _C.philox4x32_10(list(counter), list(key))
    return int(r[0]), int(r[1]), int(r[2]), int(r[3])


def philox_normal_ptr(
    device: str, out: int, n: int, seed: int, step: int, stream: object = 0, offset: int = 0
) -> None:
    """Fill ``n`` fp32 at address ``out`` with normals offset..offset+n-1 of (seed, step) on ``device``
    ('cpu', 'cuda' = 'cuda:0', 'cuda:N'); CUDA: launched on that device, on ``stream`` (one of that
    device). ``offset``: a multiple of 4 (see :class:`PhiloxNoise`)."""
    noise = PhiloxNoise(seed, step, offset)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_aligned("out", out, ITEMSIZE["float32"])
    kind, index = _parse_device(device)
    if kind == "cpu":
        _C.philox_normal_cpu(noise.seed, noise.step, n, out, offset=noise.offset)
    else:
        _C.philox_normal_cuda(
            noise.seed, noise.step, n, out, stream=stream_handle(stream), device=index, offset=noise.offset
        )


# ----------------------------------------------------------------------------------------------------
# Fused sampler step
# ----------------------------------------------------------------------------------------------------


def fused_step_ptr(
    device: str,
    x: int,
    cond: int,
    out: int,
    shape: Sequence[int],
    out_channels: int,
    dtype: str,
    coeffs: StepCoeffs,
    *,
    baseline: int = 0,
    guidance_scale: float = 1.0,
    guided_channels: int | None = None,
    noise: int | PhiloxNoise | None = None,
    stream: object = 0,
) -> None:
    """One sampler step on raw addresses: x, out (may equal x) and a noise buffer are fp32 of ``shape``
    = (B, C, H, W); cond and baseline (0 = no guidance) are (B, out_channels, H, W) in ``dtype``.
    ``noise`` is a buffer address or :class:`PhiloxNoise`; it is needed only when ``coeffs.add_noise``.
    ``device``: 'cpu', 'cuda' (= 'cuda:0') or 'cuda:N', the device holding every buffer; CUDA: launched
    there on ``stream`` (a stream of that device; 0: its legacy default stream). Every address must be
    aligned to its element size, and ``out`` must overlap none of the others unless it is ``x``; the
    memory itself is the caller's to keep valid until the stream has run the step."""
    batch, channels, height, width = (int(n) for n in shape)
    if dtype not in MODEL_DTYPES:
        raise TypeError(f"model output dtype must be one of {MODEL_DTYPES}, got {dtype!r}")
    if out_channels not in (channels, 2 * channels):
        raise ValueError(f"out_channels must be C or 2C for C={channels}, got {out_channels}")
    if coeffs.learned_variance and out_channels != 2 * channels:
        raise ValueError(f"learned variance needs out_channels = 2C = {2 * channels}, got {out_channels}")
    if guided_channels is None:
        guided_channels = channels
    if not 0 <= guided_channels <= channels:
        raise ValueError(f"guided_channels must be in [0, {channels}], got {guided_channels}")
    noise_ptr, seed, step, offset = 0, 0, 0, 0
    if coeffs.add_noise:
        if isinstance(noise, PhiloxNoise):
            seed, step, offset = noise.seed, noise.step, noise.offset
        elif isinstance(noise, int) and not isinstance(noise, bool) and noise != 0:
            noise_ptr = noise
        else:
            raise ValueError(
                f"coeffs.add_noise needs noise: a buffer address or PhiloxNoise(seed, step), got {noise!r}"
            )
    latent_bytes = batch * channels * height * width * ITEMSIZE["float32"]
    output_bytes = batch * out_channels * height * width * ITEMSIZE[dtype]
    reads = {"x": (x, latent_bytes), "cond": (cond, output_bytes)}
    if baseline:
        reads["baseline"] = (baseline, output_bytes)
    if noise_ptr:
        reads["noise"] = (noise_ptr, latent_bytes)
    for name, (ptr, _) in [*reads.items(), ("out", (out, latent_bytes))]:
        _check_aligned(name, ptr, ITEMSIZE[dtype] if name in ("cond", "baseline") else ITEMSIZE["float32"])
    _check_out_overlap(out, latent_bytes, reads)
    kind, index = _parse_device(device)
    args = dict(
        x=x,
        cond=cond,
        out=out,
        batch=batch,
        channels=channels,
        hw=height * width,
        out_channels=out_channels,
        dtype=dtype,
        c_x=coeffs.c_x,
        c_pred=coeffs.c_pred,
        baseline=baseline,
        guidance_scale=guidance_scale,
        guided_channels=guided_channels,
        learned_variance=coeffs.learned_variance,
        log_var_max=coeffs.log_var_max,
        log_var_min=coeffs.log_var_min,
        sigma=coeffs.sigma,
        add_noise=coeffs.add_noise,
        noise=noise_ptr,
        seed=seed,
        step=step,
        offset=offset,
    )
    if kind == "cpu":
        _C.step_cpu(**args)
    else:
        _C.step_cuda(**args, stream=stream_handle(stream), device=index)
