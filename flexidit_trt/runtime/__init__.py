"""The runtime: loaders that turn a model or a workdir of built engines into a `Pipeline`, the pipeline
that runs the planner's schedule over those engines, and the run record. Importing it loads neither
torch nor TensorRT."""

from .load import pipeline_from_workdir
from .load_model import pipeline_from_model
from .options import SamplingOptions
from .pipeline import GenerateResult, Pipeline, Selection

__all__ = [
    "GenerateResult",
    "Pipeline",
    "SamplingOptions",
    "Selection",
    "pipeline_from_model",
    "pipeline_from_workdir",
]
