"""Engines: one per patch size of a model, of four kinds (TensorRT plans, AOTInductor packages, ONNX
Runtime sessions, torch modules) behind one life cycle (`Backend`: load → bind on shared memory →
prepare → forward), with the manifests `build` writes and checks on load.

Nothing here imports tensorrt or torch at import time; see engines/README.md for the artifact layout.
"""

from .backend import Backend, DeviceArray, IOBuffers, RunError, RunOptionError
from .build import EngineBuildResult, EngineRecord, build_engines, engine_dir, engine_folder_name
from .options import EngineOptions
from .profiles import PROFILE_MODES, BatchProfile, batch_profiles, engine_batches
from .spec import ModelSpec
from .trt import GpuInfo, TrtStatus, trt_status

__all__ = [
    "PROFILE_MODES",
    "Backend",
    "BatchProfile",
    "DeviceArray",
    "EngineBuildResult",
    "EngineOptions",
    "EngineRecord",
    "GpuInfo",
    "IOBuffers",
    "ModelSpec",
    "RunError",
    "RunOptionError",
    "TrtStatus",
    "batch_profiles",
    "build_engines",
    "engine_batches",
    "engine_dir",
    "engine_folder_name",
    "trt_status",
]
