"""What scores every run: the Inception network, the classifier and (rank 0) the reference set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .distributed import Distributed, all_agree
from .inception import FIDInception, load_inception
from .options import EvalError, EvalOptions
from .reference_stats import ReferenceSet, reference_set


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
