"""What scores every run: the Inception network, the classifier and (rank 0) the reference set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion import Plan
from .distributed import Distributed, all_agree
from .inception import FIDInception, load_inception
from .metrics import (
    class_accuracy,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)
from .options import EvalError, EvalOptions
from .reference_stats import ReferenceSet, reference_set
from .results import RunResult


@dataclass
class Scorer:
    """What scores every run, loaded once and shared by every model evaluated in a process: the Inception
    network, the classifier and (rank 0) the reference set."""

    inception: FIDInception
    classifier: torch.nn.Module
    reference: ReferenceSet | None  # rank 0 only

    @classmethod
    def load(cls, options: EvalOptions, ctx: Distributed) -> Scorer:
        from ..training.classifier import load_classifier

        inception = load_inception(options.inception, ctx.device)
        try:
            classifier = load_classifier(options.classifier, ctx.device)
        except (FileNotFoundError, ValueError) as err:
            raise EvalError(str(err)) from None
        reference, error = None, None
        if ctx.is_main:  # the others wait: a failure here must not leave them hanging in a collective
            try:
                reference = reference_set(
                    inception, options.data_dir, options.cache_dir, options.reference_count
                )
            except (FileNotFoundError, ValueError, OSError) as err:
                error = err
        if not all_agree(error is None, ctx):
            raise EvalError(
                f"reference set: {error}" if ctx.is_main else "rank 0 could not make the reference set"
            )
        return cls(inception, classifier, reference)

    def score(
        self,
        options: EvalOptions,
        budget: float,
        seed: int,
        run_plan: Plan,
        index: np.ndarray,
        predicted: np.ndarray,
        features: np.ndarray,
        seconds: float,
    ) -> RunResult:
        """One run's metrics (rank 0): its samples' features and predicted classes in sample order."""
        ref, device = self.reference, self.inception.device
        kid = kernel_inception_distance(
            features, ref.features, options.kid_subsets, options.kid_subset_size, seed=seed, device=device
        )
        pr = precision_recall(features, ref.features, k=options.pr_k, device=device)
        return RunResult(
            series=options.series,
            guidance=options.guidance,
            cfg_scale=options.cfg_scale,
            budget=budget,
            seed=seed,
            achieved_fraction=run_plan.achieved_fraction,
            plan=run_plan.describe(),
            steps=options.steps,
            num_samples=int(features.shape[0]),
            fid=frechet_distance(feature_stats(features), ref.stats),
            kid=kid.mean,
            kid_std=kid.std,
            precision=pr.precision,
            recall=pr.recall,
            class_accuracy=class_accuracy(predicted, index % 10),
            generate_seconds=seconds,
            images_per_second=features.shape[0] / seconds if seconds > 0 else float("nan"),
        )
