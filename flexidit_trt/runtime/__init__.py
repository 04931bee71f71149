"""The runtime: one engine per patch size behind `Backend`, the `Pipeline` that runs the planner's
schedule on them, and the run record. Importing it loads neither torch nor TensorRT."""

from .backend import Backend, DeviceArray, IOBuffers, RunError
from .pipeline import GenerateResult, Pipeline, Selection
from .spec import ModelSpec

__all__ = [
    "Backend",
    "DeviceArray",
    "GenerateResult",
    "IOBuffers",
    "ModelSpec",
    "Pipeline",
    "RunError",
    "Selection",
]
