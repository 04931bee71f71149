"""Quality against compute: FID, KID and k-NN precision/recall on the FID Inception network's features,
class consistency and a Fréchet distance on the features of the project's classifier, at one CFG scale
or a sweep, and the reports (JSON, markdown, plots, sample grids).

options          EvalOptions and the errors (EvalError, OptionsError)
results          RunResult (one run's metrics) and EvalReport
inception        the FID Inception network, found and hash-checked
reference_stats  the test set's Inception and classifier features and statistics, cached
metrics          Fréchet distance (FID, classifier FD), KID, precision/recall, class accuracy
distributed      rank, world and device under torchrun; gather to rank 0
chunks           a run's chunks: seeds, saved and found again
scoring          the Inception network, classifier and reference shared by every run
evaluator        the driver: sample through the runtime's Pipeline at each budget, score
report           results.json, results.md, the plots and the sample grids
"""

from __future__ import annotations

from .evaluator import Evaluator, evaluate, evaluate_checkpoint
from .inception import InceptionError, load_inception
from .metrics import feature_stats, frechet_distance, kernel_inception_distance, precision_recall
from .options import EvalError, EvalOptions, OptionsError
from .report import write_report
from .results import EvalReport, RunResult
from .scoring import Scorer

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
