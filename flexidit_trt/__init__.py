"""flexidit-trt: FlexiDiT inference with one compiled engine per patch size.

The torch-based parts (the model, checkpoints, export) load on first use, so a serving install
without torch can still import the package and run engines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

_MODEL_API = ("FlexiDiT", "DiTConfig", "CheckpointError", "get_config", "load_checkpoint", "save_checkpoint")

__all__ = [
    "CheckpointError",
    "DiTConfig",
    "FlexiDiT",
    "__version__",
    "get_config",
    "load_checkpoint",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from .model import CheckpointError, DiTConfig, FlexiDiT, get_config, load_checkpoint, save_checkpoint


def __getattr__(name: str):
    if name in _MODEL_API:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'flexidit_trt' has no attribute {name!r}")
