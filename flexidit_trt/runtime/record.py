"""The run record: everything a sampling call did and measured, as typed records that serialise (`to_dict`)
to the JSON `run` writes.

Nothing here imports torch: package versions come from the installed metadata, and torch's memory
counters are read only when torch is already loaded (a torch-family backend ran).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from .. import __version__
from ..artifacts import utc_now
from ..device import Device
from ..diffusion import Plan, Sampler
from . import native

PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "cuda-python", "tqdm", "pillow")
NOISE = (
    "Philox4x32-10 normals, a pure function of (seed, step, element): image k of the run takes elements "
    "[k*C*H*W, (k+1)*C*H*W) of each step's stream (a batch starting at image i0 uses element offset "
    "i0*C*H*W), so samples do not depend on the batch size or the device; the initial noise is step 2**32-1"
)
_OPTIONAL = {"omit_if_none": True}  # a field the JSON leaves out while it is None


def to_plain(record: Any) -> Any:
    """A record as JSON-able dicts: its fields by name, nested records too, optional ones left out while
    None; other values as they are."""
    if not is_dataclass(record):
        return record
    return {
        f.name: to_plain(getattr(record, f.name))
        for f in fields(record)
        if not (f.metadata.get("omit_if_none") and getattr(record, f.name) is None)
    }


@dataclass
class BackendRecord:
    name: str
    why: str
    device: str
    precision: str
    engines: list[dict]


@dataclass
class TimeBudgetRecord:
    """How a time budget chose the schedule (its achieved time is added after the loop)."""

    limit_s: float
    clock: str
    measured: str
    step_ms_by_patch: dict[str, float]  # a step of the run: its latency summed over the run's batches
    step_ms_by_batch: dict[str, dict[str, float]]
    weak_steps: int
    predicted_s: float
    static_predicted_s: float
    achieved_s: float | None = field(default=None, metadata=_OPTIONAL)


@dataclass
class PlanRecord:
    patch_per_step: list[int]
    achieved_fraction: float
    macs_per_image: float
    static_macs_per_image: float
    guidance: str
    summary: str
    time_budget: TimeBudgetRecord | None = field(default=None, metadata=_OPTIONAL)

    @classmethod
    def of(cls, schedule: Plan) -> PlanRecord:
        return cls(
            patch_per_step=list(schedule.patch_per_step),
            achieved_fraction=schedule.achieved_fraction,
            macs_per_image=schedule.macs,
            static_macs_per_image=schedule.static_macs,
            guidance=schedule.guidance,
            summary=schedule.describe(),
        )


@dataclass
class SamplerRecord:
    kind: str
    steps: int
    timesteps: list[float]

    @classmethod
    def of(cls, sampler: Sampler) -> SamplerRecord:
        return cls(sampler.kind, len(sampler), [float(t) for t in sampler.timesteps])


@dataclass
class OptionsRecord:
    """The options the run sampled with, as resolved (`cli`: the command's own options, from `run`)."""

    num_images: int
    labels: list[int]
    budget: float | None
    time_budget: float | None
    steps: int | str
    sampler: str
    guidance: str
    cfg_scale: float
    seed: int
    batch_size: int
    cli: dict | None = field(default=None, metadata=_OPTIONAL)


@dataclass
class TimingRecord:
    clock: str
    total_wall_s: float
    loop_ms: float
    forward_ms_sum: float
    loop_overhead_ms: float
    loop_overhead_fraction: float | None
    batches: int
    per_step_ms: list[float]
    by_patch: dict[str, dict]
    run_wall_s: float | None = field(default=None, metadata=_OPTIONAL)  # the whole `run`, writing included


@dataclass
class PngRecord:
    shows: str
    title: str


@dataclass
class RunRecord:
    model: dict
    weights: str
    random_weights: bool
    backend: BackendRecord
    plan: PlanRecord
    sampler: SamplerRecord
    options: OptionsRecord
    seed: int
    timing: TimingRecord
    memory: dict
    gpu: dict | str
    noise: str = NOISE
    flexidit_trt: str = __version__
    created: str = field(default_factory=utc_now)
    host: dict = field(
        default_factory=lambda: {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        }
    )
    versions: dict = field(default_factory=lambda: versions())
    png: PngRecord | None = field(default=None, metadata=_OPTIONAL)

    def to_dict(self) -> dict:
        return to_plain(self)


def versions() -> dict[str, str]:
    """Versions of the packages that shape a run (installed metadata: nothing is imported)."""
    out = {"flexidit_trt": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def memory(device: str, arena_bytes: int) -> dict[str, Any]:
    """Memory the run held. GPU: the arena (buffers + the shared activation block), torch's pool peak when
    torch ran, and the device's used memory after the run (cudaMemGetInfo; the loop frees nothing, so
    this is the run's level, other processes included)."""
    if device == "cpu":
        import resource

        return {
            "device": "cpu",
            "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
    index = Device.parse(device).index
    out: dict[str, Any] = {"device": device, "arena_bytes": arena_bytes}
    torch = sys.modules.get("torch")
    torch_peak = 0
    if torch is not None and torch.cuda.is_initialized():
        torch_peak = int(torch.cuda.max_memory_reserved(index))
        out["torch_peak_reserved_bytes"] = torch_peak
        out["torch_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(index))
    out["peak_device_bytes"] = arena_bytes + torch_peak
    free, total = native.cuda_mem_get_info(index)
    out["device_used_bytes_after_run"] = total - free
    return out


def gpu_facts(device: str) -> dict[str, Any] | str:
    """Name, memory and driver of the run's GPU via NVML (nvidia-ml-py); "no GPU" on the CPU."""
    if device == "cpu":
        return "no GPU"
    index = Device.parse(device).index
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
