"""TensorRT engines: one plan per patch size, optimization profiles per batch range, with a manifest.

Nothing here imports tensorrt or torch at import time; see engines/README.md for the artifact layout.
"""

from .build import EngineBuildResult, EngineRecord, build_engines, engine_dir, engine_folder_name
from .profiles import PROFILE_MODES, BatchProfile, batch_profiles, engine_batches
from .trt import GpuInfo, TrtStatus, trt_status

__all__ = [
    "PROFILE_MODES",
    "BatchProfile",
    "EngineBuildResult",
    "EngineRecord",
    "GpuInfo",
    "TrtStatus",
    "batch_profiles",
    "build_engines",
    "engine_batches",
    "engine_dir",
    "engine_folder_name",
    "trt_status",
]
