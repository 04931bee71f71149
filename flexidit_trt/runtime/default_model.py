"""The model `flexidit-trt run` uses when none is named: the embedded default, in one place.

`flexidit_trt/weights/default.safetensors` is a class-conditional pixel-space DiT trained on Fashion-MNIST
(10 classes, 32×32, one channel; depth 6, hidden 160) and flexified to patch sizes (2, 4): see
`benchmarks/results/default_model/` for how it was made and what it scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import FlexiDiT

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"
DEFAULT_NAME = "default"


def default_checkpoint() -> Path:
    """The default model's file; its absence means a broken install, said as such."""
    if not DEFAULT_WEIGHTS.is_file():
        raise FileNotFoundError(
            f"the embedded default model {DEFAULT_WEIGHTS} is missing (a broken install?): "
            "reinstall flexidit-trt, or name a model with --model / --checkpoint"
        )
    return DEFAULT_WEIGHTS


def default_model() -> tuple[FlexiDiT, str]:
    """(model, where its weights come from in words)."""
    from ..model import CheckpointError, load_checkpoint

    path = default_checkpoint()
    try:
        return load_checkpoint(path), f"default model {path}"
    except CheckpointError as err:  # a damaged install: said as one line, like a missing file
        raise FileNotFoundError(
            f"the embedded default model is unreadable ({err}): reinstall flexidit-trt"
        ) from None
