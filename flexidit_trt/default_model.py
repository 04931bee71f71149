"""The model `flexidit-trt run` uses when none is named: the embedded default, in one place.

`flexidit_trt/weights/default.safetensors` is a class-conditional pixel-space DiT trained on Fashion-MNIST
(10 classes, 32×32, one channel; depth 7, hidden 192) and flexified to patch sizes (2, 4): see
`benchmarks/results/default_model/` for how it was made and what it scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model.dit import FlexiDiT

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.safetensors"
# The embedded weights' config name: `build --model dit_fmnist` (no --checkpoint) builds these weights and
# writes their artifacts under it, and `run` without --model looks for a build there (--backend ort/trt).
DEFAULT_MODEL = "dit_fmnist"


def default_checkpoint() -> Path:
    """The default model's file; its absence means a broken install, said as such."""
    if not DEFAULT_WEIGHTS.is_file():
        raise FileNotFoundError(
            f"the embedded default model {DEFAULT_WEIGHTS} is missing (a broken install?): "
            "reinstall flexidit-trt, or name a model with --model / --checkpoint"
        )
    return DEFAULT_WEIGHTS


def embedded_weights_for(model: str | None, checkpoint: object, overrides: object = None) -> Path | None:
    """The embedded default weights where `model` names their config and nothing else names weights (no
    checkpoint, no config overrides): random weights of dit_fmnist show nothing, so its name means the
    trained ones, in `build` and `run` alike. None otherwise."""
    if model is None or checkpoint is not None or overrides:
        return None
    if model.lower().replace("-", "_").replace("/", "_") != DEFAULT_MODEL:
        return None
    return default_checkpoint()


def default_model() -> tuple[FlexiDiT, str]:
    """(model, where its weights come from in words)."""
    from .model.checkpoints import CheckpointError, load_checkpoint

    path = default_checkpoint()
    try:
        return load_checkpoint(path), f"default model {path}"
    except CheckpointError as err:  # a damaged install: said as one line, like a missing file
        raise FileNotFoundError(
            f"the embedded default model is unreadable ({err}): reinstall flexidit-trt"
        ) from None
