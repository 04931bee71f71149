"""The network: FlexiDiT, its configs, checkpoints and compute model (torch only)."""

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .config import CONFIGS, DiTConfig, get_config
from .dit import FlexiDiT
from .levers import gelu_epilogue_default
from .macs import forward_macs

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "DiTConfig",
    "FlexiDiT",
    "forward_macs",
    "gelu_epilogue_default",
    "get_config",
    "load_checkpoint",
    "save_checkpoint",
]
