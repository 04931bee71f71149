"""The run record: everything a generate() call did and measured, as one JSON-able dict.

Nothing here imports torch: package versions come from the installed metadata, and torch's memory
counters are read only when torch is already loaded (a torch-family backend ran).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

from .. import __version__, kernels
from ..artifacts import utc_now

if TYPE_CHECKING:
    from ..diffusion import Plan, Sampler
    from .pipeline import Pipeline

PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "cuda-python", "tqdm", "pillow")
NOISE = (
    "Philox4x32-10 normals, a pure function of (seed, step, element): image k of the run takes elements "
    "[k*C*H*W, (k+1)*C*H*W) of each step's stream (a batch starting at image i0 uses element offset "
    "i0*C*H*W), so samples do not depend on the batch size or the device; the initial noise is step 2**32-1"
)


def run_record(pipe: Pipeline, *, schedule: Plan, sampler: Sampler, options: dict, timing: dict) -> dict:
    spec = pipe.spec
    return {
        "flexidit_trt": __version__,
        "created": utc_now(),
        "model": spec.to_dict(),
        "weights": spec.weights,
        "random_weights": spec.random_weights,
        "backend": {
            "name": pipe.selection.backend,
            "why": pipe.selection.reason,
            "device": pipe.device,
            "precision": pipe.precision,
            "engines": [b.describe() for b in pipe.backends.values()],
        },
        "plan": {
            "patch_per_step": list(schedule.patch_per_step),
            "achieved_fraction": schedule.achieved_fraction,
            "macs_per_image": schedule.macs,
            "static_macs_per_image": schedule.static_macs,
            "guidance": schedule.guidance,
            "summary": schedule.describe(),
        },
        "sampler": {
            "kind": sampler.kind,
            "steps": len(sampler),
            "timesteps": [float(t) for t in sampler.timesteps],
        },
        "options": options,
        "seed": options["seed"],
        "noise": NOISE,
        "timing": timing,
        "memory": memory(pipe),
        "gpu": gpu_facts(pipe.device),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """Versions of the packages that shape a run (installed metadata: nothing is imported)."""
    out = {"flexidit_trt": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def memory(pipe: Pipeline) -> dict[str, Any]:
    """Memory the run held. GPU: the arena (buffers + the shared activation block), torch's pool peak when
    torch ran, and the device's used memory after the run (cudaMemGetInfo; the loop frees nothing, so
    this is the run's level, other processes included)."""
    if pipe.device == "cpu":
        import resource

        return {
            "device": "cpu",
            "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
    index = int(pipe.device.split(":")[1])
    arena = pipe._arena.capacity if pipe._arena is not None else 0
    tables = sum(arena.capacity for _, arena in pipe._t_tables.values() if arena is not None)
    out: dict[str, Any] = {"device": pipe.device, "arena_bytes": arena + tables}
    torch = sys.modules.get("torch")
    torch_peak = 0
    if torch is not None and torch.cuda.is_initialized():
        torch_peak = int(torch.cuda.max_memory_reserved(index))
        out["torch_peak_reserved_bytes"] = torch_peak
        out["torch_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(index))
    out["peak_device_bytes"] = arena + tables + torch_peak
    free, total = kernels.cuda_mem_get_info(index)
    out["device_used_bytes_after_run"] = total - free
    return out


def gpu_facts(device: str) -> dict[str, Any] | str:
    """Name, memory and driver of the run's GPU via NVML (nvidia-ml-py); "no GPU" on the CPU."""
    if device == "cpu":
        return "no GPU"
    index = int(device.split(":")[1])
    try:
        import pynvml
    except ImportError:
        from ..engines.trt import gpu_info

        info = gpu_info(index)
        facts: dict[str, Any] = {"nvml": "not installed (pip install nvidia-ml-py)"}
        if info is not None:
            facts.update(name=info.name, compute_capability=info.compute_capability)
        return facts
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return {
            "name": name.decode() if isinstance(name, bytes) else name,
            "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            "driver": driver.decode() if isinstance(driver, bytes) else driver,
            "compute_capability": f"{major}.{minor}",
        }
    finally:
        pynvml.nvmlShutdown()
