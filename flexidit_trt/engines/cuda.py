"""The few CUDA runtime calls the pipeline makes itself — its one stream, timing events, device facts —
through cuda-python (a core dependency), so the TensorRT and ONNX Runtime paths need no torch. Torch
backends run on the same stream (`torch.cuda.ExternalStream(handle)`); both libraries share the device's
primary context.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..device import Device
from ..errors import FlexiditError


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:  # cuda-python 12.x layout
        from cuda import cudart  # type: ignore[no-redef]
    return cudart


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python (err, *values) tuple; raise CudaCallError with CUDA's name for the error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        cudart = _cudart()
        _, name = cudart.cudaGetErrorName(err)
        _, text = cudart.cudaGetErrorString(err)
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise CudaCallError(f"{what} failed: {name} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class CudaCallError(FlexiditError, RuntimeError):
    """A CUDA runtime call through cuda-python failed."""


def device_index(device: str) -> int:
    return Device.parse(device).index


def set_device(device: str) -> None:
    check(_cudart().cudaSetDevice(device_index(device)), f"cudaSetDevice({device})")


class Stream:
    """The run's one non-blocking CUDA stream on `device`."""

    def __init__(self, device: str):
        cudart = _cudart()
        set_device(device)
        self.device = device
        self._stream = check(
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate"
        )
        self.handle = int(self._stream)

    def synchronize(self) -> None:
        check(_cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                _cudart().cudaStreamDestroy(self._stream)
            self._stream = None


class Event:
    """A timing event. `query()` never blocks (the progress bar reads it); `elapsed_ms` after a sync."""

    def __init__(self) -> None:
        cudart = _cudart()
        self._event = check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDefault), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        check(_cudart().cudaEventRecord(self._event, stream._stream), "cudaEventRecord")

    def query(self) -> bool:
        """True once the stream has passed the event (cudaEventQuery; no synchronisation)."""
        cudart = _cudart()
        (err,) = cudart.cudaEventQuery(self._event)
        if err == cudart.cudaError_t.cudaErrorNotReady:
            return False
        check((err,), "cudaEventQuery")
        return True

    def elapsed_ms(self, end: Event) -> float:
        return float(check(_cudart().cudaEventElapsedTime(self._event, end._event), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self._event is not None:
            with contextlib.suppress(Exception):
                _cudart().cudaEventDestroy(self._event)
            self._event = None
