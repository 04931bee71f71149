"""What scores every run: the Inception network, the classifier and (rank 0) their reference sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..artifacts import sha256_state_dict
from ..diffusion import Plan
from .distributed import Distributed, all_agree
from .inception import FIDInception, load_inception, no_tf32
from .metrics import (
    class_accuracy,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)
from .options import EvalError, EvalOptions
from .reference_stats import ReferenceSet, classifier_reference_set, reference_set
from .results import RunResult

if TYPE_CHECKING:
    from ..training.classifier import FashionClassifier


@dataclass(frozen=True)
class RunSamples:
    """One run's per-sample outputs, gathered to rank 0 in sample order."""

    index: np.ndarray  # [N] sample indices: sample i was generated for class i mod 10
    predicted: np.ndarray  # [N] the classifier's argmax
    inception: np.ndarray  # [N, 2048] Inception pool3 features
    classifier: np.ndarray  # [N, D] the classifier's penultimate features
    seconds: float  # sampling time summed over chunks (and GPUs)


@dataclass
class Scorer:
    """What scores every run, loaded once and shared by every model evaluated in a process: the Inception
    network, the classifier and (rank 0) the reference sets of both."""

    inception: FIDInception
    classifier: FashionClassifier
    reference: ReferenceSet | None  # rank 0 only
    classifier_reference: ReferenceSet | None  # rank 0 only
    classifier_sha256: str

    @classmethod
    def load(cls, options: EvalOptions, ctx: Distributed) -> Scorer:
        from ..training.classifier import load_classifier

        inception = load_inception(options.inception, ctx.device)
        try:
            classifier = load_classifier(options.classifier, ctx.device)
        except (FileNotFoundError, ValueError) as err:
            raise EvalError(str(err)) from None
        reference, classifier_reference, error = None, None, None
        if ctx.is_main:  # the others wait: a failure here must not leave them hanging in a collective
            try:
                args = (options.data_dir, options.cache_dir, options.reference_count)
                reference = reference_set(inception, *args)
                classifier_reference = classifier_reference_set(classifier, *args)
            except (FileNotFoundError, ValueError, OSError) as err:
                error = err
        if not all_agree(error is None, ctx):
            raise EvalError(
                f"reference set: {error}" if ctx.is_main else "rank 0 could not make the reference set"
            )
        sha = sha256_state_dict(classifier.state_dict())
        return cls(inception, classifier, reference, classifier_reference, sha)

    def classify(self, samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features [n, D] (fp32) and predicted classes [n] of samples [n, 1, 32, 32] in
        [-1, 1], from one forward of the classifier."""
        device = next(self.classifier.parameters()).device
        with no_tf32():
            features, logits = self.classifier.features_and_logits(samples.to(device))
        return features.cpu().numpy(), logits.argmax(dim=1).cpu().numpy()

    def score(
        self,
        options: EvalOptions,
        cfg_scale: float,
        budget: float,
        seed: int,
        run_plan: Plan,
        samples: RunSamples,
    ) -> RunResult:
        """One run's metrics (rank 0)."""
        ref, device, features = self.reference, self.inception.device, samples.inception
        kid = kernel_inception_distance(
            features, ref.features, options.kid_subsets, options.kid_subset_size, seed=seed, device=device
        )
        pr = precision_recall(features, ref.features, k=options.pr_k, device=device)
        classifier_fd = frechet_distance(feature_stats(samples.classifier), self.classifier_reference.stats)
        seconds = samples.seconds
        return RunResult(
            series=options.series,
            guidance=options.guidance,
            cfg_scale=cfg_scale,
            budget=budget,
            seed=seed,
            achieved_fraction=run_plan.achieved_fraction,
            plan=run_plan.describe(),
            steps=options.steps,
            num_samples=int(features.shape[0]),
            fid=frechet_distance(feature_stats(features), ref.stats),
            classifier_fd=classifier_fd,
            kid=kid.mean,
            kid_std=kid.std,
            precision=pr.precision,
            recall=pr.recall,
            class_accuracy=class_accuracy(samples.predicted, samples.index % 10),
            generate_seconds=seconds,
            images_per_second=features.shape[0] / seconds if seconds > 0 else float("nan"),
        )
