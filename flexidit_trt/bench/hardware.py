"""What the benchmark ran on, and the two rates its floors divide by, measured in the same run.

- GPU facts via NVML (nvidia-ml-py): name, memory, driver, compute capability (runtime/record.py's
  `gpu_facts`), plus clocks and the power limit; without nvidia-ml-py the facts say so.
- CUDA runtime and driver versions (cuda-python), torch's CUDA and cuDNN, the backends' package versions.
- The matrix peak: a large square matmul in the run's precision (bf16 by default), timed like every
  other number (measure.py); FLOP/s = 2·n³ / time.
- The copy bandwidth: a large device-to-device copy; bytes/s = 2·size / time (every byte is read once
  and written once), the rate a forward that streams its weights once can at best reach.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..device import Device, is_cuda
from ..runtime.record import gpu_facts, versions
from .measure import DEFAULT_TIMING, Clock, EventClock, HostClock, Stats, TimingOptions, time_calls

# Square matmul side and copy size: big enough to reach the device's rate, small enough to be quick.
MATMUL_N = {"cuda": 16384, "cpu": 1024}
COPY_BYTES = {"cuda": 1 << 30, "cpu": 1 << 26}
PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class Rate:
    """A measured rate: `per_s` from the median time (the floors use it), `best_per_s` from the fastest."""

    what: str  # in words: "bfloat16 matmul 16384x16384x16384"
    per_s: float
    best_per_s: float
    stats: Stats

    def to_dict(self) -> dict:
        return {
            "what": self.what,
            "per_s": self.per_s,
            "best_per_s": self.best_per_s,
            "stats": self.stats.to_dict(),
        }


def slug(device: str) -> str:
    """The results folder of this machine: the GPU's name ('nvidia-h100-80gb-hbm3'), or 'cpu-<arch>'."""
    if device == "cpu":
        return f"cpu-{platform.machine().lower() or 'unknown'}"
    from ..engines.trt import gpu_info

    info = gpu_info(Device.parse(device).index)
    return info.slug if info is not None else "gpu-unknown"


def facts(device: str) -> dict[str, Any]:
    """Everything about the machine that shapes the numbers (nothing is measured here)."""
    out: dict[str, Any] = {
        "device": device,
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": _cpu_model(),
        },
        "versions": versions(),
        "torch": _torch_versions(),
    }
    if device == "cpu":
        out["gpu"] = "no GPU"
        return out
    try:
        gpu = gpu_facts(device)
    except Exception as err:  # NVML present but unusable (no driver access): say so, keep going
        gpu = {"nvml": f"NVML failed: {type(err).__name__}: {err}"}
    if isinstance(gpu, dict) and "nvml" not in gpu:
        gpu["clocks"] = _nvml_clocks(Device.parse(device).index)
    out["gpu"] = gpu
    out["cuda"] = _cuda_versions()
    return out


def matmul_peak(
    device: str, precision: str, stream: Any = None, timing: TimingOptions = DEFAULT_TIMING
) -> Rate:
    """FLOP/s of an n×n×n matmul in the precision's dtype on `device` (the run's stream on a GPU)."""
    import torch

    n = MATMUL_N["cuda" if is_cuda(device) else "cpu"]
    dtype = getattr(torch, PRECISION_DTYPES[precision])
    gen = torch.Generator(device=device).manual_seed(0)
    with _on_stream(device, stream):
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        c = torch.empty(n, n, device=device, dtype=dtype)
        stats = time_calls(lambda: torch.matmul(a, b, out=c), _clock(device, stream), timing)
    flops = 2.0 * n**3
    return Rate(
        f"{PRECISION_DTYPES[precision]} matmul {n}x{n}x{n}",
        flops / (stats.median_ms / 1e3),
        flops / (stats.min_ms / 1e3),
        stats,
    )


def copy_bandwidth(device: str, stream: Any = None, timing: TimingOptions = DEFAULT_TIMING) -> Rate:
    """Bytes/s moved by a device-to-device copy (read + write)."""
    import torch

    size = COPY_BYTES["cuda" if is_cuda(device) else "cpu"]
    with _on_stream(device, stream):
        src = torch.ones(size, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        stats = time_calls(lambda: dst.copy_(src), _clock(device, stream), timing)
    moved = 2.0 * size
    return Rate(
        f"copy of {size / 2**20:.0f} MiB (read + write)",
        moved / (stats.median_ms / 1e3),
        moved / (stats.min_ms / 1e3),
        stats,
    )


# -- helpers -------------------------------------------------------------------------------------------------
def _clock(device: str, stream: Any) -> Clock:
    return HostClock() if device == "cpu" else EventClock(stream)


@contextlib.contextmanager
def _on_stream(device: str, stream: Any) -> Iterator[None]:
    """torch work on the run's stream (an engines.cuda.Stream), so its events time it; nothing on the CPU."""
    if device == "cpu":
        yield
        return
    import torch

    with torch.cuda.stream(torch.cuda.ExternalStream(stream.handle, device=device)):
        yield


def _nvml_clocks(index: int) -> dict[str, Any] | str:
    """SM and memory clocks now and at most (MHz), and the enforced power limit (W), via NVML."""
    try:
        import pynvml
    except ImportError:
        return "not read: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return f"not read: NVML failed to start ({err})"
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        reads = {
            "sm_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "sm_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "mem_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
        }
        out: dict[str, Any] = {}
        for key, read in reads.items():
            try:
                out[key] = read()
            except pynvml.NVMLError as err:  # some fields are not supported on some boards
                out[key] = f"not supported ({err})"
        return out
    finally:
        pynvml.nvmlShutdown()


def _cuda_versions() -> dict[str, Any]:
    from ..engines.cuda import _cudart, check

    cudart = _cudart()
    out: dict[str, Any] = {}
    for key, call in (("runtime", cudart.cudaRuntimeGetVersion), ("driver", cudart.cudaDriverGetVersion)):
        try:
            v = int(check(call(), key))
            out[key] = f"{v // 1000}.{v % 1000 // 10}"
        except Exception as err:
            out[key] = f"not read ({err})"
    return out


def _torch_versions() -> dict[str, Any] | str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
