"""Quality against compute: FID, KID and k-NN precision/recall on the FID Inception network's features,
class consistency with the project's classifier, and the reports (JSON, markdown, plot, sample grids).

Names load on first use, so that `python -m flexidit_trt.evaluation.run` (torchrun's entry) does not
import the module it is about to run.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "InceptionError": "inception",
    "load_inception": "inception",
    "feature_stats": "metrics",
    "frechet_distance": "metrics",
    "kernel_inception_distance": "metrics",
    "precision_recall": "metrics",
    "write_report": "report",
    "EvalError": "run",
    "EvalOptions": "run",
    "EvalReport": "run",
    "Evaluator": "run",
    "OptionsError": "run",
    "RunResult": "run",
    "Scorer": "run",
    "evaluate": "run",
    "evaluate_checkpoint": "run",
}
__all__ = [
    "EvalError",
    "EvalOptions",
    "EvalReport",
    "Evaluator",
    "InceptionError",
    "OptionsError",
    "RunResult",
    "Scorer",
    "evaluate",
    "evaluate_checkpoint",
    "feature_stats",
    "frechet_distance",
    "kernel_inception_distance",
    "load_inception",
    "precision_recall",
    "write_report",
]

if TYPE_CHECKING:
    from .inception import InceptionError, load_inception
    from .metrics import feature_stats, frechet_distance, kernel_inception_distance, precision_recall
    from .report import write_report
    from .run import (
        EvalError,
        EvalOptions,
        EvalReport,
        Evaluator,
        OptionsError,
        RunResult,
        Scorer,
        evaluate,
        evaluate_checkpoint,
    )


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
