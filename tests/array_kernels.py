"""The array front of the native step and noise, used by the tests: numpy arrays (CPU), torch tensors and
any object with ``__cuda_array_interface__`` (CUDA), each checked (dtype, native byte order, shape,
contiguity, one device, CUDA device index included) before the same kernels run on that device
(`flexidit_trt.runtime.native`'s ``*_ptr`` functions). The runtime itself drives the kernels on raw
addresses only.

Streams: for torch CUDA tensors the default is torch's current stream on their device
(``torch.cuda.current_stream(device)``, which ``with torch.cuda.stream(s)`` sets), and 0 otherwise. Every
torch CUDA tensor given is ``record_stream``-ed on the stream the kernel runs on, so torch's caching
allocator does not reuse its memory, once the caller drops it, before that stream has finished with it.

bfloat16 model outputs: torch ``bfloat16`` tensors and ``ml_dtypes.bfloat16`` numpy arrays are bf16 by
type; ``uint16`` arrays hold bf16 bits only when the caller says so (``fused_step(...,
bf16_as_uint16=True)``), and are refused otherwise.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flexidit_trt import _C
from flexidit_trt.diffusion.coeffs import StepCoeffs
from flexidit_trt.runtime.native import (
    MODEL_DTYPES,
    PhiloxNoise,
    _parse_device,
    fused_step_ptr,
    philox_normal_ptr,
    stream_handle,
)

Array = Any  # numpy array, torch tensor or __cuda_array_interface__ object


@dataclass(frozen=True)
class _Buffer:
    ptr: int
    shape: tuple[int, ...]
    dtype: str  # numpy's name for it: "float32", "float16", "bfloat16", "uint16", ...
    device: str  # "cpu", "cuda:N", or "cuda" for an empty CUDA array whose device is unknown
    contiguous: bool
    writable: bool
    torch: bool = False  # a torch tensor (its default stream is torch's current stream)


def _dtype_name(dtype: np.dtype, name: str) -> str:
    """numpy's name for ``dtype``; ValueError for a non-native byte order, whose bytes the kernels would
    misread (a big-endian float32 array is still named 'float32')."""
    if not dtype.isnative:
        raise ValueError(f"{name}: byte order must be native ({sys.byteorder}-endian), got {dtype.str}")
    return dtype.name


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _describe(obj: Array, name: str) -> _Buffer:
    if isinstance(obj, np.ndarray):
        return _Buffer(
            ptr=int(obj.__array_interface__["data"][0]),
            shape=tuple(obj.shape),
            dtype=_dtype_name(obj.dtype, name),
            device="cpu",
            contiguous=bool(obj.flags.c_contiguous),
            writable=bool(obj.flags.writeable),
        )
    if hasattr(obj, "data_ptr") and hasattr(obj, "is_contiguous") and hasattr(obj, "device"):  # torch
        device = obj.device.type
        if device not in ("cpu", "cuda"):
            raise ValueError(f"{name}: tensors on {obj.device} are not supported (cpu or cuda)")
        if device == "cuda":  # torch always names the index of a tensor's device
            device = f"cuda:{obj.device.index if obj.device.index is not None else 0}"
        return _Buffer(
            ptr=int(obj.data_ptr()),
            shape=tuple(obj.shape),
            dtype=str(obj.dtype).removeprefix("torch."),  # torch tensors are always in native byte order
            device=device,
            contiguous=bool(obj.is_contiguous()),
            writable=True,
            torch=True,
        )
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        shape = tuple(int(n) for n in cai["shape"])
        typestr = cai["typestr"]
        try:
            dtype = np.dtype(typestr)
        except TypeError:
            raise TypeError(f"{name}: unknown __cuda_array_interface__ typestr {typestr!r}") from None
        strides = cai.get("strides")
        contiguous = (
            strides is None or tuple(strides) == _c_strides(shape, dtype.itemsize) or math.prod(shape) <= 1
        )
        ptr, readonly = cai["data"]
        return _Buffer(
            int(ptr), shape, _dtype_name(dtype, name), _cai_device(int(ptr), name), contiguous, not readonly
        )
    raise TypeError(
        f"{name}: expected a numpy array, a torch tensor or an object with __cuda_array_interface__, "
        f"got {type(obj).__name__}"
    )


def _cai_device(ptr: int, name: str) -> str:
    """The device of a ``__cuda_array_interface__`` buffer, which the interface does not name: asked of
    the CUDA runtime (``cudaPointerGetAttributes``). An empty array may have no address: ``'cuda'``."""
    if ptr == 0:
        return "cuda"
    index = int(_C.cuda_pointer_device(ptr))
    if index < 0:
        raise ValueError(f"{name}: __cuda_array_interface__ address {ptr:#x} is not CUDA memory")
    return f"cuda:{index}"


def _check(
    buf: _Buffer,
    name: str,
    *,
    dtypes: Sequence[str],
    shape: tuple[int, ...] | None = None,
    ndim: int | None = None,
    writable: bool = False,
) -> None:
    if buf.dtype not in dtypes:
        raise TypeError(f"{name}: dtype must be {' or '.join(dtypes)}, got {buf.dtype}")
    if ndim is not None and len(buf.shape) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {buf.shape}")
    if shape is not None and buf.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {buf.shape}")
    if not buf.contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    if writable and not buf.writable:
        raise ValueError(f"{name}: must be writable")


def _model_output(buf: _Buffer, name: str, bf16_as_uint16: bool) -> _Buffer:
    """A model output buffer with its dtype read as the kernels will: uint16 is bf16 bits exactly when
    the caller says so, and refused otherwise (it could as well be any other 16-bit data)."""
    if bf16_as_uint16:
        if buf.dtype not in ("uint16", "bfloat16"):
            raise TypeError(
                f"{name}: bf16_as_uint16=True needs uint16 (bf16 bits) or bfloat16, got {buf.dtype}"
            )
        return replace(buf, dtype="bfloat16")
    if buf.dtype == "uint16":
        raise TypeError(
            f"{name}: dtype must be {' or '.join(MODEL_DTYPES)}, got uint16 (bf16 bits: pass bf16_as_uint16=True)"
        )
    return buf


def _one_device(bufs: dict[str, _Buffer]) -> str:
    """The one device ('cpu' or 'cuda:N') all buffers are on; ValueError naming each buffer's device
    otherwise (cuda:0 and cuda:1 are two devices)."""
    devices = {buf.device for buf in bufs.values()}
    if "cuda" in devices and any(d.startswith("cuda:") for d in devices):
        devices.discard("cuda")  # an empty array of unknown CUDA device goes with the others
    if len(devices) != 1:
        where = ", ".join(f"{name} on {buf.device}" for name, buf in bufs.items())
        raise ValueError(f"all buffers must be on one device: {where}")
    return devices.pop()


def _array_stream(stream: object, bufs: dict[str, _Buffer], device: str) -> object:
    """The stream for the array functions: ``stream`` when given (checked against the buffers' device
    when it names one, as torch streams do); otherwise torch's current stream on that device when any
    buffer is a torch CUDA tensor, else 0."""
    if not device.startswith("cuda"):
        return 0 if stream is None else stream
    _, index = _parse_device(device)
    if stream is None:
        if any(buf.torch for buf in bufs.values()):
            import torch  # a torch tensor was passed: torch is imported already

            return torch.cuda.current_stream(index)
        return 0
    stream_device = getattr(stream, "device", None)  # a torch.cuda.Stream names its device
    stream_index = (
        getattr(stream_device, "index", None) if getattr(stream_device, "type", None) == "cuda" else None
    )
    if stream_index is not None and int(stream_index) != index:
        raise ValueError(f"stream is on cuda:{stream_index}, the buffers on {device}")
    return stream


def _record_stream(arrays: dict[str, Array], bufs: dict[str, _Buffer], stream: object, device: str) -> None:
    """Tell torch's caching allocator that the torch CUDA tensors among ``arrays`` are used on ``stream``
    (``Tensor.record_stream``): freed by the caller, their memory is not reused before the work queued
    there so far is done. Without it, a tensor allocated on one stream and stepped on another could be
    handed to a new tensor while the step still runs."""
    tensors = {
        id(a): a for name, a in arrays.items() if bufs[name].torch and bufs[name].device.startswith("cuda")
    }
    if not tensors:
        return
    import torch  # a torch tensor was passed: torch is imported already

    _, index = _parse_device(device)
    if not isinstance(stream, torch.cuda.Stream):
        handle = stream_handle(stream)  # 0 is the legacy default stream, which is torch's default stream
        stream = (
            torch.cuda.default_stream(index)
            if handle == 0
            else torch.cuda.ExternalStream(handle, device=torch.device("cuda", index))
        )
    for tensor in tensors.values():
        tensor.record_stream(stream)


def philox_normal(out: Array, seed: int, step: int, stream: object = None, offset: int = 0) -> None:
    """Fill a contiguous fp32 array (any shape; numpy, torch or CUDA array) with the normals of
    (seed, step) in flat order, starting at normal number ``offset``: the noise a fused step with
    ``PhiloxNoise(seed, step, offset)`` adds. CUDA: on the array's device, on ``stream`` (None: torch's
    current stream for a torch tensor, else 0)."""
    buf = _describe(out, "out")
    _check(buf, "out", dtypes=("float32",), writable=True)
    if buf.device == "cuda":  # empty, of unknown device: nothing to fill
        return
    stream = _array_stream(stream, {"out": buf}, buf.device)
    philox_normal_ptr(buf.device, buf.ptr, math.prod(buf.shape), seed, step, stream, offset)
    _record_stream({"out": out}, {"out": buf}, stream, buf.device)


def fused_step(
    x: Array,
    cond: Array,
    coeffs: StepCoeffs,
    out: Array,
    *,
    baseline: Array | None = None,
    guidance_scale: float = 1.0,
    guided_channels: int | None = None,
    noise: Array | PhiloxNoise | None = None,
    stream: object = None,
    bf16_as_uint16: bool = False,
) -> None:
    """One sampler step on arrays: ``out`` (fp32, shaped like ``x``; may be ``x`` itself) receives x_prev.

    ``x`` is fp32 [B, C, H, W]; ``cond`` the conditional model output [B, C or 2C, H, W] (fp32, fp16 or
    bf16); ``baseline`` the same shape and dtype (the unconditional half for classifier-free guidance, or
    a weak model's output for weak-to-strong guidance; None: no guidance); the first ``guided_channels``
    (default all C) prediction channels are guided. ``noise`` is an fp32 array shaped like ``x`` or
    :class:`PhiloxNoise`. ``bf16_as_uint16``: cond and baseline are uint16 arrays holding bfloat16 bits
    (numpy has no bfloat16; torch bfloat16 and ``ml_dtypes.bfloat16`` arrays need no flag). All buffers
    on one device (one CUDA device: cuda:0 and cuda:1 do not mix); CUDA kernels run on that device, on
    ``stream`` (None: torch's current stream on that device when the buffers include torch CUDA tensors,
    else 0, the legacy default stream), and torch CUDA tensors are ``record_stream``-ed on it.
    """
    arrays = {"x": x, "cond": cond, "out": out}
    bufs = {name: _describe(a, name) for name, a in arrays.items()}
    _check(bufs["x"], "x", dtypes=("float32",), ndim=4)
    shape = bufs["x"].shape
    batch, channels, height, width = shape
    _check(bufs["out"], "out", dtypes=("float32",), shape=shape, writable=True)
    cond_dtype = bufs["cond"].dtype  # as given: a baseline must match it
    bufs["cond"] = _model_output(bufs["cond"], "cond", bf16_as_uint16)
    _check(bufs["cond"], "cond", dtypes=MODEL_DTYPES, ndim=4)
    cond_shape = bufs["cond"].shape
    if (
        cond_shape[0] != batch
        or cond_shape[2:] != (height, width)
        or cond_shape[1] not in (channels, 2 * channels)
    ):
        raise ValueError(
            f"cond: expected shape ({batch}, {channels} or {2 * channels}, {height}, {width}), got {cond_shape}"
        )
    if baseline is not None:
        arrays["baseline"] = baseline
        bufs["baseline"] = _describe(baseline, "baseline")
        _check(bufs["baseline"], "baseline", dtypes=(cond_dtype,), shape=cond_shape)
    noise_arg: int | PhiloxNoise | None = noise if isinstance(noise, PhiloxNoise) else None
    if noise is not None and not isinstance(noise, PhiloxNoise):
        arrays["noise"] = noise
        bufs["noise"] = _describe(noise, "noise")
        _check(bufs["noise"], "noise", dtypes=("float32",), shape=shape)
        noise_arg = bufs["noise"].ptr
    device = _one_device(bufs)
    stream = _array_stream(stream, bufs, device)
    fused_step_ptr(
        device,
        bufs["x"].ptr,
        bufs["cond"].ptr,
        bufs["out"].ptr,
        shape,
        cond_shape[1],
        bufs["cond"].dtype,
        coeffs,
        baseline=bufs["baseline"].ptr if baseline is not None else 0,
        guidance_scale=guidance_scale,
        guided_channels=guided_channels,
        noise=noise_arg,
        stream=stream,
    )
    _record_stream(arrays, bufs, stream, device)
