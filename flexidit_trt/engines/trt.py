"""Everything that touches TensorRT, through polygraphy's loaders. Imported lazily: nothing here loads
tensorrt until a build asks for it.

Written against the documented TensorRT 10.x and 11.x Python API:
- strongly typed networks (`network_from_onnx_path(path, strongly_typed=True)`): the precision is the
  graph's; no FP16/BF16 builder flags (gone in 11);
- one optimization profile per batch range; a shared timing cache (`create_timing_cache`,
  `set_timing_cache`, `get_timing_cache().serialize()`); `builder_optimization_level`;
- activation memory per profile from `get_device_memory_size_for_profile_v2` (10.1+), falling back
  to the pre-11 `get_device_memory_size_for_profile` and then to the engine-wide size.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .profiles import BatchProfile, input_shapes

MIN_TRT_MAJOR = 10


@dataclass(frozen=True)
class GpuInfo:
    name: str
    major: int
    minor: int

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def sm(self) -> str:
        return f"sm{self.major}{self.minor}"

    @property
    def slug(self) -> str:
        """'NVIDIA H100 80GB HBM3' → 'nvidia-h100-80gb-hbm3' (the engine folder's GPU part)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"


@dataclass(frozen=True)
class TrtStatus:
    """Whether engines can be built here, and if not, why (one line)."""

    available: bool
    reason: str
    version: str | None = None
    gpu: GpuInfo | None = None


def trt_status() -> TrtStatus:
    try:
        import tensorrt as trt
    except ImportError:
        return TrtStatus(False, "the tensorrt Python package is not installed")
    version = str(trt.__version__)
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TRT_MAJOR:
        return TrtStatus(
            False, f"TensorRT {version} is older than {MIN_TRT_MAJOR}.x (strongly typed builds)", version
        )
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        return TrtStatus(False, "polygraphy is not installed (pip install polygraphy)", version)
    gpu = gpu_info()
    if gpu is None:
        return TrtStatus(False, "no CUDA GPU is visible", version)
    return TrtStatus(True, "", version, gpu)


def gpu_info(device: int = 0) -> GpuInfo | None:
    """Name and compute capability of a CUDA device, via cuda-python (a core dependency) or torch."""
    cudart = None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        with contextlib.suppress(ImportError):
            from cuda import cudart  # cuda-python 12.x layout
    if cudart is not None:
        try:
            err, prop = cudart.cudaGetDeviceProperties(device)
            if int(err) == 0:
                name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
                return GpuInfo(name.split("\x00")[0].strip(), int(prop.major), int(prop.minor))
        except Exception:  # no driver, or another binding layout: try torch
            pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return GpuInfo(torch.cuda.get_device_name(device), major, minor)
    except Exception:
        pass
    return None


@dataclass
class PlanBuild:
    """A built engine: the serialized plan, the updated timing cache and what the engine reports."""

    plan: bytes
    timing_cache: bytes
    device_memory: list[int]  # activation bytes per optimization profile
    layers: dict | None  # the engine inspector's JSON (layer names, types, precisions)
    seconds: float
    polygraphy_version: str


def build_plan(
    onnx_path: str | Path,
    profiles: list[BatchProfile],
    *,
    in_channels: int,
    latent_size: int,
    opt_level: int = 3,
    timing_cache: bytes | None = None,
) -> PlanBuild:
    """Parse the graph (external weights are read from beside it) and build one engine with `profiles`."""
    import polygraphy
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        engine_bytes_from_network,
        engine_from_bytes,
        network_from_onnx_path,
    )

    start = time.perf_counter()
    builder, network, parser = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    trt_profiles = []
    for profile in profiles:
        shapes = Profile()
        for name, (lo, opt, hi) in input_shapes(profile, in_channels, latent_size).items():
            shapes.add(name, min=lo, opt=opt, max=hi)
        trt_profiles.append(shapes)
    config = CreateConfig(
        profiles=trt_profiles,
        builder_optimization_level=opt_level,
        # DETAILED keeps layer names and tactics in the plan, for the inspector's layer listing.
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
    )(builder, network)
    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = bytes(engine_bytes_from_network((builder, network, parser), config))
    new_cache = bytes(config.get_timing_cache().serialize())
    engine = engine_from_bytes(plan)
    return PlanBuild(
        plan=plan,
        timing_cache=new_cache,
        device_memory=device_memory_per_profile(engine),
        layers=engine_layers(engine),
        seconds=time.perf_counter() - start,
        polygraphy_version=str(polygraphy.__version__),
    )


def device_memory_per_profile(engine) -> list[int]:
    """Activation bytes each profile needs (what a USER_MANAGED context must be given)."""
    n = int(engine.num_optimization_profiles)
    for getter in ("get_device_memory_size_for_profile_v2", "get_device_memory_size_for_profile"):
        fn = getattr(engine, getter, None)
        if fn is None:
            continue
        try:
            return [int(fn(i)) for i in range(n)]
        except Exception:  # reported failing on some 10.x builds: fall through to the next getter
            continue
    size = getattr(engine, "device_memory_size_v2", None)
    if size is None:
        size = getattr(engine, "device_memory_size", 0)
    return [int(size)] * n


def engine_layers(engine) -> dict | None:
    import tensorrt as trt

    try:
        inspector = engine.create_engine_inspector()
        return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # the listing is informational; a plan without it is still a plan
        return None
